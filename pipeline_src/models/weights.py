"""Pretrained weights are inputs: where the files behind ``train.model.*_weights`` are, and their digests.

``weight_paths(model)`` resolves the param strings (files, folders, ``hf:`` / ``hf-hub:`` cache snapshots) to the
local paths train reads; ``digest(path)`` hashes one (a folder: its files' relative paths and contents in sorted
order, symlinks followed, so a hub-cache snapshot hashes its blobs). Train records both in
``models/<regime>/provenance.json`` (``weights``); ``medref verify`` re-hashes them and names a changed file.

    .venv/bin/python -m pytest -q tests/test_weights_inputs.py
"""

from __future__ import annotations

from pathlib import Path

from pipeline_src.errors import MedrefError
from pipeline_src.utils.io import sha256_file, sha256_tree


def weight_paths(model) -> dict[str, Path]:
    """Role (``image_weights`` / ``text_weights``) -> the local file or folder train will read for ``model`` (a
    ``train.model`` block). Text weights count only for an architecture with a text tower."""
    # imported here: torch's and timm's import cost (encoders, text_hf import them; this module's top does not)
    from pipeline_src.models.encoders import image_weights_path
    from pipeline_src.models.text_hf import hf_folder, is_hf

    out: dict[str, Path] = {}
    if model.image_weights:
        out["image_weights"] = image_weights_path(model.image_weights)
    tw = model.text_weights
    if tw and model.arch == "textguided":
        if is_hf(tw):
            out["text_weights"] = hf_folder(tw)
        elif tw.startswith("local-dir:"):
            from pipeline_src.models.text import local_dir  # imported here: torch's import cost, as above

            out["text_weights"] = Path(local_dir(tw).removeprefix("local-dir:"))
        else:
            path = Path(tw)
            if not path.is_file():
                raise MedrefError(f"train.model.text_weights: file {path} not found (local weights only; nothing is "
                                  "downloaded)")
            out["text_weights"] = path
    return out


def digest(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative paths + contents) in sorted order."""
    path = Path(path)
    if path.is_dir():
        return sha256_tree(path)
    if path.is_file():
        return sha256_file(path)
    raise MedrefError(f"{path}: weights file or folder not found")


def record(model) -> dict[str, dict[str, str]]:
    """What provenance.json keeps: role -> {path, sha256}."""
    return {role: {"path": str(p), "sha256": digest(p)} for role, p in sorted(weight_paths(model).items())}


def changed(recorded: dict[str, dict[str, str]] | None, root: Path = Path(".")) -> list[str]:
    """One line per recorded weights file or folder that is gone or whose digest differs now (relative paths are
    taken from ``root``, the repository train ran in)."""
    out = []
    for role, entry in sorted((recorded or {}).items()):
        path = Path(root) / entry["path"]
        if not path.exists():
            out.append(f"{role} {path} no longer exists")
        elif (now := digest(path)) != entry["sha256"]:
            out.append(f"{role} {path} changed (sha256 {now[:12]} != {entry['sha256'][:12]} recorded)")
    return out
