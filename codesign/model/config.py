"""Model configuration shared by the float model, the loader and the quantizer."""
from __future__ import annotations

from dataclasses import asdict, dataclass

# Per-pixel task kinds: seg (classes), depth (regression), saliency and edge (one logit per pixel,
# M3ViT's PASCAL-Context "sal" and "edge"), normals (3 channels, M3ViT's "normals").
TASK_KINDS = ("seg", "depth", "saliency", "edge", "normals")
# Gates of an MoE block, per task t:
#   multi       one gate per task, gate.{t}.w_gate [D, E]                 (M3ViT --multi_gate True)
#   shared      one gate for all tasks, gate.w_gate [D, E]                (M3ViT --task_one_hot True
#                                                                           --gate_task_specific_dim -1)
#   task_embed  gate.w_gate [D + G, E] fed [x, task embedding], the model's (--task_one_hot True
#               gate_task_represent MLP on onehot(t)                        --gate_task_specific_dim G)
#   task_onehot gate.w_gate [D + tasks, E] fed [x, onehot(t)]              (codesign's own; M3ViT never writes it)
GATE_TYPES = ("multi", "shared", "task_embed", "task_onehot")
# Task heads: linear (per-token Linear + pixel shuffle, the embedded model's) or vit_up (M3ViT's
# VisionTransformerUpHead: LayerNorm, 4 x (3x3 conv + BN + ReLU), 1x1 conv, bilinear upsampling).
HEAD_TYPES = ("linear", "vit_up")
# M3ViT's head drops the cls token only when the token count is not a multiple of 48.
VIT_UP_KEEPS_CLS_EVERY = 48

from ..errors import brief, brief_list


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str  # one of TASK_KINDS
    out_channels: int


DEFAULT_TASKS = (TaskSpec("semseg", "seg", 4), TaskSpec("depth", "depth", 1))


@dataclass(frozen=True)
class ModelConfig:
    img_size: int | tuple[int, int] = 32  # one side of a square image, or (height, width)
    patch_size: int = 8
    in_chans: int = 3
    embed_dim: int = 64
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    moe_mlp_ratio: float = 2.0
    num_experts: int = 8
    top_k: int = 2
    moe_blocks: tuple[int, ...] = (1, 3)
    gate_type: str = "multi"  # one of GATE_TYPES
    tasks: tuple[TaskSpec, ...] = DEFAULT_TASKS
    ln_eps: float = 1e-6
    gate_task_dim: int = 64  # G of the "task_embed" gate (M3ViT's gate_task_specific_dim)
    final_norm: bool = True  # a LayerNorm after the last block; M3ViT has none (each head has its own)
    head: str = "linear"  # one of HEAD_TYPES
    head_channels: int = 256  # width of the vit_up head's convolutions

    def __post_init__(self):
        if isinstance(self.img_size, (list, tuple)):
            object.__setattr__(self, "img_size", tuple(self.img_size))
        problems = self._shape_problems() + self._layer_problems()
        if problems:
            raise ValueError("bad model config: " + "; ".join(problems))

    def _shape_problems(self) -> list[str]:
        if isinstance(self.img_size, tuple) and len(self.img_size) != 2:
            return [f"img_size must be one side or [height, width], not {list(self.img_size)}"]
        problems = []
        for side, name in zip(self.image_hw, ("height", "width")):
            if side % self.patch_size:
                problems.append(f"image {name} {side} is not a multiple of patch_size {self.patch_size}")
        if not problems and self.head == "vit_up" and self.num_tokens % VIT_UP_KEEPS_CLS_EVERY == 0:
            problems.append(f"{self.num_tokens} tokens are a multiple of {VIT_UP_KEEPS_CLS_EVERY}: M3ViT's vit_up "
                            f"head would keep the cls token and could not lay the tokens on the "
                            f"{self.grid[0]}x{self.grid[1]} patch grid")
        return problems

    def _layer_problems(self) -> list[str]:
        problems = []
        if self.embed_dim % self.num_heads:
            problems.append(f"embed_dim {self.embed_dim} is not a multiple of num_heads {self.num_heads}")
        if not 1 <= self.top_k <= self.num_experts:
            problems.append(f"top_k {self.top_k} must be in 1..num_experts ({self.num_experts})")
        if any(not 0 <= b < self.depth for b in self.moe_blocks):
            problems.append(f"moe_blocks {brief(list(self.moe_blocks))} must index blocks 0..{self.depth - 1}")
        if self.gate_type not in GATE_TYPES:
            problems.append(f"gate_type must be one of {', '.join(GATE_TYPES)}, not {brief(self.gate_type)}")
        if self.gate_type == "task_embed" and self.gate_task_dim < 1:
            problems.append(f"the task_embed gate needs gate_task_dim >= 1, not {brief(self.gate_task_dim)}")
        if self.head not in HEAD_TYPES:
            problems.append(f"head must be one of {', '.join(HEAD_TYPES)}, not {brief(self.head)}")
        if not self.tasks:
            problems.append("at least one task is needed")
        return problems

    @property
    def image_hw(self) -> tuple[int, int]:
        """(height, width) of the input image."""
        if isinstance(self.img_size, tuple):
            return self.img_size
        return (self.img_size, self.img_size)

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, columns) of the patch grid."""
        h, w = self.image_hw
        return (h // self.patch_size, w // self.patch_size)

    @property
    def num_patches(self) -> int:
        rows, cols = self.grid
        return rows * cols

    @property
    def num_tokens(self) -> int:
        return self.num_patches + 1

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def moe_hidden(self) -> int:
        return int(self.embed_dim * self.moe_mlp_ratio)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def patch_features(self) -> int:
        return self.in_chans * self.patch_size**2

    @property
    def gate_in_dim(self) -> int:
        """Input width of the gate's w_gate: the token, plus the task part it is fed with."""
        extra = {"task_embed": self.gate_task_dim, "task_onehot": self.num_tasks}.get(self.gate_type, 0)
        return self.embed_dim + extra

    def is_moe(self, block: int) -> bool:
        return block in self.moe_blocks

    def to_dict(self) -> dict:
        d = asdict(self)
        d["moe_blocks"] = list(self.moe_blocks)
        d["tasks"] = [asdict(t) for t in self.tasks]
        if isinstance(self.img_size, tuple):
            d["img_size"] = list(self.img_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"bad model config: unknown field(s) {brief_list(unknown)}")
        d = dict(d)
        if "tasks" in d:
            d["tasks"] = tuple(TaskSpec(**t) if isinstance(t, dict) else t for t in d["tasks"])
        if "moe_blocks" in d:
            d["moe_blocks"] = tuple(int(b) for b in d["moe_blocks"])
        return cls(**d)
