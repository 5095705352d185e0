"""Render rtl_templates/*.v.j2 into plain Verilog files.

All RTL goes through Jinja2 (even files without template variables) so that
the generator treats every hardware source uniformly; StrictUndefined makes a
missing parameter a hard error instead of silently emitting empty Verilog.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jinja2
import numpy as np

from ..emit.tcl import WGT_REG_STRIDE, weight_pointer_registers  # the HLS kernel's register map
from ..resources import resource_dir

TEMPLATE_DIR = resource_dir("rtl_templates")
# The kernel's top module, the name a Vitis HLS export of the kernel has too.
TOP_MODULE = "codesign_top"
RTL_RECORD = "rtl.json"  # beside the rendered Verilog: what the core is (its array, ports, bus)
TEMPLATE_SUFFIX = ".v.j2"
# The vector unit (docs/UARCH.md, rtl_templates/README.md "Vector unit"): a standalone module with
# its helpers, rendered alone by render_units() (tests/test_rtl_vec.py) and with the core by
# render_uarch_rtl.
VEC_UNIT_TOP = "cs_vec"
UNIT_TEMPLATES = ("cs_vec.v.j2", "cs_mul.v.j2", "cs_rshift_round.v.j2", "cs_saturate.v.j2", "cs_rsqrt_rom.v.j2")


def _addr_bits(depth: int) -> int:
    return max(1, (int(depth) - 1).bit_length())


def lut_tables() -> dict:
    """The fixed ROM contents (EXP, RECIP, RSQRT) exactly as codesign.quant.arith has them, and
    the RECIP table's mantissa bits (its index is RECIP_MBITS - 1 bits)."""
    from ..quant import arith

    assert len(arith.RECIP) == 1 << (arith.RECIP_MBITS - 1)
    return {"exp": [int(v) for v in arith.EXP], "recip": [int(v) for v in arith.RECIP],
            "rsqrt": [int(v) for v in arith.RSQRT], "recip_mbits": arith.RECIP_MBITS}


MAX_WEIGHT_PORTS = 16


def weight_port_params(weight_ports: int) -> dict:
    """Template variables `wp` derived from `weight_ports` (W, the number of weight AXI masters).

    ctrl_aw: C_S_AXI_CONTROL_ADDR_WIDTH (6 for W == 1, else the smallest width holding the map
    up to the last reserved word); regs: [(p, byte offset of wgt{p}'s low word)] for p = 1 .. W-1;
    wbus: the weight masters' bundle names wgt0 .. wgt{W-1} (none for W == 1); pw: bits of a
    master index (0 = gmem, 1 + p = wgt p); div_m / div_s: ceil(x / W) = ((x + W - 1) * div_m)
    >> div_s, exact for every 16-bit x (the core splits a tile's rows into W row blocks without
    a divider).
    """
    w = int(weight_ports)
    if isinstance(weight_ports, bool) or w != weight_ports or not 1 <= w <= MAX_WEIGHT_PORTS:
        raise ValueError(f"weight_ports must be an integer in 1..{MAX_WEIGHT_PORTS}, got {weight_ports!r}")
    regs = list(enumerate(weight_pointer_registers(w), start=1))
    end = regs[-1][1] + WGT_REG_STRIDE if regs else 0x40   # first byte past the map
    div_s = 17 + (w - 1).bit_length()                      # x < 2^17; exact since M*W - 2^S < W
    return {"W": w, "wbus": [f"wgt{p}" for p in range(w)] if w > 1 else [],
            "ctrl_aw": max(6, (end - 1).bit_length()), "regs": regs, "pw": max(1, w.bit_length()),
            "div_m": -(-(1 << div_s) // w), "div_s": div_s}


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render_units(out_dir: Path, names: tuple[str, ...] = UNIT_TEMPLATES, params: dict | None = None) -> list[Path]:
    """Render the standalone unit templates `names` (default: the vector unit) to out_dir/*.v.

    They take their sizes as Verilog parameters; Jinja only fills in the ROM contents (`luts`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = _environment()
    params = {"luts": lut_tables(), **(params or {})}
    written = []
    for name in names:
        path = out_dir / name[: -len(".j2")]
        path.write_text(env.get_template(name).render(**params))
        written.append(path)
    return written


# ---------------------------------------------------------------- the docs/UARCH.md core
UARCH_TEMPLATE_DIR = "uarch"            # rtl_templates/uarch/*.v.j2: cs_top (= codesign_top), cs_*
SHELL_TEMPLATES = ("axi_lite_control.v.j2", "axi_master.v.j2")
MOE_ACC_TEMPLATE = "cs_moeacc.v.j2"    # rendered only when the Uarch has moe_acc on chip
_TAG_BITS = 16                          # the core's row / column / count fields (tokens, n < 2^16)


def uarch_core_params(u, trace: bool = False, uram_budget: int = 0) -> dict:
    """Template variables `cs` of rtl_templates/uarch/ from a codesign.schedule.uarch.Uarch;
    its memories take the resource model's binding with `uram_budget` URAM288 (the board's).

    Raises ValueError for what this core does not build yet (one line)."""
    if u.elem_bytes != 1 or not u.packed:
        raise ValueError(f"the uarch RTL core needs int8 elements and packed 27x18 products "
                         f"(elem_bytes {u.elem_bytes}, wbits {u.wbits}, abits {u.abits})")
    if u.Q % (2 * u.epb) or u.P < 1:
        raise ValueError(f"the {u.P}x{u.Q} array: Q must be a multiple of 2*EPB={2 * u.epb}")
    if max(u.max_tokens, u.max_n, u.max_k) >= 1 << _TAG_BITS:
        raise ValueError(f"the uarch RTL core counts rows and columns in {_TAG_BITS} bits")
    from ..quant import arith
    from ..schedule.uarch import ram_styles

    beat_bits = 8 * u.beat_bytes
    dhb = -(-u.max_dh // u.epb)   # an ATTN whose head exceeds the bank runs in key tiles (cs_attn)
    if u.max_dim >= 1 << _TAG_BITS:
        raise ValueError(f"the uarch RTL core counts output columns in {_TAG_BITS} bits")
    # a weight slot's row (memories' wslot: a group's two slots in one memory); the feed's qbuf
    # address has the slot's width, so the slot address covers a query block too
    kbm = max(1, u.slot_row_beats)
    slot_depth = max(2 * u.epb * kbm, u.epb * dhb)
    bank = max(2, u.bank_beats)
    prog_beats = u.instrs * 64 // u.beat_bytes
    tok = max(2, u.max_tokens)
    # acc_old FIFO: two blocks of SCATTER int32 beats
    old_beats = 2 * u.P * u.Q * 4 // u.beat_bytes
    return {
        "P": u.P, "Q": u.Q, "EPB": u.epb, "EB": u.elem_bytes, "G": u.G, "GW": u.GW, "W": u.weight_ports,
        "DW": beat_bits, "ACC_W": max(19, u.acc_w), "ABITS": u.abits, "KBM": kbm,
        "BANK": bank, "BAW": _addr_bits(bank), "SAW": _addr_bits(slot_depth),
        "TOK": tok, "TOKW": _addr_bits(tok), "PROG_BEATS": prog_beats, "PAW": _addr_bits(prog_beats),
        "OLOG": max(2, _addr_bits(old_beats)), "trace": bool(trace),
        # moe_acc (cs_moeacc): words of EPB int32, 0 without it (the accumulator in DDR, acc_old)
        "ACCD": u.acc_words, "AAW": _addr_bits(max(2, u.acc_words)),
        # cs_vec's longest LayerNorm row: a multiple of EPB, at least 2 beats
        "MAX_DIM": max(2, -(-u.max_dim // u.epb)) * u.epb,
        "NE": max(1, u.max_experts),      # the router's experts
        "KMAX": max(1, min(u.max_experts, u.max_top_k or u.max_experts)),   # its top-k list
        # ATTN: sbuf rows (one per key), e.v output columns a pass
        "SBD": tok, "SBAW": _addr_bits(tok), "EVC": u.ev_cols,
        "LN_NBUF": ln_row_buffers(max(2, -(-u.max_dim // u.epb))),
        "MULT_W": arith.REQUANT_MULT_BITS,   # the drain's and cs_vecop's requant multipliers
        # cs_seq's row blocks ceil(M / P) and tiles ceil(n / Q) by constant reciprocals
        "RB_DIV": const_divider(u.P), "NT_DIV": const_divider(u.Q),
        "GAMMA_W": arith.LN_GAMMA_BITS + 1,   # cs_vec's signed LayerNorm gamma
        "ram_style": ram_styles(u, uram_budget),   # model memory name -> cs_ram STYLE / ram_style
        "DHBM": max(1, dhb),   # beats of a qbuf row: the longest head
    }


# The rows and columns the core divides by P and Q fit 16 bits (uarch_core_params), so the
# dividends of its ceil divisions are below 2^17.
DIVIDEND_BITS = 17


def const_divider(d: int, bits: int = DIVIDEND_BITS) -> tuple[int, int]:
    """(mul, shift) with x // d == (x * mul) >> shift for every x < 2**bits: a constant's reciprocal,
    so that the RTL divides by a P or Q that is no power of two with one multiplier instead of a
    divider's carry chains (yosys 0.23: 471 cells deep in cs_seq at P = 17). Checked for every x."""
    shift = bits + max(0, (d - 1).bit_length())
    mul = -(-(1 << shift) // d)
    x = np.arange(1 << bits, dtype=np.int64)
    if not np.array_equal(x // d, (x * mul) >> shift):  # Granlund-Montgomery: cannot happen
        raise AssertionError(f"no {bits}-bit reciprocal of {d}")
    return mul, shift


def ln_row_buffers(row_beats: int) -> int:
    """cs_vec's LayerNorm row buffers for one beat a cycle on rows of `row_beats`: a row's beat is
    read about 12 cycles after its row's last beat came in (statistics, RSQRT), so the buffer ring
    must hold row_beats + 12 beats (the two-buffer unit needs rows of 10 beats or more)."""
    n = 2
    while n * row_beats < row_beats + 12:
        n *= 2
    return n


def render_uarch_rtl(out_dir: Path, u, trace: bool = False, uram_budget: int = 0) -> list[Path]:
    """Render the docs/UARCH.md core (rtl_templates/uarch/, top module codesign_top with the
    board's AXI width and W = u.weight_ports weight masters) to out_dir/*.v; return the paths.
    uram_budget: the board's URAM288 for the model's memory binding (0: BRAM and LUTs only)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"cs": uarch_core_params(u, trace, uram_budget), "wp": weight_port_params(u.weight_ports),
              "luts": lut_tables()}
    for old in out_dir.glob("*.v"):   # a previous render's files would be compiled too
        old.unlink()
    env = _environment()
    names = list(SHELL_TEMPLATES) + list(UNIT_TEMPLATES) + sorted(
        f"{UARCH_TEMPLATE_DIR}/{p.name}" for p in (TEMPLATE_DIR / UARCH_TEMPLATE_DIR).glob("*" + TEMPLATE_SUFFIX)
        if params["cs"]["ACCD"] or p.name != MOE_ACC_TEMPLATE)   # no moe_acc: no module outside the hierarchy
    written = []
    for name in names:
        text = env.get_template(name).render(**params)
        stem = Path(name).name[: -len(".v.j2")]
        path = out_dir / f"{TOP_MODULE if stem == 'cs_top' else stem}.v"   # the file holds codesign_top
        path.write_text(text)
        written.append(path)
    record = out_dir / RTL_RECORD
    record.write_text(json.dumps(uarch_record(u), indent=1) + "\n")
    return written + [record]


def uarch_record(u) -> dict:
    """`uarch`: the whole Uarch, so that cosim and reports can run the estimate at the core's own."""
    return {"core": "uarch", "P": u.P, "Q": u.Q, "weight_ports": u.weight_ports, "axi_bits": 8 * u.beat_bytes,
            "microarchitecture": "docs/UARCH.md (MATMUL, LAYERNORM, ADD, REQUANT32, GATE with lists "
                                 "and moe_acc on chip when the Uarch has them, ATTN whole, per head or in key tiles)",
            "uarch": dataclasses.asdict(u)}
