"""What the host needs around the accelerator: data/host.json and data/heads.npz.

The accelerator takes quantised patch rows and returns backbone tokens; the PYNQ driver
(hls_templates/driver.py.j2) turns an image into those rows and the returned tokens into task
outputs with the task heads, in NumPy. This writes what it reads for that:
  host.json   image shape, patch size, input/output scales and widths, tasks, head type
  heads.npz   per task t: the linear head ("t.proj.weight", "t.proj.bias"), or the ViT-up head's
              LayerNorm ("t.norm.weight", "t.norm.bias") and its five convolutions with BatchNorm
              folded in ("t.conv{i}.weight", "t.conv{i}.bias"), float32
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..model.heads import LinearHead
from ..model.m3vit import M3ViT
from ..quant.qmodel import QuantModel

HOST_FILE = "host.json"
HEADS_FILE = "heads.npz"


def host_info(model: M3ViT, qm: QuantModel) -> dict:
    cfg = model.cfg
    return {"format": 1, "img_size": list(cfg.image_hw), "patch_size": cfg.patch_size, "in_chans": cfg.in_chans,
            "input_bits": qm.input_bits, "input_scale": qm.input_scale, "output_scale": qm.output_scale,
            "head": cfg.head, "ln_eps": cfg.ln_eps,
            "tasks": [{"name": t.name, "kind": t.kind, "out_channels": t.out_channels} for t in cfg.tasks],
            "heads_file": HEADS_FILE}


def head_arrays(model: M3ViT) -> dict[str, np.ndarray]:
    arrays = {}
    for t, head in enumerate(model.decoders):
        if isinstance(head, LinearHead):
            tensors = {"proj.weight": head.proj.weight, "proj.bias": head.proj.bias}
        else:
            tensors = {"norm.weight": head.norm.weight, "norm.bias": head.norm.bias}
            for i, (w, b) in enumerate(head.folded_convs()):
                tensors.update({f"conv{i}.weight": w, f"conv{i}.bias": b})
        arrays.update({f"{t}.{name}": value.detach().float().numpy() for name, value in tensors.items()})
    return arrays


def write_host_files(data_dir: Path, model: M3ViT, qm: QuantModel) -> None:
    data_dir = Path(data_dir)
    (data_dir / HOST_FILE).write_text(json.dumps(host_info(model, qm), indent=1))
    np.savez(data_dir / HEADS_FILE, **head_arrays(model))
