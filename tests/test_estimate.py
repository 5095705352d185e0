"""MAC-array / buffer sizing (schedule.tiling) and the analytical latency model (schedule.estimate)."""
from __future__ import annotations

import functools
import json
import math
from dataclasses import replace

import pytest

from codesign.boards import load_board
from codesign.model.config import ModelConfig
from codesign.schedule.estimate import estimate, expert_counts_from_golden
from codesign.schedule.isa import Op
from codesign.schedule.tiling import ResourceError, choose_tiling, dsp_breakdown, tiling_params
from codesign.testing import make_test_design

BASE = ModelConfig()  # embed 64, depth 4, 17 tokens, 8 experts top-2, MoE blocks 1 and 3


@functools.lru_cache(maxsize=None)
def design(cfg: ModelConfig = BASE):
    return make_test_design(cfg)


def is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@pytest.fixture(scope="module")
def zcu104():
    return load_board("zcu104")


# ---------------------------------------------------------------- tiling

def test_zcu104_tiling_stays_within_80_percent_and_reports_sizes(zcu104):
    prog = design().prog
    t = choose_tiling(prog, zcu104)
    res = zcu104.resources
    assert t.dsp <= 0.8 * res.dsp and t.bram36 <= 0.8 * res.bram36 and t.uram <= 0.8 * res.uram
    assert t.lut <= 0.8 * res.lut
    assert is_pow2(t.P) and is_pow2(t.Q)
    beat_elems = zcu104.memory.axi_data_bits // (8 * prog.elem_bytes)
    assert t.Q % beat_elems == 0  # a weight row streams one AXI beat per cycle
    assert t.macs_per_dsp == 2  # int8 on UltraScale+
    # Sized from the DSP budget: doubling the array would not fit.
    assert sum(dsp_breakdown(2 * t.P, t.Q, t.macs_per_dsp).values()) > 0.8 * res.dsp
    assert t.dsp == sum(t.breakdown["dsp"].values())
    assert t.bram36 >= sum(t.breakdown["bram36"].values())
    matmuls = [i.args for i in prog.instrs if i.op == Op.MATMUL]
    assert t.max_k == max(a["k"] for a in matmuls) == max(BASE.patch_features, BASE.mlp_hidden)
    assert (t.max_tokens, t.max_head_dim) == (BASE.num_tokens, BASE.head_dim)
    assert t.weight_tile_bytes == t.Q * t.max_k * prog.elem_bytes
    assert t.weight_buffer_bytes == 2 * t.weight_tile_bytes  # double-buffered prefetch
    assert t.kv_bytes == 2 * t.max_tokens * t.max_head_dim * prog.elem_bytes
    assert t.moe_hidden_bytes == t.max_tokens * BASE.moe_hidden * prog.elem_bytes
    assert t.lut_rom_bits > 0
    assert tiling_params(t) == {"P": t.P, "Q": t.Q, "max_k": t.max_k, "max_n": t.max_n,
                                "max_tokens": t.max_tokens, "max_head_dim": t.max_head_dim, "act_banks": 2,
                                "acc_on_chip": 1}
    json.dumps(t.to_json())


def test_seven_series_counts_one_mac_per_dsp():
    board = load_board("pynq-z2")
    t = choose_tiling(design().prog, board)
    assert t.macs_per_dsp == 1
    assert t.dsp <= 0.8 * board.resources.dsp and t.bram36 <= 0.8 * board.resources.bram36


def test_big_model_on_pynq_z2_raises_naming_the_resource():
    big = ModelConfig(img_size=224, patch_size=16, embed_dim=384, num_heads=6, depth=1, moe_blocks=(),
                      mlp_ratio=6.0)
    with pytest.raises(ResourceError) as err:
        choose_tiling(design(big).prog, load_board("pynq-z2"))
    msg = str(err.value)
    assert isinstance(err.value, ValueError) and "\n" not in msg
    assert msg.startswith("design does not fit pynq-z2: needs ")
    assert "BRAM36" in msg and "board budget is 112 (80% of 140)" in msg


# ---------------------------------------------------------------- estimate

def test_estimate_grows_with_model_size(zcu104):
    sizes = [BASE, ModelConfig(embed_dim=128), ModelConfig(embed_dim=192), ModelConfig(embed_dim=192, depth=8)]
    progs = [design(cfg).prog for cfg in sizes]
    fixed = choose_tiling(progs[-1], zcu104)
    for tiling_of in (lambda prog: fixed, lambda prog: choose_tiling(prog, zcu104)):
        ests = [estimate(prog, tiling_of(prog), zcu104) for prog in progs]
        for small, big in zip(ests, ests[1:]):
            for key in ("macs", "cycles", "ddr_bytes", "weight_bytes"):
                assert big.totals[key] > small.totals[key], key
            assert big.latency_ms > small.latency_ms


def test_estimate_grows_with_token_count(zcu104):
    few, many = (design(ModelConfig(img_size=s)).prog for s in (32, 64))  # 17 and 65 tokens
    t = choose_tiling(many, zcu104)
    e_few, e_many = estimate(few, t, zcu104), estimate(many, t, zcu104)
    for key in ("macs", "compute_cycles", "cycles", "act_read_bytes"):
        assert e_many.totals[key] > e_few.totals[key], key


def expert_costs(est, block: str, expert: int):
    return [c for c in est.instrs if c.name in (f"{block}.e{expert}.fc1", f"{block}.e{expert}.fc2")]


def test_unused_experts_add_zero_weight_bytes(zcu104):
    prog = design().prog
    t = choose_tiling(prog, zcu104)
    tokens, k, experts = BASE.num_tokens, BASE.top_k, BASE.num_experts
    two_used = [tokens] * k + [0] * (experts - k)
    all_used = estimate(prog, t, zcu104)  # uniform: every expert gets tokens
    skewed = estimate(prog, t, zcu104, {"b1": two_used, "b3.moe": two_used})  # both key spellings
    unused_bytes = 0
    for block in ("b1", "b3"):
        for ex in range(k, experts):
            assert all(c.weight_bytes == 0 and c.macs == 0 and c.rows == 0 for c in expert_costs(skewed, block, ex))
            unused_bytes += sum(c.weight_bytes for c in expert_costs(all_used, block, ex))
    assert unused_bytes > 0
    assert all_used.totals["weight_bytes"] - skewed.totals["weight_bytes"] == unused_bytes
    # Routing moves work between experts, never adds MACs: tokens*top_k rows either way.
    assert skewed.totals["macs"] == all_used.totals["macs"]


def test_program_loads_once_and_unused_experts_cost_a_few_cycles(zcu104):
    """The kernel reads the whole program once, before instruction 0; an instruction then costs its
    on-chip fetch and INSTR_OVERHEAD_CYCLES. An expert no token was routed to is not dispatched
    after a MATMUL (its fetch only), else costs its fetch and SKIPPED_INSTR_CYCLES, plus its count's
    DDR round trip when the count is not on chip. The MATMUL before unused experts reads ahead for
    the next one that runs."""
    from codesign.schedule import estimate as E

    prog = design().prog
    t = choose_tiling(prog, zcu104)
    fetch, load = E.fetch_cycles(zcu104), E.program_load_cycles(prog, zcu104)
    assert fetch == E.PROGRAM_READ_LATENCY + 64 // 16 and E.INSTR_OVERHEAD_CYCLES < E.DDR_ROUND_TRIP_CYCLES
    assert load == E.DDR_ROUND_TRIP_CYCLES + 64 * (len(prog.instrs) + 1) // 16  # END included, 16-byte beats
    experts = BASE.num_experts
    first_and_last = [BASE.num_tokens] + [0] * (experts - 2) + [BASE.num_tokens]
    est = estimate(prog, t, zcu104, {"b1": first_and_last, "b3": first_and_last})
    for c in est.instrs:
        unused = c.op == "MATMUL" and c.rows == 0
        after_matmul = c.index > 0 and est.instrs[c.index - 1].op == "MATMUL"
        fixed = fetch + (0 if unused and after_matmul else E.SKIPPED_INSTR_CYCLES if unused else E.INSTR_OVERHEAD_CYCLES)
        assert c.overhead_cycles == fixed + (load if c.index == 0 else 0), c
        assert c.cycles == max(c.compute_cycles, c.memory_cycles + c.epilogue_cycles) + c.overhead_cycles
    assert est.totals["cycles"] == sum(c.cycles for c in est.instrs)
    # the counts are on chip from the GATE: nothing but the fetch
    assert [c.cycles for c in expert_costs(est, "b1", 1)] == [fetch] * 2
    # the last expert's fc1 gets its weight tile 0 from the first expert's fc2 (with Q=16 it has
    # the tiles for that), across the unused ones; the first expert's fc1 (after the GATE) reads its own
    narrow = estimate(prog, replace(t, Q=16), zcu104, {"b1": first_and_last, "b3": first_and_last})
    first_fc1, last_fc1 = expert_costs(narrow, "b1", 0)[0], expert_costs(narrow, "b1", experts - 1)[0]
    assert first_fc1.rows == last_fc1.rows and last_fc1.prologue_cycles < first_fc1.prologue_cycles
    fc1 = next(i for i in prog.instrs if i.layer == f"b1.e{experts - 1}.fc1")
    cold = E.instr_cost(prog, t, zcu104, 1, fc1, 0, cached=set())  # its count read from DDR
    assert cold.cycles == E.DDR_ROUND_TRIP_CYCLES + 1 + fetch + E.SKIPPED_INSTR_CYCLES


def test_layernorm_parameters_and_the_position_table_are_read_serially(zcu104):
    """op_layernorm reads gamma and beta in two bursts before its rows; op_add reads the position
    table (B_WGT, in wgt) after a in the same loop, not beside it on a weight port."""
    from codesign.schedule import estimate as E

    prog = design().prog
    cost = {c.name: c for c in estimate(prog, choose_tiling(prog, zcu104), zcu104).instrs}
    assert cost["b0.ln1"].prologue_cycles == 2 * (E.DDR_ROUND_TRIP_CYCLES + 4 * BASE.embed_dim // 16)
    embed = cost["embed"]
    assert embed.weight_bytes == embed.act_read_bytes > 0
    assert embed.memory_cycles == (embed.weight_bytes + embed.act_read_bytes) // 16  # zcu104: 16-byte beats


def test_totals_equal_sum_over_layers_and_instructions(zcu104):
    prog = design().prog
    est = estimate(prog, choose_tiling(prog, zcu104), zcu104)
    for key in ("macs", "cycles", "compute_cycles", "memory_cycles", "ddr_bytes", "weight_bytes"):
        assert est.totals[key] == sum(getattr(l, key) for l in est.layers) == sum(getattr(c, key) for c in est.instrs)
    assert sum(l.instrs for l in est.layers) == len(prog.instrs)
    assert est.latency_ms == pytest.approx(est.totals["cycles"] / zcu104.clock_hz * 1e3)
    assert 0 < est.roofline_ratio <= 1 and 0 < est.utilisation <= 1
    assert est.roofline_cycles <= est.totals["cycles"]


def test_json_is_serialisable_and_table_lists_every_layer(zcu104):
    prog = design().prog
    est = estimate(prog, choose_tiling(prog, zcu104), zcu104)
    data = json.loads(json.dumps(est.to_json()))
    assert data["totals"]["cycles"] == est.totals["cycles"] and len(data["instrs"]) == len(prog.instrs)
    names = [l.name for l in est.layers]
    assert {"b1.moe", "b3.moe", "patch", "norm"} <= set(names)
    assert not any(".e0." in n or n.endswith(".gate") for n in names)  # experts grouped under their block
    table = est.table()
    assert all(name in table for name in names)
    assert "uniform" in table  # says that expert counts were assumed


def test_expert_counts_from_golden_run(zcu104):
    d = design()
    vec = d.vectors[0]
    counts = expert_counts_from_golden(d.qm, vec.x_q, vec.task)
    assert sorted(counts) == ["b1", "b3"]
    assert all(len(c) == BASE.num_experts and sum(c) == BASE.num_tokens * BASE.top_k for c in counts.values())
    est = estimate(d.prog, choose_tiling(d.prog, zcu104), zcu104, counts)
    assert est.expert_counts == counts
    assert not any("uniform" in a for a in est.assumptions)


@pytest.mark.parametrize("counts, match", [({"b1": [1, 2]}, "entries"), ({"b7": [0] * 8}, "unknown"),
                                           ({"b1": [-1] + [5] * 7}, "must be in")])
def test_bad_expert_counts_are_rejected(zcu104, counts, match):
    prog = design().prog
    with pytest.raises(ValueError, match=match):
        estimate(prog, choose_tiling(prog, zcu104), zcu104, counts)


# ---------------------------------------------------------------- resources and the board roofline

def test_report_has_resource_use_against_budget_and_board(zcu104):
    prog = design().prog
    t = choose_tiling(prog, zcu104)
    est = estimate(prog, t, zcu104)
    res = zcu104.resources
    assert est.resources == {
        "dsp": {"used": t.dsp, "budget": int(0.8 * res.dsp), "board": res.dsp},
        "bram36": {"used": t.bram36, "budget": int(0.8 * res.bram36), "board": res.bram36},
        "uram": {"used": t.uram, "budget": int(0.8 * res.uram), "board": res.uram},
        "lut": {"used": t.lut, "budget": int(0.8 * res.lut), "board": res.lut},
    }
    data = json.loads(json.dumps(est.to_json()))
    assert data["resources"]["dsp"]["used"] == t.dsp and data["tiling_summary"] == t.summary()
    assert {b["name"] for b in data["tiling_detail"]["buffers"]} >= {"weights", "act_tile", "acc_tile", "gelu_lut", "moe_acc"}
    table = est.table()
    assert t.summary() in table
    dsp_row = next(line for line in table.splitlines() if line.startswith("DSP "))
    assert dsp_row.split()[1:4] == [f"{t.dsp:,}", f"{int(0.8 * res.dsp):,}", f"{res.dsp:,}"]
    # A tighter budget is what the report then shows.
    tight = choose_tiling(prog, zcu104, dsp_fraction=0.5)
    assert estimate(prog, tight, zcu104).resources["dsp"]["budget"] == int(0.5 * res.dsp)


def test_board_roofline_per_layer_and_kind(zcu104):
    prog = design().prog
    t = choose_tiling(prog, zcu104)
    est = estimate(prog, t, zcu104)
    kinds = {l.name: l.kind for l in est.layers}
    assert kinds["b0.attn"] == "attention" and kinds["b1.moe"] == "moe"
    assert kinds["b0.qkv"] == kinds["patch"] == "dense matmul" and kinds["b0.ln1"] == kinds["b0.res1"] == "vector ops"
    for l in est.layers:
        expected = max(l.macs / (t.P * t.Q), l.ddr_bytes / zcu104.ddr_bytes_per_cycle)
        assert l.board_roofline == pytest.approx(expected)
        assert l.roofline_ratio == pytest.approx(expected / l.cycles) and 0 < l.roofline_ratio <= 1
    by_kind = {k.kind: k for k in est.kinds}
    assert set(by_kind) == {"attention", "moe", "dense matmul", "vector ops"}
    for kind, k in by_kind.items():
        layers = [l for l in est.layers if l.kind == kind]
        assert k.layers == len(layers) and k.cycles == sum(l.cycles for l in layers)
        assert k.roofline_ratio == pytest.approx(sum(l.board_roofline for l in layers) / k.cycles)
    summary = est.kind_summary()
    assert summary.startswith("roofline/estimate by kind: attention ") and "moe" in summary
    assert summary in est.table()


def test_on_chip_operands_follow_the_kernel(zcu104):
    """LayerNorm -> qkv / MLP fc1 / router and fc1 -> fc2 keep the operand on chip (no A read)."""
    from codesign.schedule.estimate import cached_lists, forwarded_operands

    prog = design().prog
    forwarded = {prog.instrs[i].layer for i in forwarded_operands(prog)}
    assert {"b0.qkv", "b0.gelu", "b0.mlp", "b1.gate", "b1.e0.fc2"} <= forwarded
    assert not forwarded & {"patch", "b0.proj", "b1.e0.fc1"}  # input / attention output / gathered rows
    est = estimate(prog, choose_tiling(prog, zcu104), zcu104)
    cost = {c.name: c for c in est.instrs}
    assert cost["b0.qkv"].act_read_bytes == 0 and cost["b0.proj"].act_read_bytes > 0
    # The ISA still stores the hidden rows: written, never read back.
    # fc2: only its scores (the count and token list are still on chip from fc1); it adds into the
    # on-chip accumulator, which the REQUANT32 reads without DDR traffic either
    fc2 = cost["b1.e0.fc2"]
    assert cost["b1.e0.fc1"].act_write_bytes > 0 and fc2.act_read_bytes == 4 * fc2.rows
    assert fc2.act_write_bytes == 0 and fc2.isa_extra_bytes == 4 + 4 * fc2.rows + 2 * 4 * fc2.rows * BASE.embed_dim
    requant = cost["b1.mlp"]
    assert requant.act_read_bytes == 0 and requant.isa_extra_bytes == 4 * (requant.act_write_bytes // prog.elem_bytes)
    cached = dict(zip((i.layer for i in prog.instrs), cached_lists(prog)))
    assert cached["b1.e0.fc2"] == {"count", "ids"} and cached["b1.e1.fc1"] == {"count"} and cached["b0.gelu"] == set()


def test_one_act_bank_when_two_do_not_fit():
    """M3ViT-tiny on the PYNQ-Z2: the second A bank does not fit, so MATMUL outputs are read back
    from DDR (LayerNorm outputs still stay on chip) rather than the array shrinking further."""
    from codesign.schedule.estimate import cached_lists, forwarded_operands

    tiny = ModelConfig(img_size=224, patch_size=16, embed_dim=192, depth=2, num_heads=3, moe_blocks=(1,),
                       num_experts=16, top_k=2)
    prog = design(tiny).prog
    board = load_board("pynq-z2")
    t = choose_tiling(prog, board)
    assert t.act_banks == 1 and t.bram36 <= 0.8 * board.resources.bram36
    one, two = forwarded_operands(prog, 1), forwarded_operands(prog, 2)
    layers = {prog.instrs[i].layer for i in one}
    assert one < two and "b0.qkv" in layers and "b0.mlp" not in layers and "b1.e0.fc2" not in layers
    est = estimate(prog, t, board)
    assert next(c for c in est.instrs if c.name == "b0.mlp").act_read_bytes > 0


def test_attention_runs_query_blocks_with_its_streams_beside(zcu104):
    """ATTN as op_attn runs it: per head and block of P*Q/head_dim queries, one key per cycle for
    the scores, then one for exp, sum and e.v together (no softmax pass of its own); only head 0's
    K, V and first query block come in before, and the last block's normalisation and writes after.
    GATE routes one token per step, then writes its counts and lists."""
    from codesign.schedule.estimate import DDR_ROUND_TRIP_CYCLES, attn_ends, vector_cycles
    from codesign.schedule.tiling import instr_array_cycles

    prog = design().prog
    attn = next(i for i in prog.instrs if i.op == Op.ATTN)
    a = attn.args
    t = replace(choose_tiling(prog, zcu104), P=4, Q=16)  # 64 multipliers: blocks of 64 / head_dim queries
    qb = 4 * 16 // a["head_dim"]
    blocks = -(-a["tokens"] // qb)
    assert instr_array_cycles(attn, 0, 4, 16, t.max_head_dim, t.max_tokens) == a["heads"] * blocks * 2 * a["tokens"]
    assert instr_array_cycles(attn, 0, 16, 4, t.max_head_dim, t.max_tokens) == a["heads"] * blocks * 2 * a["tokens"]
    row_beats = -(-a["head_dim"] // 16)
    last = a["tokens"] - (blocks - 1) * qb
    assert attn_ends(attn, t, 1, 16) == (DDR_ROUND_TRIP_CYCLES + (2 * a["tokens"] + qb) * row_beats,
                                         last * (1 + row_beats))
    assert vector_cycles(attn, 0, 16, 4) == 0
    gate = next(i for i in prog.instrs if i.op == Op.GATE)
    g = gate.args
    # one routing step per token, then the counts and token / score lists written
    assert vector_cycles(gate, 0, 64, 32, 16) == g["tokens"] + -(-(4 * g["experts"] + 8 * g["tokens"] * g["top_k"]) // 16)


def test_weight_tiles_spread_over_the_weight_ports():
    """A tile's row q comes over port q % W; the bias follows the rows of port W-1, the multipliers
    those of port (W-2) % W. With one port everything queues on gmem."""
    from codesign.schedule.estimate import tile_read_beats, transfer_cycles

    # 64 rows of k=192 int8 at 16-byte beats: 12 beats a row; bias and mult 64*4/16 = 16 beats each
    assert tile_read_beats(64, 192, 1, 16, 1) == 64 * 12 + 16 + 16
    assert tile_read_beats(64, 192, 1, 16, 4) == 16 * 12 + 16
    assert tile_read_beats(64, 192, 1, 16, 4, has_mult=False) == 16 * 12 + 16
    assert tile_read_beats(5, 192, 1, 16, 4) == 2 * 12  # ports 0..3 get rows {0,4},{1},{2},{3}
    assert tile_read_beats(0, 192, 1, 16, 4) == 0
    # weights over 4 ports, activations over gmem, all under the DDR
    assert transfer_cycles(6400, 0, 0, 1e9, 16, 4) == 100 and transfer_cycles(6400, 0, 0, 1e9, 16, 1) == 400
    assert transfer_cycles(6400, 1600, 0, 1e9, 16, 4) == 100 and transfer_cycles(6400, 3200, 0, 1e9, 16, 4) == 200
    assert transfer_cycles(6400, 1600, 0, 40, 16, 4) == 200  # (6400 + 1600) / 40


def test_four_weight_ports_speed_up_the_expert_weights(zcu104):
    """M3ViT-tiny-sized experts: their weight-bound MATMULs run on 4 ports about 4x faster; the
    kernel's on-chip accumulator leaves its zeros out of the HLS traffic but not the ISA's."""
    tiny = ModelConfig(img_size=224, patch_size=16, embed_dim=192, depth=2, num_heads=3, moe_blocks=(1,),
                       num_experts=16, top_k=2)
    prog = design(tiny).prog
    one_port = replace(zcu104, memory=replace(zcu104.memory, weight_ports=1))
    t = choose_tiling(prog, zcu104)
    four, one = estimate(prog, t, zcu104), estimate(prog, t, one_port)
    fc1 = {e.name: e for e in four.instrs}["b1.e0.fc1"], {e.name: e for e in one.instrs}["b1.e0.fc1"]
    assert fc1[0].weight_bytes == fc1[1].weight_bytes > 50_000
    c = fc1[0]  # 4 weight ports of 16 bytes a cycle: the DDR's 67 bytes a cycle bind
    assert c.memory_cycles == math.ceil((c.weight_bytes + c.act_read_bytes + c.act_write_bytes)
                                        / zcu104.ddr_bytes_per_cycle) > c.weight_bytes / 64
    assert fc1[1].memory_cycles == -(-(fc1[1].weight_bytes + fc1[1].act_read_bytes) // 16)
    moe = [{l.name: l for l in e.layers}["b1.moe"] for e in (four, one)]
    assert moe[0].cycles < 0.6 * moe[1].cycles and four.weight_ports == 4 and one.weight_ports == 1
    gate = next(c for c in four.instrs if c.op == "GATE")
    g = next(i for i in prog.instrs if i.op == Op.GATE).args
    assert gate.act_write_bytes == 4 * g["experts"] + 2 * 4 * g["tokens"] * g["top_k"]  # no zeros written
    assert moe[0].isa_ddr_bytes - moe[0].ddr_bytes >= 4 * g["tokens"] * g["dim"]
    dense = {l.name: l for l in four.layers}["b0.mlp"]
    assert dense.isa_ddr_bytes == dense.ddr_bytes
