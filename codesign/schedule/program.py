"""Compile a QuantModel into an accelerator program, a weight blob and an activation memory map."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..quant import arith as A
from ..quant.precision import has_weights, layer_names, needed_acc_bits, used_widths
from ..quant.qmodel import QAdd, QBlock, QLinear, QMoe, QNorm, QuantModel
from .isa import Flag, Instr, Op, encode_program

ALIGN = 64


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class Region:
    name: str
    addr: int
    shape: tuple[int, ...]
    kind: str  # "elem" (activation container) or "i32"

    def to_dict(self) -> dict:
        return {"name": self.name, "addr": self.addr, "shape": list(self.shape), "kind": self.kind}


class WeightBlob:
    def __init__(self, elem_dtype):
        self.data = bytearray()
        self.edt = np.dtype(elem_dtype).newbyteorder("<")
        self.entries: list[Region] = []

    def add(self, name: str, values, kind: str = "elem") -> int:
        dtype = self.edt if kind == "elem" else np.dtype("<i4")
        arr = np.asarray(values, np.int64)
        info = np.iinfo(dtype)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise ValueError(f"{name} does not fit {dtype}")
        addr = len(self.data)
        self.data += arr.astype(dtype).tobytes()
        self.data += bytes(_align(len(self.data)) - len(self.data))
        self.entries.append(Region(name, addr, tuple(arr.shape), kind))
        return addr


class ActMap:
    def __init__(self, elem_bytes: int):
        self.size = 0
        self.elem_bytes = elem_bytes
        self.regions: dict[str, Region] = {}

    def alloc(self, name: str, shape: tuple[int, ...], kind: str = "elem") -> int:
        nbytes = int(np.prod(shape)) * (self.elem_bytes if kind == "elem" else 4)
        addr = self.size
        self.size = _align(self.size + nbytes)
        self.regions[name] = Region(name, addr, shape, kind)
        return addr


@dataclass
class Program:
    instrs: list[Instr]
    wgt: bytes
    act_bytes: int
    regions: dict[str, Region]
    weights: list[Region]
    elem_bytes: int
    abits: int  # the widest activation (per instruction: Instr.obits)
    wbits: int  # the widest weight
    num_tasks: int
    trace_names: list[str]
    moe_layers: dict[str, dict] = field(default_factory=dict)

    @property
    def code(self) -> bytes:
        return encode_program(self.instrs)

    @property
    def input(self) -> Region:
        return self.regions["input"]

    @property
    def output(self) -> Region:
        return self.regions[self.trace_names[-1]]  # the final norm, or the last block without one


class _Compiler:
    def __init__(self, qm: QuantModel):
        self.qm = qm
        self.cfg = qm.cfg
        p = qm.precision
        self.abits = max(p.abits(n) for n in layer_names(qm.cfg))
        self.wbits = max(p.wbits(n) for n in layer_names(qm.cfg) if has_weights(n))
        # One container for the whole program: 1 byte when every width <= 8 (docs/ISA.md).
        self.elem_bytes = 1 if max(used_widths(qm.cfg, p)) <= 8 else 2
        self.need = needed_acc_bits(qm.cfg, p)
        self.blob = WeightBlob(np.int8 if self.elem_bytes == 1 else np.int16)
        self.act = ActMap(self.elem_bytes)
        self.instrs: list[Instr] = []
        self.moe_layers: dict[str, dict] = {}

    def emit(self, op: Op, layer: str, obits: int, flags: int = 0, fmt: str | None = None, **args) -> None:
        """`fmt`: the precision layer whose exact-sum need (needed_acc_bits) this instruction has."""
        self.instrs.append(Instr(op, flags, args, layer, obits=obits, acc_bits=self.need.get(fmt or layer, 0)))

    def linear(self, name: str, layer: QLinear, x_addr: int, rows: int, x_stride: int, fmt: str | None = None) -> int:
        n, k = layer.shape
        out = self.act.alloc(name, (rows, n))
        self.emit(Op.MATMUL, name, layer.obits, Flag.GELU if layer.gelu is not None else 0, fmt,
                  **self._linear_args(name, layer), a_addr=x_addr, a_stride=x_stride, m=rows, out_addr=out,
                  out_stride=n)
        return out

    def _linear_args(self, name: str, layer: QLinear) -> dict:
        n, k = layer.shape
        args = dict(
            w_addr=self.blob.add(name + ".w", layer.w),
            bias_addr=self.blob.add(name + ".bias", layer.bias, "i32"),
            mult_addr=self.blob.add(name + ".mult", layer.mult, "i32"),
            shift=layer.shift, k=k, n=n,
        )
        if layer.gelu is not None:
            args["lut_addr"] = self.blob.add(name + ".gelu", layer.gelu)
        return args

    def norm(self, name: str, norm: QNorm, x_addr: int) -> int:
        t, d = self.cfg.num_tokens, self.cfg.embed_dim
        out = self.act.alloc(name, (t, d))
        self.emit(Op.LAYERNORM, name, norm.obits, x_addr=x_addr, out_addr=out, rows=t, dim=d,
                  gamma_addr=self.blob.add(name + ".gamma", norm.gamma, "i32"),
                  beta_addr=self.blob.add(name + ".beta", norm.beta, "i32"), eps=norm.eps, shift=norm.shift)
        return out

    def add(self, name: str, add: QAdd, a_addr: int, b_addr: int, b_in_wgt: bool = False) -> int:
        t, d = self.cfg.num_tokens, self.cfg.embed_dim
        out = self.act.alloc(name, (t, d))
        self.emit(Op.ADD, name, add.obits, Flag.B_WGT if b_in_wgt else 0, a_addr=a_addr, b_addr=b_addr, out_addr=out,
                  count=t * d, ma=add.ma, mb=add.mb, shift=add.shift)
        return out

    def attention(self, name: str, blk: QBlock, qkv_addr: int) -> int:
        cfg = self.cfg
        out = self.act.alloc(name, (cfg.num_tokens, cfg.embed_dim))
        at = blk.attn
        self.emit(Op.ATTN, name, at.obits, qkv_addr=qkv_addr, tokens=cfg.num_tokens, heads=cfg.num_heads,
                  head_dim=cfg.head_dim, out_addr=out, score_mult=at.score_mult, score_shift=at.score_shift,
                  out_mult=at.out_mult, out_shift=at.out_shift)
        return out

    def moe(self, prefix: str, moe: QMoe, x_addr: int) -> int:
        cfg = self.cfg
        t, d, e = cfg.num_tokens, cfg.embed_dim, cfg.num_experts
        # Every list starts a 64-byte line (the regions are 64-byte aligned): the HLS kernel writes
        # them as whole AXI beats, without reading a partial last beat back first.
        stride = (t + 15) // 16 * 16
        counts = self.act.alloc(prefix + "gate.counts", (e,), "i32")
        idx = self.act.alloc(prefix + "gate.idx", (e, stride), "i32")
        score = self.act.alloc(prefix + "gate.score", (e, stride), "i32")
        acc = self.act.alloc(prefix + "moe.acc", (t, d), "i32")
        hidden = self.act.alloc(prefix + "moe.hidden", (t, cfg.moe_hidden))
        self.emit(Op.GATE, prefix + "gate", moe.prob_bits, x_addr=x_addr, tokens=t, dim=d, experts=e, top_k=moe.top_k,
                  wg_addr=self.blob.add(prefix + "gate.w", moe.gate_w),
                  bg_addr=self.blob.add(prefix + "gate.b", moe.gate_b, "i32"),
                  score_mult=moe.score_mult, score_shift=moe.score_shift, counts_addr=counts, idx_addr=idx,
                  score_addr=score, list_stride=stride, acc_addr=acc, num_tasks=cfg.num_tasks)
        for ex in range(e):
            lists = dict(idx_addr=idx + ex * stride * 4, score_addr=score + ex * stride * 4,
                         count_addr=counts + ex * 4, m=t)
            self.emit(Op.MATMUL, f"{prefix}e{ex}.fc1", moe.fc1[ex].obits, Flag.GATHER | Flag.DYNM | Flag.GELU,
                      prefix + "fc1",
                      **self._linear_args(f"{prefix}e{ex}.fc1", moe.fc1[ex]), a_addr=x_addr, a_stride=d,
                      out_addr=hidden, out_stride=cfg.moe_hidden, **lists)
            self.emit(Op.MATMUL, f"{prefix}e{ex}.fc2", moe.fc2[ex].obits, Flag.SCATTER | Flag.DYNM, prefix + "fc2",
                      **self._linear_args(f"{prefix}e{ex}.fc2", moe.fc2[ex]), a_addr=hidden,
                      a_stride=cfg.moe_hidden, out_addr=acc, out_stride=d, **lists)
        out = self.act.alloc(prefix + "mlp", (t, d))
        self.emit(Op.REQUANT32, prefix + "mlp", moe.obits, src_addr=acc, out_addr=out, count=t * d, mult=moe.out_mult,
                  shift=moe.out_shift)
        self.moe_layers[prefix[:-1]] = {"counts_addr": counts, "experts": e}
        return out

    def block(self, i: int, blk: QBlock, x: int) -> int:
        cfg, p = self.cfg, f"b{i}."
        t, d = cfg.num_tokens, cfg.embed_dim
        h = self.norm(p + "ln1", blk.ln1, x)
        qkv = self.linear(p + "qkv", blk.qkv, h, t, d)
        att = self.attention(p + "attn", blk, qkv)
        proj = self.linear(p + "proj", blk.proj, att, t, d)
        x = self.add(p + "res1", blk.res1, x, proj)
        h = self.norm(p + "ln2", blk.ln2, x)
        if blk.is_moe:
            y = self.moe(p, blk.mlp, h)
        else:
            g = self.linear(p + "gelu", blk.mlp[0], h, t, d, fmt=p + "fc1")
            y = self.linear(p + "mlp", blk.mlp[1], g, t, blk.mlp[0].shape[0], fmt=p + "fc2")
        return self.add(p + "res2", blk.res2, x, y)

    def compile(self) -> Program:
        cfg, qm = self.cfg, self.qm
        t, f = cfg.num_tokens, cfg.patch_features
        x_in = self.act.alloc("input", (t, f))
        x = self.linear("patch", qm.patch, x_in, t, f)
        x = self.add("embed", qm.embed, x, self.blob.add("pos", qm.pos), b_in_wgt=True)
        for i, blk in enumerate(qm.blocks):
            x = self.block(i, blk, x)
        if qm.norm is not None:
            self.norm("norm", qm.norm, x)
        return Program(self.instrs, bytes(self.blob.data), self.act.size, self.act.regions, self.blob.entries,
                       self.elem_bytes, self.abits, self.wbits, cfg.num_tasks, qm.trace_names(), self.moe_layers)


def check_alignment(qm: QuantModel) -> None:
    cfg = qm.cfg
    dims = {"embed_dim": cfg.embed_dim, "head_dim": cfg.head_dim, "mlp hidden": cfg.mlp_hidden,
            "moe hidden": cfg.moe_hidden, "patch features": cfg.patch_features}
    bad = [f"{k}={v}" for k, v in dims.items() if v % 8]
    if bad:
        raise ValueError("the accelerator moves 8-byte words: these sizes must be multiples of 8: " + ", ".join(bad))


def compile_program(qm: QuantModel) -> Program:
    check_alignment(qm)
    return _Compiler(qm).compile()


def load_input(prog: Program, act: bytearray, x_q: np.ndarray) -> None:
    dtype = "<i1" if prog.elem_bytes == 1 else "<i2"
    r = prog.input
    data = np.asarray(x_q, np.int64).astype(dtype).tobytes()
    act[r.addr: r.addr + len(data)] = data


def read_region(prog: Program, act: bytes, name: str) -> np.ndarray:
    r = prog.regions[name]
    dtype = np.dtype("<i4") if r.kind == "i32" else np.dtype("<i1" if prog.elem_bytes == 1 else "<i2")
    n = int(np.prod(r.shape))
    return np.frombuffer(bytes(act[r.addr: r.addr + n * dtype.itemsize]), dtype).astype(np.int64).reshape(r.shape)
