"""cocotb driver of cs_router (rtl_templates/units/cs_router.v.j2), run by tests/test_rtl_router.py.

$CS_ROUTER_JOB/job.json: per case the configuration and the tokens' logits, fed one token per
cycle (with the case's gaps); result.json: every expert's count and list (token ids, scores), and
the cycles from the first token in to the last list append.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge


def pack(values, width: int) -> int:
    mask, word = (1 << width) - 1, 0
    for lane, value in enumerate(values):
        word |= (int(value) & mask) << (lane * width)
    return word


async def run_case(dut, case: dict, p: dict) -> dict:
    dut.cfg_experts.value = case["experts"]
    dut.cfg_topk.value = case["top_k"]
    dut.cfg_sm.value = case["sm"]
    dut.cfg_ss.value = case["ss"]
    dut.cfg_qp.value = case["qp"]
    dut.clear.value = 1
    await RisingEdge(dut.clk)
    dut.clear.value = 0
    gaps = random.Random(case["seed"])
    t0 = None
    for row in case["logits"]:
        while case["gappy"] and gaps.random() < 0.3:
            dut.in_valid.value = 0
            await RisingEdge(dut.clk)
        dut.in_valid.value = 1
        dut.in_logits.value = pack(list(row) + [0] * (p["EMAX"] - len(row)), p["LW"])
        await RisingEdge(dut.clk)
        t0 = t0 if t0 is not None else cocotb.utils.get_sim_time("ns")
    dut.in_valid.value = 0
    cycles = len(case["logits"])
    while True:
        await RisingEdge(dut.clk)
        await ReadOnly()
        cycles += 1
        if not int(dut.busy.value):
            break
    await RisingEdge(dut.clk)
    counts = [(int(dut.counts.value.to_unsigned()) >> (32 * e)) & 0xFFFFFFFF for e in range(case["experts"])]
    lists = []
    for e in range(case["experts"]):
        ids, scores = [], []
        for i in range(counts[e]):
            dut.rd_e.value = e
            dut.rd_i.value = i
            await ReadOnly()
            ids.append(int(dut.rd_idx.value.to_unsigned()))
            scores.append(int(dut.rd_score.value.to_unsigned()))
            await RisingEdge(dut.clk)
        lists.append({"ids": ids, "scores": scores})
    return {"name": case["name"], "counts": counts, "lists": lists, "cycles": cycles}


@cocotb.test()
async def router_cases(dut):
    job = Path(os.environ["CS_ROUTER_JOB"])
    spec = json.loads((job / "job.json").read_text())
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst_n.value = 0
    dut.in_valid.value = 0
    dut.clear.value = 0
    dut.rd_e.value = 0
    dut.rd_i.value = 0
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst_n.value = 1
    await RisingEdge(dut.clk)
    results = [await run_case(dut, case, spec["params"]) for case in spec["cases"]]
    (job / "result.json").write_text(json.dumps({"cases": results}))
