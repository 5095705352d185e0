"""Output directories that are either complete or absent."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


class OutputExists(FileExistsError):
    pass


def refuse_existing(out_dir: str | Path, force: bool = False) -> None:
    """Raise OutputExists for an existing `out_dir` unless `force` (checked before any slow work)."""
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not force:
        raise OutputExists(f"{out_dir} exists; pass --force to replace it")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(out_dir: Path, force: bool = False):
    """Yield a temporary sibling of `out_dir`; on success rename it into place.

    An existing `out_dir` is refused unless `force`; then it is replaced only once the new one
    is complete, so an interrupted run never leaves a half-written project behind.
    """
    out_dir = Path(out_dir).resolve()
    refuse_existing(out_dir, force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        # mkdtemp makes the folder private (0700); a project is an ordinary folder, as mkdir makes it
        tmp.chmod(0o777 & ~_current_umask())
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        out_dir.rename(old / "dir")
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
