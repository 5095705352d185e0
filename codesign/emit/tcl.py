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
from codesign.resources import resource_dir

TEMPLATE_DIR = resource_dir("hls_templates")
TOP_FUNCTION = "codesign_top"
# s_axi_control offsets of the extra weight pointers wgt1, wgt2, ... (Vitis HLS layout: each 64-bit
# pointer takes a low word, a high word and a reserved word; wgt1 follows task at 0x34 and its
# reserved word).
WGT_REG_BASE = 0x3C
WGT_REG_STRIDE = 0xC


def weight_pointer_registers(weight_ports: int) -> list[int]:
    """Control-register offsets of wgt1 .. wgt{W-1} (wgt itself is at 0x1c)."""
    return [WGT_REG_BASE + WGT_REG_STRIDE * (p - 1) for p in range(1, weight_ports)]

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
    context = {"board": board, "project_name": project_name, "top": TOP_FUNCTION, "links": memory_links(board),
               "wgt_regs": weight_pointer_registers(board.memory.weight_ports)}
    written = []
    for template_name, relative_path in _OUTPUTS.items():
        target = Path(out_dir) / relative_path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(env.get_template(template_name).render(context))
        written.append(target)
    return written


def memory_links(board: Board) -> list[dict[str, str]]:
    """The kernel's m_axi masters and the PS slave port each one gets, with the PS configuration
    keys that enable the port and set its width. With one weight port everything is on gmem and
    gmem takes HP0; otherwise gmem takes HPC0 (Zynq UltraScale+) or HP0 (Zynq-7000, no HPC port)
    and weight master p the next free HP port."""
    ports = board.memory.weight_ports
    masters = ["gmem"] + ([f"wgt{p}" for p in range(ports)] if ports > 1 else [])
    if board.family == "zynquplus":
        # PS names: S_AXI_HPC0_FPD is SAXIGP0, S_AXI_HP<n>_FPD is SAXIGP<n+2>.
        slots = [("S_AXI_HP0_FPD", 2)] if ports == 1 else [("S_AXI_HPC0_FPD", 0)] + [
            (f"S_AXI_HP{p}_FPD", p + 2) for p in range(ports)]
        return [{"master": m, "slave": slave, "use": f"PSU__USE__S_AXI_GP{gp}", "width": f"PSU__SAXIGP{gp}__DATA_WIDTH"}
                for m, (slave, gp) in zip(masters, slots)]
    return [{"master": m, "slave": f"S_AXI_HP{n}", "use": f"PCW_USE_S_AXI_HP{n}", "width": f"PCW_S_AXI_HP{n}_DATA_WIDTH"}
            for n, m in enumerate(masters)]


def _template_environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,  # a typo in a template must fail, not render empty
        keep_trailing_newline=True,
        trim_blocks=True,  # {% if %} lines leave no blank line behind
        lstrip_blocks=True,
        autoescape=False,  # Tcl and Python, not HTML
    )
