"""The accelerator's instruction set: encoding and a reference interpreter.

A program is a sequence of 16-word (64-byte) little-endian instructions ending with END.
Word 0 holds the opcode (bits 7:0), flags (bits 15:8) and the output width `obits` (bits 20:16,
2..16: every instruction saturates its outputs to its own width, per-layer precision); words
1..15 are unsigned 32-bit fields. Addresses are byte offsets from one of two bases the host passes: `wgt` (read-only
blob: weights, biases, multipliers, tables) or `act` (activations and scratch). Tensors of
activations and weights are stored in a container of `elem_bytes` (1 for widths <= 8, else 2);
int32 arrays (biases, multipliers, routing lists, the MoE accumulator) are 4 bytes. All
buffers are 64-byte aligned and every row stride is a multiple of 8 bytes.

The interpreter below defines what each instruction does, using the kernels of
codesign.quant.arith; docs/ISA.md describes the same in words for the C++ and Verilog.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from ..quant import arith as A

WORDS = 16
INSTR_BYTES = WORDS * 4
# Word 0 bits 20:16: the instruction's output width.
OBITS_LSB = 16
OBITS_MASK = 0x1F
OBITS_MAX = 16


class Op(IntEnum):
    END = 0
    MATMUL = 1
    ATTN = 2
    LAYERNORM = 3
    ADD = 4
    GATE = 5
    REQUANT32 = 6


class Flag:
    GELU = 1  # MATMUL: apply the table at lut_addr after requantisation
    GATHER = 2  # MATMUL: input row m is row idx[m] of A
    SCATTER = 4  # MATMUL: acc32[idx[m]] += score[m] * y[m] instead of storing y[m]
    DYNM = 8  # MATMUL: M = min(M, mem32[count_addr])
    B_WGT = 16  # ADD: operand b lives in the wgt blob


# Field names of words 1..15 per opcode (the order is the encoding).
FIELDS: dict[Op, tuple[str, ...]] = {
    Op.END: (),
    Op.MATMUL: ("a_addr", "a_stride", "w_addr", "bias_addr", "mult_addr", "shift", "m", "k", "n",
                "out_addr", "out_stride", "lut_addr", "idx_addr", "score_addr", "count_addr"),
    Op.ATTN: ("qkv_addr", "tokens", "heads", "head_dim", "out_addr", "score_mult", "score_shift",
              "out_mult", "out_shift"),
    Op.LAYERNORM: ("x_addr", "out_addr", "rows", "dim", "gamma_addr", "beta_addr", "eps", "shift"),
    Op.ADD: ("a_addr", "b_addr", "out_addr", "count", "ma", "mb", "shift"),
    Op.GATE: ("x_addr", "tokens", "dim", "experts", "top_k", "wg_addr", "bg_addr", "score_mult",
              "score_shift", "counts_addr", "idx_addr", "score_addr", "list_stride", "acc_addr", "num_tasks"),
    Op.REQUANT32: ("src_addr", "out_addr", "count", "mult", "shift"),
}


@dataclass
class Instr:
    op: Op
    flags: int = 0
    args: dict[str, int] = field(default_factory=dict)
    layer: str = ""  # name of the traced tensor this instruction produces (for reports)
    obits: int = 0  # output width (word 0 bits 20:16); 0 only for END
    # Not encoded: the exact-sum width this instruction needs (uarch.instr_acc_bits), known to the
    # compiler from the layer formats; 0 = unknown (a decoded program), derived from widths then.
    acc_bits: int = 0

    def encode(self) -> np.ndarray:
        names = FIELDS[self.op]
        unknown = set(self.args) - set(names)
        if unknown:
            raise ValueError(f"{self.op.name}: unknown field(s) {sorted(unknown)}")
        if self.op != Op.END and not 2 <= self.obits <= OBITS_MAX:
            raise ValueError(f"{self.op.name} {self.layer}: output width {self.obits} not in 2..{OBITS_MAX}")
        words = np.zeros(WORDS, np.uint32)
        words[0] = int(self.op) | (self.flags << 8) | (self.obits << OBITS_LSB)
        for i, name in enumerate(names, start=1):
            value = int(self.args.get(name, 0))
            if not 0 <= value < 2**32:
                raise ValueError(f"{self.op.name}.{name} = {value} does not fit an unsigned 32-bit field")
            # The quantizer never makes more; the hardware's shifters are 7-bit and NumPy's int64
            # shift is undefined past 63, so a larger one would not be bit-exact anywhere.
            if name.endswith("shift") and value > A.MAX_SHIFT:
                raise ValueError(f"{self.op.name} {self.layer}: {name} = {value} exceeds {A.MAX_SHIFT}")
            words[i] = value
        return words

    @classmethod
    def decode(cls, words) -> "Instr":
        op = Op(int(words[0]) & 0xFF)
        flags = (int(words[0]) >> 8) & 0xFF
        obits = (int(words[0]) >> OBITS_LSB) & OBITS_MASK
        args = {name: int(words[i]) for i, name in enumerate(FIELDS[op], start=1)}
        return cls(op, flags, args, obits=obits)


def encode_program(instrs: list[Instr]) -> bytes:
    body = [i.encode() for i in instrs] + [Instr(Op.END).encode()]
    return np.concatenate(body).astype("<u4").tobytes()


def decode_program(blob: bytes) -> list[Instr]:
    words = np.frombuffer(blob, dtype="<u4").reshape(-1, WORDS)
    out = []
    for w in words:
        ins = Instr.decode(w)
        if ins.op == Op.END:
            break
        out.append(ins)
    return out


# ---------------------------------------------------------------- interpreter

class AccumulatorOverflow(ValueError):
    """An exact sum of the MAC array does not fit the accumulator width the hardware was built with."""


class Memory:
    """Typed views of the two address spaces."""

    def __init__(self, wgt: bytes, act: bytearray, elem_bytes: int, acc_bits: int | None = None):
        self.wgt = np.frombuffer(wgt, np.uint8)
        self.act = np.frombuffer(act, np.uint8)
        self.edt = np.dtype("<i1") if elem_bytes == 1 else np.dtype("<i2")
        self.acc_bits = acc_bits  # None: unchecked

    def check_acc(self, sums, what: str) -> None:
        """Every exact sum the MAC array accumulates must fit a signed acc_bits-bit register."""
        if self.acc_bits is None or np.size(sums) == 0:
            return
        lo, hi = int(np.min(sums)), int(np.max(sums))
        limit = 1 << (self.acc_bits - 1)
        if lo < -limit or hi >= limit:
            raise AccumulatorOverflow(f"{what}: a sum of {lo if lo < -limit else hi} does not fit "
                                      f"{self.acc_bits}-bit accumulators")

    def _view(self, space, addr, count, dtype):
        dtype = np.dtype(dtype)
        return space[addr: addr + count * dtype.itemsize].view(dtype)

    def elems(self, addr, count, wgt=False):
        return self._view(self.wgt if wgt else self.act, addr, count, self.edt).astype(np.int64)

    def rows(self, addr, rows, cols, stride, wgt=False):
        return self.gather_rows(addr, np.arange(rows), cols, stride, wgt)

    def gather_rows(self, addr, row_ids, cols, stride, wgt=False):
        """Rows row_ids (in that order) of a [*, stride] matrix at addr, `cols` elements each."""
        if len(row_ids) == 0:
            return np.zeros((0, cols), np.int64)
        flat = self.elems(addr, int(np.max(row_ids)) * stride + cols, wgt)
        return flat[_row_elements(row_ids, cols, stride)]

    def i32(self, addr, count, wgt=False):
        return self._view(self.wgt if wgt else self.act, addr, count, "<i4").astype(np.int64)

    def store_elems(self, addr, values):
        values = np.asarray(values, np.int64).ravel()
        self._view(self.act, addr, values.size, self.edt)[:] = values

    def store_rows(self, addr, values, stride):
        values = np.asarray(values, np.int64)
        if len(values):
            rows, cols = values.shape
            view = self._view(self.act, addr, (rows - 1) * stride + cols, self.edt)
            view[_row_elements(np.arange(rows), cols, stride)] = values

    def add_i32_rows(self, addr, row_ids, values, stride):
        """int32 rows row_ids of a [*, stride] matrix at addr += values, wrapping like the hardware's adds."""
        rows, cols = values.shape
        if rows:
            view = self._view(self.act, addr, int(np.max(row_ids)) * stride + cols, "<i4")
            where = _row_elements(row_ids, cols, stride)
            total = view.astype(np.int64)
            np.add.at(total, where, values)  # a row listed twice adds twice, as it would in order
            view[:] = total

    def store_i32(self, addr, values):
        values = np.asarray(values, np.int64).ravel()
        self._view(self.act, addr, values.size, "<i4")[:] = values


def _row_elements(row_ids, cols: int, stride: int) -> np.ndarray:
    """Element offsets [rows, cols] of rows row_ids of a matrix with `stride` elements per row."""
    return np.asarray(row_ids, np.int64)[:, None] * stride + np.arange(cols)


class WgtReadLog:
    """Every read of the `wgt` blob during one execute(): (pc, addr, nbytes), in program order.

    Pass one as execute(..., wgt_reads=log) to check the memory traffic of a schedule (e.g. that
    no expert's weights are fetched twice); without it the interpreter records nothing.
    """

    def __init__(self):
        self.reads: list[tuple[int, int, int]] = []
        self.pc = -1  # the instruction being executed; set by execute()

    def byte_counts(self, size: int, pcs=None) -> np.ndarray:
        """How often each of `size` blob bytes was read by the instructions `pcs` (default: all)."""
        counts = np.zeros(size, np.int64)
        wanted = None if pcs is None else set(pcs)
        for pc, addr, nbytes in self.reads:
            if wanted is None or pc in wanted:
                counts[addr: addr + nbytes] += 1
        return counts


class _RecordingMemory(Memory):
    def __init__(self, wgt: bytes, act: bytearray, elem_bytes: int, log: WgtReadLog, acc_bits: int | None = None):
        super().__init__(wgt, act, elem_bytes, acc_bits)
        self.log = log

    def _view(self, space, addr, count, dtype):
        view = super()._view(space, addr, count, dtype)
        if space is self.wgt:
            self.log.reads.append((self.log.pc, int(addr), int(view.nbytes)))
        return view


def _matmul(mem: Memory, f: int, a: dict, obits: int, eb: int) -> None:
    m = a["m"]
    if f & Flag.DYNM:
        m = max(0, min(m, int(mem.i32(a["count_addr"], 1)[0])))  # a negative count runs no rows
    if m == 0:
        return
    idx = mem.i32(a["idx_addr"], m) if f & (Flag.GATHER | Flag.SCATTER) else np.arange(m)
    rows = idx if f & Flag.GATHER else np.arange(m)
    x = mem.gather_rows(a["a_addr"], rows, a["k"], a["a_stride"])
    w = mem.elems(a["w_addr"], a["n"] * a["k"], wgt=True).reshape(a["n"], a["k"])
    bias = mem.i32(a["bias_addr"], a["n"], wgt=True)
    mult = mem.i32(a["mult_addr"], a["n"], wgt=True)
    A.check_requant_mult(mult, "MATMUL")
    if mem.acc_bits is not None:
        mem.check_acc(x @ w.T, "MATMUL")
    y = A.linear(x, w, bias, mult, a["shift"], obits)
    if f & Flag.GELU:
        y = A.lut_lookup(y, mem.elems(a["lut_addr"], 1 << obits, wgt=True), obits)
    if f & Flag.SCATTER:
        score = mem.i32(a["score_addr"], m)
        mem.add_i32_rows(a["out_addr"], idx, score[:, None] * y, a["out_stride"])
    else:
        mem.store_rows(a["out_addr"], y, a["out_stride"])


def _attn(mem: Memory, f: int, a: dict, obits: int, eb: int) -> None:
    t, h, dh = a["tokens"], a["heads"], a["head_dim"]
    A.check_requant_mult(a["out_mult"], "ATTN")
    d = h * dh
    qkv = mem.rows(a["qkv_addr"], t, 3 * d, 3 * d)
    for head in range(h):
        q, k, v = (qkv[:, p * d + head * dh: p * d + (head + 1) * dh] for p in range(3))
        if mem.acc_bits is not None:
            _check_attention_sums(mem, q, k, v, a["score_mult"], a["score_shift"])
        o = A.attention_head(q, k, v, a["score_mult"], a["score_shift"], a["out_mult"], a["out_shift"], obits)
        mem.store_rows(a["out_addr"] + head * dh * eb, o, d)


def _check_attention_sums(mem: Memory, q, k, v, score_mult: int, score_shift: int) -> None:
    """The scores q.k, the sums e.v and the row sums of e (arith.attention_head's exact sums)."""
    scores = q @ k.T
    mem.check_acc(scores, "ATTN scores")
    e = A.exp_weights(scores, score_mult, score_shift)
    mem.check_acc(e @ v, "ATTN e.v")
    mem.check_acc(e.sum(axis=-1), "ATTN row sums")


def _layernorm(mem: Memory, f: int, a: dict, obits: int, eb: int) -> None:
    x = mem.elems(a["x_addr"], a["rows"] * a["dim"]).reshape(a["rows"], a["dim"])
    g = mem.i32(a["gamma_addr"], a["dim"], wgt=True)
    b = mem.i32(a["beta_addr"], a["dim"], wgt=True)
    A.check_ln_gamma(g, "LAYERNORM")
    mem.store_elems(a["out_addr"], A.layernorm(x, g, b, a["eps"], a["shift"], obits))


def _add(mem: Memory, f: int, a: dict, obits: int, eb: int) -> None:
    x = mem.elems(a["a_addr"], a["count"])
    y = mem.elems(a["b_addr"], a["count"], wgt=bool(f & Flag.B_WGT))
    A.check_requant_mult([a["ma"], a["mb"]], "ADD")
    mem.store_elems(a["out_addr"], A.add(x, y, a["ma"], a["mb"], a["shift"], obits))


def _gate(mem: Memory, f: int, a: dict, obits: int, eb: int, task: int) -> None:
    t, d, e, k = a["tokens"], a["dim"], a["experts"], a["top_k"]
    task = min(task, a["num_tasks"] - 1)
    x = mem.elems(a["x_addr"], t * d).reshape(t, d)
    wg = mem.elems(a["wg_addr"] + task * e * d * eb, e * d, wgt=True).reshape(e, d)
    bg = mem.i32(a["bg_addr"] + task * e * 4, e, wgt=True)
    if mem.acc_bits is not None:
        mem.check_acc(x @ wg.T, "GATE logits")
    logits = A.matmul_acc(x, wg, bg)
    probs = A.softmax_rows(logits, a["score_mult"], a["score_shift"], obits)
    ids = A.topk_experts(logits, k)
    counts = np.zeros(e, np.int64)
    for ex in range(e):  # each expert's list: its tokens in token order, as the tokens are routed one by one
        tokens = np.nonzero((ids == ex).any(axis=1))[0]
        counts[ex] = tokens.size
        mem.store_i32(a["idx_addr"] + a["list_stride"] * ex * 4, tokens)
        mem.store_i32(a["score_addr"] + a["list_stride"] * ex * 4, probs[tokens, ex])
    mem.store_i32(a["counts_addr"], counts)
    mem.store_i32(a["acc_addr"], np.zeros(t * d, np.int64))


def _requant32(mem: Memory, f: int, a: dict, obits: int, eb: int) -> None:
    acc = mem.i32(a["src_addr"], a["count"])
    A.check_requant_mult(a["mult"], "REQUANT32")
    mem.store_elems(a["out_addr"], A.requant(acc, a["mult"], a["shift"], obits))


_HANDLERS = {Op.MATMUL: _matmul, Op.ATTN: _attn, Op.LAYERNORM: _layernorm, Op.ADD: _add,
             Op.REQUANT32: _requant32}


def execute(program: bytes, wgt: bytes, act: bytearray, task: int, abits: int, elem_bytes: int,
            on_instr=None, wgt_reads: WgtReadLog | None = None, acc_bits: int | None = None) -> int:
    """Run `program` on the memories (act is modified in place). Returns the instruction count.

    Every instruction saturates to its own output width (word 0 bits 20:16); `abits` (the
    program's widest, Program.abits) is not used by the arithmetic, only kept for the callers.
    `wgt_reads`: a WgtReadLog that receives every read of the weight blob.
    `acc_bits`: the accumulator width of the hardware (uarch.Uarch.acc_w): every exact sum of the MAC
    array (MATMUL and GATE products, attention scores, e.v and row sums) must fit it, else
    AccumulatorOverflow.
    """
    mem = (Memory(wgt, act, elem_bytes, acc_bits) if wgt_reads is None
           else _RecordingMemory(wgt, act, elem_bytes, wgt_reads, acc_bits))
    count = 0
    for ins in decode_program(program):
        if not 2 <= ins.obits <= OBITS_MAX:
            raise ValueError(f"instruction {count} ({ins.op.name}): output width {ins.obits} not in 2..{OBITS_MAX}")
        if wgt_reads is not None:
            wgt_reads.pc = count
        if ins.op == Op.GATE:
            _gate(mem, ins.flags, ins.args, ins.obits, elem_bytes, task)
        else:
            _HANDLERS[ins.op](mem, ins.flags, ins.args, ins.obits, elem_bytes)
        count += 1
        if on_instr is not None:
            on_instr(count, ins)
    return count
