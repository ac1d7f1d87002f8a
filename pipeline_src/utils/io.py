"""Atomic outputs and content hashes.

Every stage writes to a temporary sibling and renames it into place, so a killed
process never leaves a half-written file or directory at a final path. A temp sibling's
name carries the writer's host and pid (``.<name>.<host>-<pid>.<random>.tmp``); the next
writer of the same path removes the siblings whose process on this host is gone, so a
``kill -9`` leaves no litter behind a re-run.

mkstemp/mkdtemp create their temps 0600/0700 and a rename keeps the mode, so every writer here
sets the mode an ordinary ``open``/``mkdir`` would give (0666/0777 less the umask): outputs on a
shared filesystem stay readable by the group and others under the usual umask 022. A folder the
user cannot write to is one ``MedrefError`` naming it. JSON is strict: a NaN or infinity is
refused (it is not JSON, and strict parsers reject the file); write ``null`` for a missing value.

    python -m pytest tests/test_io.py tests/test_bad_input_cli.py
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline_src.errors import MedrefError

CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    """Digest of a JSON-able object in canonical form (sorted keys, no whitespace)."""
    return sha256_bytes(canonical_json(obj).encode())


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def sha256_tree(root: str | Path) -> str:
    """Digest of a directory: relative paths and file digests, in sorted order."""
    root = Path(root)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + sha256_file(p).encode() + b"\n")
    return h.hexdigest()


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{socket.gethostname()}-{os.getpid()}."


def umask() -> int:
    """The process umask. Read from /proc where it exists: setting and restoring it with os.umask
    would change it for a moment under threads that create files at the same time."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    old = os.umask(0o022)
    os.umask(old)
    return old


def _unwritable(folder: Path, e: OSError) -> MedrefError:
    return MedrefError(f"{folder}: cannot write an output here ({e.strerror}); make the folder writable "
                       "or choose another output path")


def _begin(path: Path) -> str:
    """Make ``path``'s folder, sweep its dead temp siblings, and return this writer's temp prefix."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_temps(path)
    except PermissionError as e:
        raise _unwritable(Path(e.filename or path.parent), e) from e
    return _temp_prefix(path)


def _mkstemp(path: Path, suffix: str) -> tuple[int, str]:
    prefix = _begin(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    except PermissionError as e:
        raise _unwritable(path.parent, e) from e
    os.fchmod(fd, 0o666 & ~umask())
    return fd, tmp


def _mkdtemp(path: Path, suffix: str, prefix: str | None = None) -> Path:
    prefix = prefix or _begin(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=path.parent))
    except PermissionError as e:
        raise _unwritable(path.parent, e) from e
    tmp.chmod(0o777 & ~umask())
    return tmp


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def sweep_stale_temps(path: str | Path) -> list[Path]:
    """Remove temp siblings of ``path`` left by a writer on this host that no longer runs.

    Siblings from another host (a shared filesystem under SLURM) or from a live process
    are left alone; so are names this module did not make.
    """
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?P<host>.+)-(?P<pid>\d+)\.[a-z0-9_]+\.(tmp|old)")
    host = socket.gethostname()
    removed = []
    if not path.parent.is_dir():
        return removed
    for sib in path.parent.iterdir():
        m = pattern.fullmatch(sib.name)
        if not m or m["host"] != host or _pid_alive(int(m["pid"])):
            continue
        if sib.is_dir() and not sib.is_symlink():
            shutil.rmtree(sib)
        else:
            sib.unlink()
        print(f"[medref] removed {sib} (left by process {m['pid']}, which is gone)", file=sys.stderr)
        removed.append(sib)
    return removed


@contextlib.contextmanager
def disk_full_is_error(message) -> Iterator[None]:
    """ENOSPC/EDQUOT raised inside -> one MedrefError whose text is ``message(error)`` (the stage names the path, the
    space it needs and how to re-run). The atomic writers inside have already removed their partial temp output."""
    import errno

    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT) and "No space left" not in str(e):
            raise
        raise MedrefError(message(e)) from e


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[Any]:
    """Open a temp file beside ``path``; on success fsync and rename it to ``path``."""
    path = Path(path)
    fd, tmp = _mkstemp(path, ".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    try:
        text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)
    except ValueError as e:  # json's "Out of range float values are not JSON compliant"
        raise MedrefError(f"{path}: refusing to write a NaN or infinite number ({e}); "
                          "a missing value must be written as null") from e
    write_text(path, text + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_file(path, "w") as f:
        f.write(text)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temp directory beside ``path``; on success it replaces ``path``.

    On any exception (KeyboardInterrupt included) the temp directory is removed and the
    previous ``path``, if any, is left untouched.
    """
    path = Path(path)
    tmp = _mkdtemp(path, ".tmp")
    try:
        yield tmp
        if path.exists():
            old = _mkdtemp(path, ".old", prefix=_temp_prefix(path))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def scratch_beside(path: str | Path) -> Iterator[Path]:
    """A temporary working directory beside ``path`` (same filesystem, so renames are cheap),
    removed on exit; one left by a killed process is swept like any other temp sibling."""
    path = Path(path)
    prefix = _begin(path)
    try:  # TemporaryDirectory also removes read-only members an extracted archive may hold
        scratch = tempfile.TemporaryDirectory(prefix=prefix, suffix=".tmp", dir=path.parent)
    except PermissionError as e:
        raise _unwritable(path.parent, e) from e
    with scratch as tmp:
        Path(tmp).chmod(0o777 & ~umask())
        yield Path(tmp)
