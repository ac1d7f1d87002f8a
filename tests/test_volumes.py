"""Synthetic NIfTI volumes, validation, case-level splits and slice shards (pipeline_src/data/volumes.py)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline_src.data.shards import decode_class_masks
from pipeline_src.data.splits import n_labelled, select, select_cases
from pipeline_src.data.synthetic_volumes import LABELS, generate_volumes
from pipeline_src.data.volumes import (
    iter_volume_slices,
    load_case,
    restack,
    split_cases,
    window,
    write_volume_shards,
)
from pipeline_src.errors import MedrefError

SHAPE = (32, 32, 10)
N_CASES = 6


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vol") / "raw"
    generate_volumes(out, N_CASES, SHAPE, seed=3)
    return out


@pytest.fixture
def raw_copy(raw, tmp_path) -> Path:
    dst = tmp_path / "raw"
    shutil.copytree(raw, dst)
    return dst


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---- generator -----------------------------------------------------------------------------------------------


def test_generator_writes_valid_deterministic_nifti(raw, tmp_path):
    again = tmp_path / "again"
    generate_volumes(again, N_CASES, SHAPE, seed=3)
    assert _files(raw) == _files(again)  # byte-identical (nibabel gzip mtime 0, no timestamps)
    meta = json.loads((raw / "dataset.json").read_text())
    assert meta["labels"] == LABELS and meta["numTraining"] == N_CASES
    other = tmp_path / "other"
    generate_volumes(other, 2, SHAPE, seed=4)
    for i in range(N_CASES):
        im = nib.load(raw / "imagesTr" / f"case_{i:04d}.nii.gz")
        lb = nib.load(raw / "labelsTr" / f"case_{i:04d}.nii.gz")
        im2 = nib.load(again / "imagesTr" / f"case_{i:04d}.nii.gz")
        assert isinstance(im, nib.Nifti1Image) and im.shape == SHAPE and lb.shape == SHAPE
        np.testing.assert_array_equal(np.asarray(im.dataobj), np.asarray(im2.dataobj))
        np.testing.assert_array_equal(im.affine, im2.affine)
        np.testing.assert_array_equal(im.affine, lb.affine)
        zooms = im.header.get_zooms()
        assert zooms[2] > 1.2 * zooms[0]  # anisotropic: thick slices, as in Synapse CT
        assert nib.aff2axcodes(im.affine) == ("L", "P", "S")
        labs = np.asarray(lb.dataobj)
        assert set(np.unique(labs)) <= set(LABELS.values())
        hu = np.asarray(im.dataobj)
        assert hu.min() < -900 and 100 < np.median(hu[labs == LABELS["liver"]]) + 50  # air outside, organs bright
        if i == 4:
            assert not (labs == LABELS["gallbladder"]).any()  # every 5th case: class absent from a case
        else:
            assert all((labs == v).any() for v in LABELS.values())
    # a different seed gives different anatomy
    assert not np.array_equal(
        np.asarray(nib.load(other / "labelsTr/case_0000.nii.gz").dataobj),
        np.asarray(nib.load(raw / "labelsTr/case_0000.nii.gz").dataobj),
    )


# ---- validation: one clear error naming the file -------------------------------------------------------------


def _rewrite_label(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, affine), path)


def test_label_shape_mismatch_names_file(raw_copy):
    lp = raw_copy / "labelsTr" / "case_0002.nii.gz"
    lb = nib.load(lp)
    _rewrite_label(lp, np.asarray(lb.dataobj)[:, :, :-1], lb.affine)
    with pytest.raises(MedrefError, match=r"labelsTr/case_0002\.nii\.gz: label shape"):
        list(iter_volume_slices(raw_copy, {"image_size": 32}))


def test_label_affine_mismatch_names_file(raw_copy):
    lp = raw_copy / "labelsTr" / "case_0001.nii.gz"
    lb = nib.load(lp)
    aff = lb.affine.copy()
    aff[2, 3] += 5.0  # label map shifted 5 mm along z: another slab
    _rewrite_label(lp, np.asarray(lb.dataobj), aff)
    with pytest.raises(MedrefError, match=r"labelsTr/case_0001\.nii\.gz: affine differs"):
        list(iter_volume_slices(raw_copy, {"image_size": 32}))


def test_unknown_label_value_names_file_and_value(raw_copy):
    lp = raw_copy / "labelsTr" / "case_0003.nii.gz"
    lb = nib.load(lp)
    data = np.asarray(lb.dataobj).copy()
    data[0, 0, 0] = 13
    _rewrite_label(lp, data, lb.affine)
    with pytest.raises(MedrefError, match=r"labelsTr/case_0003\.nii\.gz: unknown label value\(s\) \[13\]"):
        list(iter_volume_slices(raw_copy, {"image_size": 32}))


@pytest.mark.parametrize("name", ["case_0005.nii.gz", "case_0005.nii"])
def test_unreadable_nifti_names_file(raw_copy, name):
    (raw_copy / "imagesTr" / "case_0005.nii.gz").unlink()
    bad = raw_copy / "imagesTr" / name
    bad.write_bytes(b"this is a PNG, honestly" * 20)
    with pytest.raises(MedrefError, match=re.escape(f"imagesTr/{name}: not a readable NIfTI")):
        list(iter_volume_slices(raw_copy, {"image_size": 32}))


def test_non_nifti_file_names_file(raw_copy):
    (raw_copy / "labelsTr" / "case_0000.png").write_bytes(b"\x89PNG")
    with pytest.raises(MedrefError, match=r"labelsTr/case_0000\.png: not a NIfTI file"):
        list(iter_volume_slices(raw_copy, {"image_size": 32}))


def test_missing_label_names_file(raw_copy):
    (raw_copy / "labelsTr" / "case_0004.nii.gz").unlink()
    with pytest.raises(MedrefError, match=r"imagesTr/case_0004\.nii\.gz: no label map"):
        list(iter_volume_slices(raw_copy, {"image_size": 32}))


def test_nothing_written_on_bad_input(raw_copy, tmp_path):
    lp = raw_copy / "labelsTr" / "case_0005.nii.gz"
    lb = nib.load(lp)
    data = np.asarray(lb.dataobj).copy()
    data[1, 1, 1] = 99
    _rewrite_label(lp, data, lb.affine)
    out = tmp_path / "shards" / "syn"
    with pytest.raises(MedrefError, match="case_0005"):
        write_volume_shards(raw_copy, out, {"image_size": 32})
    assert not out.exists() and list(out.parent.iterdir()) == []  # no partial output, no temp left


def test_nnunet_channel_suffix_and_reorientation(raw_copy):
    # nnU-Net names images <case>_0000; a RAS-stored copy of a case (flipped data + flipped affine) is the same
    # anatomy and must give the same slices
    ip = raw_copy / "imagesTr" / "case_0000.nii.gz"
    lp = raw_copy / "labelsTr" / "case_0000.nii.gz"
    hu0, lab0, sp0 = load_case(ip, lp, LABELS)
    im, lb = nib.load(ip), nib.load(lp)
    im_data, lb_data = np.asarray(im.dataobj), np.asarray(lb.dataobj)  # nibabel reads lazily: before unlink
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = SHAPE[0] - 1, SHAPE[1] - 1
    aff = im.affine @ flip  # voxel (i, j) of the flipped array is voxel (X-1-i, Y-1-j) of the original
    ip.unlink()
    nib.save(nib.Nifti1Image(im_data[::-1, ::-1].copy(), aff), raw_copy / "imagesTr" / "case_0000_0000.nii.gz")
    nib.save(nib.Nifti1Image(lb_data[::-1, ::-1].copy(), aff), lp)
    assert nib.aff2axcodes(aff) == ("R", "A", "S")
    hu1, lab1, sp1 = load_case(raw_copy / "imagesTr" / "case_0000_0000.nii.gz", lp, LABELS)
    np.testing.assert_array_equal(lab0, lab1)
    np.testing.assert_allclose(hu0, hu1)
    np.testing.assert_allclose(sp0, sp1)
    ids = {r["id"] for r in iter_volume_slices(raw_copy, {"image_size": 32})}
    assert "case_0000_000" in ids


# ---- splits --------------------------------------------------------------------------------------------------


def test_case_level_split_never_splits_a_case(raw):
    seen: dict[str, set[str]] = {}
    for r in iter_volume_slices(raw, {"image_size": 32, "val_fraction": 0.2, "test_fraction": 0.2}):
        seen.setdefault(r["case_id"], set()).add(r["split"])
    assert len(seen) == N_CASES
    assert all(len(s) == 1 for s in seen.values())
    assert {next(iter(s)) for s in seen.values()} == {"train", "val", "test"}


def test_split_cases_deterministic_and_seeded():
    ids = [f"c{i:02d}" for i in range(30)]
    a = split_cases(ids, 0.1, 0.2, seed=0)
    assert a == split_cases(list(reversed(ids)), 0.1, 0.2, seed=0)  # order of discovery does not matter
    assert a != split_cases(ids, 0.1, 0.2, seed=1)
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 21, "val": 3, "test": 6}
    with pytest.raises(MedrefError):
        split_cases(ids[:2], 0.5, 0.5, seed=0)


def test_case_regimes_are_nested():
    ids = [f"c{i:02d}" for i in range(40)]
    prev: set[str] = set()
    for f in (0.05, 0.1, 0.25, 0.5, 1.0):
        cur = set(select(ids, f, seed=7)[0])
        assert len(cur) == n_labelled(f, 40) and prev <= cur
        prev = cur
    assert prev == set(ids)
    slice_cases = [c for c in ids for _ in range(3)]
    slice_ids = [f"{c}_{k:03d}" for c in ids for k in range(3)]
    r = select_cases(slice_cases, slice_ids, 0.1, seed=7)
    assert len(r["labelled"]) == 3 * len(r["labelled_cases"])
    assert set(r["labelled"]).isdisjoint(r["unlabelled"]) and len(r["labelled"]) + len(r["unlabelled"]) == 120
    assert {s.rsplit("_", 1)[0] for s in r["labelled"]} == set(r["labelled_cases"])


def test_cases_and_slices_share_one_labelled_rule():
    """The labelled count and order of cases are the ones 2-D images get: 0.5 of 5 cases labels 3 (half up), as
    0.5 of 5 images does; numpy's round() (half to even) gave 2 before the two rules became one."""
    cases = [f"case_{i}" for i in range(5)]
    slice_ids = [f"{c}_{k:03d}" for c in cases for k in range(2)]
    r = select_cases([c for c in cases for _ in range(2)], slice_ids, 0.5, seed=0)
    assert r["labelled_cases"] == select(cases, 0.5, seed=0)[0]
    assert len(r["labelled_cases"]) == 3 == len(select([f"img{i}" for i in range(5)], 0.5, seed=0)[0])


# ---- shards --------------------------------------------------------------------------------------------------


def test_shards_round_trip_and_are_deterministic(raw, tmp_path):
    out = tmp_path / "shards" / "synapse"
    m = write_volume_shards(raw, out, {"image_size": SHAPE[0]}, dataset="synapse")
    assert m["kind"] == "volumes" and m["n_classes"] == 9 and m["mask_encoding"] == "class_index"
    assert sum(s["rows"] for s in m["splits"].values()) == N_CASES * SHAPE[2]
    tables = {s: pq.read_table(out / s) for s in ("train", "val", "test") if m["splits"][s]["rows"]}
    for split, t in tables.items():
        masks = decode_class_masks(t)
        cases = t.column("case_id").to_pylist()
        ks = t.column("slice_index").to_pylist()
        assert set(t.column("split").to_pylist()) == {split}
        vols = restack(cases, ks, masks)
        imgs = restack(
            cases, ks, np.frombuffer(t.column("image").combine_chunks().buffers()[1], np.uint8).reshape(masks.shape)
        )
        spacing = dict(zip(cases, t.column("spacing").to_pylist(), strict=True))
        for case, vol in vols.items():
            hu, lab, sp = load_case(raw / "imagesTr" / f"{case}.nii.gz", raw / "labelsTr" / f"{case}.nii.gz", LABELS)
            # slice k is vol[:, :, k].T: stack -> [Z, Y, X]
            np.testing.assert_array_equal(vol, lab.transpose(2, 1, 0))
            want = np.clip(np.rint(window(hu, -125, 275)), 0, 255).astype(np.uint8).transpose(2, 1, 0)
            np.testing.assert_array_equal(imgs[case], want)
            np.testing.assert_allclose(spacing[case], [sp[2], sp[1], sp[0]], rtol=1e-6)
            assert case in m["splits"][split]["cases"]
    again = write_volume_shards(raw, tmp_path / "again" / "synapse", {"image_size": SHAPE[0]}, dataset="synapse")
    assert again["digest"] == m["digest"]
    assert _files(out) == _files(tmp_path / "again" / "synapse")


def test_resize_uses_nearest_labels_and_scales_spacing(raw, tmp_path):
    rows = [r for r in iter_volume_slices(raw, {"image_size": 48}) if r["case_id"] == "case_0001"]
    native = [r for r in iter_volume_slices(raw, {"image_size": 32}) if r["case_id"] == "case_0001"]
    assert len(rows) == SHAPE[2] and rows[0]["height"] == rows[0]["width"] == 48
    for r, n in zip(rows, native, strict=True):
        lab = np.frombuffer(r["mask"], np.uint8)
        assert set(np.unique(lab)) <= set(np.unique(np.frombuffer(n["mask"], np.uint8)))  # no interpolated classes
        np.testing.assert_allclose(r["spacing"][1:], np.asarray(n["spacing"][1:]) * 32 / 48, rtol=1e-6)
        assert r["spacing"][0] == n["spacing"][0]
    # the area of each organ is preserved up to the pixel grid
    big = np.stack([np.frombuffer(r["mask"], np.uint8) for r in rows])
    small = np.stack([np.frombuffer(r["mask"], np.uint8) for r in native])
    liver = LABELS["liver"]
    assert (big == liver).sum() * (32 / 48) ** 2 == pytest.approx((small == liver).sum(), rel=0.1)
