"""Model configuration shared by the float model, the loader and the quantizer."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import brief, brief_list


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str  # "seg": per-pixel classes, "depth": per-pixel regression
    out_channels: int


DEFAULT_TASKS = (TaskSpec("semseg", "seg", 4), TaskSpec("depth", "depth", 1))


@dataclass(frozen=True)
class ModelConfig:
    img_size: int = 32
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
    gate_type: str = "multi"  # "multi": one gate per task; "task_onehot": one gate fed [x, onehot(task)]
    tasks: tuple[TaskSpec, ...] = DEFAULT_TASKS
    ln_eps: float = 1e-6

    def __post_init__(self):
        problems = []
        if self.img_size % self.patch_size:
            problems.append(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            problems.append(f"embed_dim {self.embed_dim} is not a multiple of num_heads {self.num_heads}")
        if not 1 <= self.top_k <= self.num_experts:
            problems.append(f"top_k {self.top_k} must be in 1..num_experts ({self.num_experts})")
        if any(not 0 <= b < self.depth for b in self.moe_blocks):
            problems.append(f"moe_blocks {brief(list(self.moe_blocks))} must index blocks 0..{self.depth - 1}")
        if self.gate_type not in ("multi", "task_onehot"):
            problems.append(f"gate_type must be 'multi' or 'task_onehot', not {brief(self.gate_type)}")
        if not self.tasks:
            problems.append("at least one task is needed")
        if problems:
            raise ValueError("bad model config: " + "; ".join(problems))

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

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

    def is_moe(self, block: int) -> bool:
        return block in self.moe_blocks

    def to_dict(self) -> dict:
        d = asdict(self)
        d["moe_blocks"] = list(self.moe_blocks)
        d["tasks"] = [asdict(t) for t in self.tasks]
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
