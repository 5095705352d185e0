"""The explore folder: a resumable results file, and report files that are complete or absent.

results.jsonl gets one line per finished job (its precision record and its new hardware points,
each keyed by its hash), written with one O_APPEND write and fsync'd, so a killed run loses at
most the jobs still running. A line cut short by the kill is dropped when the file is reopened.
The folder carries codesign's PROJECT_MARKER (of kind "explore"): only such a folder is resumed,
and only a folder codesign wrote is ever replaced (--force).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..fsutil import (PROJECT_MARKER, OutputExists, atomic_dir, checked_output_path, is_project,
                      refuse_existing)

RESULTS_FILE = "results.jsonl"
EXPLORE_MARKER = {"codesign_project": 1, "kind": "explore"}


def is_explore_folder(folder: Path) -> bool:
    if not is_project(folder):
        return False
    try:
        return json.loads((folder / PROJECT_MARKER).read_text()).get("kind") == "explore"
    except (OSError, ValueError, AttributeError):
        return False


def check_folder(out_dir: str | Path, force: bool = False, protect=()) -> Path:
    """prepare_folder's refusals, without creating anything (before the slow work)."""
    out = checked_output_path(out_dir, "folder", atomic=True)
    if out.exists() and is_explore_folder(out):
        if force:
            refuse_existing(out, force, protect)
        return out
    if out.exists() and not is_project(out):
        raise OutputExists(f"{out} exists and is not a codesign folder (no {PROJECT_MARKER}): choose another "
                           f"-o or remove it yourself")
    if out.exists() and not force:
        raise OutputExists(f"{out} is a codesign project, not an explore folder; pass --force to replace it")
    refuse_existing(out, force, protect)
    return out


def prepare_folder(out_dir: str | Path, force: bool = False, protect=()) -> tuple[Path, bool]:
    """(the explore folder, whether it holds results to resume). A missing folder is created
    (atomically, with its marker); an explore folder is resumed, or emptied with `force`; any other
    existing folder is refused unless `force` and it is a codesign project (fsutil's rules)."""
    out = check_folder(out_dir, force, protect)
    if out.exists() and is_explore_folder(out) and not force:
        return out, (out / RESULTS_FILE).is_file()
    with atomic_dir(out, force=True) as tmp:
        (tmp / PROJECT_MARKER).write_text(json.dumps(EXPLORE_MARKER) + "\n")
        (tmp / RESULTS_FILE).touch()
    return out, False


class ResultsFile:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.precisions: dict[str, dict] = {}
        self.points: dict[str, dict] = {}
        self.path.touch(exist_ok=True)
        self._drop_torn_tail()
        for line in self.path.read_text().splitlines():
            try:
                self._add(json.loads(line))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a line no run of this format wrote: ignored, not fatal

    def _drop_torn_tail(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def _add(self, batch: dict) -> None:
        if batch.get("precision"):
            self.precisions[batch["precision"]["key"]] = batch["precision"]
        for p in batch.get("points", []):
            self.points[p["key"]] = p

    def append(self, batch: dict) -> None:
        line = (json.dumps({"precision": batch["precision"], "points": batch["points"]}) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._add(batch)


def write_atomic(path: Path, data: str | bytes) -> None:
    """`path` holds either its old content or all of `data`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class RunLock:
    """One explore run per folder at a time: a second one fails at once instead of interleaving."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / ".explore.lock"
        self.fd = None

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise OutputExists(f"another codesign explore is writing {self.path.parent}; wait for it or choose "
                               f"another -o") from None
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # releases the lock; the file stays (removing it would race a waiting run)
