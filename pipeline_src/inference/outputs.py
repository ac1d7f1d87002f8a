"""Where ``medref predict`` and ``medref export`` may write: never inside a DVC-tracked output.

    python -m pytest tests/test_bad_input_outputs.py -k dvc

A file written into ``models/<run>/`` (train's DVC output) changes that output behind DVC's back: ``dvc status``
reports the stage as modified, ``dvc checkout`` or the next ``dvc repro`` deletes the file, and a ``dvc push``
uploads it as part of the model. Predict and export are not stages, so their outputs belong outside every stage
output. The outputs are read from the ``dvc.yaml`` of the repository holding the path (a ``foreach`` template
such as ``models/${key}`` matches any one folder name) and from ``<path>.dvc`` files (``dvc add``); a template
match counts when that output exists or ``dvc.lock`` records it, so ``models/<new name>/`` is not refused before
any stage made it.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline_src import paths
from pipeline_src.errors import MedrefError

_TEMPLATE = re.compile(r"\\\$\\\{[^}]*\\\}")  # ${key} / ${item.dataset} after re.escape


def _declared(doc: dict) -> list[tuple[str, str]]:
    """(stage, output path as written) for every out / metric / plot file of dvc.yaml's stages."""
    found = []
    for name, stage in (doc.get("stages") or {}).items():
        body = stage.get("do", stage) if isinstance(stage, dict) else {}
        for key in ("outs", "metrics", "plots"):
            for o in body.get(key) or []:
                out = next(iter(o)) if isinstance(o, dict) else o
                if isinstance(out, str):
                    found.append((name, out))
    return found


def _locked(root: Path) -> set[str]:
    import yaml

    lock = root / "dvc.lock"
    try:
        doc = yaml.safe_load(lock.read_text()) if lock.is_file() else None
    except (OSError, yaml.YAMLError):
        return set()
    out = set()
    for stage in ((doc or {}).get("stages") or {}).values():
        for o in (stage or {}).get("outs") or []:
            if isinstance(o, dict) and isinstance(o.get("path"), str):
                out.add(o["path"].rstrip("/"))
    return out


def dvc_output_holding(path: str | Path) -> str | None:
    """Which DVC output ``path`` is or lies inside, in words; None when it is in none."""
    import yaml

    target = Path(path).resolve()
    root = paths.repo_root(target.parent if not target.is_dir() else target)
    if root is None:
        return None
    root = root.resolve()
    try:
        rel = target.relative_to(root)
    except ValueError:
        return None
    levels = [rel, *rel.parents][:-1]  # the path and each folder above it, below the root
    for a in levels:
        if (root / f"{a}.dvc").is_file():
            return f"{root / a}, which {a}.dvc tracks"
    try:
        doc = yaml.safe_load((root / paths.PIPELINE_FILE).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    locked = None
    for stage, out in _declared(doc):
        pattern = re.compile(_TEMPLATE.sub("[^/]+", re.escape(out.rstrip("/"))))
        for a in levels:
            if not pattern.fullmatch(a.as_posix()):
                continue
            if locked is None:
                locked = _locked(root)
            if (root / a).exists() or a.as_posix() in locked:
                return f"{root / a}, an output of stage `{stage}` in {root / paths.PIPELINE_FILE}"
    return None


def refuse_dvc_output(out: str | Path, flag: str = "--out") -> None:
    """One MedrefError when ``out`` is, or is inside, a DVC-tracked output."""
    held = dvc_output_holding(out)
    if held:
        raise MedrefError(f"{flag} {out}: inside {held}; DVC owns that folder (`dvc checkout` or the next "
                          "`dvc repro` would delete what is written there, and `dvc status` would report the stage "
                          "as modified): choose a path outside every DVC output, e.g. predictions/ or exports/")
