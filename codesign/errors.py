"""The exceptions that mean 'bad input or environment' and become one-line CLI errors."""
from __future__ import annotations

import importlib

_USER_ERRORS = [
    ("codesign.frontend.loader", "ModelLoadError"),
    ("codesign.boards", "BoardError"),
    ("codesign.schedule.tiling", "ResourceError"),
    ("codesign.sim.cocotb_runner", "SimulatorMissing"),
    ("codesign.sim.csim", "CsimError"),
    ("codesign.sim.cosim", "CosimError"),
    ("codesign.report.compare", "CompareError"),
    ("codesign.fsutil", "OutputExists"),
    ("codesign.rtl.synth", "SynthError"),
]


def user_error_types() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [ValueError, FileNotFoundError]
    for module, name in _USER_ERRORS:
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)
