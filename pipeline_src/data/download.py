"""download@<dataset>: fetch/verify/extract (or synthesise) a dataset into one normalised raw layout.

    medref download qata            # -> data/raw/qata/  (params: datasets.qata.{kind,source,sha256,synthetic})

Sources (``datasets.<ds>.source``; relative paths are resolved against the current directory = repo root):
  synthetic            pipeline_src/data/synthetic.py writes the real layout of ``kind``, then it is ingested
  <folder>             an extracted release in any layout pipeline_src/data/layouts.py accepts
  <file>.zip|.tar[.gz] extracted safely (absolute paths, ``..`` members, links and devices are rejected; a
                       listing past ``datasets.<ds>.archive`` -- total size, member count, compression ratio --
                       is refused before anything is extracted; zip or tar is told by content, not suffix)
  https://...          never fetched (no network): the user places the file at data/downloads/<name>; it is
                       verified against the pinned ``datasets.<ds>.sha256`` and then treated as an archive
Disk full while extracting or copying is one error naming the folder and the space needed.

Normalised raw layout (what preprocess reads):
  data/raw/<ds>/{train,val,test}/{images,masks}/<id><ext>   copies of the source files
  data/raw/<ds>/pairs.csv       split,id,image,mask,text,has_text,source_image,source_mask (sorted by split, id)
  data/raw/<ds>/checksums.json  source digest + sha256 of every file above; re-running with the same source and
                                an intact raw folder is a no-op
"""

from __future__ import annotations

import csv
import gzip
import lzma
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from pipeline_src.data import layouts, synthetic, synthetic_volumes
from pipeline_src.data.params import ArchiveLimits
from pipeline_src.errors import MedrefError
from pipeline_src.utils.io import (
    atomic_dir,
    output_errors,
    scratch_beside,
    sha256_file,
    sha256_json,
    sha256_tree,
    write_json,
)

DOWNLOADS = Path("data/downloads")
# bump when the synthetic generator's output changes, so cached raw folders are regenerated
GENERATOR_VERSION = 1
PAIRS_COLUMNS = ("split", "id", "image", "mask", "text", "has_text", "source_image", "source_mask")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def _log(msg: str) -> None:
    print(f"[download] {msg}", flush=True)


def _is_archive(p: Path) -> bool:
    return any(p.name.lower().endswith(s) for s in ARCHIVE_SUFFIXES)


def _check_member(name: str, archive: Path) -> None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise MedrefError(f"{archive}: unsafe archive member {name!r}: absolute path")
    if ".." in p.parts:
        raise MedrefError(f"{archive}: unsafe archive member {name!r}: '..' escapes the extraction folder")


def archive_format(archive: Path) -> str | None:
    """"zip" or "tar" by the file's CONTENT (a URL download may have no suffix), None for neither."""
    if zipfile.is_zipfile(archive):
        return "zip"
    if tarfile.is_tarfile(archive):
        return "tar"
    return None


def _check_limits(archive: Path, sizes: list[tuple[str, int]], limits, key: str) -> None:
    """Refuse an archive whose listing (member, uncompressed size) passes ``limits`` (the params block ``key``)."""
    if len(sizes) > limits.max_members:
        raise MedrefError(f"{archive}: {len(sizes)} members, more than {key}.max_members={limits.max_members} "
                          f"(the first one past the limit: {sizes[limits.max_members][0]!r}); nothing was "
                          "extracted. Raise the limit if this archive is what you meant to use")
    cap, total = limits.max_unpacked_gib * 2**30, 0
    for name, size in sizes:
        total += size
        if total > cap:
            raise MedrefError(f"{archive}: member {name!r} ({size / 2**20:.1f} MiB) takes the uncompressed total "
                              f"past {key}.max_unpacked_gib={limits.max_unpacked_gib}; nothing was extracted. "
                              "Raise the limit if this archive is what you meant to use")
    packed = max(archive.stat().st_size, 1)
    if total / packed > limits.max_ratio:
        name, size = max(sizes, key=lambda x: x[1])
        raise MedrefError(f"{archive}: compression ratio {total / packed:.0f}x ({total / 2**20:.1f} MiB from "
                          f"{packed / 2**20:.2f} MiB; largest member {name!r}, {size / 2**20:.1f} MiB) is above "
                          f"{key}.max_ratio={limits.max_ratio:g}, the mark of a decompression bomb; nothing was "
                          "extracted. Raise the limit if this archive is what you meant to use")


def unpacked_size(archive: Path) -> int:
    """Total uncompressed bytes of an archive's members (0 when it cannot be listed)."""
    try:
        if archive_format(archive) == "zip":
            with zipfile.ZipFile(archive) as z:
                return sum(i.file_size for i in z.infolist())
        with tarfile.open(archive) as tf:
            return sum(m.size for m in tf.getmembers())
    except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError):
        return 0


def safe_extract(archive: Path, dest: Path, limits=None, key: str = "datasets.<dataset>.archive") -> None:
    """Extract ``archive`` (zip or tar, told apart by content) into ``dest``. Any unsafe member, or a listing
    past ``limits`` (the ``key`` params block; its defaults if None), is an error before anything is
    extracted; a corrupt or truncated archive is an error naming it."""
    limits = limits or ArchiveLimits()
    fmt = archive_format(archive)
    if fmt is None:
        raise MedrefError(f"{archive}: not a zip or tar archive (unrecognised or truncated content); "
                          "re-download it, or point the source at the extracted folder")
    try:
        if fmt == "zip":
            _extract_zip(archive, dest, limits, key)
        else:
            _extract_tar(archive, dest, limits, key)
    except (zipfile.BadZipFile, tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error, lzma.LZMAError) as e:
        raise MedrefError(f"{archive}: corrupt or truncated {fmt} archive ({type(e).__name__}: {e}); "
                          "re-download it (and pin its sha256) or point the source at the extracted folder") from e


def _extract_zip(archive: Path, dest: Path, limits, key: str) -> None:
    with zipfile.ZipFile(archive) as z:
        infos = z.infolist()
        for info in infos:
            _check_member(info.filename, archive)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise MedrefError(f"{archive}: unsafe archive member {info.filename!r}: symbolic link")
        _check_limits(archive, [(i.filename, i.file_size) for i in infos], limits, key)
        z.extractall(dest)


def _extract_tar(archive: Path, dest: Path, limits, key: str) -> None:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for m in members:
            _check_member(m.name, archive)
            if m.issym() or m.islnk():
                # links could point outside dest or at files we then overwrite; real releases have none
                raise MedrefError(f"{archive}: unsafe archive member {m.name!r}: link to {m.linkname!r}")
            if not (m.isfile() or m.isdir()):
                raise MedrefError(f"{archive}: unsafe archive member {m.name!r}: not a regular file or folder")
        _check_limits(archive, [(m.name, m.size) for m in members], limits, key)
        # filter="data" is a second line of defence (strips modes/owners, refuses anything odd); Python before
        # 3.11.4 (Debian 12's 3.11.2) has no filters, and the member checks above are the defence there
        if hasattr(tarfile, "data_filter"):
            tf.extractall(dest, members=members, filter="data")
        else:
            tf.extractall(dest, members=members)


def _single_root(d: Path) -> Path:
    """Descend through a lone top-level folder (archives usually wrap the release in one)."""
    entries = [p for p in d.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    while len(entries) == 1 and entries[0].is_dir():
        d = entries[0]
        entries = [p for p in d.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    return d


def verify_sha256(path: Path, expected: str | None, key: str) -> str:
    actual = sha256_file(path)
    if expected is not None and actual != expected.lower():
        raise MedrefError(f"{path}: checksum mismatch: sha256 {actual}, but {key} pins {expected}; "
                          "the file is corrupt, truncated or a different release")
    return actual


def resolve_source(dp, dataset: str) -> tuple[str, Path | None, str]:
    """(type, path, digest of the source) for ``datasets.<dataset>``; verifies pinned checksums."""
    src = dp.source
    key = f"datasets.{dataset}.sha256"
    if src == "synthetic" and dp.kind == "volumes":
        v = dp.volumes
        return "synthetic", None, sha256_json({"generator": synthetic_volumes.GENERATOR_VERSION, "kind": dp.kind,
                                               "n_cases": v.n_cases, "shape": list(v.shape), "seed": v.seed})
    if src == "synthetic":
        return "synthetic", None, sha256_json({"generator": GENERATOR_VERSION, "kind": dp.kind,
                                               "synthetic": dp.synthetic.model_dump()})
    if src.startswith(("http://", "https://")):
        name = src.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or f"{dataset}.zip"
        placed = DOWNLOADS / name
        if dp.sha256 is None:
            raise MedrefError(f"datasets.{dataset}.source is a URL ({src}) but {key} is not set: pin the sha256 of the "
                              "file so a download can be verified")
        if not placed.is_file():
            raise MedrefError(f"datasets.{dataset}.source {src} cannot be fetched here (no network): download it and "
                              f"place it at {placed.resolve()} (expected sha256 {dp.sha256}), then re-run "
                              f"`medref download {dataset}`")
        return "archive", placed, verify_sha256(placed, dp.sha256, key)
    path = Path(src).expanduser()
    if not path.exists():
        raise MedrefError(f"datasets.{dataset}.source: {path.resolve()} does not exist (relative paths are resolved "
                          f"against the current directory {Path.cwd()})")
    if path.is_dir():
        return "folder", path, sha256_tree(path)
    if _is_archive(path) or archive_format(path) is not None:
        return "archive", path, verify_sha256(path, dp.sha256, key)
    raise MedrefError(f"datasets.{dataset}.source: {path} is neither a folder nor a .zip/.tar(.gz) archive")


def _up_to_date(out_dir: Path, source_digest: str) -> bool:
    ck = out_dir / "checksums.json"
    if not ck.is_file():
        return False
    import json

    try:
        old = json.loads(ck.read_text())
    except ValueError:
        return False
    if old.get("source_digest") != source_digest:
        return False
    files = old.get("files", {})
    on_disk = {p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file()} - {"checksums.json"}
    if on_disk != set(files):
        return False
    return all(sha256_file(out_dir / rel) == h for rel, h in files.items())


def normalise(pairs: list[layouts.Pair], src_root: Path, dest: Path, progress: bool = True) -> list[dict]:
    """Copy every pair into ``dest``'s one layout and write pairs.csv; returns the rows."""
    from tqdm import tqdm

    rows = []
    for p in tqdm(pairs, desc="normalise", disable=not progress or len(pairs) < 2000):
        img_rel = f"{p.split}/images/{p.id}{p.image.suffix.lower()}"
        (dest / img_rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p.image, dest / img_rel)
        mask_rel = ""
        if p.mask is not None:
            mask_rel = f"{p.split}/masks/{p.id}{p.mask.suffix.lower()}"
            (dest / mask_rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p.mask, dest / mask_rel)
        rows.append({
            "split": p.split, "id": p.id, "image": img_rel, "mask": mask_rel,
            "text": p.text or "", "has_text": int(p.text is not None),
            "source_image": p.image.relative_to(src_root).as_posix(),
            "source_mask": p.mask.relative_to(src_root).as_posix() if p.mask is not None else "",
        })
    with open(dest / "pairs.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=PAIRS_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return rows


def read_pairs(raw_dir: Path) -> list[dict]:
    f = raw_dir / "pairs.csv"
    if not f.is_file():
        raise MedrefError(f"{f}: not found; run `medref download <dataset>` first")
    with open(f, newline="", encoding="utf-8") as fh:
        rows = layouts.csv_reader(fh, f)  # texts up to layouts.MAX_TEXT_CHARS, as download wrote them
        header = next(rows, (0, []))[1]
        out = []
        for line, r in rows:
            if len(r) != len(header):
                raise MedrefError(f"{f}:{line}: {len(r)} fields where the header has {len(header)}; the file is "
                                  "damaged: re-run `medref download <dataset>`")
            out.append(dict(zip(header, r, strict=True)))
        return out


def _space_needed(kind_src: str, path: Path | None) -> int:
    """Bytes a download needs on the output's filesystem: the extracted archive (scratch) plus its normalised
    copy, or the copy of a source folder; 0 when not known beforehand (synthetic)."""
    if kind_src == "archive" and path is not None:
        return 2 * unpacked_size(path)
    if kind_src == "folder" and path is not None:
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return 0


def _output_errors(out_dir: Path, dataset: str, kind_src: str, path: Path | None):
    """A full disk, a read-only or unwritable folder, a file or dangling link in the way: one error naming
    ``out_dir`` (io.output_errors); on a full disk it says the space the download needs (extracted archive +
    normalised copy)."""
    return output_errors(out_dir, rerun=f"`medref download {dataset}`",
                         need_bytes=lambda: _space_needed(kind_src, path))


def run(params, dataset: str, out_dir: Path) -> Path:
    """Bring ``dataset`` (per params) into ``out_dir`` in the normalised layout; a no-op when up to date."""
    dp = params.dataset(dataset)
    kind_src, path, source_digest = resolve_source(dp, dataset)
    out_dir = Path(out_dir)
    if _up_to_date(out_dir, source_digest):
        _log(f"{out_dir} is up to date with {dp.source} (checksums match); nothing to do")
        return out_dir
    with _output_errors(out_dir, dataset, kind_src, path):
        if dp.kind == "volumes":
            return _run_volumes(dp, dataset, kind_src, path, source_digest, out_dir)
        pairs = _run_pairs(dp, dataset, kind_src, path, source_digest, out_dir)
    counts = {s: sum(p.split == s for p in pairs) for s in layouts.SPLITS}
    _log(f"{dataset}: {len(pairs)} pairs {counts} -> {out_dir}")
    return out_dir


def _run_pairs(dp, dataset: str, kind_src: str, path: Path | None, source_digest: str,
               out_dir: Path) -> list[layouts.Pair]:
    with scratch_beside(out_dir) as tmp:
        root = _source_root(dp, dataset, kind_src, path, tmp)
        pairs = layouts.read_layout(dp.kind, root)
        with atomic_dir(out_dir) as dest:
            normalise(pairs, root, dest)
            files = {p.relative_to(dest).as_posix(): sha256_file(p) for p in sorted(dest.rglob("*")) if p.is_file()}
            write_json(dest / "checksums.json", {
                "dataset": dataset, "kind": dp.kind, "source": dp.source, "source_digest": source_digest,
                "n_pairs": len(pairs), "files": files, "digest": sha256_json(files),
            })
    return pairs


VOLUME_DIRS = ("imagesTr", "labelsTr")


def _source_root(dp, dataset: str, kind_src: str, path: Path | None, tmp: Path) -> Path:
    """The folder to read the release from: generated into ``tmp`` (synthetic), extracted into ``tmp``
    (archive), or the source folder itself."""
    if kind_src == "synthetic":
        if dp.kind == "volumes":
            v = dp.volumes
            synthetic_volumes.generate_volumes(tmp / "generated", v.n_cases, v.shape, v.seed)
            return tmp / "generated"
        sp = dp.synthetic
        return synthetic.generate(tmp, dp.kind, n_train=sp.n_train, n_val=sp.n_val, n_test=sp.n_test,
                                  image_size=sp.image_size, seed=sp.seed, max_distractors=sp.max_distractors,
                                  size=sp.size)
    assert path is not None
    if kind_src == "archive":
        _log(f"extracting {path}")
        safe_extract(path, tmp, dp.archive, f"datasets.{dataset}.archive")
        return _single_root(tmp)
    return path


def _run_volumes(dp, dataset: str, kind_src: str, path: Path | None, source_digest: str, out_dir: Path) -> Path:
    """kind: volumes -> data/raw/<ds>/{imagesTr,labelsTr}/ + dataset.json (nnU-Net layout, files copied as they
    are; preprocess validates them) + checksums.json. Synthetic: pipeline_src/data/synthetic_volumes.py."""
    with scratch_beside(out_dir) as tmp:
        root = _source_root(dp, dataset, kind_src, path, tmp)
        missing = [n for n in (*VOLUME_DIRS, "dataset.json") if not (root / n).exists()]
        if missing:
            raise MedrefError(f"{root}: not a volumes dataset (nnU-Net layout): missing {', '.join(missing)} "
                              "(expected imagesTr/<case>.nii.gz, labelsTr/<case>.nii.gz and dataset.json)")
        with atomic_dir(out_dir) as dest:
            for sub in VOLUME_DIRS:
                (dest / sub).mkdir()
                for f in sorted((root / sub).iterdir()):
                    if f.is_file() and not f.name.startswith("."):
                        shutil.copyfile(f, dest / sub / f.name)
            shutil.copyfile(root / "dataset.json", dest / "dataset.json")
            files = {p.relative_to(dest).as_posix(): sha256_file(p) for p in sorted(dest.rglob("*")) if p.is_file()}
            n_cases = sum(1 for k in files if k.startswith("labelsTr/"))
            write_json(dest / "checksums.json", {
                "dataset": dataset, "kind": dp.kind, "source": dp.source, "source_digest": source_digest,
                "n_cases": n_cases, "files": files, "digest": sha256_json(files),
            })
    _log(f"{dataset}: {n_cases} volumes -> {out_dir}")
    return out_dir


if __name__ == "__main__":  # pragma: no cover - use `medref download`
    raise SystemExit("use: medref download <dataset>")
