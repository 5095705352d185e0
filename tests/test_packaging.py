"""A normal (non-editable) `pip install .` carries everything codesign reads at run time: the
embedded model, board files, HLS/RTL templates and the cocotb testbench (codesign/resources.py)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from codesign.resources import RESOURCE_DIRS

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["codesign", "setup.py", "pyproject.toml", "README.md", "MANIFEST.in", *RESOURCE_DIRS]

CHECK = """
import json, codesign
from codesign.boards import BOARDS_DIR, load_board
from codesign.emit.tcl import TEMPLATE_DIR
from codesign.model.zoo import default_model_dir, load_default_model
from codesign.rtl.render import TEMPLATE_DIR as RTL_DIR
from codesign.sim.cocotb_runner import SIM_DIR
model = load_default_model()
print(json.dumps({"package": codesign.__file__, "dirs": [str(p) for p in (default_model_dir(), BOARDS_DIR,
      TEMPLATE_DIR, RTL_DIR, SIM_DIR)], "board": load_board("zcu104").name, "depth": model.cfg.depth}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the source tree (the build leaves build/ behind)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = ROOT / name
        target = src / name
        if path.is_dir():
            shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "_data"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True, timeout=300)
    return next(out.glob("codesign-*.whl"))


def test_the_wheel_holds_every_file_of_the_resource_folders(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in RESOURCE_DIRS:
        files = [p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts]
        assert files, folder
        assert {f"codesign/_data/{f}" for f in files} <= names, folder
    assert "codesign/_data/examples/tiny_m3vit/model.pt" in names


def test_an_installed_wheel_finds_its_model_boards_and_templates_outside_the_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = dict(os.environ, PYTHONPATH=str(target))
    run = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert found["package"].startswith(str(target))
    assert all(d.startswith(str(target / "codesign" / "_data")) for d in found["dirs"]), found["dirs"]
    assert found["board"] == "zcu104" and found["depth"] == 4
