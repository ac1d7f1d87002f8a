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
import errno
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


# ---- the one output-failure rule ------------------------------------------------------------------------------
#
# Every write goes through atomic_file / atomic_dir / scratch_beside (and write_json / write_text on top). A write
# that fails because of the output's place, not its content, becomes one OutputError naming the path and the fix:
#   - a full disk or quota: ENOSPC / EDQUOT, and torch.save's own wrapping of it, a RuntimeError
#     "[enforce fail at inline_container.cc:...] unexpected pos ..." (its __context__ holds the OSError when it
#     wrote to a Python file; with a path it holds none, so the message is matched);
#   - a read-only filesystem (EROFS) and a folder the user may not write to (EACCES / EPERM);
#   - a dangling symlink on the way to the output, and a file where a folder is needed (NotADirectoryError,
#     FileExistsError from mkdir).
# Any other error is not an output failure and propagates unchanged. A stage passes ``rerun`` (its command) and
# ``need_bytes`` through ``output_errors`` so that the message says how much space and what to run again.

_FULL = (errno.ENOSPC, errno.EDQUOT)
_DENIED = (errno.EACCES, errno.EPERM)
_TORCH_WRITE = re.compile(r"inline_container\.cc.*(unexpected pos|failed writing)|PytorchStreamWriter failed writing",
                          re.S)


class OutputError(MedrefError):
    """A write refused by the output's place (full, read-only, not permitted, not a folder). ``path`` is the output
    it was writing, ``kind`` one of full / readonly / denied / blocked."""

    def __init__(self, message: str, path: Path, kind: str, cause: BaseException | None, *, rerun: str | None = None,
                 need_bytes=0):
        super().__init__(message)
        self.path, self.kind, self.cause, self.rerun, self.need_bytes = Path(path), kind, cause, rerun, need_bytes


def _chain(e: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _existing_ancestor(path: Path) -> Path:
    for a in (path, *path.parents):
        if a.exists():
            return a if a.is_dir() else a.parent
    return Path("/")


def _free_mib(where: Path) -> str:
    try:
        return f"{shutil.disk_usage(where).free / 2**20:.0f} MiB free"
    except OSError:
        return "free space unknown"


def _blocker(path: Path, *, itself: bool) -> tuple[str, Path] | None:
    """The first component of ``path`` (top down; ``path`` itself when ``itself``) that stops a folder being made
    there: ('dangling', link) or ('file', the file)."""
    for a in [*reversed(path.parents), *([path] if itself else [])]:
        if a.is_symlink() and not a.exists():
            return "dangling", a
        if a.exists() and not a.is_dir():
            return "file", a
    return None


def _blocked_message(path: Path, what: str, at: Path) -> str:
    if what == "dangling":
        return (f"{path}: {'it' if at == path else at} is a symlink to {os.readlink(at)}, which does not exist; "
                f"create the folder it points to or remove the link ({at}), then re-run")
    return (f"{path}: {at} is a file, not a folder, so nothing can be written {'there' if at == path else 'under it'}; "
            "remove or rename it, or choose another output path")


def output_failure(path: str | Path, e: BaseException, *, rerun: str | None = None, need_bytes=0) -> OutputError | None:
    """The OutputError for a write of ``path`` that failed with ``e``, or None when ``e`` is no output failure."""
    path = Path(path)
    again = f"re-run {rerun}" if rerun else "re-run the command"
    for x in _chain(e):
        if not isinstance(x, OSError):
            continue
        if x.errno in _FULL or "No space left" in str(x):
            return _full(path, x.strerror or str(x), x, again, rerun, need_bytes)
        if x.errno == errno.EROFS or x.errno in _DENIED:
            # the folder refused: the one the OS names when it is on the output's way, else the nearest that exists
            named = Path(x.filename) if isinstance(x.filename, str) else None
            folder = named if named in (path, *path.parents) else _existing_ancestor(path.parent)
            fix = ("the filesystem is read-only: remount it read-write or choose an output path on a writable "
                   "filesystem" if x.errno == errno.EROFS else
                   "make the folder writable or choose another output path")
            kind = "readonly" if x.errno == errno.EROFS else "denied"
            return OutputError(f"{folder}: cannot write an output here ({x.strerror}); {fix}, then {again}",
                               path, kind, x, rerun=rerun, need_bytes=need_bytes)
        if isinstance(x, (NotADirectoryError, FileExistsError)) and (b := _blocker(path, itself=True)):
            return OutputError(_blocked_message(path, *b), path, "blocked", x, rerun=rerun, need_bytes=need_bytes)
    if isinstance(e, RuntimeError) and _TORCH_WRITE.search(str(e)):
        short = " ".join(str(e).split())[:160]
        return _full(path, f"torch.save could not write all of it: {short}", e, again, rerun, need_bytes)
    return None


def _full(path: Path, reason: str, cause: BaseException, again: str, rerun, need_bytes) -> OutputError:
    where = _existing_ancestor(path.parent)
    need = need_bytes() if callable(need_bytes) else need_bytes
    space = f"about {need / 2**20:.0f} MiB" if need else "space"
    return OutputError(f"{path}: disk full while writing it ({reason}; {_free_mib(where)} on the filesystem of "
                       f"{where}); nothing partial was left at that path. Free {space} there (`df -h {where}`) "
                       f"and {again}", path, "full", cause, rerun=rerun, need_bytes=need_bytes)


@contextlib.contextmanager
def output_errors(path: str | Path, *, rerun: str | None = None, need_bytes=0) -> Iterator[None]:
    """Writes inside whose failure is an output failure of ``path`` (see above): one OutputError naming the path,
    ``rerun`` (the command to run again, e.g. "`medref train qata_10pct`") and ``need_bytes`` (an int or a
    callable, asked only on a full disk) in its fix. An OutputError raised further in keeps its more precise path
    and gains the stage's ``rerun`` and ``need_bytes``."""
    try:
        yield
    except OutputError as e:
        if e.rerun is not None or (rerun is None and not need_bytes) or e.cause is None:
            raise
        raise _again(e, e.path, rerun, need_bytes) from e.cause
    except (OSError, RuntimeError) as e:
        err = output_failure(path, e, rerun=rerun, need_bytes=need_bytes)
        if err is None:
            raise
        raise err from e


def _again(e: OutputError, path: Path, rerun, need_bytes) -> OutputError:
    if e.kind == "blocked":  # the message is about the path's components, not the write
        return e
    return output_failure(path, e.cause, rerun=rerun or e.rerun, need_bytes=need_bytes or e.need_bytes) or e


def _check_place(path: Path, *, folder: bool) -> None:
    """Refuse, before any write, an output under a dangling symlink or a file (and, for a folder output, a file or
    dangling symlink at the path itself)."""
    if b := _blocker(path, itself=folder):
        raise OutputError(_blocked_message(path, *b), path, "blocked", None)


def check_writable(path: str | Path, *, rerun: str | None = None) -> None:
    """Fail now, before hours of work, if the atomic writers could not write ``path`` (a file or folder output,
    made or not): a dangling symlink or a file on the way, a read-only filesystem, no permission. Creates and
    removes one empty temp file where the writers would put theirs (beside ``path``; inside it too when it is a
    folder, for what a run writes there); creates nothing else."""
    path = Path(path)
    if path.is_symlink() and path.is_dir():
        path = path.resolve()
    _check_place(path, folder=not path.is_file())
    places = [_existing_ancestor(path.parent), *([path] if path.is_dir() else [])]
    with output_errors(path, rerun=rerun):
        for where in places:
            fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=where)
            os.close(fd)
            os.unlink(tmp)


def _begin(path: Path, *, folder: bool = False) -> str:
    """Make ``path``'s folder, sweep its dead temp siblings, and return this writer's temp prefix."""
    _check_place(path, folder=folder)
    with output_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_temps(path)
    return _temp_prefix(path)


def _mkstemp(path: Path, suffix: str) -> tuple[int, str]:
    prefix = _begin(path)
    with output_errors(path):
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    os.fchmod(fd, 0o666 & ~umask())
    return fd, tmp


def _mkdtemp(path: Path, suffix: str, prefix: str | None = None) -> Path:
    prefix = prefix or _begin(path, folder=True)
    with output_errors(path):
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=path.parent))
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
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[Any]:
    """Open a temp file beside ``path``; on success fsync and rename it to ``path``.

    A failed write is one OutputError when the output's place is to blame (see the rule above). ``path`` a
    symlink is replaced by the file, not written through: DVC's symlink cache links outputs into its cache,
    which a write through the link would change."""
    path = Path(path)
    fd, tmp = _mkstemp(path, ".tmp")
    try:
        with output_errors(path):
            with os.fdopen(fd, mode) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            if path.is_dir() and not path.is_symlink():
                raise OutputError(f"{path}: is a folder, where a file is to be written; remove or rename it, or "
                                  "choose another output path", path, "blocked", None)
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`atomic_file`: the checkpoint and the exported model.pt are written this one way."""
    import torch  # imported here: the base layer loads no torch at import, and only train's writers call this

    with atomic_file(path, "wb") as f:
        torch.save(obj, f)


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
    previous ``path``, if any, is left untouched. A failure of the output's place is one OutputError naming
    ``path`` (a file written inside the temp folder is named by its final path). ``path`` a symlink to a folder
    is written into that folder (replaced beside its target, on its filesystem); the link stays. A dangling
    symlink or a file at ``path`` is refused.
    """
    path = Path(path)
    if path.is_symlink() and path.is_dir():
        path = path.resolve()
    tmp = _mkdtemp(path, ".tmp")
    try:
        with output_errors(path):
            try:
                yield tmp
            except OutputError as e:  # a file of the temp folder: name it by where it was going
                if e.kind == "blocked" or tmp not in (e.path, *e.path.parents):
                    raise
                raise _again(e, path / e.path.relative_to(tmp), None, 0) from e.cause
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
    if path.is_symlink() and path.is_dir():
        path = path.resolve()
    prefix = _begin(path, folder=True)
    with output_errors(path):  # TemporaryDirectory also removes read-only members an extracted archive may hold
        scratch = tempfile.TemporaryDirectory(prefix=prefix, suffix=".tmp", dir=path.parent)
    with scratch as tmp:
        Path(tmp).chmod(0o777 & ~umask())
        yield Path(tmp)
