"""Where the files codesign reads at run time live: board files, HLS and RTL templates, the
cocotb testbench and the embedded model.

In the source tree (and an editable install) they are folders at the repository's top; a
wheel (`pip install .`) carries copies inside the package, in codesign/_data/ (setup.py's
build step puts them there), so an installed codesign needs no checkout.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE_DATA = Path(__file__).resolve().parent / "_data"
SOURCE_ROOT = Path(__file__).resolve().parents[1]
# Folders of the source tree that the package reads, as setup.py copies them into codesign/_data.
RESOURCE_DIRS = ("boards", "hls_templates", "rtl_templates", "sim", "examples/tiny_m3vit")


def resource_dir(name: str) -> Path:
    """The folder `name` (one of RESOURCE_DIRS): the installed copy if there is one, else the source tree's."""
    if name not in RESOURCE_DIRS:
        raise KeyError(f"unknown resource folder {name!r}; known: {', '.join(RESOURCE_DIRS)}")
    installed = PACKAGE_DATA / name
    return installed if installed.is_dir() else SOURCE_ROOT / name
