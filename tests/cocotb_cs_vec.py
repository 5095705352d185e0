"""cocotb driver of the cs_vec harness (tests/rtl/cs_vec_tb.v), run by tests/test_rtl_vec.py.

Data in, data out, no checking here: $CS_VEC_JOB/job.json lists the cases (configuration, input
beats as lane values, GELU tables, LayerNorm gamma / beta, and seeds for the input gaps and output
stalls); each case's output beats (raw out_y words and tags) and the cycle of every input and
output handshake go to $CS_VEC_JOB/result.json. The pytest side compares them with arith.py.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

MAX_CYCLES_PER_BEAT = 64   # a case that runs longer than this is stuck


def pack(values, width: int) -> int:
    """Lane l of the word = values[l] as a `width`-bit two's complement field at bits [l*width +: width]."""
    mask = (1 << width) - 1
    word = 0
    for lane, value in enumerate(values):
        word |= (int(value) & mask) << (lane * width)
    return word


def read(signal) -> int:
    value = signal.value   # LogicArray, or Logic for one bit; X or Z raises
    return int(value.to_unsigned()) if hasattr(value, "to_unsigned") else int(value)


class Shape:
    def __init__(self, p: dict):
        self.epb, self.ebits, self.abits = p["EPB"], 8 * p["EB"], p["ABITS"]
        self.acc_w, self.mult_w = p["ACC_W"], p["MULT_W"]


async def tick(dut):
    await RisingEdge(dut.clk)


async def load_tables(dut, shape: Shape, case: dict) -> None:
    """GELU tables (one beat a cycle) and the param ring (gamma / beta beats) before the case runs."""
    for sel, table in enumerate(case.get("luts", [])):
        for beat in range(len(table) // shape.epb):
            dut.lut_we.value, dut.lut_wsel.value, dut.lut_waddr.value = 1, sel, beat
            dut.lut_wdata.value = pack(table[beat * shape.epb:(beat + 1) * shape.epb], shape.ebits)
            await tick(dut)
    dut.lut_we.value = 0
    gamma, beta = case.get("gamma", []), case.get("beta", [])
    for beat in range(len(gamma) // shape.epb):
        dut.pw_we.value, dut.pw_addr.value = 1, beat
        dut.pw_gamma.value = pack(gamma[beat * shape.epb:(beat + 1) * shape.epb], 32)
        dut.pw_beta.value = pack(beta[beat * shape.epb:(beat + 1) * shape.epb], 32)
        await tick(dut)
    dut.pw_we.value = 0


def configure(dut, shape: Shape, case: dict) -> None:
    cfg = case["cfg"]
    mmask = (1 << shape.mult_w) - 1
    dut.cfg_mode.value = case["mode"]
    dut.cfg_shift.value = cfg.get("shift", 0)
    dut.cfg_ma.value = cfg.get("ma", 0) & mmask
    dut.cfg_mb.value = cfg.get("mb", 0) & mmask
    dut.cfg_gelu.value = cfg.get("gelu", 0)
    dut.cfg_lut_sel.value = cfg.get("lut_sel", 0)
    dut.cfg_dim.value = cfg.get("dim", 0)
    dut.cfg_eps.value = cfg.get("eps", 0)
    dut.cfg_ln_shift.value = cfg.get("ln_shift", 0)


def drive_beat(dut, shape: Shape, beats: dict, i: int) -> None:
    for field, signal, width in (("acc", dut.in_acc, shape.acc_w), ("bias", dut.in_bias, 32),
                                 ("mult", dut.in_mult, shape.mult_w), ("x", dut.in_x, shape.ebits)):
        signal.value = pack(beats[field][i], width) if field in beats else 0
    dut.in_tag.value = i


async def run_case(dut, shape: Shape, case: dict) -> dict:
    configure(dut, shape, case)
    await load_tables(dut, shape, case)
    beats = case["beats"]
    n = len(next(iter(beats.values())))
    two_streams = case["mode"] == 1
    rng = random.Random(case.get("seed", 0))
    p_gap, p_bgap, p_stall = case.get("p_gap", 0.0), case.get("p_bgap", 0.0), case.get("p_stall", 0.0)
    i = ib = cycle = refused = 0
    out, tags, in_cycles, out_cycles = [], [], [], []
    while len(out) < n:
        offer = i < n and rng.random() >= p_gap
        dut.in_valid.value = int(offer)
        if offer:
            drive_beat(dut, shape, beats, i)
        offer_b = two_streams and ib < n and rng.random() >= p_bgap
        dut.inb_valid.value = int(offer_b)
        if offer_b:
            dut.inb_y.value = pack(beats["y"][ib], shape.ebits)
        dut.out_ready.value = int(rng.random() >= p_stall)
        await ReadOnly()
        in_fire = offer and read(dut.in_ready) == 1
        b_fire = offer_b and read(dut.inb_ready) == 1
        refused += int(offer and not in_fire)
        if read(dut.out_valid) and read(dut.out_ready):
            out.append(str(read(dut.out_y)))   # JSON keeps wide words exactly as strings
            tags.append(read(dut.out_tag))
            out_cycles.append(cycle)
        await tick(dut)
        if in_fire:
            in_cycles.append(cycle)
            i += 1
        ib += int(b_fire)
        cycle += 1
        if cycle > MAX_CYCLES_PER_BEAT * (n + 64):
            raise RuntimeError(f"case {case['name']}: {len(out)} of {n} beats after {cycle} cycles")
    dut.in_valid.value = dut.inb_valid.value = 0
    dut.out_ready.value = 1
    while True:   # the next case changes the configuration: wait until nothing is in flight
        await ReadOnly()
        if read(dut.idle):
            break
        await tick(dut)
    await tick(dut)
    return {"name": case["name"], "out": out, "tags": tags, "in_cycles": in_cycles,
            "out_cycles": out_cycles, "refused": refused, "b_beats": ib}


@cocotb.test()
async def cs_vec_cases(dut):
    job_dir = Path(os.environ["CS_VEC_JOB"])
    job = json.loads((job_dir / "job.json").read_text())
    shape = Shape(job["params"])
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    for name in ("in_valid", "inb_valid", "lut_we", "pw_we", "cfg_mode"):
        getattr(dut, name).value = 0
    dut.out_ready.value = 1
    dut.rst_n.value = 0
    for _ in range(3):
        await tick(dut)
    dut.rst_n.value = 1
    await tick(dut)
    results = []
    for case in job["cases"]:
        results.append(await run_case(dut, shape, case))
        (job_dir / "result.json").write_text(json.dumps({"cases": results}))
