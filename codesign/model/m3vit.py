"""Float reference: an M3ViT (ViT backbone, MoE MLP in some blocks, task-dependent gates, dense heads).

Parameter names follow M3ViT / FastMoE checkpoints so real checkpoints map 1:1:
  blocks.{i}.mlp.experts.htoh4.weight [E, Hm, D]   blocks.{i}.mlp.experts.h4toh.weight [E, D, Hm]
  blocks.{i}.mlp.gate.{t}.w_gate [D, E] (multi)  or  blocks.{i}.mlp.gate.w_gate [D (+ G or tasks), E]
  gate_task_represent.{fc1,fc2,norm} (task_embed gate)   decoders.{t}.* (heads, see heads.py)
Every `trace` hook records a float tensor under the name the quantizer calibrates against,
except the gate's `gate.logits` / `gate.probs`, which only the accuracy report reads.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .heads import make_head


def _record(trace: dict | None, name: str, value: torch.Tensor) -> None:
    if trace is not None:
        trace[name] = value.detach()


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, cfg.patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.scale = cfg.head_dim**-0.5
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)

    def _heads(self, qkv):
        b, t, d3 = qkv.shape
        return qkv.reshape(b, t, 3, self.num_heads, d3 // (3 * self.num_heads)).permute(2, 0, 3, 1, 4)

    def scores_and_probs(self, qkv):
        """Scaled scores and softmax probabilities [B, heads, T, T] from the packed q|k|v tensor.

        Not traced in forward: kept out of calibration, where [B, heads, T, T] per block would
        dominate memory; the accuracy report recomputes them from the traced qkv instead.
        """
        q, k, _ = self._heads(qkv)
        scores = (q @ k.transpose(-2, -1)) * self.scale
        return scores, scores.softmax(dim=-1)

    def forward(self, x, trace=None, prefix=""):
        b, t, d = x.shape
        qkv = self.qkv(x)
        _record(trace, prefix + "qkv", qkv)
        # Fused: never holds the [B, heads, T, T] probabilities, 5x faster at M3ViT-small's 1,025 tokens.
        out = F.scaled_dot_product_attention(*self._heads(qkv), scale=self.scale).transpose(1, 2).reshape(b, t, d)
        _record(trace, prefix + "attn", out)
        out = self.proj(out)
        _record(trace, prefix + "proj", out)
        return out


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x, task=0, trace=None, prefix="", task_feature=None):
        h = self.fc1(x)
        _record(trace, prefix + "fc1", h)
        h = F.gelu(h)
        _record(trace, prefix + "gelu", h)
        y = self.fc2(h)
        _record(trace, prefix + "mlp", y)
        return y


class Experts(nn.Module):
    """FastMoE layout: weights stacked along dim 0, one slice per expert."""

    def __init__(self, num_experts: int, dim: int, hidden: int):
        super().__init__()
        self.htoh4 = nn.Module()
        self.htoh4.weight = nn.Parameter(torch.randn(num_experts, hidden, dim) / math.sqrt(dim))
        self.htoh4.bias = nn.Parameter(torch.zeros(num_experts, hidden))
        self.h4toh = nn.Module()
        self.h4toh.weight = nn.Parameter(torch.randn(num_experts, dim, hidden) / math.sqrt(hidden))
        self.h4toh.bias = nn.Parameter(torch.zeros(num_experts, dim))


class Gate(nn.Module):
    def __init__(self, in_dim: int, num_experts: int):
        super().__init__()
        self.w_gate = nn.Parameter(torch.randn(in_dim, num_experts) * 0.02)


class TaskRepresent(nn.Module):
    """M3ViT's gate_task_represent: onehot(task) -> fc1 -> GELU -> fc2 -> LayerNorm, a G-wide task
    embedding that the task_embed gate reads after the token ([x, embedding] @ w_gate)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.num_tasks, cfg.gate_task_dim)
        self.fc2 = nn.Linear(cfg.gate_task_dim, cfg.gate_task_dim)
        self.norm = nn.LayerNorm(cfg.gate_task_dim, eps=cfg.ln_eps)

    def forward(self, task: int) -> torch.Tensor:
        onehot = torch.zeros(self.fc1.in_features, dtype=self.fc1.weight.dtype)
        onehot[task] = 1
        return self.norm(self.fc2(F.gelu(self.fc1(onehot))))


class MoeMlp(nn.Module):
    """VMoE gate semantics: softmax over all experts, top-k of the probabilities, not renormalised."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.experts = Experts(cfg.num_experts, cfg.embed_dim, cfg.moe_hidden)
        if cfg.gate_type == "multi":
            self.gate = nn.ModuleList(Gate(cfg.embed_dim, cfg.num_experts) for _ in cfg.tasks)
        else:
            self.gate = Gate(cfg.gate_in_dim, cfg.num_experts)

    def gate_logits(self, x, task: int, task_feature=None):
        """Logits [N, E] computed as the model defines them (the task part concatenated to x)."""
        if self.cfg.gate_type == "multi":
            return x @ self.gate[task].w_gate
        if self.cfg.gate_type == "shared":
            return x @ self.gate.w_gate
        if self.cfg.gate_type == "task_onehot":
            task_feature = F.one_hot(torch.tensor(task), self.cfg.num_tasks).to(x.dtype)
        return torch.cat([x, task_feature.expand(x.shape[0], -1)], dim=1) @ self.gate.w_gate

    def folded_gate(self, task: int, task_feature=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(w [D, E], b [E]) with gate_logits(x) == x @ w + b: the task part is constant per task."""
        d = self.cfg.embed_dim
        if self.cfg.gate_type == "multi":
            w = self.gate[task].w_gate
            return w, w.new_zeros(w.shape[1])
        w = self.gate.w_gate
        if self.cfg.gate_type == "shared":
            return w, w.new_zeros(w.shape[1])
        if self.cfg.gate_type == "task_onehot":
            return w[:d], w[d + task]
        return w[:d], task_feature @ w[d:]

    def expert(self, e: int, tokens):
        """Expert e on tokens [N, D]: (fc1 output, GELU output, fc2 output)."""
        ex = self.experts
        h = tokens @ ex.htoh4.weight[e].T + ex.htoh4.bias[e]
        g = F.gelu(h)
        return h, g, g @ ex.h4toh.weight[e].T + ex.h4toh.bias[e]

    def forward(self, x, task=0, trace=None, prefix="", task_feature=None):
        b, t, d = x.shape
        tokens = x.reshape(-1, d)
        logits = self.gate_logits(tokens, task, task_feature)
        probs = logits.softmax(dim=-1)
        _record(trace, prefix + "gate.logits", logits.reshape(b, t, -1))
        _record(trace, prefix + "gate.probs", probs.reshape(b, t, -1))
        top_p, top_i = probs.topk(self.cfg.top_k, dim=-1)
        # The (token, slot) pairs grouped by expert, tokens in order within an expert: one gather
        # and one scatter for all experts (per-expert small ops stall on a busy multi-core host).
        order = torch.argsort(top_i.reshape(-1), stable=True)
        counts = torch.bincount(top_i.reshape(-1), minlength=self.cfg.num_experts).tolist()
        rows = order // self.cfg.top_k
        grouped = tokens[rows]
        parts, start = [], 0
        for e, count in enumerate(counts):
            if count:
                parts.append(self.expert(e, grouped[start:start + count]))
            start += count
        pre, hidden, post = (torch.cat(p) for p in zip(*parts))
        if trace is not None:
            _record(trace, prefix + "fc1", pre)
            _record(trace, prefix + "gelu", hidden)
            _record(trace, prefix + "expert", post)
        out = torch.zeros_like(tokens).index_add_(0, rows, post * top_p.reshape(-1)[order].unsqueeze(1))
        out = out.reshape(b, t, d)
        _record(trace, prefix + "mlp", out)
        return out


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, index: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        self.mlp = MoeMlp(cfg) if cfg.is_moe(index) else Mlp(cfg.embed_dim, cfg.mlp_hidden)

    def forward(self, x, task=0, trace=None, prefix="", task_feature=None):
        h = self.norm1(x)
        _record(trace, prefix + "ln1", h)
        x = x + self.attn(h, trace, prefix)
        _record(trace, prefix + "res1", x)
        h = self.norm2(x)
        _record(trace, prefix + "ln2", h)
        x = x + self.mlp(h, task, trace, prefix, task_feature)
        _record(trace, prefix + "res2", x)
        return x


class M3ViT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.num_tokens, cfg.embed_dim) * 0.02)
        if cfg.gate_type == "task_embed":
            self.gate_task_represent = TaskRepresent(cfg)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps) if cfg.final_norm else None
        self.decoders = nn.ModuleList(make_head(cfg, t.out_channels) for t in cfg.tasks)

    def gate_task_feature(self, task: int) -> torch.Tensor | None:
        """What the task_embed gates read after the token (None for the other gates)."""
        if self.cfg.gate_type != "task_embed":
            return None
        return self.gate_task_represent(task)

    def forward_backbone(self, images, task: int, trace: dict | None = None):
        """The part that runs on the FPGA: images [B,C,H,W] -> tokens [B,T,D], after the final
        norm if the model has one, else the last block's residual stream."""
        x = self.patch_embed(images)
        if trace is not None:
            # The accelerator adds the conv bias together with pos_embed, so its "patch" is bias-free.
            _record(trace, "patch", x - self.patch_embed.proj.bias)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        _record(trace, "embed", x)
        feature = self.gate_task_feature(task)
        for i, blk in enumerate(self.blocks):
            x = blk(x, task, trace, f"b{i}.", feature)
        if self.norm is not None:
            x = self.norm(x)
            _record(trace, "norm", x)
        return x

    def forward(self, images, task: int):
        return self.decoders[task](self.forward_backbone(images, task))

    def head(self, tokens, task: int):
        """The host's part: backbone tokens [B,T,D] -> the task's output [B, C, H, W]."""
        return self.decoders[task](tokens)
