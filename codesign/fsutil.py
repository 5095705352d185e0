"""Output locations: checked before slow work, and folders that are either complete or absent.

A codesign project carries PROJECT_MARKER at its top; `--force` replaces nothing else, so a
mistyped `-o` can never delete the user's files.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

PROJECT_MARKER = ".codesign-project"
# Siblings atomic_dir makes beside NAME: .NAME.tmp-XXXXXXXX, .NAME.old-XXXXXXXX and .NAME.lock
# (mkdtemp's random part is 8 characters); a name must leave room for them.
SIBLING_EXTRA = len("..tmp-") + 8


class OutputError(OSError):
    """An output location that cannot be used (one-line message for the CLI)."""


class OutputExists(OutputError, FileExistsError):
    pass


# ---------------------------------------------------------------- checks before the work

def checked_output_path(path: str | Path, kind: str, atomic: bool = False) -> Path:
    """`path` as an absolute path, once it is known that a `kind` ("file" or "folder") can be
    written there: the names fit, the nearest existing ancestor is a writable folder, and an
    existing `path` is of that kind.  `atomic`: the name also leaves room for atomic_dir's siblings.
    Raises OutputError; checked before any slow work."""
    path = Path(os.path.abspath(path))
    # An atomic folder is written beside its final place, so its parent is what must be writable.
    base = _nearest_existing(path.parent if atomic else path)
    if not base.is_dir():
        if base == path:
            raise OutputError(f"{path} exists and is not a folder")
        raise OutputError(f"cannot create {brief_path(path)}: {brief_path(base)} is not a folder")
    _check_name_lengths(path, base, SIBLING_EXTRA if atomic else 0)
    if kind == "folder" and path.exists() and not path.is_dir():
        raise OutputError(f"{path} exists and is not a folder")
    if kind == "file" and path.is_dir():
        raise OutputError(f"{path} is a folder; give a file name")
    _probe_writable(base if atomic or not path.is_dir() else path)
    return path


def checked_project_target(out_dir: str | Path, force: bool = False, protect=()) -> Path:
    """checked_output_path and refuse_existing for a project folder, before any slow work."""
    out = checked_output_path(out_dir, "folder", atomic=True)
    refuse_existing(out, force, protect)
    return out


def _nearest_existing(path: Path) -> Path:
    while path != path.parent:
        try:
            if path.exists():
                return path
        except OSError:  # a name too long to look up: reported by _check_name_lengths
            pass
        path = path.parent
    return path


def _check_name_lengths(path: Path, base: Path, extra: int) -> None:
    """Every name still to be created fits; the last one with `extra` bytes to spare."""
    limit = os.pathconf(base, "PC_NAME_MAX")
    parts = path.relative_to(base).parts if path != base else (path.name,)
    for i, part in enumerate(parts):
        room = limit - (extra if i == len(parts) - 1 else 0)
        if len(os.fsencode(part)) > room:
            raise OutputError(f"name too long in {brief_path(path)}: {len(os.fsencode(part))} bytes, at most "
                              f"{room} here")


def _probe_writable(folder: Path) -> None:
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".codesign-probe-", dir=folder))
    except OSError as exc:
        raise OutputError(f"cannot write in {folder}: {exc.strerror or type(exc).__name__}") from None


def brief_path(path: Path, limit: int = 120) -> str:
    text = str(path)
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-limit // 2:]}"


def refuse_existing(out_dir: str | Path, force: bool = False, protect=()) -> None:
    """Raise OutputExists for an existing `out_dir` unless `force` and it is a codesign project
    (PROJECT_MARKER) that is neither the working folder nor an ancestor of it, nor holds one of
    the `protect` paths (the model, config and calibration files being read)."""
    out_dir = Path(out_dir).resolve()
    if not out_dir.exists():
        return
    if not is_project(out_dir):
        raise OutputExists(f"{out_dir} exists and is not a codesign project (no {PROJECT_MARKER}): --force "
                           f"replaces only codesign projects; choose another -o or remove it yourself")
    if not force:
        raise OutputExists(f"{out_dir} exists; pass --force to replace it")
    cwd = Path.cwd().resolve()
    if out_dir == cwd or out_dir in cwd.parents:
        raise OutputExists(f"refusing to replace {out_dir}: it is the working folder or one of its parents")
    for path in protect:
        inner = Path(path).resolve()
        if inner == out_dir or out_dir in inner.parents:
            raise OutputExists(f"refusing to replace {out_dir}: it holds {inner}, an input of this run")


def is_project(folder: Path) -> bool:
    return folder.is_dir() and (folder / PROJECT_MARKER).is_file()


def mark_project(folder: Path) -> None:
    (folder / PROJECT_MARKER).write_text(json.dumps({"codesign_project": 1}) + "\n")


# ---------------------------------------------------------------- atomic folders

def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(out_dir: Path, force: bool = False, project: bool = False, protect=()):
    """Yield a temporary sibling of `out_dir`; on success rename it into place.

    An existing `out_dir` is refused unless `force`; then it is replaced only once the new one
    is complete, so an interrupted run never leaves a half-written folder behind.  `project`:
    the folder is a codesign project (refuse_existing's rules; PROJECT_MARKER is written last).
    One writer at a time: a second one fails at once with OutputExists instead of racing.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out_dir):
        _remove_stale_siblings(out_dir)
        if project:
            refuse_existing(out_dir, force, protect)
        elif out_dir.exists() and not force:
            raise OutputExists(f"{out_dir} exists; pass --force to replace it")
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
        try:
            # mkdtemp makes the folder private (0700); a project is an ordinary folder, as mkdir makes it
            tmp.chmod(0o777 & ~_current_umask())
            yield tmp
            if project:
                mark_project(tmp)  # last, so a killed run's temporary folder is never a project
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _swap_into_place(tmp, out_dir)


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        out_dir.rename(old / "dir")
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _locked(out_dir: Path):
    """An exclusive fcntl lock on .NAME.lock beside `out_dir`, removed afterwards."""
    lock_path = out_dir.parent / f".{out_dir.name}.lock"
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise OutputExists(f"another codesign run is writing {out_dir} (lock {lock_path.name}); "
                                   f"wait for it or choose another -o") from None
            raise
        # The holder before us may have removed the file after we opened it: then lock the new one.
        if _same_file(fd, lock_path):
            break
        os.close(fd)
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (own.st_dev, own.st_ino) == (st.st_dev, st.st_ino)


def _remove_stale_siblings(out_dir: Path) -> None:
    """Temporary folders a killed run left beside `out_dir`: stale, since their writer held the
    lock that the caller holds now."""
    pattern = re.compile(rf"^\.{re.escape(out_dir.name)}\.(tmp|old)-[A-Za-z0-9_]{{8}}$")
    for entry in out_dir.parent.iterdir():
        if pattern.match(entry.name) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a file whole or not at all: a temporary sibling renamed over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
