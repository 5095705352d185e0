"""Golden model: program interpreter agreement, determinism, input checks."""
import numpy as np
import pytest

from codesign.model.config import ModelConfig
from codesign.quant import arith as A
from codesign.quant.golden import run_golden, split_heads
from codesign.schedule.isa import decode_program
from codesign.schedule.program import read_region
from codesign.testing import make_test_design, run_program

SMALL = ModelConfig(img_size=16, embed_dim=32, num_heads=2, depth=2, moe_blocks=(1,), num_experts=4, top_k=1)
# M3ViT's structure at a toy size: a non-square image, no final norm, ViT-up heads, task-conditioned gates.
M3VIT_LIKE = dict(img_size=(16, 32), embed_dim=32, num_heads=2, depth=2, moe_blocks=(1,), num_experts=4, top_k=2,
                  final_norm=False, head="vit_up", head_channels=8)


@pytest.mark.parametrize("cfg,wbits,abits", [
    (None, 8, 8), (SMALL, 4, 8), (SMALL, 8, 12), (SMALL, 16, 16), (SMALL, 3, 3),
    (ModelConfig(gate_type="task_onehot", tasks=ModelConfig().tasks), 8, 8),
    (ModelConfig(**M3VIT_LIKE), 8, 8), (ModelConfig(**M3VIT_LIKE, gate_type="task_embed", gate_task_dim=8), 8, 8),
    (ModelConfig(**M3VIT_LIKE, gate_type="shared"), 8, 8),
])
def test_program_matches_golden_bit_exactly(cfg, wbits, abits):
    design = make_test_design(cfg, wbits=wbits, abits=abits)
    for vec in design.vectors:
        act = run_program(design, vec)
        golden = run_golden(design.qm, vec.x_q, vec.task)
        for name in design.prog.trace_names:
            assert np.array_equal(read_region(design.prog, act, name), golden.trace[name]), name


def test_values_respect_the_width():
    design = make_test_design(SMALL, wbits=4, abits=6)
    golden = run_golden(design.qm, design.vectors[0].x_q, 0)
    for name, t in golden.trace.items():
        assert t.min() >= -32 and t.max() <= 31, name
    assert design.qm.blocks[0].qkv.w.min() >= -8 and design.qm.blocks[0].qkv.w.max() <= 7


def test_golden_is_deterministic():
    a = make_test_design(seed=3)
    b = make_test_design(seed=3)
    assert a.prog.code == b.prog.code and a.prog.wgt == b.prog.wgt
    ra = run_golden(a.qm, a.vectors[0].x_q, 1).output
    rb = run_golden(b.qm, b.vectors[0].x_q, 1).output
    assert np.array_equal(ra, rb)


def test_tasks_route_differently():
    design = make_test_design()
    x = design.vectors[0].x_q
    r0, r1 = run_golden(design.qm, x, 0), run_golden(design.qm, x, 1)
    assert any(not np.array_equal(r0.routing[b], r1.routing[b]) for b in r0.routing)


def test_unused_experts_are_never_read():
    design = make_test_design(SMALL)
    prog = design.prog
    vec = design.vectors[0]
    golden = run_golden(design.qm, vec.x_q, vec.task)
    used = set(np.unique(golden.routing[1]).tolist())
    fc1 = [i for i in decode_program(prog.code) if i.op.name == "MATMUL" and i.flags & 8]
    assert len(fc1) == 2 * SMALL.num_experts  # fc1 + fc2 per expert, each skipped at count 0
    act = run_program(design, vec)
    counts = read_region(prog, act, "b1.gate.counts")
    assert {e for e, c in enumerate(counts) if c > 0} == used
    assert counts.sum() == SMALL.num_tokens * SMALL.top_k


def test_bad_task_and_shape_rejected():
    design = make_test_design(SMALL)
    x = design.vectors[0].x_q
    with pytest.raises(ValueError, match="task id 5"):
        run_golden(design.qm, x, 5)
    with pytest.raises(ValueError, match="shape"):
        run_golden(design.qm, x[:-1], 0)


def test_trace_is_the_compared_layers_and_detail_holds_the_rest():
    design = make_test_design(SMALL)
    res = run_golden(design.qm, design.vectors[0].x_q, 0, detail=True)
    assert list(res.trace) == design.prog.trace_names == design.qm.trace_names()
    t, e = SMALL.num_tokens, SMALL.num_experts
    used = [i for i in range(e) if f"b1.e{i}.tokens" in res.detail]
    assert sorted(res.detail) == sorted(
        ["b0.attn.scores", "b0.attn.exp", "b0.attn.probs", "b0.fc1", "b1.attn.scores", "b1.attn.exp",
         "b1.attn.probs", "b1.gate.logits",
         "b1.gate.probs"] + [f"b1.e{i}.{part}" for i in used for part in ("tokens", "fc1", "gelu", "out")])
    assert res.detail["b1.attn.probs"].shape == (SMALL.num_heads, t, t)
    assert res.detail["b1.gate.logits"].shape == res.detail["b1.gate.probs"].shape == (t, e)
    assert sum(len(res.detail[f"b1.e{i}.tokens"]) for i in used) == t * SMALL.top_k
    assert res.detail["b1.e%d.fc1" % used[0]].shape[1] == SMALL.moe_hidden


@pytest.mark.parametrize("abits", [8, 12])
def test_detail_reproduces_the_traced_layers(abits):
    """The detail tensors are the ones the layer outputs are made of, not a parallel recomputation."""
    design = make_test_design(SMALL, wbits=8, abits=abits)
    qm, res = design.qm, run_golden(design.qm, design.vectors[0].x_q, 1, detail=True)
    det = res.detail
    for i, blk in enumerate(qm.blocks):
        e, at = det[f"b{i}.attn.exp"], blk.attn
        assert e.max(-1).min() == 2**A.EXP_FRAC  # every row's maximum score gets EXP[0]
        assert np.allclose(det[f"b{i}.attn.probs"].sum(-1), 1.0)
        heads = []
        for eh, (_, _, v) in zip(e, split_heads(res.trace[f"b{i}.qkv"], SMALL.num_heads)):
            r, shift = A.recip_parts(eh.sum(-1, keepdims=True))
            t = A.rshift_round((eh @ v) * r, A.RECIP_FRAC + shift - A.ATTN_FRAC)
            heads.append(A.requant(t, at.out_mult, at.out_shift, abits))
        assert np.array_equal(np.concatenate(heads, axis=1), res.trace[f"b{i}.attn"])
    dense = qm.blocks[0].mlp[0]
    assert np.array_equal(A.lut_lookup(det["b0.fc1"], dense.gelu, abits), res.trace["b0.gelu"])
    moe = qm.blocks[1].mlp
    assert np.array_equal(A.topk_experts(det["b1.gate.logits"], moe.top_k), res.routing[1])
    acc = np.zeros(res.trace["b1.mlp"].shape, np.int64)
    for e in range(SMALL.num_experts):
        if f"b1.e{e}.tokens" in det:
            tokens = det[f"b1.e{e}.tokens"]
            assert np.array_equal(A.lut_lookup(det[f"b1.e{e}.fc1"], moe.fc1[e].gelu, abits), det[f"b1.e{e}.gelu"])
            acc[tokens] += det["b1.gate.probs"][tokens, e][:, None] * det[f"b1.e{e}.out"]
    assert np.array_equal(A.requant(acc, moe.out_mult, moe.out_shift, abits), res.trace["b1.mlp"])


def test_detail_is_only_computed_on_request():
    design = make_test_design(SMALL)
    plain = run_golden(design.qm, design.vectors[0].x_q, 0)
    full = run_golden(design.qm, design.vectors[0].x_q, 0, detail=True)
    assert plain.detail == {} and full.detail
    assert all(np.array_equal(plain.trace[k], full.trace[k]) for k in full.trace)


def test_without_a_final_norm_the_output_is_the_last_residual_stream():
    design = make_test_design(ModelConfig(**M3VIT_LIKE), images=1)
    qm, prog, vec = design.qm, design.prog, design.vectors[0]
    assert qm.norm is None and "norm" not in prog.trace_names and "norm" not in prog.regions
    assert qm.output_name == prog.trace_names[-1] == "b1.res2" and prog.output.name == "b1.res2"
    assert qm.output_scale == qm.scales["b1.res2"]
    golden = run_golden(qm, vec.x_q, vec.task)
    assert np.array_equal(golden.output, golden.trace["b1.res2"])
    assert np.array_equal(read_region(prog, run_program(design, vec), prog.output.name), golden.output)
    assert prog.input.shape == (1 + 2 * 4, 3 * 64)  # a 2x4 patch grid plus the cls row


def test_the_task_embedding_gate_is_folded_into_a_per_task_bias():
    design = make_test_design(ModelConfig(**M3VIT_LIKE, gate_type="task_embed", gate_task_dim=8))
    gate_b = design.qm.blocks[1].mlp.gate_b
    assert gate_b.shape == (2, 4) and not np.array_equal(gate_b[0], gate_b[1])


@pytest.mark.parametrize("op,field", [("MATMUL", "shift"), ("ATTN", "score_shift"), ("REQUANT32", "shift")])
def test_a_shift_past_the_hardwares_shifters_is_refused(op, field):
    from codesign.schedule.isa import Instr, Op
    Instr(Op[op], args={field: A.MAX_SHIFT}, obits=8).encode()
    with pytest.raises(ValueError, match=f"{field} = {A.MAX_SHIFT + 1} exceeds {A.MAX_SHIFT}"):
        Instr(Op[op], args={field: A.MAX_SHIFT + 1}, obits=8).encode()
