"""Task heads on the host: M3ViT's ViT-up head (BN folded) and the linear head, at any image shape."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from codesign.model.config import ModelConfig
from codesign.model.heads import BN_EPS, VIT_UP_CONVS, LinearHead, VitUpHead

CFG = ModelConfig(img_size=(32, 48), patch_size=8, embed_dim=16, num_heads=2, depth=1, moe_blocks=(),
                  final_norm=False, head="vit_up", head_channels=8)


def randomised(head: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter and BN statistic random, so a dropped or misplaced term shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(head.named_parameters()) + list(head.named_buffers()):
            t.copy_(torch.rand(t.shape, generator=gen) + 0.5 if name.endswith("running_var")
                    else torch.randn(t.shape, generator=gen) * 0.5)
    return head.eval()


def unfolded_vit_up(head: VitUpHead, tokens: torch.Tensor) -> torch.Tensor:
    """M3ViT's VisionTransformerUpHead written out: LN, conv -> BN -> ReLU four times, 1x1 conv, bilinear."""
    x = tokens[:, 1:] if tokens.shape[1] % 48 else tokens
    x = F.layer_norm(x, x.shape[-1:], head.norm.weight, head.norm.bias, 1e-6)
    x = x.transpose(1, 2).reshape(len(x), -1, 4, 6)
    for i in range(VIT_UP_CONVS):
        conv, bn = getattr(head, f"conv_{i}"), getattr(head, f"syncbn_fc_{i}")
        x = F.batch_norm(conv(x), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, BN_EPS)
        x = F.relu(x)
    x = getattr(head, f"conv_{VIT_UP_CONVS}")(x)
    return F.interpolate(x, size=(32, 48), mode="bilinear", align_corners=False)


def test_vit_up_head_with_folded_bn_equals_conv_bn_relu():
    head = randomised(VitUpHead(CFG, 5))
    tokens = torch.randn(2, CFG.num_tokens, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = head(tokens)
        torch.testing.assert_close(out, unfolded_vit_up(head, tokens), rtol=1e-5, atol=1e-5)
    assert out.shape == (2, 5, 32, 48)


def test_vit_up_head_keeps_m3vits_parameter_names():
    names = set(VitUpHead(CFG, 5).state_dict())
    assert {"norm.weight", "conv_0.weight", "conv_4.bias", "syncbn_fc_3.running_var"} <= names
    assert not any("num_batches_tracked" in n for n in names)


def test_a_token_count_that_m3vit_would_not_drop_cls_from_is_refused():
    # 23 x 25 patches + cls = 576 = 12 x 48 tokens: M3ViT's head would keep the cls token
    with pytest.raises(ValueError, match="576 tokens are a multiple of 48"):
        ModelConfig(img_size=(23 * 8, 25 * 8), patch_size=8, embed_dim=16, num_heads=2, head="vit_up")
    ModelConfig(img_size=(23 * 8, 25 * 8), patch_size=8, embed_dim=16, num_heads=2)  # the linear head always drops it


def test_linear_head_lays_tokens_on_a_non_square_grid():
    cfg = ModelConfig(img_size=(16, 32), patch_size=8, embed_dim=16, num_heads=2)
    head = LinearHead(cfg, 1).eval()
    tokens = torch.zeros(1, cfg.num_tokens, 16)
    tokens[0, 1 + 5] = 1.0  # patch (row 1, column 1) of the 2 x 4 grid
    with torch.no_grad():
        head.proj.weight.zero_()
        head.proj.bias.zero_()
        head.proj.weight[:, 0] = 1.0
        out = head(tokens)[0, 0]
    assert out.shape == (16, 32) and out[8:16, 8:16].eq(1).all() and out.sum() == 64
