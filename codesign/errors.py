"""The exceptions that mean 'bad input or environment' and become one-line CLI errors."""
from __future__ import annotations

import importlib
import reprlib

_USER_ERRORS = [
    ("codesign.frontend.loader", "ModelLoadError"),
    ("codesign.boards", "BoardError"),
    ("codesign.schedule.tiling", "ResourceError"),
    ("codesign.sim.cocotb_runner", "SimulatorMissing"),
    ("codesign.sim.csim", "CsimError"),
    ("codesign.sim.cosim", "CosimError"),
    ("codesign.report.compare", "CompareError"),
    ("codesign.fsutil", "OutputError"),
    ("codesign.rtl.synth", "SynthError"),
]
# A one-line error is read by a person: longer ones are cut (their source should never get there).
MAX_MESSAGE = 1000

_brief = reprlib.Repr()
_brief.maxstring = _brief.maxother = 60
_brief.maxlist = _brief.maxtuple = _brief.maxdict = _brief.maxset = 8
_brief.maxlevel = 3


def user_error_types() -> tuple[type[BaseException], ...]:
    # Any OSError (unwritable folder, disk full, a name too long) is the environment's, not a bug's.
    found: list[type[BaseException]] = [ValueError, OSError]
    for module, name in _USER_ERRORS:
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def brief(value) -> str:
    """repr(value) of bounded length, for messages that quote user data (a YAML field can be huge)."""
    return _cut(_brief.repr(value), 200)


def brief_list(names: list, shown: int = 5) -> str:
    """`names` joined by commas, each name and the number shown bounded: "a, b, c, ... (7 more)"."""
    cut = [_cut(n if isinstance(n, str) else brief(n), 60) for n in names[:shown]]
    more = len(names) - shown
    return ", ".join(cut) + (f", ... ({more} more)" if more > 0 else "")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def one_line(exc: BaseException) -> str:
    """The CLI's message for a user error: its first line, at most MAX_MESSAGE characters."""
    if isinstance(exc, OSError) and exc.strerror and not type(exc).__module__.startswith("codesign"):
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return _cut(text, MAX_MESSAGE)
