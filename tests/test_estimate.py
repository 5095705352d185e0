"""The compute unit's description (schedule.uarch), its sizing (schedule.tiling) and the cycle
model that evaluates its schedule table (schedule.schedule, schedule.estimate)."""
from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path

import pytest

from codesign.boards import load_board
from codesign.model.config import ModelConfig
from codesign.schedule import schedule as S
from codesign.schedule import uarch as U
from codesign.schedule.estimate import estimate, estimate_design, expert_counts_from_golden
from codesign.schedule.isa import Flag, Op
from codesign.schedule.tiling import ResourceError, board_uarch, choose_tiling, fixed_tiling
from codesign.testing import make_test_design

BASE = ModelConfig()  # embed 64, depth 4, 17 tokens, 8 experts top-2, MoE blocks 1 and 3
DOCS = Path(__file__).resolve().parents[1] / "docs"


@functools.lru_cache(maxsize=None)
def design(cfg: ModelConfig = BASE):
    return make_test_design(cfg)


@pytest.fixture(scope="module")
def zcu104():
    return load_board("zcu104")


def est(cfg=BASE, board="zcu104", counts=None, P=None, Q=None):
    b = load_board(board)
    prog = design(cfg).prog
    t = choose_tiling(prog, b) if P is None else fixed_tiling(prog, b, P, Q)
    return estimate_design(prog, t, b, counts), t


# ---------------------------------------------------------------- the description

def test_packing_needs_a_dsp48e2_and_narrow_operands():
    """Two int8 products share a DSP48E2 (Zynq UltraScale+), not a 7-series DSP48E1 (25x18). The
    core's fixed logic as yosys measures it (the vector unit's lanes, the sequencer: ~58k LUT at
    1x16; the attention unit's 78 + 4 a row DSP48E2) no longer fits pynq-z2 (its 42,560-LUT and
    176-DSP budgets), so its compute unit is checked as derived for the board (board_uarch), and
    the tiling's refusal names the first resource short, the DSP since cs_attn was synthesized."""
    assert U.packable(8, 8) and U.packable(9, 9) and not U.packable(10, 8) and not U.packable(8, 11)
    pynq = load_board("pynq-z2")  # Zynq-7000: DSP48E1, 25x18
    u = board_uarch(design().prog, pynq, 1, 16)
    assert not u.packed and u.macs_per_dsp == 1
    with pytest.raises(ResourceError, match=r"^design does not fit pynq-z2: a 1x16 MAC array needs [\d,]+ DSP"):
        choose_tiling(design().prog, pynq)
    assert board_uarch(design().prog, load_board("zcu104"), 1, 32).packed
    assert choose_tiling(design().prog, load_board("zcu104")).uarch.packed


def test_accumulator_width_is_the_widest_exact_sum():
    u = U.derive_uarch(design().prog, 8, 32, 16, 4)
    # e.v of 17 tokens: EXP (15 bits) x value (7 magnitude bits), 17 terms -> 15 + 7 + 5 + 1
    assert u.acc_w == 28
    ins = next(i for i in design().prog.instrs if i.op == Op.MATMUL and i.args["k"] == 256)
    assert U.instr_acc_bits(ins, 8, 8) == 7 + 7 + 8 + 1


def test_every_resource_follows_what_is_instantiated(zcu104):
    prog = design().prog
    small, wide = (U.resource_use(U.derive_uarch(prog, 8, q, 16, 4), 76).used for q in (32, 64))
    assert wide["dsp"] - small["dsp"] == 8 * 32 // 2  # one DSP per column pair
    assert wide["ff"] > small["ff"] and wide["lut"] > small["lut"]
    u = U.derive_uarch(prog, 8, 32, 16, 4)
    more_copies = replace(u, P=40)  # G = 3 abank copies instead of 1
    mem = {m.name: m for m in U.memories(more_copies)}
    assert mem["abank"].copies == 2 * 3
    exp_roms = {m.name: m.copies for m in U.memories(u)}["exp_rom"]
    assert exp_roms == u.P // 2


def test_memories_bind_to_luts_bram_or_uram():
    m = U.bind_memories([U.Memory("tiny", "", 8, 32), U.Memory("mid", "", 128, 512), U.Memory("big", "", 128, 8192, 4)],
                        uram_budget=96)
    binding = {x.name: (x.binding, x.count) for x in m}
    assert binding["tiny"] == ("lutram", 8)
    assert binding["mid"] == ("bram36", 2.0)
    assert binding["big"] == ("uram", 4 * 2 * 2)
    assert U.bind_memories([U.Memory("big", "", 128, 8192, 4)], uram_budget=0)[0].binding == "bram36"


def test_hardware_rules_name_the_instruction():
    prog = design().prog
    u = U.derive_uarch(prog, 8, 64, 32, 4)  # 256-bit beats: EPB 32 does not divide head_dim 16
    with pytest.raises(U.HardwareRuleError, match=r"^instruction \d+ \(\w+ [\w.]+\): .* is not a multiple of 32"):
        U.check_program(prog, u)
    U.check_program(prog, U.derive_uarch(prog, 8, 32, 16, 4))


# ---------------------------------------------------------------- tiling

def test_zcu104_tiling_fits_every_resource(zcu104):
    t = choose_tiling(design().prog, zcu104)
    for r in U.RESOURCES:
        assert t.used[r] <= 0.8 * getattr(zcu104.resources, r), r
    assert t.Q % 32 == 0 and t.macs_per_cycle == t.P * t.Q
    assert t.used["dsp"] >= t.P * t.Q // 2


def test_big_model_on_pynq_z2_raises_naming_the_resource_and_both_numbers():
    # MLP rows of 18,432 elements: two weight slots of 16 of them exceed the BRAM (tokens no longer
    # do: what exceeds a bank is streamed)
    big = ModelConfig(img_size=224, patch_size=16, embed_dim=384, num_heads=6, depth=1, moe_blocks=(), mlp_ratio=48.0)
    with pytest.raises(ResourceError) as err:
        choose_tiling(design(big).prog, load_board("pynq-z2"))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("design does not fit pynq-z2: a ")
    assert " needs " in msg and "the budget is " in msg and "% of the board's " in msg


def test_fixed_tiling_refuses_an_array_over_budget(zcu104):
    with pytest.raises(ResourceError, match=r"needs [\d,]+ (DSP|LUT|FF)"):
        fixed_tiling(design().prog, zcu104, 64, 128)


# ---------------------------------------------------------------- schedule table

def test_schedule_doc_is_generated_from_the_table():
    assert (DOCS / "SCHEDULE.md").read_text() == S.schedule_markdown(), \
        "docs/SCHEDULE.md is stale: write codesign.schedule.schedule.schedule_markdown() to it"


def test_an_isolated_matmul_costs_its_table_rows(zcu104):
    """A forwarded dense MATMUL whose weights are ready: issue, feed, blocks x k, last drain."""
    e, t = est(P=8, Q=32)
    prog, u = design().prog, t.uarch
    i = next(i for i, ins in enumerate(prog.instrs) if ins.layer == "b0.qkv")
    ins, c = prog.instrs[i], e.instrs[i]
    assert c.forwarded and c.weight_wait == 0
    ctx = S.Ctx(ins, c.rows, u)
    blocks = S.loop("MATMUL", "mac_block")
    last_drain = min(u.P, ins.args["m"] - (S.row_blocks(ctx) - 1) * u.P) * -(-u.Q // u.epb)
    expected = (S.LATENCY["issue"] + S.feed_latency(u) + blocks.trip(ctx) * blocks.entries(ctx) + last_drain
                + S.LATENCY["drain"])
    assert c.end - c.start + S.LATENCY["issue"] == pytest.approx(expected, abs=1)


# ---------------------------------------------------------------- estimate

def test_forwarding_reads_no_activation_but_the_residual(zcu104):
    e, _ = est()
    by_name = {c.name: c for c in e.instrs}
    for name in ("b0.qkv", "b0.attn", "b0.proj", "b0.ln2", "b0.gelu", "b0.mlp", "b1.gate"):
        assert by_name[name].forwarded and by_name[name].act_read_bytes == 0, name
    assert by_name["patch"].act_read_bytes > 0  # the network input
    assert by_name["b0.res1"].act_read_bytes == by_name["b0.res1"].act_write_bytes  # x from DDR, proj forwarded


def test_unused_experts_read_nothing_and_are_skipped(zcu104):
    gates = [i for i in design().prog.instrs if i.op == Op.GATE]
    counts = {"b1": [17, 17, 0, 0, 0, 0, 0, 0], "b3": [17, 0, 17, 0, 0, 0, 0, 0]}
    e, _ = est(counts=counts)
    experts = [c for c in e.instrs if c.op == "MATMUL" and ".e" in c.name]
    idle = [c for c in experts if c.rows == 0]
    assert len(idle) == 2 * (6 + 6) and len(gates) == 2
    assert all(c.skipped and c.weight_bytes == 0 and c.cycles <= S.LATENCY["issue"] for c in idle)
    busy = [c for c in experts if c.rows]
    assert all(c.weight_bytes >= 64 * 128 for c in busy)


def test_estimate_grows_with_model_size_and_tokens(zcu104):
    base, _ = est(P=8, Q=32)
    wider, _ = est(replace(BASE, embed_dim=128), P=8, Q=32)
    longer, _ = est(replace(BASE, img_size=48), P=8, Q=32)
    assert wider.cycles > 1.5 * base.cycles and longer.cycles > 1.5 * base.cycles


def test_four_weight_ports_stream_expert_weights_faster():
    one, four = load_board("zcu104"), load_board("zcu104")
    one = replace(one, memory=replace(one.memory, weight_ports=1))
    prog = design().prog
    cyc = [estimate_design(prog, fixed_tiling(prog, b, 8, 64), b).cycles for b in (one, four)]
    assert cyc[1] < 0.8 * cyc[0]


def test_totals_equal_the_sum_over_layers_and_instructions(zcu104):
    e, _ = est()
    assert e.totals["cycles"] == sum(c.cycles for c in e.instrs) == sum(l.cycles for l in e.layers)
    assert e.totals["macs"] == sum(l.macs for l in e.layers)
    assert e.cycles >= e.instrs[-1].end - 1


def test_json_has_the_board_figures(zcu104):
    e, t = est()
    d = json.loads(json.dumps(e.to_json()))
    for key in ("latency_ms_per_task", "latency_ms_per_image", "gops", "macs_per_dsp_per_cycle",
                "board_peak_macs_per_cycle"):
        assert key in d
    assert d["board_peak_macs_per_cycle"] == 1728 * 2
    assert d["latency_ms_per_image"] == pytest.approx(2 * d["latency_ms_per_task"])
    assert d["gops"] == pytest.approx(2 * d["totals"]["macs"] / (d["latency_ms_per_task"] * 1e6))
    assert set(d["resources"]) == set(U.RESOURCES)
    for r in U.RESOURCES:
        assert d["resources"][r]["used"] == t.used[r] and d["resources"][r]["board"] == getattr(zcu104.resources, r)
    assert d["macs_per_dsp_per_cycle"] == pytest.approx(d["totals"]["macs"] / (d["cycles"] * t.used["dsp"]))


def test_expert_counts_from_golden_run(zcu104):
    d = design()
    counts = expert_counts_from_golden(d.qm, d.vectors[0].x_q, 0)
    assert set(counts) == {"b1", "b3"} and all(sum(c) == 17 * 2 for c in counts.values())
    e, _ = est(counts=counts)
    assert e.expert_counts == counts


@pytest.mark.parametrize("counts, match", [({"b9": [1] * 8}, "unknown MoE block"),
                                           ({"b1": [1] * 7}, "has 7 entries"),
                                           ({"b1": [99] + [0] * 7}, "must be in 0..17")])
def test_bad_expert_counts_are_rejected(zcu104, counts, match):
    with pytest.raises(ValueError, match=match):
        est(counts=counts)


def test_table_lists_every_layer_and_the_resources(zcu104):
    e, _ = est()
    text = e.table()
    for layer in e.layers:
        assert layer.name in text
    for r in U.RESOURCES:
        assert r.upper() in text
    assert "ms per task inference" in text and "MAC/DSP/cycle" in text


def test_streamed_tensors_cost_their_loads_and_reread_weights(zcu104):
    """The same program on the 4 x 32 array with banks of the largest tensor and of the smallest
    the program runs with (64 beats): each MATMUL whose A (17 rows of k) exceeds the bank loads it in
    chunks (16 rows of k = 64, 4 of k = 256) and, with more than one tile, reads every weight tile once per chunk; the ATTN
    (qkv 17 x 192 > 64 beats, one head 17 x 48 fits) loads every head's q, k, v; the total is slower."""
    from codesign.schedule.tiling import board_uarch

    prog = design().prog
    least = U.bank_min_beats(prog, 4, 32, 16)
    whole, small = board_uarch(prog, zcu104, 4, 32), board_uarch(prog, zcu104, 4, 32, bank_beats=least)
    e_whole, e_small = estimate(prog, whole, zcu104), estimate(prog, small, zcu104)
    streamed = 0
    for ins, a, b in zip(prog.instrs, e_whole.instrs, e_small.instrs):
        whole = 17 if ins.flags & Flag.GATHER else b.rows  # a GATHER reads its GATE's input (17 tokens)
        if ins.op == Op.MATMUL and b.rows and not small.fits_bank(whole, ins.args["k"]):
            chunks = -(-b.rows // small.chunk_rows(ins.args["k"]))
            tiles = -(-ins.args["n"] // 32)
            assert small.chunk_rows(ins.args["k"]) == 64 // (ins.args["k"] // 16) // 4 * 4
            assert b.act_read_bytes == b.rows * ins.args["k"]
            assert b.weight_bytes == (chunks if tiles > 1 else 1) * a.weight_bytes - (chunks - 1) * (
                256 if ins.flags & Flag.GELU and tiles > 1 else 0)  # the GELU table only once
            streamed += chunks > 1
        if ins.op == Op.ATTN:
            assert small.attn_plan(17, 4, 16) == ("head", 17)
            assert b.act_read_bytes == 4 * 17 * 3 * 16 and b.cycles > a.cycles
    assert streamed and e_small.cycles > e_whole.cycles
    assert e_small.totals["act_read_bytes"] > e_whole.totals["act_read_bytes"]


def test_an_accumulator_in_ddr_costs_its_clear_and_its_int32_reads(zcu104):
    """Without moe_acc the GATE's write-out zeroes the accumulator in DDR (4 tokens dim / B beats)
    and REQUANT32 reads it at B/4 int32 a cycle, not EPB: what cosim measured at edge-moe-tiny's
    22x64 (GATE 9,602 RTL cycles where the estimate had 2,946; REQUANT32 6,745 for 1,559)."""
    prog = design().prog
    on, off = (estimate(prog, board_uarch(prog, zcu104, 8, 32, chip), zcu104) for chip in (True, False))
    B = zcu104.memory.axi_data_bits // 8
    for pc, ins in enumerate(prog.instrs):
        a, c_on, c_off = ins.args, on.instrs[pc], off.instrs[pc]
        if ins.op == Op.GATE:
            clear = -(-4 * a["tokens"] * a["dim"] // B)
            assert c_off.end - c_off.start >= c_on.end - c_on.start + clear
            assert c_off.act_write_bytes == c_on.act_write_bytes + clear * B
        if ins.op == Op.REQUANT32:
            assert c_on.end - c_on.start == a["count"] // 16 + S.LATENCY["vector"]
            assert c_off.end - c_off.start >= 4 * a["count"] // B + S.LATENCY["vector"] + 50
            assert c_off.act_read_bytes == 4 * a["count"]
