"""Render the board-specific build scripts and the PYNQ host driver.

Outputs, relative to the generated project directory:
  run_hls.tcl               Vitis HLS: csim / csynth / cosim / IP export
  vivado/block_design.tcl   Vivado: PS + accelerator block design, bitstream, .hwh
  host/driver.py            PYNQ driver that runs on the board
"""
from __future__ import annotations

import re
from pathlib import Path

import jinja2

from codesign.boards import Board

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "hls_templates"
TOP_FUNCTION = "codesign_top"

# template name -> output path inside out_dir
_OUTPUTS = {
    "run_hls.tcl.j2": Path("run_hls.tcl"),
    "block_design.tcl.j2": Path("vivado") / "block_design.tcl",
    "driver.py.j2": Path("host") / "driver.py",
}

# The name is pasted unquoted into Tcl commands and file paths, so keep it to an identifier.
_PROJECT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def render_tcl_and_driver(out_dir: Path, board: Board, project_name: str) -> list[Path]:
    """Render the three templates into out_dir; return the written paths."""
    if not _PROJECT_NAME.fullmatch(project_name):
        raise ValueError(f"project name must be a C/Tcl identifier ([A-Za-z_][A-Za-z0-9_]*), got {project_name!r}")
    env = _template_environment()
    context = {"board": board, "project_name": project_name, "top": TOP_FUNCTION}
    written = []
    for template_name, relative_path in _OUTPUTS.items():
        target = Path(out_dir) / relative_path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(env.get_template(template_name).render(context))
        written.append(target)
    return written


def _template_environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,  # a typo in a template must fail, not render empty
        keep_trailing_newline=True,
        trim_blocks=True,  # {% if %} lines leave no blank line behind
        lstrip_blocks=True,
        autoescape=False,  # Tcl and Python, not HTML
    )
