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

from ..emit.tcl import WGT_REG_STRIDE, weight_pointer_registers  # the HLS kernel's register map
from ..resources import resource_dir

TEMPLATE_DIR = resource_dir("rtl_templates")
# The kernel's top module, the name a Vitis HLS export of the kernel has too.
TOP_MODULE = "codesign_top"
RTL_RECORD = "rtl.json"  # beside the rendered Verilog: what the core is (its array, ports, bus)
# The core `codesign generate` renders (codesign.rtl.project): "legacy" (codesign_core, render_rtl)
# until GATE and ATTN run on "uarch" (rtl_templates/uarch/, render_uarch_rtl); the flip is this line.
RTL_CORES = ("legacy", "uarch")
DEFAULT_RTL_CORE = "legacy"
TEMPLATE_SUFFIX = ".v.j2"
# The placeholder core (for shell-only tests) lives outside the default glob.
PLACEHOLDER_TEMPLATE = "test/core_placeholder.v.j2"
CORE_TEMPLATES = ("codesign_core.v.j2",)  # plus every cu_*.v.j2
# The vector unit of the new core (docs/UARCH.md, rtl_templates/README.md "Vector unit"): a
# standalone module with its helpers, rendered by render_units() and tested on its own
# (tests/test_rtl_vec.py). Not in a project's rtl/ until a core instantiates it (the lint gate
# wants every module under codesign_top): the core that does removes its names from here.
VEC_UNIT_TOP = "cs_vec"
UNIT_TEMPLATES = ("cs_vec.v.j2", "cs_mul.v.j2", "cs_rshift_round.v.j2", "cs_saturate.v.j2", "cs_rsqrt_rom.v.j2")


def _is_core_template(name: str) -> bool:
    return name in CORE_TEMPLATES or name.startswith("cu_")


def _addr_bits(depth: int) -> int:
    return max(1, (int(depth) - 1).bit_length())


def tile_rows(P: int, q: int) -> int:
    """W rows per MATMUL weight tile of the core (NT)."""
    return max(16, P, q)


def expert_slots(max_experts: int) -> int:
    """The core's expert slots (EN): a power of two >= max_experts, at least 4."""
    slots = 4
    while slots < max_experts:
        slots *= 2
    return slots


def core_sizes(elem_bytes: int = 1, abits: int = 8, P: int = 2, words: dict | None = None,
               max_reduction: int = 1024, max_experts: int = 8, trace: bool = False,
               max_tokens: int = 1024) -> dict:
    """Template variables `core` of codesign_core.v.j2 from buffer needs (64-bit words).

    `words` keys: x, w (per bank), whalf (per bank, one MATMUL W tile; WBUF holds two), o, p,
    lut, lists, acc (64-bit words), s (score entries: ATTN T*T, GATE experts), t (ATTN rows).
    The defaults fit the default ModelConfig; codesign.sim.cosim.core_params derives the
    exact needs of a program.

    ACC_W (MAC accumulator bits) is exact for both array modes: dot mode sums `max_reduction`
    products of two EBITS-bit elements; broadcast mode (ATTN e.v) sums `max_tokens` products of
    an unsigned 16-bit EXP weight (17 signed bits) and an EBITS-bit value.
    """
    if P < 1 or P & (P - 1):
        raise ValueError(f"RTL MAC units P must be a power of two, got {P}")
    if elem_bytes not in (1, 2):
        raise ValueError(f"element container must be 1 or 2 bytes, got {elem_bytes}")
    q = 8 // elem_bytes
    need = {"x": 1024, "w": 512, "whalf": 256, "o": 1024, "p": 128, "lut": 32, "lists": 256, "acc": 128,
            "s": 512, "t": 32}
    need.update(words or {})
    depth = {k: max(2, int(v)) for k, v in need.items()}
    depth["w"] = max(depth["w"], 2 * depth["whalf"])
    depth["x"] = max(depth["x"], 64)  # ADD / REQUANT32 chunks
    depth["o"] = max(depth["o"], 64)
    if depth["s"] > 1 << 16:
        raise ValueError(f"{depth['s']} score entries (T*T of an ATTN) exceed the core's 16-bit score index")
    ebits = 8 * elem_bytes
    acc_w = max(2 * ebits + int(max_reduction).bit_length(),   # dot:   EBITS x EBITS, k terms
                17 + ebits + int(max_tokens).bit_length())      # bcast: 17 x EBITS, T terms (> the product)
    if acc_w > 64:
        raise ValueError(f"reductions of {max_reduction} elements / {max_tokens} tokens need "
                         f"{acc_w}-bit accumulators (> 64)")
    experts = expert_slots(max_experts)
    return {
        "EB": elem_bytes, "ABITS": int(abits), "P": P, "LP": P.bit_length() - 1, "Q": q,
        "NT": tile_rows(P, q), "WHALF": depth["whalf"], "ACC_W": acc_w,
        "XD": depth["x"], "XAW": _addr_bits(depth["x"]), "WD": depth["w"], "WAW": _addr_bits(depth["w"]),
        "OD": depth["o"], "OAW": _addr_bits(depth["o"]), "PD": depth["p"], "PAW": _addr_bits(depth["p"]),
        "LD": depth["lut"], "LAW": _addr_bits(depth["lut"]), "ND": depth["lists"],
        "NAW": _addr_bits(depth["lists"]), "AD": depth["acc"], "AAW": _addr_bits(depth["acc"]),
        "SD": depth["s"], "SAW": _addr_bits(depth["s"]), "TD": depth["t"], "TAW": _addr_bits(depth["t"]), "EN": experts, "ENW": experts.bit_length() - 1,
        "RLW": max(1, (P * q - 1).bit_length()),
        "CH_ADD": min(depth["x"], depth["o"]) * q,
        "CH_RQ": min(2 * depth["x"], depth["o"] * q) // q * q,
        "trace": bool(trace),
    }


def lut_tables() -> dict:
    """The fixed ROM contents (EXP, RECIP, RSQRT) exactly as codesign.quant.arith has them."""
    from ..quant import arith

    return {"exp": [int(v) for v in arith.EXP], "recip": [int(v) for v in arith.RECIP],
            "rsqrt": [int(v) for v in arith.RSQRT]}


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


def default_params() -> dict:
    """Parameters every template may use; callers' params override these."""
    return {"core": core_sizes(), "luts": lut_tables(), "weight_ports": 1}


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def template_names() -> list[str]:
    """Names of all RTL templates, sorted for a deterministic file order."""
    return sorted(p.name for p in TEMPLATE_DIR.glob("*" + TEMPLATE_SUFFIX) if p.name not in UNIT_TEMPLATES)


def render_units(out_dir: Path, names: tuple[str, ...] = UNIT_TEMPLATES, params: dict | None = None) -> list[Path]:
    """Render the standalone unit templates `names` (default: the vector unit) to out_dir/*.v.

    They take their sizes as Verilog parameters; Jinja only fills in the ROM contents (`luts`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = _environment()
    params = {**default_params(), **(params or {})}
    written = []
    for name in names:
        path = out_dir / name[: -len(".j2")]
        path.write_text(env.get_template(name).render(**params))
        written.append(path)
    return written


def render_rtl(out_dir: Path, params: dict, placeholder_core: bool = False) -> list[Path]:
    """Render every rtl_templates/*.v.j2 to out_dir/*.v; return the paths written.

    `params` override default_params() (core sizes for the default model, LUT tables, one weight
    port); `weight_ports` W > 1 gives the top W extra weight masters m_axi_wgt0 .. m_axi_wgt{W-1}
    (the Vitis HLS interface of a kernel with W weight bundles, see rtl_templates/README.md).
    With placeholder_core the real core (codesign_core, cu_*) is replaced by
    rtl_templates/test/core_placeholder.v.j2 (shell tests).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = _environment()
    params = {**default_params(), **params}
    params["wp"] = weight_port_params(params["weight_ports"])
    names = template_names()
    if placeholder_core:
        names = [n for n in names if not _is_core_template(n)] + [PLACEHOLDER_TEMPLATE]
    written = []
    for name in names:
        text = env.get_template(name).render(**params)
        path = out_dir / Path(name).name[: -len(".j2")]
        path.write_text(text)
        written.append(path)
    return written


# ---------------------------------------------------------------- the docs/UARCH.md core
UARCH_TEMPLATE_DIR = "uarch"            # rtl_templates/uarch/*.v.j2: cs_top (= codesign_top), cs_*
SHELL_TEMPLATES = ("axi_lite_control.v.j2", "axi_master.v.j2")
_TAG_BITS = 16                          # the core's row / column / count fields (tokens, n < 2^16)


def uarch_core_params(u, trace: bool = False) -> dict:
    """Template variables `cs` of rtl_templates/uarch/ from a codesign.schedule.uarch.Uarch.

    Raises ValueError for what this core does not build yet (one line)."""
    if u.elem_bytes != 1 or not u.packed:
        raise ValueError(f"the uarch RTL core needs int8 elements and packed 27x18 products "
                         f"(elem_bytes {u.elem_bytes}, wbits {u.wbits}, abits {u.abits})")
    if u.Q % (2 * u.epb) or u.P < 1:
        raise ValueError(f"the {u.P}x{u.Q} array: Q must be a multiple of 2*EPB={2 * u.epb}")
    if max(u.max_tokens, u.max_n, u.max_k) >= 1 << _TAG_BITS:
        raise ValueError(f"the uarch RTL core counts rows and columns in {_TAG_BITS} bits")
    from ..quant import arith

    beat_bits = 8 * u.beat_bytes
    dhb = -(-u.max_dh // u.epb)
    if u.max_dh and 3 * u.max_tokens * dhb > u.bank_beats:
        raise ValueError(f"the uarch RTL core loads ATTN per head into the bank: {u.max_tokens} tokens x 3 x "
                         f"{dhb} beats exceed its {u.bank_beats} beats (no key tiles yet)")
    if u.max_dim >= 1 << _TAG_BITS:
        raise ValueError(f"the uarch RTL core counts output columns in {_TAG_BITS} bits")
    # a weight slot's row, and qbuf's (a query block is read through the feed's slot addresses)
    kbm = max(u.slot_row_beats, dhb)
    slot_depth = 2 * u.epb * kbm
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
        # cs_vec's longest LayerNorm row: a multiple of EPB, at least 2 beats
        "MAX_DIM": max(2, -(-u.max_dim // u.epb)) * u.epb,
        "NE": max(1, u.max_experts),      # the router's lanes
        # ATTN: sbuf rows (one per key), e.v output columns a pass
        "SBD": tok, "SBAW": _addr_bits(tok), "EVC": u.ev_cols,
        "LN_NBUF": ln_row_buffers(max(2, -(-u.max_dim // u.epb))),
        "MULT_W": arith.REQUANT_MULT_BITS,   # the drain's and cs_vecop's requant multipliers
        "GAMMA_W": arith.LN_GAMMA_BITS + 1,   # cs_vec's signed LayerNorm gamma
    }


def ln_row_buffers(row_beats: int) -> int:
    """cs_vec's LayerNorm row buffers for one beat a cycle on rows of `row_beats`: a row's beat is
    read about 12 cycles after its row's last beat came in (statistics, RSQRT), so the buffer ring
    must hold row_beats + 12 beats (the two-buffer unit needs rows of 10 beats or more)."""
    n = 2
    while n * row_beats < row_beats + 12:
        n *= 2
    return n


def render_uarch_rtl(out_dir: Path, u, trace: bool = False) -> list[Path]:
    """Render the docs/UARCH.md core (rtl_templates/uarch/, top module codesign_top with the
    board's AXI width and W = u.weight_ports weight masters) to out_dir/*.v; return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"cs": uarch_core_params(u, trace), "wp": weight_port_params(u.weight_ports), "luts": lut_tables()}
    for old in out_dir.glob("*.v"):   # a previous render's files (another core's) would be compiled too
        old.unlink()
    env = _environment()
    names = list(SHELL_TEMPLATES) + list(UNIT_TEMPLATES) + sorted(
        f"{UARCH_TEMPLATE_DIR}/{p.name}" for p in (TEMPLATE_DIR / UARCH_TEMPLATE_DIR).glob("*" + TEMPLATE_SUFFIX))
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
                                 "read back from DDR and no moe_acc, ATTN loaded per head from DDR)",
            "uarch": dataclasses.asdict(u)}
