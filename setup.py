"""Build step that copies the folders codesign reads at run time (codesign/resources.py
RESOURCE_DIRS: board files, templates, the cocotb testbench, the embedded model) from the
repository's top into the wheel's codesign/_data/. Everything else is in pyproject.toml."""
import importlib.util
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# The list is codesign/resources.py's (read from the file: the package's dependencies are not
# installed at build time).
_spec = importlib.util.spec_from_file_location("codesign_resources", HERE / "codesign" / "resources.py")
_resources = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_resources)
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "sim_build*", "results.xml")


class build_py_with_resources(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads the source tree
            return
        for name in _resources.RESOURCE_DIRS:
            target = Path(self.build_lib) / "codesign" / "_data" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(HERE / name, target, ignore=SKIP)


setup(cmdclass={"build_py": build_py_with_resources})
