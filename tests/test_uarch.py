"""codesign.schedule.uarch: the parameters the kernels are generated with, and the hardware rules of
docs/UARCH.md that a program must follow; isa.execute checks the accumulator width."""
from __future__ import annotations

import dataclasses

import pytest

from codesign.schedule.isa import AccumulatorOverflow, Flag, Instr, Op, execute
from codesign.schedule.program import load_input
from codesign.schedule.uarch import HardwareRuleError, check_program, derive_uarch
from codesign.testing import make_test_design


@pytest.fixture(scope="module")
def design():
    return make_test_design()


def _uarch(prog, P=4, Q=32, **kw):
    return derive_uarch(prog, P, Q, 16, 4, **kw)


def _with(prog, instrs):
    return dataclasses.replace(prog, instrs=instrs)


def test_accumulator_width_is_the_widest_exact_sum(design):
    """Default model: attention's e.v over 17 tokens needs 15 + 7 + 5 + 1 = 28 bits (MATMUL k=256: 23)."""
    u = _uarch(design.prog)
    assert u.acc_w == 28 and u.packed and u.packed_scores
    wide = make_test_design(abits=12, wbits=8)
    assert _uarch(wide.prog).acc_w == 32 and not _uarch(wide.prog).packed


def test_interpreter_checks_every_sum_against_the_width(design):
    prog, vec = design.prog, design.vectors[0]
    u = _uarch(prog)
    for bits, ok in ((u.acc_w, True), (20, False)):
        act = bytearray(prog.act_bytes)
        load_input(prog, act, vec.x_q)
        if ok:
            assert execute(prog.code, prog.wgt, act, vec.task, prog.abits, prog.elem_bytes, acc_bits=bits) == len(prog.instrs)
        else:
            with pytest.raises(AccumulatorOverflow, match="does not fit 20-bit accumulators"):
                execute(prog.code, prog.wgt, act, vec.task, prog.abits, prog.elem_bytes, acc_bits=bits)


def test_a_uarch_narrower_than_the_program_is_refused(design):
    u = dataclasses.replace(_uarch(design.prog), acc_w=22)
    with pytest.raises(HardwareRuleError, match=r"^instruction 0 \(MATMUL patch\): needs 23-bit accumulators, the "
                                                r"array has 22$"):
        check_program(design.prog, u)


def test_derived_copies_and_moe_sizes(design):
    u = _uarch(design.prog, P=3, Q=96)
    c = u.constants()
    assert (c["EXP_COPIES"], c["ROUTER_EXP_COPIES"], c["G"], c["GW"], c["EV_COLS"]) == (2, 4, 1, 6, 16)
    assert (u.acc_tokens, u.acc_row_words, u.acc_words) == (17, 4, 68)
    off = _uarch(design.prog, acc_on_chip=False)
    assert (off.acc_tokens, off.acc_row_words, off.acc_words) == (0, 0, 0)


def _gate_and_first_scatter(prog):
    gate = next(i for i in prog.instrs if i.op == Op.GATE)
    fc2 = next(i for i in prog.instrs if i.op == Op.MATMUL and i.flags & Flag.SCATTER)
    return gate, fc2


def test_moe_rules(design):
    """Token lists, counts and the accumulator stay on chip from their GATE on: an expert MATMUL must
    read the last GATE's lists, and (with moe_acc) add whole rows into its accumulator."""
    prog = design.prog
    u = _uarch(prog)
    check_program(prog, u)
    gate, fc2 = _gate_and_first_scatter(prog)
    at = prog.instrs.index(fc2)

    def refused(ins, message, uarch=u):
        with pytest.raises(HardwareRuleError, match=rf"^instruction {at} \(MATMUL {fc2.layer}\): {message}"):
            check_program(_with(prog, prog.instrs[:at] + [ins] + prog.instrs[at + 1:]), uarch)

    refused(dataclasses.replace(fc2, args=dict(fc2.args, idx_addr=fc2.args["idx_addr"] + 4)),
            "its idx_addr is not the start of one of the last GATE's token lists")
    refused(dataclasses.replace(fc2, args=dict(fc2.args, score_addr=fc2.args["score_addr"] + 64)),
            "its score_addr is not expert 0's score list of the last GATE")
    half = dict(fc2.args, n=fc2.args["n"] // 2)
    refused(dataclasses.replace(fc2, args=half), "a SCATTER must add whole rows into the last GATE's accumulator")
    check_program(_with(prog, prog.instrs[:at] + [dataclasses.replace(fc2, args=half)] + prog.instrs[at + 1:]),
                  _uarch(prog, acc_on_chip=False))  # in DDR any rows may be added into
    wide = dataclasses.replace(gate, args=dict(gate.args, experts=20))
    with pytest.raises(HardwareRuleError, match=r"experts=20 > min\(Q, EPB\)=16"):
        check_program(_with(prog, [wide]), u)


def test_the_accumulator_is_kept_until_its_last_scatter(design):
    """With moe_acc on chip no instruction may write the accumulator's DDR bytes from its GATE to its
    REQUANT32 *and* its last SCATTER: the RTL's moe_acc mirrors DDR (written through) and a SCATTER
    adds into moe_acc, so a SCATTER after an overwrite would add into a stale copy.  After both, a
    write is fine (cs_seq drops the mirror; the next REQUANT32 streams from DDR)."""
    prog = design.prog
    u = _uarch(prog)
    gate, fc2 = _gate_and_first_scatter(prog)
    g, rq = prog.instrs.index(gate), next(pc for pc, i in enumerate(prog.instrs) if i.op == Op.REQUANT32)
    over = Instr(Op.ADD, 0, dict(a_addr=gate.args["x_addr"], b_addr=gate.args["x_addr"], out_addr=gate.args["acc_addr"],
                                 count=16, ma=1, mb=1, shift=0), obits=8)
    late = prog.instrs[:rq + 1] + [over]
    check_program(_with(prog, late), u)
    with pytest.raises(HardwareRuleError, match=rf"^instruction {rq + 1} \(ADD \): it writes into the accumulator "
                                                rf"of the GATE at {g}"):
        check_program(_with(prog, late + [fc2]), u)
    check_program(_with(prog, late + [fc2]), _uarch(prog, acc_on_chip=False))   # in DDR: no copy to go stale


def test_bank_capacity_is_a_parameter_with_a_floor(design):
    """By default a bank holds the largest tensor (17 x 256: the MLP hidden rows, 272 beats); a
    smaller capacity streams what exceeds it, down to bank_min_beats: P rows of the widest k (4 x 256
    / 16 = 64 beats) and Qb queries plus P keys of one head (21 beats). Below it the program is
    refused naming the instruction."""
    from codesign.schedule.uarch import bank_min_beats, bank_need_beats

    prog = design.prog
    assert _uarch(prog).bank_beats == bank_need_beats(prog, 16) == 272
    assert _uarch(prog, bank_beats=10 ** 6).bank_beats == 272  # never more than the largest tensor
    least = bank_min_beats(prog, 4, 32, 16)
    assert least == 64
    u = _uarch(prog, bank_beats=least)
    check_program(prog, u)
    assert u.chunk_rows(256) == 4 and not u.fits_bank(17, 256) and u.fits_bank(4, 256)
    with pytest.raises(HardwareRuleError, match=r"^instruction \d+ \(MATMUL .*\): its A operand \(17 rows of k=256\) "
                                                r"exceeds a bank \(63 beats\), which does not hold one block of P=4 rows$"):
        check_program(prog, _uarch(prog, bank_beats=least - 1))


def test_attention_plan_whole_head_or_key_tiles(design):
    """17 tokens of 4 heads of 16 (qkv rows of 192 = 12 beats): whole in 204 beats, per head (3
    beats a row) in 51, else key tiles of what the bank holds beside Qb = 17 queries (1 beat each),
    in whole blocks of P = 4 keys; with too few keys for one block the ATTN is refused."""
    attn = next(i for i in design.prog.instrs if i.op == Op.ATTN)
    assert (attn.args["tokens"], attn.args["heads"], attn.args["head_dim"]) == (17, 4, 16)
    plan = lambda beats: _uarch(design.prog, bank_beats=beats).attn_plan(17, 4, 16)  # noqa: E731
    assert plan(204) == ("whole", 17) and plan(203) == ("head", 17) and plan(51) == ("head", 17)
    assert plan(50) == ("keys", 32) and plan(24) == ("keys", 4) and plan(20) == ("keys", 0)
    prog = _with(design.prog, [attn])
    check_program(prog, derive_uarch(prog, 4, 32, 16, 4, bank_beats=21))
    with pytest.raises(HardwareRuleError, match=r"one head's q, k, v exceed a bank \(20 beats\), which does not "
                                                r"hold 17 queries and a tile of 4 keys"):
        check_program(prog, derive_uarch(prog, 4, 32, 16, 4, bank_beats=20))


def test_accumulator_in_ddr_bounds_acc_old(design):
    """Without moe_acc a SCATTER reads old int32 rows into acc_old: at least 256 rows or 8 blocks of
    P, at most the tokens in whole blocks; the memory table counts it."""
    from codesign.schedule.uarch import memories

    on_chip, in_ddr = _uarch(design.prog), _uarch(design.prog, acc_on_chip=False)
    assert on_chip.acc_old_rows == 0 and "acc_old" not in {m.name for m in memories(on_chip)}
    assert in_ddr.acc_old_rows == 20  # 17 tokens: 5 blocks of 4
    acc_old = next(m for m in memories(in_ddr) if m.name == "acc_old")
    assert (acc_old.width, acc_old.depth) == (128, 20 * 32 // 4)
    big = dataclasses.replace(in_ddr, max_tokens=4096, P=32)
    assert big.acc_old_rows == 256
