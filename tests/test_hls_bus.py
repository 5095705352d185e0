"""The generated kernel's pipelined loops against docs/UARCH.md's bus rule: at most one read and one
write per m_axi bundle per iteration (else Vitis schedules the loop at II=2), read off the source
(codesign.emit.hls_check): every bundle access goes through an accessor of firmware/ops/axi.h."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from codesign.boards import load_board
from codesign.emit.hls import render_hls
from codesign.emit.hls_check import bus_violations, pipelined_loops, read_sources
from codesign.testing import make_test_design, write_test_data

BOARD = load_board("zcu104")


@pytest.fixture(scope="module")
def design():
    return make_test_design()


def _sources(tmp_path: Path, design, weight_ports: int) -> dict[str, str]:
    board = replace(BOARD, memory=replace(BOARD.memory, weight_ports=weight_ports))
    write_test_data(tmp_path / "data", design)
    render_hls(tmp_path, design.prog, board)
    return read_sources(tmp_path / "firmware")


@pytest.mark.parametrize("weight_ports", [1, 4])
def test_no_pipelined_loop_uses_a_bundle_twice(design, tmp_path, weight_ports):
    """With one master everything is on gmem; with four the weights have their own."""
    loops = pipelined_loops(_sources(tmp_path, design, weight_ports))
    assert bus_violations(loops) == []
    by_name = {(lp.file, lp.function): lp for lp in loops}
    mac = by_name[("ops/array.h", "array_loop")].accesses  # weights in, the drain's beats out
    if weight_ports == 1:
        assert mac == {("gmem", "read"): 1, ("gmem", "write"): 1}
    else:
        assert mac == {("gmem", "write"): 1, **{(f"wgt{p}", "read"): 1 for p in range(4)}}
    assert by_name[("ops/layernorm.h", "op_layernorm")].accesses == {("gmem", "read"): 1, ("gmem", "write"): 1}
    # an ADD's wgt operand larger than a weight slot streams over the first weight master
    add_wgt = {} if weight_ports == 1 else {("wgt0", "read"): 1}
    assert by_name[("ops/vector.h", "op_add")].accesses == {("gmem", "read"): 1, ("gmem", "write"): 1, **add_wgt}
    assert len(loops) >= 14 and all(lp.entry_marked for lp in loops)  # the counting build sees every entry


def test_a_second_read_in_a_loop_body_is_caught(design, tmp_path):
    """Mutation: LayerNorm reading its input twice per iteration over gmem, directly or through a
    helper, is reported; a mutation in a loop that is not pipelined is not."""
    sources = _sources(tmp_path, design, 4)
    ln = sources["ops/layernorm.h"]
    read = "gmem_read(act, in_at + c);"
    assert read in ln
    twice = ln.replace(read, "gmem_read(act, in_at + c); (void)gmem_read(act, in_at);")
    found = bus_violations(pipelined_loops({**sources, "ops/layernorm.h": twice}))
    assert found == [next(str(lp) for lp in pipelined_loops({**sources, "ops/layernorm.h": twice})
                          if lp.function == "op_layernorm")]
    assert "gmem read x2" in found[0]
    helper = "static inline axi_word_t twice(const axi_word_t *a, uint32_t i) { return gmem_read(a, i); }\n"
    via = helper + ln.replace(read, "gmem_read(act, in_at + c); (void)twice(act, in_at);")
    assert len(bus_violations(pipelined_loops({**sources, "ops/layernorm.h": via}))) == 1
    top = sources["codesign_top.cpp"]
    dispatch = "        fetch(program, pc, word);\n"
    assert dispatch in top
    outside = top.replace(dispatch, dispatch + "        (void)gmem_read(act, 0); (void)gmem_read(act, 1);\n")
    assert bus_violations(pipelined_loops({**sources, "codesign_top.cpp": outside})) == []
