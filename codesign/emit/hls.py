"""Render the Vitis HLS C++ project: kernel, tables, testbench, csim Makefile and build scripts.

Outputs, relative to the generated project directory (next to the data/ folder that
codesign.emit.data.write_data_dir wrote):
  firmware/codesign_top.cpp  the kernel: instruction fetch + one function per opcode
  firmware/codesign_top.h    its interface: the AXI beat type and the top-level prototype
  firmware/arith.h           integer arithmetic (rshift_round, requant, exp_weight, layernorm_row)
  firmware/luts.h            EXP / RECIP / RSQRT tables copied from codesign.quant.arith
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
from ..schedule.isa import FIELDS, WORDS, Flag, Op
from ..schedule.program import Program
from ..schedule.legacy_tiling import attn_query_block
from .data import load_manifest, region_nbytes
from .tcl import TOP_FUNCTION, _template_environment, render_tcl_and_driver, weight_pointer_registers

# g++ flags of the csim build, shared by the Makefile and codesign.sim.csim.
CSIM_CXXFLAGS = ("-O2", "-std=c++17", "-Wall", "-Wextra", "-Wno-unknown-pragmas", "-Ifirmware")

DEFAULT_TILE = {"P": 4, "Q": 16, "act_banks": 2, "acc_on_chip": 1}

# Beats the elementwise ops (ADD, REQUANT32) move per chunk: reads of chunk c overlap the writes
# of chunk c-1, so the last chunk's writes are the only ones not hidden.
CHUNK_BEATS = 32
# Widest AXI beat the kernel is written for: one instruction (64 bytes) is a whole number of beats.
MAX_AXI_BYTES = 64

# template name -> output path inside the project directory
_OUTPUTS = {
    "firmware/codesign_top.cpp.j2": Path("firmware") / "codesign_top.cpp",
    "firmware/arith.h.j2": Path("firmware") / "arith.h",
    "firmware/luts.h.j2": Path("firmware") / "luts.h",
    "firmware/codesign_top.h.j2": Path("firmware") / "codesign_top.h",
    "tb/tb_codesign.cpp.j2": Path("tb") / "tb_codesign.cpp",
    "Makefile.j2": Path("Makefile"),
    "README.md.j2": Path("README.md"),
}

# On-chip buffers whose size the program dictates (a smaller caller value would overflow them).
_BUFFER_KEYS = ("max_m", "max_k", "max_n", "max_tokens", "max_head_dim", "max_dim", "max_experts", "max_row",
                "acc_tokens", "acc_dim")

# Instruction fields that bound each size key (max_heads and max_count only set loop trip counts).
_SIZE_FIELDS = {
    Op.MATMUL: (("max_m", "m"), ("max_k", "k"), ("max_n", "n")),
    Op.ATTN: (("max_tokens", "tokens"), ("max_head_dim", "head_dim"), ("max_heads", "heads")),
    Op.LAYERNORM: (("max_tokens", "rows"), ("max_dim", "dim")),
    Op.GATE: (("max_tokens", "tokens"), ("max_dim", "dim"), ("max_experts", "experts"), ("acc_tokens", "tokens"),
              ("acc_dim", "dim")),  # the on-chip MoE accumulator
    Op.ADD: (("max_count", "count"),),
    Op.REQUANT32: (("max_count", "count"),),
}


def render_hls(out_dir: Path, prog: Program, board: Board, tile: dict | None = None,
               project_name: str = "codesign", manifest: dict | None = None) -> list[Path]:
    """Render the HLS project into out_dir; return the written paths.

    The testbench lists are derived from `manifest` or, by default, from out_dir/data/manifest.json.
    `tile` overrides the MAC array shape (P rows x Q columns) and buffer sizes of `hls_tile`.
    """
    out_dir = Path(out_dir)
    man = manifest if manifest is not None else _read_manifest(out_dir)
    _check_manifest_matches(man, prog)
    context = _context(prog, hls_tile(prog, tile), project_name, board, man)
    written = render_tcl_and_driver(out_dir, board, project_name)  # also validates project_name
    env = _template_environment()
    for template_name, relative_path in _OUTPUTS.items():
        target = out_dir / relative_path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(env.get_template(template_name).render(context))
        written.append(target)
    return written + write_tb_lists(out_dir / "data", man)


def hls_tile(prog: Program, tile: dict | None = None) -> dict:
    """MAC array shape and on-chip buffer sizes: the program's needs, overridden by `tile`."""
    need = _program_sizes(prog)
    chosen = {**DEFAULT_TILE, **need, **(tile or {})}
    unknown = sorted(set(chosen) - set(need) - set(DEFAULT_TILE))
    if unknown:
        raise ValueError(f"unknown tile key(s): {', '.join(unknown)}")
    for key in ("P", "Q"):
        if not isinstance(chosen[key], int) or chosen[key] < 1:
            raise ValueError(f"tile {key} must be a positive integer, got {chosen[key]!r}")
    if chosen["act_banks"] not in (1, 2):
        raise ValueError(f"tile act_banks must be 1 or 2, got {chosen['act_banks']!r}")
    too_small = [f"{k}={chosen[k]} < {need[k]}" for k in _BUFFER_KEYS if chosen[k] < need[k]]
    if too_small:
        raise ValueError("tile buffers too small for this program: " + ", ".join(too_small))
    # The MAC array always computes whole P x Q blocks, so its buffers hold whole blocks.
    chosen["max_m"] = _round_up(chosen["max_m"], chosen["P"])
    chosen["max_n"] = _round_up(chosen["max_n"], chosen["Q"])
    return chosen


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


def _program_sizes(prog: Program) -> dict:
    """Largest extent of every buffer dimension over the program's instructions."""
    sizes = dict.fromkeys((*_BUFFER_KEYS, "max_heads", "max_count"), 1)
    for ins in prog.instrs:
        extents = [(key, ins.args[name]) for key, name in _SIZE_FIELDS.get(ins.op, ())]
        if ins.op == Op.GATE:  # router logits on the MAC array; it also clears the MoE accumulator
            a = ins.args
            extents += [("max_count", a["tokens"] * a["dim"]), ("max_m", a["tokens"]), ("max_k", a["dim"]),
                        ("max_n", a["experts"])]
        for key, value in extents:
            sizes[key] = max(sizes[key], int(value))
    sizes["max_row"] = max(sizes["max_tokens"], sizes["max_experts"])  # softmax over keys or experts
    return sizes


def axi_bytes(board: Board) -> int:
    """Bytes per beat of the kernel's m_axi ports: the board's PS port width (boards/*.yaml)."""
    width = board.memory.axi_data_bits // 8
    # A beat holds whole 64-bit lanes (axi_word_t), so 32-bit ports are not supported either.
    if not 8 <= width <= MAX_AXI_BYTES:
        raise ValueError(f"{board.name}: memory.axi_data_bits {board.memory.axi_data_bits} is outside the "
                         f"64..{8 * MAX_AXI_BYTES}-bit beats the kernel supports")
    return width


# tiling binding -> Vitis HLS BIND_STORAGE impl
_IMPL = {"bram36": "bram", "uram": "uram", "lutram": "lutram"}


def storage_bindings(prog: Program, board: Board, tile: dict) -> dict[str, str]:
    """BIND_STORAGE impl of each kernel buffer, as codesign.schedule.tiling binds it for this array."""
    from ..schedule.legacy_tiling import buffer_bindings

    chosen = buffer_bindings(prog, board, tile["P"], tile["Q"], tile["act_banks"], acc_on_chip=bool(tile["acc_on_chip"]))
    names = ("act_tile", "weights", "gelu_lut", "acc_tile", "moe_acc", "program")
    return {name: _IMPL[chosen.get(name, "bram36")] for name in names}


def _context(prog: Program, tile: dict, project_name: str, board: Board, man: dict) -> dict:
    ops = [{"struct": _struct_name(op), "fields": list(FIELDS[op])} for op in Op if op != Op.END]
    flags = [(name, value) for name, value in vars(Flag).items() if name.isupper() and isinstance(value, int)]
    tables = [
        {"name": "EXP", "doc": f"EXP[i] = round(2^15 * exp(-i/64)), EXP[{A.EXP_LUT_SIZE - 1}] = 0", "values": A.EXP},
        {"name": "RECIP", "doc": "RECIP[j] = round(2^26 / (1024 + j))", "values": A.RECIP},
        {"name": "RSQRT", "doc": "RSQRT[m] = round(2^24 / sqrt(m)), RSQRT[0] = 0", "values": A.RSQRT},
    ]
    for table in tables:
        table["values"] = [int(v) for v in np.asarray(table["values"], np.int64)]
    beat = axi_bytes(board)
    bind = storage_bindings(prog, board, tile)
    ports = weight_pointers(board)
    return {
        "wports": len(ports), "wgt_ptrs": ports, "wgt_args": ", ".join(ports),
        "wgt_regs": weight_pointer_registers(len(ports)),
        "wgt_params": ", ".join(f"const axi_word_t *{name}" for name in ports),
        "project_name": project_name, "top": TOP_FUNCTION, "tile": tile, "cxxflags": CSIM_CXXFLAGS,
        "board": board, "axi_bytes": beat, "chunk_beats": CHUNK_BEATS, "bind": bind,
        "bindings_note": ", ".join(f"{k} -> {v}" for k, v in bind.items()),
        "tiling_summary": f"a {tile['P']}x{tile['Q']} MAC array on {board.name} ({board.part}), "
                          f"{8 * beat}-bit AXI beats",
        "prog_beats": _beats(len(prog.code), beat), "wgt_beats": _beats(len(prog.wgt), beat),
        "act_beats": _beats(prog.act_bytes, beat),
        "manifest_sizes": {"wgt_bytes": man["wgt_bytes"], "prog_bytes": man["prog_bytes"],
                           "act_bytes": man["act_bytes"]},
        "traced_regions": traced_regions(man),
        "elem_bytes": prog.elem_bytes, "abits": prog.abits, "qp": A.qmax(prog.abits),
        "words": WORDS, "opcodes": [(op.name, int(op)) for op in Op], "flags": flags, "ops": ops,
        "wgt_bytes": len(prog.wgt), "act_bytes": prog.act_bytes,
        "num_instrs": len(prog.instrs), "tables": tables,
        "exp_lut_size": A.EXP_LUT_SIZE, "recip_mbits": A.RECIP_MBITS, "recip_frac": A.RECIP_FRAC, "attn_frac": A.ATTN_FRAC,
        "gate_exp_copies": max(1, (tile["max_experts"] + 1) // 2),  # two router experts per EXP copy
        "attn_qb": attn_query_block(tile["P"], tile["Q"], tile["max_head_dim"], tile["max_tokens"]),
        "rsqrt_mbits": A.RSQRT_MBITS, "rsqrt_frac": A.RSQRT_FRAC,
    }


def weight_pointers(board: Board) -> list[str]:
    """The kernel's weight pointer arguments, one m_axi bundle each when there are several:
    wgt (bundle wgt0, also the small weight reads), then wgt1 .. wgt{W-1}."""
    return ["wgt"] + [f"wgt{p}" for p in range(1, board.memory.weight_ports)]


def _struct_name(op: Op) -> str:
    return op.name.capitalize() + "Fields"  # MATMUL -> MatmulFields, REQUANT32 -> Requant32Fields


def _token(value) -> str:
    text = str(value)
    if not text or any(c.isspace() for c in text):
        raise ValueError(f"{text!r} cannot be written to a whitespace-separated testbench list")
    return text


def _beats(nbytes: int, beat: int) -> int:
    return max(1, (nbytes + beat - 1) // beat)


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple
