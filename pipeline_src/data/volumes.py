"""Labelled 3-D volumes (NIfTI image + label map, nnU-Net layout) -> validated 2-D slice shards, multi-class.

    medref preprocess synapse      # datasets.synapse.kind: volumes  ->  data/shards/synapse/

Raw layout read here (what pipeline_src/data/synthetic_volumes.py writes, and what nnU-Net / Synapse releases use):

    <raw>/imagesTr/<case>.nii.gz    (or <case>_0000.nii.gz, nnU-Net's single-channel suffix)
    <raw>/labelsTr/<case>.nii.gz    integer class indices, same shape and affine as the image
    <raw>/dataset.json              {"labels": {name: index, ...}} (nnU-Net v2); index 0 must be background

Every case is validated before anything is written (one MedrefError naming the file): unreadable or non-NIfTI
file, image without label map (or the reverse), shape or affine mismatch, non-integer or unknown label values.

Slicing (params ``datasets.<ds>.volumes``, model :class:`VolumeParams`):
- volumes are reoriented to LPS voxel axes (i -> patient left, j -> posterior, k -> superior) and cut along k;
  a slice is ``vol[:, :, k].T``, i.e. rows = anterior->posterior, columns = patient right->left: the
  radiological view every CT viewer shows (patient right on image left);
- CT window: HU clipped to [hu_min, hu_max] and scaled linearly to 0..255 (the Synapse/TransUNet literature
  uses [-125, 275]); done in float before resizing so the resize does not see quantised values;
- resize to ``image_size`` x ``image_size``: bilinear for the image, nearest for the labels (a class index
  must never be interpolated). A slice already at that size is not resampled, so labels round-trip exactly.

Shard schema: the contract columns, with two volume-specific differences, plus four columns:
- ``mask`` is fixed_size_binary(H*W) of uint8 **class indices** (0 = background), NOT the bit-packed binary
  mask: bit-packing cannot hold C classes, and uint8 indices compress to about the same size with lz4.
  The manifest says ``mask_encoding: "class_index"`` (and so does the Parquet schema metadata) and carries
  ``n_classes`` and ``labels``, so a reader can never confuse the two encodings;
- ``text`` is "" (volumes have no report text); ``image_sha256`` / ``mask_sha256`` are the digests of the
  source NIfTI files (the same for every slice of a case), so a row names the exact file it came from;
- ``case_id`` (string), ``slice_index`` (int32, k in the reoriented volume), ``n_classes`` (int32), and
  ``spacing`` (list<float32>[3]) = the voxel size in mm of the re-stacked [Z, H, W] array *after* resizing:
  (slice spacing, row spacing, column spacing). Evaluation stacks a case's slices in slice_index order and
  passes this spacing to HD95, so distances are in mm of the original anatomy.

Splits are by CASE (seeded, val/test fractions from params): the slices of one case are never in two splits.
Label regimes are by case too: ``pipeline_src.data.splits`` labels whole training cases, with the same rule as
for 2-D images.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline_src.data.params import PreprocessParams, VolumeParams
from pipeline_src.data.shards import MASK_ENCODING, SplitWriter, volume_schema
from pipeline_src.errors import MedrefError
from pipeline_src.utils.io import atomic_dir, sha256_file, sha256_json, write_json

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# an affine may differ by float noise between an image and its label map (different writers round the
# qform differently); a real mismatch (another case, another resampling) is far larger than this
AFFINE_ATOL_MM = 1e-3


# ---- reading and validation ---------------------------------------------------------------------------------


def _strip_nifti(name: str) -> str | None:
    for s in NIFTI_SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return None


def read_labels(raw_dir: Path) -> dict[str, int]:
    """dataset.json's ``labels`` as {name: index}, validated (unique indices, 0 = background)."""
    path = Path(raw_dir) / "dataset.json"
    if not path.is_file():
        raise MedrefError(f"{path}: missing (a volumes dataset needs dataset.json with its 'labels')")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MedrefError(f"{path}: not valid JSON: {e}") from e
    labels = meta.get("labels") if isinstance(meta, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise MedrefError(f"{path}: 'labels' must be a non-empty mapping of class name -> integer index")
    out: dict[str, int] = {}
    for name, idx in labels.items():
        # nnU-Net v2 region-based labels (lists) are not plain class maps; say so rather than mis-read them
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx <= 255:
            raise MedrefError(f"{path}: labels.{name}: expected an integer index 0..255, got {idx!r}")
        out[str(name)] = idx
    if len(set(out.values())) != len(out):
        raise MedrefError(f"{path}: labels: two classes share an index: {out}")
    if 0 not in out.values():
        raise MedrefError(f"{path}: labels: index 0 (background) is missing")
    if sorted(out.values()) != list(range(len(out))):
        # the model's softmax head has one channel per index 0..C-1; gaps would make empty channels
        raise MedrefError(f"{path}: labels: indices must be 0..{len(out) - 1} without gaps, got {sorted(out.values())}")
    return out


def list_cases(raw_dir: Path) -> list[tuple[str, Path, Path]]:
    """(case_id, image, label) for every case, sorted by case id; a file that is not NIfTI is an error."""
    raw_dir = Path(raw_dir)
    images, labels = raw_dir / "imagesTr", raw_dir / "labelsTr"
    for d in (images, labels):
        if not d.is_dir():
            raise MedrefError(f"{d}: missing (expected <raw>/imagesTr and <raw>/labelsTr, nnU-Net layout)")
    found: dict[str, dict[str, Path]] = {"image": {}, "label": {}}
    for kind, d in (("image", images), ("label", labels)):
        for p in sorted(d.iterdir()):
            if p.name.startswith("."):
                continue  # .DS_Store and friends are not data
            stem = _strip_nifti(p.name)
            if stem is None or not p.is_file():
                raise MedrefError(f"{p}: not a NIfTI file (expected <case>.nii.gz or <case>.nii)")
            found[kind][stem] = p
    # nnU-Net names images <case>_0000 (channel suffix) and labels <case>; a plain <case> image is accepted too.
    # Decided per image against the label names, because a case id may itself end in _dddd (case_0001).
    by_case: dict[str, Path] = {}
    for stem, p in found["image"].items():
        case = stem
        if stem not in found["label"] and len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit():
            case = stem[:-5]
            if stem[-4:] != "0000" and case in found["label"]:
                raise MedrefError(f"{p}: extra image channel {stem[-4:]}; only single-channel CT (_0000) is supported")
        if case in by_case:
            raise MedrefError(f"{p}: case {case!r} appears twice in {images} (also {by_case[case].name})")
        by_case[case] = p
    found["image"] = by_case
    only_img = sorted(set(found["image"]) - set(found["label"]))
    only_lab = sorted(set(found["label"]) - set(found["image"]))
    if only_img:
        raise MedrefError(f"{found['image'][only_img[0]]}: no label map {labels / (only_img[0] + '.nii.gz')}")
    if only_lab:
        raise MedrefError(f"{found['label'][only_lab[0]]}: no image {images / (only_lab[0] + '.nii.gz')}")
    if not found["image"]:
        raise MedrefError(f"{images}: no cases")
    return [(c, found["image"][c], found["label"][c]) for c in sorted(found["image"])]


def _load(path: Path, read_data: bool = True):
    import nibabel as nib

    try:
        img = nib.load(str(path))
        # force a read: a truncated .gz loads its header fine and only fails on the data
        data = np.asanyarray(img.dataobj) if read_data else None
    except Exception as e:  # nibabel raises ImageFileError, OSError, EOFError, zlib/gzip errors ...
        raise MedrefError(f"{path}: not a readable NIfTI file: {type(e).__name__}: {e}") from e
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise MedrefError(f"{path}: not a NIfTI file ({type(img).__name__})")
    shape = img.shape[:3] if len(img.shape) == 4 and img.shape[3] == 1 else img.shape
    if len(shape) != 3:
        raise MedrefError(f"{path}: expected a 3-D volume, got shape {img.shape}")
    if data is not None and data.ndim == 4:
        data = data[..., 0]
    return img, data


def load_case(
    image_path: Path, label_path: Path, labels: dict[str, int], validate_only: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Validated (HU float32 [X,Y,Z], class uint8 [X,Y,Z], spacing mm [3]) reoriented to LPS voxel axes.

    ``validate_only`` checks headers and label values without decompressing the image (the fail-fast pass
    over all cases; the image data itself is read, and a truncated file caught, when the case is sliced).
    """
    import nibabel as nib

    im, _ = _load(image_path, read_data=False)
    lb, lab = _load(label_path)
    if im.shape[:3] != lb.shape[:3]:
        raise MedrefError(
            f"{label_path}: label shape {lb.shape[:3]} differs from image {image_path} shape {im.shape[:3]}"
        )
    if not np.allclose(im.affine, lb.affine, atol=AFFINE_ATOL_MM, rtol=0):
        raise MedrefError(
            f"{label_path}: affine differs from image {image_path} "
            f"(max difference {np.abs(im.affine - lb.affine).max():.4g} mm): "
            f"{np.round(lb.affine, 4).tolist()} vs {np.round(im.affine, 4).tolist()}"  # one line: the CLI prints one
        )
    if not np.issubdtype(lab.dtype, np.integer):
        rounded = np.rint(lab)
        if not np.array_equal(rounded, lab):
            raise MedrefError(f"{label_path}: label map has non-integer values (e.g. {lab[rounded != lab].flat[0]!r})")
        lab = rounded
    # bincount is ~10x faster than np.unique on a 512x512x100 map; values < 0 or > 255 are unknown anyway
    if lab.size and (lab.min() < 0 or lab.max() > 255):
        bad = lab.min() if lab.min() < 0 else lab.max()
        raise MedrefError(f"{label_path}: unknown label value(s) [{int(bad)}] (dataset.json labels: {labels})")
    values = np.flatnonzero(np.bincount(lab.ravel().astype(np.intp), minlength=1))
    unknown = sorted(set(values.tolist()) - set(labels.values()))
    if unknown:
        raise MedrefError(
            f"{label_path}: unknown label value(s) {[int(v) for v in unknown]} (dataset.json labels: {labels})"
        )
    if validate_only:
        return None
    try:
        hu = im.get_fdata(dtype=np.float32)  # applies scl_slope/scl_inter
    except Exception as e:
        raise MedrefError(f"{image_path}: not a readable NIfTI file: {type(e).__name__}: {e}") from e
    if hu.ndim == 4:
        hu = hu[..., 0]
    # one orientation for every case, whatever the scanner wrote: LPS voxel axes give the radiological view
    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(im.affine), nib.orientations.axcodes2ornt(("L", "P", "S"))
    )
    hu = nib.orientations.apply_orientation(hu, ornt)
    lab = nib.orientations.apply_orientation(lab.astype(np.uint8), ornt)
    zooms = np.sqrt((im.affine[:3, :3] ** 2).sum(axis=0))  # voxel size per input axis, from the affine
    spacing = np.empty(3, dtype=np.float64)
    spacing[ornt[:, 0].astype(int)] = zooms
    return np.ascontiguousarray(hu, np.float32), np.ascontiguousarray(lab, np.uint8), spacing


# ---- windowing and resizing ----------------------------------------------------------------------------------


def window(hu: np.ndarray, hu_min: float, hu_max: float) -> np.ndarray:
    """HU -> float32 in [0, 255] (clip then linear scale); quantised by the caller after resizing."""
    return (np.clip(hu, hu_min, hu_max) - hu_min) * np.float32(255.0 / (hu_max - hu_min))


def resize_slice(img: np.ndarray, lab: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(float image [H,W], class map [H,W]) -> (uint8 image, uint8 classes) at size x size."""
    from PIL import Image

    if img.shape != (size, size):
        img = np.asarray(Image.fromarray(img.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR))
        lab = np.asarray(Image.fromarray(lab, mode="L").resize((size, size), Image.NEAREST))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), np.ascontiguousarray(lab, np.uint8)


# ---- case-level splits ---------------------------------------------------------------------------------------


def split_cases(case_ids: Sequence[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, str]:
    """{case: "train"|"val"|"test"}; seeded permutation of the sorted ids, test first, then val, rest train.

    With >= 3 cases every non-zero fraction gets at least one case (a 8-case demo still has a val and a test
    case) and train keeps at least one.
    """
    ids = sorted(case_ids)
    n = len(ids)
    if len(set(ids)) != n:
        raise MedrefError(f"duplicate case ids: {sorted({c for c in ids if ids.count(c) > 1})}")
    n_test = max(1, round(test_fraction * n)) if test_fraction > 0 and n >= 3 else round(test_fraction * n)
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 and n >= 3 else round(val_fraction * n)
    if n_test + n_val >= n:
        raise MedrefError(f"{n} cases cannot be split {val_fraction=} {test_fraction=} with a training case left")
    order = [ids[i] for i in np.random.default_rng(seed).permutation(n)]
    out = {c: "test" for c in order[:n_test]}
    out.update({c: "val" for c in order[n_test : n_test + n_val]})
    out.update({c: "train" for c in order[n_test + n_val :]})
    return out


# ---- slices -> rows -> shards --------------------------------------------------------------------------------


def _as_params(params: VolumeParams | dict[str, Any] | None) -> VolumeParams:
    if params is None:
        return VolumeParams()
    return params if isinstance(params, VolumeParams) else VolumeParams.model_validate(params)


def iter_volume_slices(
    raw_dir: str | Path, params: VolumeParams | dict[str, Any] | None = None, image_size: int | None = None
) -> Iterator[dict[str, Any]]:
    """Validate every case, then yield one row dict per axial slice (cases sorted, slices in k order).

    ``image_size`` (e.g. preprocess.image_size) is used when ``params.image_size`` is None; when both are None
    slices keep their size (only square slices are accepted then). All cases are validated before the first
    row is yielded, so a bad case deep in the set fails fast and the writer never starts on a bad dataset.
    """
    raw_dir = Path(raw_dir)
    p = _as_params(params)
    size = p.image_size or image_size
    labels = read_labels(raw_dir)
    cases = list_cases(raw_dir)
    for _, img_path, lab_path in cases:
        load_case(img_path, lab_path, labels, validate_only=True)  # fail fast before any slicing
    splits = split_cases([c for c, _, _ in cases], p.val_fraction, p.test_fraction, p.split_seed)
    n_classes = len(labels)
    for case, img_path, lab_path in cases:
        hu, lab, spacing = load_case(img_path, lab_path, labels)
        nx, ny, nz = hu.shape
        if size is None:
            if nx != ny:
                raise MedrefError(f"{img_path}: slices are {ny}x{nx}; set datasets.<ds>.volumes.image_size")
            out_size = nx
        else:
            out_size = size
        # slice = vol[:, :, k].T -> rows follow j (spacing[1]), columns follow i (spacing[0])
        spacing_out = [float(spacing[2]), float(spacing[1]) * ny / out_size, float(spacing[0]) * nx / out_size]
        src_img, src_lab = _rel(img_path, raw_dir), _rel(lab_path, raw_dir)
        img_sha, lab_sha = sha256_file(img_path), sha256_file(lab_path)
        win = window(hu, p.hu_min, p.hu_max)
        for k in range(nz):
            im8, lb8 = resize_slice(
                np.ascontiguousarray(win[:, :, k].T), np.ascontiguousarray(lab[:, :, k].T), out_size
            )
            yield {
                "id": f"{case}_{k:03d}",
                "split": splits[case],
                "image": im8.tobytes(),
                "mask": lb8.tobytes(),
                "height": out_size,
                "width": out_size,
                "text": "",
                "source_image": src_img,
                "source_mask": src_lab,
                "image_sha256": img_sha,
                "mask_sha256": lab_sha,
                "case_id": case,
                "slice_index": k,
                "n_classes": n_classes,
                "spacing": spacing_out,
            }


def _rel(p: Path, root: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.as_posix()


def write_volume_shards(
    raw_dir: str | Path,
    out_dir: str | Path,
    params: VolumeParams | dict[str, Any] | None = None,
    *,
    dataset: str | None = None,
    preprocess=None,
) -> dict:
    """raw volumes -> ``out_dir/{train,val,test}/part-*.parquet`` + ``manifest.json``; returns the manifest.

    ``preprocess`` is the PreprocessParams (image_size, row_group_size, shard_rows, compression); None -> its
    defaults. The whole folder is replaced atomically; rows stream through one row group per split in memory.
    """
    import pyarrow as pa

    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    p = _as_params(params)
    pre = preprocess if preprocess is not None else PreprocessParams()
    size = p.image_size or pre.image_size
    labels = read_labels(raw_dir)
    n_classes = len(labels)
    schema = volume_schema(size, n_classes, labels)
    cases: dict[str, dict] = {}
    with atomic_dir(out_dir) as tmp:
        writers = {
            s: SplitWriter(tmp, s, schema, pre.row_group_size, pre.shard_rows, pre.compression)
            for s in ("train", "val", "test")
        }
        pending: dict[str, list[dict]] = {s: [] for s in writers}  # rows of the next row group, per split

        def flush(split: str) -> None:
            if pending[split]:
                writers[split].write(pa.Table.from_pylist(pending[split], schema=schema))
                pending[split] = []

        for row in iter_volume_slices(raw_dir, p, image_size=size):
            pending[row["split"]].append(row)
            if len(pending[row["split"]]) == pre.row_group_size:
                flush(row["split"])
            c = cases.setdefault(
                row["case_id"],
                {
                    "split": row["split"],
                    "n_slices": 0,
                    "spacing": row["spacing"],
                    "source_image": row["source_image"],
                    "source_mask": row["source_mask"],
                    "image_sha256": row["image_sha256"],
                    "mask_sha256": row["mask_sha256"],
                },
            )
            c["n_slices"] += 1
        splits = {}
        for s, w in writers.items():
            flush(s)
            shards = [
                {"path": sh["path"].relative_to(tmp).as_posix(), "rows": sh["rows"], "sha256": sha256_file(sh["path"])}
                for sh in w.close()
            ]
            splits[s] = {
                "rows": sum(sh["rows"] for sh in shards),
                "shards": shards,
                "cases": sorted(c for c, v in cases.items() if v["split"] == s),
            }
        manifest = {
            "dataset": dataset or out_dir.name,
            "kind": "volumes",
            "image_size": size,
            "mask_encoding": MASK_ENCODING,
            "n_classes": n_classes,
            "labels": labels,
            "window": {"hu_min": p.hu_min, "hu_max": p.hu_max},
            "split": {"val_fraction": p.val_fraction, "test_fraction": p.test_fraction, "seed": p.split_seed},
            "splits": splits,
            "cases": cases,
            "schema": [{"name": f.name, "type": str(f.type)} for f in schema],
            "dropped": [],
        }
        manifest["digest"] = sha256_json(manifest)
        write_json(tmp / "manifest.json", manifest)
    return manifest


# ---- reading back --------------------------------------------------------------------------------------------


def restack(case_ids: Sequence[str], slice_index: Sequence[int], slices: np.ndarray) -> dict[str, np.ndarray]:
    """Group 2-D slices [N,H,W] by case and stack them in slice_index order -> {case: [Z,H,W]}.

    Each case's slice indices must be exactly 0..Z-1: a missing or doubled slice would shift the anatomy and
    silently corrupt every 3-D distance, so it is an error instead.
    """
    case_ids = np.asarray(case_ids)
    slice_index = np.asarray(slice_index)
    if not len(case_ids) == len(slice_index) == len(slices):
        raise MedrefError(f"restack: {len(case_ids)} case ids, {len(slice_index)} slice indices, {len(slices)} slices")
    out = {}
    for case in sorted(set(case_ids.tolist())):
        sel = np.flatnonzero(case_ids == case)
        order = sel[np.argsort(slice_index[sel], kind="stable")]
        ks = slice_index[order]
        if not np.array_equal(ks, np.arange(len(ks))):
            missing = sorted(set(range(int(ks.max()) + 1)) - set(ks.tolist()))
            raise MedrefError(
                f"case {case}: slice indices are not 0..{len(ks) - 1} (missing {missing[:10]}, or doubled)"
            )
        out[case] = np.stack([slices[i] for i in order])
    return out
