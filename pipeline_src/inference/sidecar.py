"""The sealed sidecar of an exported model (``medref export``): where it lies, how it is sealed, how it is checked.

The sidecar says how to feed the exported file (image size, intensity rule, tokenizer) and how to decide
(threshold, min_component_size). It carries ``file_sha256`` (the exported file's digest) and ``sidecar_sha256``
(the digest of its own content, canonical JSON without this key), so a hand-edited sidecar or a replaced file is
refused, naming which. One owner for the writer (``export.py``), the checked loader (``exported.py``) and the ONNX
engine (``onnx_engine.py``), which all read it.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline_src.errors import MedrefError
from pipeline_src.utils.io import sha256_file, sha256_json

SUFFIXES = (".pt", ".onnx")


def sidecar_of(exported: str | Path) -> Path:
    return Path(f"{exported}.json")


def seal(meta: dict, file_sha256: str) -> dict:
    """``meta`` plus the exported file's digest and the digest of the whole sidecar."""
    body = {k: v for k, v in meta.items() if k != "sidecar_sha256"} | {"file_sha256": file_sha256}
    return body | {"sidecar_sha256": sha256_json(body)}


def read_sidecar(exported: str | Path) -> dict:
    """The sidecar of ``exported``, checked against its own digest and the exported file's; one MedrefError
    naming the file that does not match otherwise."""
    exported = Path(exported)
    side = sidecar_of(exported)
    again = f"export the model again (`medref export <regime> --format <fmt> --out {exported}`)"
    if not side.is_file():
        raise MedrefError(f"{side}: no sidecar beside {exported} (it says how to feed the file); {again}")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise MedrefError(f"{side}: not valid JSON ({e}); {again}") from None
    if not isinstance(meta, dict) or "file_sha256" not in meta or "sidecar_sha256" not in meta:
        raise MedrefError(f"{side}: carries no file_sha256 / sidecar_sha256 (written before exports were sealed, or "
                          f"not a medref export sidecar), so neither it nor {exported.name} can be checked; {again}")
    body = {k: v for k, v in meta.items() if k != "sidecar_sha256"}
    if sha256_json(body) != meta["sidecar_sha256"]:
        raise MedrefError(f"{side}: edited after export (its content no longer matches its sidecar_sha256); a changed "
                          f"image_size, intensity rule or threshold would give other masks than the model's; {again}")
    digest = sha256_file(exported)
    if digest != meta["file_sha256"]:
        raise MedrefError(f"{exported}: modified or replaced after export (sha256 {digest[:12]} != {side.name}'s "
                          f"file_sha256 {meta['file_sha256'][:12]}); {again}")
    return meta
