"""codesign.schedule.uarch: the parameters the kernels are generated with, and the hardware rules of
docs/UARCH.md that a program must follow; isa.execute checks the accumulator width."""
from __future__ import annotations

import dataclasses

import pytest

from codesign.schedule.isa import AccumulatorOverflow, Flag, Op, execute
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
