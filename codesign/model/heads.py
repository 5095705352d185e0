"""Task heads: they run on the host, on the tokens the accelerator returns.

* LinearHead: a Linear per patch token, pixel-shuffled back to the image (the embedded model's).
* VitUpHead: M3ViT's VisionTransformerUpHead (decoders.{task}.*): LayerNorm; the patch tokens laid
  on the H/p x W/p grid; four 3x3 convolutions of head_channels, each followed by BatchNorm and
  ReLU; a 1x1 convolution to the task's channels; bilinear upsampling to the image size. M3ViT
  drops the cls token only when the token count is not a multiple of 48; with the cls token
  kept the tokens would not fill the patch grid, so config.py refuses those grids and the head
  always drops it. BatchNorm is folded into the convolutions for inference (`folded_convs`),
  which is also what the PYNQ driver's NumPy head runs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

BN_EPS = 1e-5  # torch's (Sync)BatchNorm default, which M3ViT's heads use
VIT_UP_CONVS = 4  # 3x3 conv + BN + ReLU stages before the 1x1 classifier


def make_head(cfg: ModelConfig, out_channels: int) -> nn.Module:
    return VitUpHead(cfg, out_channels) if cfg.head == "vit_up" else LinearHead(cfg, out_channels)


class LinearHead(nn.Module):
    """Linear per patch token, pixel-shuffled back to full resolution."""

    def __init__(self, cfg: ModelConfig, out_channels: int):
        super().__init__()
        self.cfg = cfg
        self.out_channels = out_channels
        self.proj = nn.Linear(cfg.embed_dim, cfg.patch_size**2 * out_channels)

    def forward(self, tokens):
        (rows, cols), p = self.cfg.grid, self.cfg.patch_size
        y = self.proj(tokens[:, 1:])  # drop cls
        y = y.reshape(-1, rows, cols, self.out_channels, p, p).permute(0, 3, 1, 4, 2, 5)
        return y.reshape(-1, self.out_channels, rows * p, cols * p)


class FrozenBatchNorm2d(nn.Module):
    """Inference BatchNorm with M3ViT's parameter names (weight, bias, running_mean, running_var);
    the step counter num_batches_tracked is training state, not kept."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, t) with BN(x) == s * x + t per channel."""
        scale = self.weight / torch.sqrt(self.running_var + BN_EPS)
        return scale, self.bias - self.running_mean * scale


class VitUpHead(nn.Module):
    def __init__(self, cfg: ModelConfig, out_channels: int):
        super().__init__()
        self.cfg = cfg
        self.out_channels = out_channels
        width = cfg.head_channels
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        widths = [cfg.embed_dim] + [width] * VIT_UP_CONVS
        for i in range(VIT_UP_CONVS):
            setattr(self, f"conv_{i}", nn.Conv2d(widths[i], width, 3, padding=1))
            setattr(self, f"syncbn_fc_{i}", FrozenBatchNorm2d(width))
        setattr(self, f"conv_{VIT_UP_CONVS}", nn.Conv2d(width, out_channels, 1))

    def grid_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens [B, T, D] -> normalised patch features [B, D, rows, cols]."""
        x = self.norm(tokens[:, 1:])  # drop cls
        rows, cols = self.cfg.grid
        return x.transpose(1, 2).reshape(x.shape[0], -1, rows, cols)

    def folded_convs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(weight, bias) of the five convolutions, each BatchNorm folded into the conv before it."""
        convs = []
        for i in range(VIT_UP_CONVS):
            conv = getattr(self, f"conv_{i}")
            scale, shift = getattr(self, f"syncbn_fc_{i}").scale_shift()
            convs.append((conv.weight * scale[:, None, None, None], conv.bias * scale + shift))
        last = getattr(self, f"conv_{VIT_UP_CONVS}")
        return convs + [(last.weight, last.bias)]

    def forward(self, tokens):
        x = self.grid_features(tokens)
        *hidden, (w_out, b_out) = self.folded_convs()
        for w, b in hidden:
            x = F.relu(F.conv2d(x, w, b, padding=1))
        x = F.conv2d(x, w_out, b_out)
        return F.interpolate(x, size=self.cfg.image_hw, mode="bilinear", align_corners=False)
