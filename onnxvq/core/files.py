"""Writing files so that a failure or a kill never leaves a half-written one: the one atomic writer.

Data goes to a unique temporary name in the target folder (`.<name>.<pid>.<random>.tmp`, from
`tempfile.mkstemp`, so concurrent runs never share one), then `os.replace` moves it over the
target. `remove_stale_temps` deletes the temporaries that a killed run left behind: those whose
process is gone (or, without a process id in the name, older than an hour).
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from onnxvq.core.errors import UsageError

STALE_AFTER_S = 3600.0  # a temp file older than this belongs to no running process


@contextmanager
def temp_beside(path: str | os.PathLike) -> Iterator[Path]:
    """A unique temporary path in `path`'s folder, removed on failure (the caller replaces it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
    finally:  # after a successful os.replace there is nothing left to remove
        Path(tmp).unlink(missing_ok=True)


@contextmanager
def temp_dir_beside(path: str | os.PathLike) -> Iterator[Path]:
    """A unique temporary folder in `path`'s folder (same file system, so its files can be
    `os.replace`d into place), removed with what is left in it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_atomic(path: str | os.PathLike, data: bytes | str, *, what: str = "file") -> Path:
    """Write `data` to `path` atomically, with the normal permissions of a new file."""
    path = Path(path)
    try:
        with temp_beside(path) as tmp:
            if isinstance(data, str):
                tmp.write_text(data, encoding="utf-8")
            else:
                tmp.write_bytes(data)
            os.chmod(tmp, 0o666 & ~umask())
            os.replace(tmp, path)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write the {what} ({exc.strerror or exc})") from exc
    return path


def same_file(a: Path, b: Path) -> bool:
    """`a` and `b` name one file (any spelling, symlinks followed, hard links too)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_writable(out: Path, flag: str = "-o") -> None:
    """UsageError unless `out`'s folder (or its nearest existing ancestor) is a folder this
    process can create files in; checked before the work that would write `out`."""
    existing = out.parent if str(out.parent) else Path(".")
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} {out}: {existing} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise UsageError(f"{flag} {out}: cannot write in {existing} "
                         f"({exc.strerror or exc})") from None


def check_side_file(path: str | os.PathLike, flag: str, reads: tuple = ()) -> Path:
    """A file a command writes beside its real work (saved inputs/outputs, a report): not a
    folder, writable, and none of the models it `reads` nor their `.json` sidecars (a
    `compare --save-inputs vit.onnx` used to overwrite the FP32 model with JSON)."""
    out = Path(path)
    if out.is_dir():
        raise UsageError(f"{flag} {out}: is a directory; give a file name")
    for model in reads:
        if not isinstance(model, str | os.PathLike):
            continue  # an in-memory model has no file to protect
        for kept in (Path(model), Path(model).with_suffix(".json")):
            if same_file(out, kept):
                raise UsageError(f"{flag} {out}: is {kept}, which this command reads; choose "
                                 "another name")
    check_writable(out, flag)
    return out


def stale_temps(path: str | os.PathLike, *, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Temporaries of `path` (`.<name>.*.tmp` beside it) whose writer is no longer running."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    found = []
    for p in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = _pid_of(p.name[len(path.name) + 2:])
        try:
            dead = (not _alive(pid)) if pid is not None else (
                time.time() - p.stat().st_mtime > older_than_s)
        except OSError:
            continue
        if dead:
            found.append(p)
    return found


def remove_stale_temps(path: str | os.PathLike, *, older_than_s: float = STALE_AFTER_S) -> int:
    """Delete `stale_temps(path)`; returns how many were removed."""
    removed = 0
    for p in stale_temps(path, older_than_s=older_than_s):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed += 1
    return removed


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _pid_of(rest: str) -> int | None:
    head = rest.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
