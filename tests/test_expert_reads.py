"""Weight traffic of the MoE schedule: every used expert's weights are fetched exactly once per
layer, unused experts never, and no byte of the weight blob is read twice in one run.

The ISA interpreter records its weight reads (isa.WgtReadLog); the cocotb testbench can count the
RTL's AXI read beats (CODESIGN_RECORD_READS=1, over every AXI master) so the same holds for the
generated Verilog, with one master and with the weights spread over 4 weight masters.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from codesign import api
from codesign.model.zoo import load_default_model
from codesign.quant.quantize import quantize_input
from codesign.schedule.estimate import expert_counts_from_golden
from codesign.schedule.isa import Instr, Op, WgtReadLog, decode_program, encode_program, execute
from codesign.schedule.program import load_input

EXPERT_BYTES = 2 * 128 * 64 + (128 + 128 + 64 + 64) * 4 + 256  # fc1.w, fc2.w, bias/mult, GELU table


@pytest.fixture(scope="module")
def design():
    return api.convert(load_default_model(), "zcu104")


def entry_bytes(entry, elem_bytes: int) -> int:
    return int(np.prod(entry.shape)) * (elem_bytes if entry.kind == "elem" else 4)


def expert_entries(prog, layer: str, expert: int):
    return [w for w in prog.weights if w.name.startswith(f"{layer}.e{expert}.")]


def moe_pcs(prog, layer: str) -> list[int]:
    """The MoE layer's instructions: its GATE, the expert MATMULs, the REQUANT32 of the accumulator."""
    names = [ins.layer for ins in prog.instrs]
    first, last = names.index(f"{layer}.gate"), names.index(f"{layer}.mlp")
    assert prog.instrs[first].op == Op.GATE and prog.instrs[last].op == Op.REQUANT32
    return list(range(first, last + 1))


def run_recorded(prog, x_q, task: int) -> tuple[bytearray, WgtReadLog]:
    act = bytearray(prog.act_bytes)
    load_input(prog, act, x_q)
    log = WgtReadLog()
    execute(prog.code, prog.wgt, act, task, prog.abits, prog.elem_bytes, wgt_reads=log)
    return act, log


def routed_counts(act: bytearray, moe: dict) -> np.ndarray:
    start = moe["counts_addr"]
    return np.frombuffer(bytes(act[start: start + 4 * moe["experts"]]), "<i4")


def test_default_design_reads_each_used_expert_once_and_unused_never(design):
    prog, cfg = design.prog, design.qm.cfg
    images = api.vector_data(cfg, 2).images
    assert list(prog.moe_layers) == ["b1", "b3"]
    assert all(sum(entry_bytes(w, prog.elem_bytes) for w in expert_entries(prog, "b1", e)) == EXPERT_BYTES
               for e in range(cfg.num_experts))
    seen_unused = 0
    for image, x_q in enumerate(quantize_input(images, design.qm)):
        for task in range(cfg.num_tasks):
            act, log = run_recorded(prog, x_q, task)
            golden = expert_counts_from_golden(design.qm, x_q, task)
            assert log.byte_counts(len(prog.wgt)).max() == 1, "a weight byte was read twice in one run"
            for layer, moe in prog.moe_layers.items():
                tokens = routed_counts(act, moe)
                assert tokens.tolist() == list(golden[layer]), (image, task, layer)
                assert tokens.sum() == cfg.num_tokens * cfg.top_k
                counts = log.byte_counts(len(prog.wgt), moe_pcs(prog, layer))
                for e in range(moe["experts"]):
                    want = 1 if tokens[e] else 0
                    for w in expert_entries(prog, layer, e):
                        got = counts[w.addr: w.addr + entry_bytes(w, prog.elem_bytes)]
                        assert (got == want).all(), (image, task, layer, w.name, tokens[e])
                seen_unused += int((tokens == 0).sum())
                used = int((tokens > 0).sum())
                gate_slice = cfg.num_experts * cfg.embed_dim * prog.elem_bytes + cfg.num_experts * 4
                assert counts.sum() == used * EXPERT_BYTES + gate_slice
    assert seen_unused > 0  # the vectors exercise the "never read" half of the claim


def test_gate_reads_only_its_tasks_weights(design):
    prog, cfg = design.prog, design.qm.cfg
    x_q = quantize_input(api.vector_data(cfg, 1).images, design.qm)[0]
    gate = next(w for w in prog.weights if w.name == "b1.gate.w")
    per_task = cfg.num_experts * cfg.embed_dim * prog.elem_bytes
    for task in range(cfg.num_tasks):
        _, log = run_recorded(prog, x_q, task)
        counts = log.byte_counts(len(prog.wgt))[gate.addr: gate.addr + cfg.num_tasks * per_task]
        assert counts.reshape(cfg.num_tasks, per_task).sum(axis=1).tolist() == \
            [per_task if t == task else 0 for t in range(cfg.num_tasks)]


def test_read_log_catches_a_second_fetch():
    """The checker itself: two MATMULs over the same weights show up as bytes read twice."""
    mm = dict(a_addr=0, a_stride=8, w_addr=0, bias_addr=64, mult_addr=128, shift=0, m=1, k=8, n=8,
              out_addr=64, out_stride=8)
    program = encode_program([Instr(Op.MATMUL, 0, mm, obits=8), Instr(Op.MATMUL, 0, mm, obits=8)])
    log = WgtReadLog()
    assert execute(program, bytes(192), bytearray(128), 0, 8, 1, wgt_reads=log) == 2
    assert [(pc, addr, n) for pc, addr, n in log.reads] == [(0, 0, 64), (0, 64, 32), (0, 128, 32),
                                                           (1, 0, 64), (1, 64, 32), (1, 128, 32)]
    counts = log.byte_counts(192)
    assert counts[:96].tolist() == [2] * 96 and counts[96:128].sum() == 0
    assert log.byte_counts(192, pcs=[1]).max() == 1


# ---------------------------------------------------------------------------
# the same claim on the RTL (AXI read beats counted by sim/tb_codesign.py)
# ---------------------------------------------------------------------------
def interpreter_reads(data_dir: Path, man: dict, vec: dict) -> WgtReadLog:
    wgt = (data_dir / "weights.bin").read_bytes()
    act = bytearray((data_dir / vec["start"]).read_bytes())
    log = WgtReadLog()
    execute((data_dir / "program.bin").read_bytes(), wgt, act, vec["task"], man["abits"], man["elem_bytes"],
            wgt_reads=log)
    return log


def interpreter_word_counts(data_dir: Path, man: dict, vec: dict, lanes: int) -> np.ndarray:
    size = -(-man["wgt_bytes"] // lanes) * lanes
    return interpreter_reads(data_dir, man, vec).byte_counts(size).reshape(-1, lanes).max(axis=1)


def vector_op_wgt_bytes(data_dir: Path, man: dict, vec: dict) -> int:
    """wgt bytes of LAYERNORM (gamma, beta) and ADD (B_WGT) instructions: the RTL's cs_vecop reads
    them over gmem, not the weight masters (rtl_templates/README.md, "The core")."""
    ops = [ins.op for ins in decode_program((data_dir / "program.bin").read_bytes())]
    return sum(n for pc, _, n in interpreter_reads(data_dir, man, vec).reads if ops[pc] in (Op.LAYERNORM, Op.ADD))


def rtl_word_counts(reads: list[list[int]], size: int, lanes: int) -> np.ndarray:
    words = np.zeros(-(-size // lanes), np.int64)
    for offset, nbytes, times in reads:
        words[offset // lanes: (offset + nbytes) // lanes] = times
    return words


@pytest.mark.slow
@pytest.mark.parametrize("weight_ports", [1, 4])
def test_rtl_fetches_exactly_the_interpreters_weight_words(tmp_path, monkeypatch, weight_ports):
    """The RTL reads exactly the weight words the interpreter reads, each once.  (A GATE used to
    fetch one more 8-byte word after its task's bias slice -- for the last task the first word of
    expert 0's fc1 weights; on the uarch core it read a whole group of EPB gate rows and biases, the
    next task's too, until cs_wgt took the GATE's `rows`.)  With 4 weight masters the MATMUL and GATE
    words come over the masters, and only the vector ops' gamma / beta / B_WGT over gmem."""
    from codesign.emit.data import load_manifest
    from codesign.sim.cocotb_runner import SimulatorMissing, simulator_env
    from codesign.rtl.render import render_uarch_rtl
    from codesign.schedule.uarch import derive_uarch
    from codesign.sim.cosim import run_cosim
    from codesign.testing import RTL_TWIN, make_test_design, write_test_data

    try:
        simulator_env("verilator")
    except SimulatorMissing as exc:
        pytest.skip(str(exc))
    design = make_test_design()
    write_test_data(tmp_path / "data", design)
    lanes = 16   # the twin's 128-bit beats
    render_uarch_rtl(tmp_path / "rtl", derive_uarch(design.prog, *RTL_TWIN, lanes, weight_ports), trace=True)
    monkeypatch.setenv("CODESIGN_RECORD_READS", "1")
    res = run_cosim(tmp_path, "verilator")
    assert res.all_passed
    man = load_manifest(tmp_path)
    job = tmp_path / "cosim" / "job"
    result = json.loads((job / "result.json").read_text())
    for vec, run in zip(man["vectors"], result["runs"]):
        reads = json.loads((job / f"out_{run['name']}_reads.json").read_text())
        want = interpreter_word_counts(tmp_path / "data", man, vec, lanes)
        got = rtl_word_counts(reads["wgt"], man["wgt_bytes"], lanes)
        assert got.tolist() == want.tolist(), vec["id"]
        assert run["reread_bytes"]["prog"] == 0
        assert run["read_bytes"]["wgt"] == lanes * int(want.sum())
        ports = run["read_bytes_by_port"]
        if weight_ports == 1:
            assert ports == {"gmem": sum(run["read_bytes"].values())}
        else:
            assert list(ports) == ["gmem", "wgt0", "wgt1", "wgt2", "wgt3"]
            vec_wgt = vector_op_wgt_bytes(tmp_path / "data", man, vec)
            assert vec_wgt > 0
            assert ports["gmem"] == run["read_bytes"]["prog"] + run["read_bytes"]["act"] + vec_wgt
            assert sum(ports[f"wgt{p}"] for p in range(4)) == run["read_bytes"]["wgt"] - vec_wgt
            # group g of a tile comes over master g mod W: the twin's Q/EPB = 2 groups use two of the four
            assert [ports[f"wgt{p}"] > 0 for p in range(4)] == [True, True, False, False]
    assert [r["reread_bytes"]["wgt"] for r in result["runs"]] == [0, 0]
