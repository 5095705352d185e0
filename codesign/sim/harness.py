"""The co-simulation harness `tb_top`: the DUT `codesign_top` plus the memory model, in Verilog.

`render_harness` reads the DUT's top-level ports (our rendered RTL or a Vitis HLS export: ANSI or
old-style port lists, widths from parameters), puts one `tb_axi_mem_port` (sim/tb_axi_mem_port.v)
on every `m_axi_<bundle>` master and renders sim/tb_top.v.j2 into the build directory, with
`tb_top.json` telling the cocotb testbench (sim/tb_codesign.py) the beat width and the masters.
The memory array is sized for the job (a power of two of words), so a bigger job rebuilds.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import jinja2

from ..rtl.render import TOP_MODULE as TOP

SIM_DIR = Path(__file__).resolve().parents[2] / "sim"
HARNESS_TOP = "tb_top"
PORT_MODULE = "tb_axi_mem_port.v"
SPEC_FILE = "tb_top.json"
MIN_MEM_AW = 10   # smallest memory: 1024 words

# What the memory model connects on every master; the DUT inputs among them are its outputs.
MODEL_INPUTS = ("ARVALID", "ARADDR", "ARLEN", "RREADY", "AWVALID", "AWADDR", "AWLEN", "WVALID", "WDATA",
                "WSTRB", "WLAST", "BREADY")
MODEL_OUTPUTS = ("ARREADY", "RVALID", "RDATA", "RLAST", "AWREADY", "WREADY", "BVALID")

_COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_DECL = re.compile(r"\b(input|output|inout)\b\s*(?:wire\b|reg\b|logic\b)?\s*(?:signed\b)?\s*(\[[^\]]*\])?\s*(\w+)")
_PARAM = re.compile(r"\b(?:parameter|localparam)\b\s*(?:integer\b|\[[^\]]*\])?\s*(\w+)\s*=\s*([^,;\n]+)")
_MASTER = re.compile(r"^m_axi_(\w+?)_ARVALID$")


class HarnessError(RuntimeError):
    """The DUT's top level is not one the harness can drive (one line, names the port)."""


@dataclass(frozen=True)
class Port:
    dir: str
    width: int
    name: str

    @property
    def range(self) -> str:
        return f"[{self.width - 1}:0]" if self.width > 1 else ""


def _module_text(rtl_dir: Path) -> tuple[Path, str]:
    for path in sorted(Path(rtl_dir).glob("*.v")):
        text = _COMMENTS.sub("", path.read_text(errors="replace"))
        start = re.search(rf"\bmodule\s+{TOP}\b", text)
        if start:
            end = text.find("endmodule", start.start())
            return path, text[start.start(): end if end >= 0 else len(text)]
    raise HarnessError(f"no module {TOP} in {rtl_dir}/*.v")


def _eval(expr: str, params: dict[str, int], where: str) -> int:
    """A Verilog constant expression of numbers, parameters, + - * / % ( ) and $clog2."""
    text = re.sub(r"\b[A-Za-z_]\w*\b", lambda m: str(params[m.group(0)]) if m.group(0) in params else m.group(0),
                  expr.replace("$clog2", "clog2"))
    if not re.fullmatch(r"[\d\s+\-*/%()]*(clog2[\d\s+\-*/%()]*)*", text):
        raise HarnessError(f"{where}: cannot evaluate {expr.strip()!r}")
    try:
        return int(eval(text.replace("/", "//"), {"__builtins__": {}},  # noqa: S307 - checked characters only
                        {"clog2": lambda v: max(0, math.ceil(math.log2(v))) if v > 0 else 0}))
    except (SyntaxError, ZeroDivisionError, TypeError) as exc:
        raise HarnessError(f"{where}: cannot evaluate {expr.strip()!r}") from exc


def _params(text: str, where: str) -> dict[str, int]:
    params: dict[str, int] = {}
    for name, value in _PARAM.findall(text):
        while value.count(")") > value.count("("):   # the end of an ANSI parameter list
            value = value[: value.rindex(")")]
        try:
            params[name] = _eval(value, params, where)
        except HarnessError:
            continue   # a string or real parameter: no port width uses it
    return params


def top_ports(rtl_dir: Path) -> list[Port]:
    """codesign_top's ports in declaration order, widths evaluated."""
    path, text = _module_text(rtl_dir)
    params = _params(text, str(path))
    ports: dict[str, Port] = {}
    for direction, rng, name in _DECL.findall(text):
        width = 1
        if rng:
            msb, lsb = rng[1:-1].split(":", 1)
            width = abs(_eval(msb, params, f"{path}: {name}") - _eval(lsb, params, f"{path}: {name}")) + 1
        ports.setdefault(name, Port(direction, width, name))
    if not ports:
        raise HarnessError(f"{path}: {TOP} has no ports")
    return list(ports.values())


def masters(ports: list[Port]) -> list[str]:
    """The AXI master bundles: gmem, then the others (wgt0, wgt1, ...) in port order."""
    names = [m.group(1) for p in ports if (m := _MASTER.match(p.name))]
    return sorted(names, key=lambda n: n != "gmem")


def _master_view(bundle: str, by_name: dict[str, Port]) -> dict:
    prefix = f"m_axi_{bundle}"
    own = [p for name, p in by_name.items() if name.startswith(prefix + "_")]
    for sig in MODEL_INPUTS + MODEL_OUTPUTS:
        if f"{prefix}_{sig}" not in by_name:
            raise HarnessError(f"{TOP}: master {prefix} has no {prefix}_{sig} port")
    driven = {f"{prefix}_{sig}" for sig in MODEL_OUTPUTS}
    return {"name": bundle, "p": prefix, "aw": by_name[f"{prefix}_ARADDR"].width,
            "lw": by_name[f"{prefix}_ARLEN"].width, "dw": by_name[f"{prefix}_RDATA"].width,
            "signals": own, "tied": [p.name for p in own if p.dir == "input" and p.name not in driven]}


def interface(rtl_dir: Path) -> tuple[list[Port], list[dict]]:
    ports = top_ports(rtl_dir)
    by_name = {p.name: p for p in ports}
    views = [_master_view(b, by_name) for b in masters(ports)]
    if not views:
        raise HarnessError(f"{TOP} has no AXI master (no m_axi_*_ARVALID port)")
    widths = {v["dw"] for v in views} | {by_name[f"{v['p']}_WDATA"].width for v in views}
    if len(widths) != 1 or next(iter(widths)) % 8:
        raise HarnessError(f"{TOP}: every m_axi master needs the same whole-byte data width, got "
                           + ", ".join(f"{v['p']} {v['dw']}" for v in views))
    for v in views:
        if by_name[f"{v['p']}_AWLEN"].width != v["lw"] or by_name[f"{v['p']}_AWADDR"].width != v["aw"]:
            raise HarnessError(f"{TOP}: {v['p']} has different AR and AW address or length widths")
    return ports, views


def mem_address_bits(mem_bytes: int, beat_bytes: int) -> int:
    return max(MIN_MEM_AW, math.ceil(math.log2(max(1, -(-int(mem_bytes) // beat_bytes)))))


def _write_if_changed(path: Path, text: str) -> None:
    """An unchanged source keeps its time stamp, so the simulator build stays up to date."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def render_harness(rtl_dir: Path, src_dir: Path, spec_dir: Path, mem_bytes: int) -> list[Path]:
    """Write tb_top.v and tb_axi_mem_port.v into src_dir, tb_top.json (for the testbench, in the
    simulator's working directory) into spec_dir; return the two Verilog sources."""
    ports, views = interface(rtl_dir)
    dw = views[0]["dw"]
    mem_aw = mem_address_bits(mem_bytes, dw // 8)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(SIM_DIR), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    in_masters = {p.name for v in views for p in v["signals"]}
    text = env.get_template("tb_top.v.j2").render(
        passthrough=[p for p in ports if p.name not in in_masters], masters=views, dw=dw, mem_aw=mem_aw,
        dut_ports=[p.name for p in ports])
    _write_if_changed(src_dir / "tb_top.v", text)
    _write_if_changed(src_dir / PORT_MODULE, (SIM_DIR / PORT_MODULE).read_text())
    spec = {"beat_bytes": dw // 8, "masters": [v["name"] for v in views], "mem_words": 1 << mem_aw}
    _write_if_changed(spec_dir / SPEC_FILE, json.dumps(spec, indent=1))
    return [src_dir / PORT_MODULE, src_dir / "tb_top.v"]
