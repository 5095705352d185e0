"""Render the Vitis HLS C++ project: kernel, tables, testbench, csim Makefile and build scripts.

Outputs, relative to the generated project directory (next to the data/ folder that
codesign.emit.data.write_data_dir wrote):
  firmware/codesign_top.cpp  the kernel: program load, fetch, decode, dispatch; the on-chip memories
  firmware/codesign_top.h    its interface: the AXI beat type and the top-level prototype
  firmware/params.h          the Uarch parameters (codesign.schedule.uarch) as constants
  firmware/isa.h             opcodes, flags, instruction fields, the on-chip program
  firmware/arith.h           integer arithmetic (rshift_round, requant, exp_weight, layernorm_row)
  firmware/luts.h            EXP / RECIP / RSQRT tables copied from codesign.quant.arith
  firmware/ops/*.h           one header per op (matmul, gate, attention, layernorm, vector) and the
                             units they share: axi (every m_axi access), dsp (the packed 27x18
                             product), array (the MAC loop), drain, router, weights (the weight
                             engine), buffers, moe, machine, slots
  tb/tb_codesign.cpp         csim testbench over data/ (bit-exact per traced tensor)
  Makefile                   `make csim` (and `make iters`) with plain g++; Vitis targets
  README.md                  how to build, simulate (csim / cosim) and run the project
  data/tb_vectors.txt        one line per test vector:  id task start_file expected_file
(the traced tensors the testbench compares are compiled into it, from the manifest)
  run_hls.tcl, vivado/block_design.tcl, host/driver.py   (codesign.emit.tcl)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..boards import Board
from ..quant import arith as A
from ..schedule.isa import FIELDS, OBITS_LSB, OBITS_MASK, WORDS, Flag, Op
from ..schedule.program import Program
from ..schedule.tiling import board_uarch
from ..schedule.uarch import Uarch, check_program, memory_bindings
from .data import load_manifest, region_nbytes
from .tcl import TOP_FUNCTION, _template_environment, render_tcl_and_driver, weight_pointer_registers

# g++ flags of the csim build, shared by the Makefile and codesign.sim.csim.
CSIM_CXXFLAGS = ("-O2", "-std=c++17", "-Wall", "-Wextra", "-Wno-unknown-pragmas", "-Ifirmware")

# The MAC array render_hls uses when it is given no Uarch: P rows, Q = 2 * EPB columns (the
# smallest legal Q), which keeps C simulation of small test programs fast.
DEFAULT_P = 4

# Widest AXI beat the kernel is written for: one instruction (64 bytes) is a whole number of beats.
MAX_AXI_BYTES = 64

OPS_HEADERS = ("axi", "dsp", "buffers", "weights", "router", "drain", "moe", "machine", "array", "slots",
               "matmul", "gate", "attention", "layernorm", "vector")

# template name -> output path inside the project directory
_OUTPUTS = {
    "firmware/codesign_top.cpp.j2": Path("firmware") / "codesign_top.cpp",
    "firmware/codesign_top.h.j2": Path("firmware") / "codesign_top.h",
    "firmware/params.h.j2": Path("firmware") / "params.h",
    "firmware/isa.h.j2": Path("firmware") / "isa.h",
    "firmware/arith.h.j2": Path("firmware") / "arith.h",
    "firmware/luts.h.j2": Path("firmware") / "luts.h",
    **{f"firmware/ops/{name}.h.j2": Path("firmware") / "ops" / f"{name}.h" for name in OPS_HEADERS},
    "tb/tb_codesign.cpp.j2": Path("tb") / "tb_codesign.cpp",
    "Makefile.j2": Path("Makefile"),
    "README.md.j2": Path("README.md"),
}

# The on-chip memories the op functions take, in this order (typedefs of ops/buffers.h, weights.h).
MEMORY_ARGS = (("bank_t", "bank"), ("wrows_t", "wrows"), ("wparam_t", "wparam"), ("lut_t", "lut"),
               ("fill_queue_t", "fq"), ("qbuf_t", "qbuf"), ("sbuf_t", "sbuf"), ("maxima_t", "mx"),
               ("rowtab_t", "rowtab"), ("tokrow_t", "tokrow"), ("shadow_t", "shadow"), ("rowsums_t", "dsum"),
               ("lists_t", "lists"), ("counts_t", "counts"), ("moe_acc_t", "moe_acc"),
               ("acc_flags_t", "acc_written"), ("acc_old_t", "acc_old"))


def default_uarch(prog: Program, board: Board) -> Uarch:
    return board_uarch(prog, board, DEFAULT_P, 2 * (axi_bytes(board) // prog.elem_bytes))


def render_hls(out_dir: Path, prog: Program, board: Board, uarch: Uarch | None = None,
               project_name: str = "codesign", manifest: dict | None = None) -> list[Path]:
    """Render the HLS project into out_dir; return the written paths.

    `uarch`: the compute unit to generate (codesign.schedule.uarch.derive_uarch, e.g. board_uarch
    of the tiling's P and Q); by default a DEFAULT_P x 2*EPB array. A program that breaks a hardware
    rule of docs/UARCH.md is refused (HardwareRuleError, one line). The testbench lists are derived
    from `manifest` or, by default, from out_dir/data/manifest.json.
    """
    out_dir = Path(out_dir)
    u = uarch if uarch is not None else default_uarch(prog, board)
    _check_uarch_matches(u, prog, board)
    check_program(prog, u)
    man = manifest if manifest is not None else _read_manifest(out_dir)
    _check_manifest_matches(man, prog)
    context = _context(prog, u, project_name, board, man)
    written = render_tcl_and_driver(out_dir, board, project_name)  # also validates project_name
    env = _template_environment()
    for template_name, relative_path in _OUTPUTS.items():
        target = out_dir / relative_path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(env.get_template(template_name).render(context))
        written.append(target)
    return written + write_tb_lists(out_dir / "data", man)


def write_tb_lists(data_dir: Path, manifest: dict) -> list[Path]:
    """The testbench's plain-text list of test vectors (C++ without a JSON parser)."""
    vectors = [(v["id"], v["task"], v["start"], v["expected"]) for v in manifest["vectors"]]
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    path = Path(data_dir) / "tb_vectors.txt"
    path.write_text("".join(" ".join(_token(v) for v in row) + "\n" for row in vectors))
    return [path]


def traced_regions(manifest: dict) -> list[tuple[str, int, int]]:
    """(name, act byte address, bytes) of every traced tensor in execution order: the testbench's
    table, compiled in so that no data file can shorten the list it compares."""
    regions = {r["name"]: r for r in manifest["regions"]}
    return [(_token(name), regions[name]["addr"], region_nbytes(regions[name], manifest["elem_bytes"]))
            for name in manifest["trace"]]


def axi_bytes(board: Board) -> int:
    """Bytes per beat of the kernel's m_axi ports: the board's PS port width (boards/*.yaml)."""
    width = board.memory.axi_data_bits // 8
    # A beat holds whole 64-bit lanes (axi_word_t), so 32-bit ports are not supported either.
    if not 8 <= width <= MAX_AXI_BYTES:
        raise ValueError(f"{board.name}: memory.axi_data_bits {board.memory.axi_data_bits} is outside the "
                         f"64..{8 * MAX_AXI_BYTES}-bit beats the kernel supports")
    return width


def weight_pointers(board: Board) -> list[str]:
    """The kernel's weight pointer arguments, one m_axi bundle each when there are several:
    wgt (bundle wgt0, also the small weight reads), then wgt1 .. wgt{W-1}."""
    return ["wgt"] + [f"wgt{p}" for p in range(1, board.memory.weight_ports)]


# ------------------------------------------------------------------ on-chip memories

# Below these a memory goes to distributed RAM; from URAM_MIN_BITS and URAM_MIN_DEPTH on (and when
# the board has URAM: 72 x 4096 each, so a shallow wide memory would waste most of it) to
# UltraRAM; else BRAM. A plain rule for the pragmas: the resource model of codesign.schedule.uarch
# counts what these bindings instantiate.
LUTRAM_MAX_DEPTH = 64
LUTRAM_MAX_BITS = 4096
URAM_MIN_BITS = 4 * 36 * 1024
URAM_MIN_DEPTH = 1024


def _impl(width: int, depth: int, board: Board) -> str:
    bits = width * depth
    if depth <= LUTRAM_MAX_DEPTH or bits <= LUTRAM_MAX_BITS:
        return "lutram"
    if board.resources.uram > 0 and bits >= URAM_MIN_BITS and depth >= URAM_MIN_DEPTH:
        return "uram"
    return "bram"


# kernel arrays that are memories of the resource model (codesign.schedule.uarch.memories), same shape
_MODEL_NAMES = {"program": "prog", "bank": "abank", "wrows": "wslot", "qbuf": "qbuf", "sbuf": "sbuf", "lists": "lists",
                "moe_acc": "moe_acc", "acc_written": "acc_written", "acc_old": "acc_old"}


def _model_bindings(u: Uarch, board: Board) -> dict[str, str]:
    """Storage of the kernel arrays the resource model counts, as it binds them within the default
    budget's URAM (the tiling's check): so what fits the estimate is what the pragmas ask for."""
    from ..schedule.tiling import Budget

    impl = {"uram": "uram", "bram36": "bram", "lutram": "lutram"}
    model = {name: impl[b] for name, b in memory_bindings(u, Budget(board).limit("uram")).items()}
    return {kernel: model[name] for kernel, name in _MODEL_NAMES.items() if name in model}


def kernel_memories(u: Uarch, board: Board) -> list[dict]:
    """Every on-chip array codesign_top declares: its C type and shape, its pragmas, and what they
    make of it (instances x width bits x depth words, storage and binding). The template writes
    exactly these declarations and pragmas; reports and the resource model read them."""
    beat, elem, acc = 8 * u.beat_bytes, 8 * u.elem_bytes, 32 if u.acc_w <= 32 else 64
    lanes32 = u.beat_bytes // 4
    dh_beats = max(u.max_dh, u.epb) // u.epb
    acc_tokens, acc_words, experts = max(u.acc_tokens, 1), max(u.acc_row_words, 1), max(u.max_experts, 1)
    blocks = -(-u.max_tokens // u.P)
    fill_segs = (u.max_tiles + 1) * (-(-u.GW // u.weight_ports) + 3) + 2
    acc_old_rows = max(1, u.acc_old_rows)
    half = u.param_words // 2
    lut_copies = u.constants()["LUT_COPIES"]

    def part(name, *dims):
        return [f"ARRAY_PARTITION variable={name} complete dim={d}" for d in dims]

    # name, type, shape, instances, width, depth, RAM type (or "ff"), pragmas, note
    mems = [
        ("program", "program_t", f"[{u.instrs}][16] uint32", 1, 512, u.instrs, "ram_1p",
         ["ARRAY_RESHAPE variable=program complete dim=2"], "one instruction a word"),
        ("bank", "bank_t", f"[2][G={u.G}][{u.bank_beats}] beat", 2 * u.G, beat, u.bank_beats, "ram_t2p",
         part("bank", 1, 2), "abank: 2 banks x G copies"),
        ("wrows", "wrows_t", f"[2][GW={u.GW}][{u.epb * u.slot_row_beats}] beat", u.GW, beat,
         2 * u.epb * u.slot_row_beats, "ram_2p", part("wrows", 2),
         "wslot rows: GW groups of EPB rows, a group's 2 slots in one RAM (fill on one port, feed on the other)"),
        ("wparam", "wparam_t", f"[2][2][{half}] int32", 4 * u.epb, 32, -(-half // u.epb), "ram_2p",
         part("wparam", 1, 2) + [f"ARRAY_PARTITION variable=wparam cyclic factor={u.epb} dim=3"],
         "wslot params: EPB words a cycle"),
        ("lut", "lut_t", f"[2][{lut_copies}][{u.lut_size}] elem", 2 * lut_copies, u.epb * elem,
         u.lut_size // u.epb, "ram_t2p",
         part("lut", 1, 2) + [f"ARRAY_RESHAPE variable=lut cyclic factor={u.epb} dim=3"],
         "GELU tables of two MATMULs, two lanes per copy"),
        ("fq", "fill_queue_t", f"[W={u.weight_ports}][{fill_segs}] FillSeg", u.weight_ports, 128, fill_segs, "ram_1p",
         part("fq", 1), "weight engine: bursts per master; LUTRAM, read the cycle a burst ends"),
        ("qbuf", "qbuf_t", f"[2][GW={u.GW}][{u.epb * dh_beats}] beat", 2 * u.GW, beat, u.epb * dh_beats,
         "ram_2p", part("qbuf", 1, 2), "attention queries of two blocks"),
        ("sbuf", "sbuf_t", f"[{u.max_tokens}][Q={u.Q}] score", 1, u.Q * u.score_word_bits, u.max_tokens, "ram_2p",
         ["ARRAY_RESHAPE variable=sbuf complete dim=2"], "one key's Q scores a word"),
        ("mx", "maxima_t", f"[Q={u.Q}] acc", u.Q, acc, 1, "ff", part("mx", 1), "scores: running maxima"),
        ("rowtab", "rowtab_t", f"[G={u.G}][{blocks * u.epb}] uint32", u.G, 32, blocks * u.epb, "ram_2p",
         part("rowtab", 1), "GATHER: bank beat of each list row"),
        ("tokrow", "tokrow_t", f"[{u.max_tokens}] uint32", 1, 32, u.max_tokens, "ram_2p", [],
         "SCATTER: destination of each list row"),
        ("shadow", "shadow_t", f"[2][P={u.P}][Q/2={u.Q // 2}] acc", 2 * u.P * (u.Q // 2), acc, 1, "ff",
         ["ARRAY_PARTITION variable=shadow complete dim=0"], "the array's finished block"),
        ("dsum", "rowsums_t", f"[P={u.P}] acc", u.P, acc, 1, "ff", part("dsum", 1), "e.v row sums"),
        ("lists", "lists_t", f"[2][{experts}][{u.max_tokens}] int32", 2 * experts * lanes32, 32,
         -(-u.max_tokens // lanes32), "ram_2p",
         part("lists", 1, 2) + [f"ARRAY_PARTITION variable=lists cyclic factor={lanes32} dim=3"],
         "token ids and scores per expert"),
        ("counts", "counts_t", f"[{experts}] int32", experts, 32, 1, "ff", part("counts", 1), "per expert"),
        ("moe_acc", "moe_acc_t", f"[{acc_tokens}][{acc_words}][EPB={u.epb}] int32", 1, 32 * u.epb,
         acc_tokens * acc_words, "ram_2p", ["ARRAY_RESHAPE variable=moe_acc complete dim=3"],
         "EPB int32 a word" if u.acc_tokens else "unused: the accumulator stays in DDR"),
        ("acc_written", "acc_flags_t", f"[{acc_tokens}][{acc_words}] bool", 1, acc_words, acc_tokens, "ram_2p",
         ["ARRAY_RESHAPE variable=acc_written complete dim=2"], "moe_acc written bits, a token's row a word"),
        ("acc_old", "acc_old_t", f"[{acc_old_rows}][{u.Q // lanes32}] beat", 1, beat,
         acc_old_rows * (u.Q // lanes32), "ram_2p", [],
         "unused: moe_acc is on chip" if u.acc_tokens else "SCATTER into DDR: a tile's old rows"),
    ]
    bound = _model_bindings(u, board)
    out = []
    for name, ctype, shape, instances, width, depth, kind, pragmas, note in mems:
        impl = "" if kind == "ff" else "lutram" if name == "fq" else bound.get(name) or _impl(width, depth, board)
        bind = [f"BIND_STORAGE variable={name} type={kind} impl={impl}"] if impl else []
        out.append({"name": name, "type": ctype, "shape": shape, "instances": instances, "width": width,
                    "depth": depth, "storage": f"{kind} {impl}" if impl else "registers", "pragmas": pragmas + bind,
                    "note": note})
    return out


def memory_table(memories: list[dict]) -> str:
    """kernel_memories as a Markdown table."""
    rows = ["| array | shape | instances x bits x depth | storage | pragmas |", "|---|---|---|---|---|"]
    rows += [f"| {m['name']} | {m['shape']} | {m['instances']} x {m['width']} x {m['depth']} | {m['storage']} | "
             f"{'; '.join(m['pragmas'])} |" for m in memories]
    return "\n".join(rows)


# ------------------------------------------------------------------ helpers

def _read_manifest(out_dir: Path) -> dict:
    try:
        return load_manifest(out_dir)
    except FileNotFoundError:
        raise FileNotFoundError(f"{out_dir / 'data' / 'manifest.json'} not found: write the data/ folder "
                                f"first (codesign.emit.data.write_data_dir) or pass manifest=") from None


def _check_manifest_matches(man: dict, prog: Program) -> None:
    ours = {"elem_bytes": prog.elem_bytes, "abits": prog.abits, "act_bytes": prog.act_bytes,
            "wgt_bytes": len(prog.wgt), "prog_bytes": len(prog.code)}
    differing = [f"{k} {man.get(k)} != {v}" for k, v in ours.items() if man.get(k) != v]
    if differing:
        raise ValueError("data/manifest.json was written for another program: " + ", ".join(differing))


def _check_uarch_matches(u: Uarch, prog: Program, board: Board) -> None:
    ours = {"beat_bytes": axi_bytes(board), "weight_ports": board.memory.weight_ports,
            "elem_bytes": prog.elem_bytes, "wbits": prog.wbits, "abits": prog.abits}
    differing = [f"{k} {getattr(u, k)} != {v}" for k, v in ours.items() if getattr(u, k) != v]
    if differing:
        raise ValueError("the Uarch was derived for another program or board: " + ", ".join(differing))


def _loop_bounds(prog: Program, u: Uarch) -> dict:
    """LOOP_TRIPCOUNT maxima of the loops whose trip count is not one size of the Uarch."""
    attn = [i.args for i in prog.instrs if i.op == Op.ATTN]
    mm = u.max_tiles * -(-u.max_tokens // u.P) * (1 if u.packed else 2) * u.max_k
    scores = max([-(-a["tokens"] // u.P) * a["head_dim"] * (1 if u.packed_scores else 2) for a in attn] + [0])
    ev = max([-(-min(u.Q, a["tokens"]) // u.P) * -(-a["head_dim"] // u.ev_cols) * a["tokens"] for a in attn] + [0])
    drain = u.P * u.Q // (u.beat_bytes // 4)
    return {"array": u.epb + max(mm, scores, ev) + drain, "heads": max([a["heads"] for a in attn] + [1]),
            "chunks": max([_a_chunks(u, i.args) for i in prog.instrs if i.op in (Op.MATMUL, Op.GATE)] + [1]),
            "key_tiles": max([_key_tiles(u, a) for a in attn] + [1]),
            "pass_pairs": max(1, -(-(-(-max(u.max_dh, 1) // u.ev_cols)) // 2)),
            "elem_beats": max([-(-i.args["count"] // u.epb) for i in prog.instrs if i.op in (Op.ADD, Op.REQUANT32)]
                              + [u.bank_beats])}


def _a_chunks(u: Uarch, a: dict) -> int:
    """Bank loads of a MATMUL's or GATE's A operand at most (a GATHER's rows are at most the tokens)."""
    rows, k = (a["m"], a["k"]) if "k" in a else (a["tokens"], a["dim"])
    rows = max(rows, u.max_tokens) if "k" in a else rows
    chunk = u.chunk_rows(k)
    return 1 if u.fits_bank(rows, k) or not chunk else -(-rows // chunk)


def _key_tiles(u: Uarch, a: dict) -> int:
    mode, keys = u.attn_plan(a["tokens"], a["heads"], a["head_dim"])
    return -(-a["tokens"] // keys) if mode == "keys" and keys else 1


def _context(prog: Program, u: Uarch, project_name: str, board: Board, man: dict) -> dict:
    ops = [{"struct": _struct_name(op), "fields": list(FIELDS[op])} for op in Op if op != Op.END]
    flags = [(name, value) for name, value in vars(Flag).items() if name.isupper() and isinstance(value, int)]
    tables = [
        {"name": "EXP", "doc": f"EXP[i] = round(2^15 * exp(-i/64)), EXP[{A.EXP_LUT_SIZE - 1}] = 0", "values": A.EXP},
        {"name": "RECIP", "doc": "RECIP[j] = round(2^26 / (1024 + j))", "values": A.RECIP},
        {"name": "RSQRT", "doc": "RSQRT[m] = round(2^24 / sqrt(m)), RSQRT[0] = 0", "values": A.RSQRT},
    ]
    for table in tables:
        table["values"] = [int(v) for v in np.asarray(table["values"], np.int64)]
    beat = u.beat_bytes
    ports = weight_pointers(board)
    wbus = ["gmem"] if u.weight_ports == 1 else [f"wgt{p}" for p in range(u.weight_ports)]
    return {
        "u": u.constants(), "memories": kernel_memories(u, board), "loop_max": _loop_bounds(prog, u),
        "wbus": wbus, "wptr": ports, "bundles": sorted(set(["gmem"] + wbus)),
        "mem_params": ", ".join(f"{t} &{n}" for t, n in MEMORY_ARGS), "mem_args": ", ".join(n for _, n in MEMORY_ARGS),
        "wports": len(ports), "wgt_ptrs": ports, "wgt_args": ", ".join(ports),
        "wgt_regs": weight_pointer_registers(len(ports)),
        "wgt_params": ", ".join(f"const axi_word_t *{name}" for name in ports),
        "project_name": project_name, "top": TOP_FUNCTION, "cxxflags": CSIM_CXXFLAGS,
        "board": board, "axi_bytes": beat,
        "summary": f"a {u.P}x{u.Q} MAC array ({'packed, ' if u.packed else ''}{u.acc_w}-bit accumulators) on "
                   f"{board.name} ({board.part}), {8 * beat}-bit AXI beats, {u.weight_ports} weight master(s)",
        "prog_beats": _beats(len(prog.code), beat), "wgt_beats": _beats(len(prog.wgt), beat),
        "act_beats": _beats(prog.act_bytes, beat),
        "manifest_sizes": {"wgt_bytes": man["wgt_bytes"], "prog_bytes": man["prog_bytes"],
                           "act_bytes": man["act_bytes"]},
        "traced_regions": traced_regions(man),
        "elem_bytes": prog.elem_bytes, "abits": prog.abits,
        "words": WORDS, "obits_lsb": OBITS_LSB, "obits_mask": OBITS_MASK, "opcodes": [(op.name, int(op)) for op in Op], "flags": flags, "ops": ops,
        "num_instrs": len(prog.instrs), "tables": tables,
        "exp_lut_size": A.EXP_LUT_SIZE, "recip_mbits": A.RECIP_MBITS, "recip_frac": A.RECIP_FRAC,
        "attn_frac": A.ATTN_FRAC, "rsqrt_mbits": A.RSQRT_MBITS, "rsqrt_frac": A.RSQRT_FRAC,
    }


def _struct_name(op: Op) -> str:
    return op.name.capitalize() + "Fields"  # MATMUL -> MatmulFields, REQUANT32 -> Requant32Fields


def _token(value) -> str:
    text = str(value)
    if not text or any(c.isspace() for c in text):
        raise ValueError(f"{text!r} cannot be written to a whitespace-separated testbench list")
    return text


def _beats(nbytes: int, beat: int) -> int:
    return max(1, (nbytes + beat - 1) // beat)
