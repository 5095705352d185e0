"""The quantised model: integer parameters of every layer (the IR the scheduler compiles)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ..model.config import ModelConfig
from . import arith as A
from .precision import Precision

EXPERT_DETAIL = re.compile(r"(?P<block>b\d+\.)e\d+\.(?P<part>fc1|gelu|out)")
EXPERT_SCALE = {"fc1": "fc1", "gelu": "gelu", "out": "expert"}


@dataclass
class QLinear:
    """y = requant(x @ w.T + bias, mult[n], shift), optionally followed by a GELU table."""

    w: np.ndarray  # int [N, K]
    bias: np.ndarray  # int64 [N]
    mult: np.ndarray  # int64 [N]
    shift: int
    obits: int  # output width: the requantisation saturates to it (with a table: the table's index)
    gelu: np.ndarray | None = None  # int table indexed by q - qmin(obits), entries of the same width

    @property
    def shape(self) -> tuple[int, int]:
        return self.w.shape


@dataclass
class QAdd:
    ma: int
    mb: int
    shift: int
    obits: int


@dataclass
class QNorm:
    gamma: np.ndarray  # int64 [D]
    beta: np.ndarray  # int64 [D]
    eps: int
    shift: int
    obits: int


@dataclass
class QAttention:
    score_mult: int
    score_shift: int
    out_mult: int
    out_shift: int
    obits: int


@dataclass
class QMoe:
    gate_w: np.ndarray  # int [tasks, E, D]
    gate_b: np.ndarray  # int64 [tasks, E]
    score_mult: int  # per task would be possible; one shared gate scale keeps one multiplier
    score_shift: int
    fc1: list[QLinear]  # per expert, with GELU
    fc2: list[QLinear]  # per expert, to the shared expert-output scale
    out_mult: int
    out_shift: int
    top_k: int
    prob_bits: int  # gate probabilities in units of 1/qmax(prob_bits)
    obits: int  # the combined output


@dataclass
class QBlock:
    ln1: QNorm
    qkv: QLinear
    attn: QAttention
    proj: QLinear
    res1: QAdd
    ln2: QNorm
    mlp: tuple[QLinear, QLinear] | QMoe
    res2: QAdd

    @property
    def is_moe(self) -> bool:
        return isinstance(self.mlp, QMoe)


@dataclass
class QuantModel:
    cfg: ModelConfig
    wbits: int  # the default format (precision.default); per layer: precision.of(name)
    abits: int
    precision: Precision  # what the model was quantised with (layers not listed: its default)
    scales: dict[str, float]  # float scale of every traced activation
    patch: QLinear  # patch embedding, no bias (the bias lives in `pos`)
    pos: np.ndarray  # int [T, D]: row 0 = cls + pos[0], rows 1.. = pos + patch bias
    embed: QAdd
    blocks: list[QBlock]
    norm: QNorm | None  # the final LayerNorm; without one the output is the last block's res2
    meta: dict = field(default_factory=dict)

    @property
    def input_bits(self) -> int:
        return self.precision.abits("input")

    @property
    def input_scale(self) -> float:
        return self.scales["input"]

    @property
    def output_name(self) -> str:
        """The traced tensor the accelerator returns."""
        return "norm" if self.norm is not None else f"b{len(self.blocks) - 1}.res2"

    @property
    def output_scale(self) -> float:
        return self.scales[self.output_name]

    def scale_of(self, name: str):
        """Float scale of a traced or detail tensor (per column for the packed q|k|v output)."""
        if name.endswith(".qkv"):
            p, d = name[:-3], self.cfg.embed_dim
            return np.repeat([self.scales[p + "q"], self.scales[p + "k"], self.scales[p + "v"]], d)
        if name.endswith(".attn.probs"):
            return 1.0  # already real probabilities: attention is normalised after P.v, never rounded
        if name.endswith(".probs"):
            # gate softmax outputs are in units of 1/qmax(the gate's abits)
            return 1.0 / A.qmax(self.precision.abits(name[: -len(".probs")]))  # b{i}.gate.probs -> b{i}.gate
        if name.endswith(".attn.scores"):
            # integer q.k; the float model's scores also carry the 1/sqrt(head_dim) factor
            p = name[: -len("attn.scores")]
            return self.scales[p + "q"] * self.scales[p + "k"] * self.cfg.head_dim**-0.5
        expert = EXPERT_DETAIL.fullmatch(name)
        if expert:  # all experts of a block share the fc1 / gelu / output scales
            return self.scales[expert["block"] + EXPERT_SCALE[expert["part"]]]
        return self.scales[name]

    def trace_names(self) -> list[str]:
        """Names of the per-layer tensors the golden model, csim and cosim compare, in order."""
        names = ["patch", "embed"]
        for i, blk in enumerate(self.blocks):
            mlp = ["mlp"] if blk.is_moe else ["gelu", "mlp"]
            names += [f"b{i}.{n}" for n in ["ln1", "qkv", "attn", "proj", "res1", "ln2", *mlp, "res2"]]
        return names + (["norm"] if self.norm is not None else [])
