"""Load trained M3ViT checkpoints (ours or VITA-Group/M3ViT's) into the float reference model.

M3ViT's save_checkpoint writes a folder `best_model.pth.tar/` of `{rank}.pth` files (one per
expert-parallel rank; ranks >= 1 hold only their experts) or, on one process, a single file;
each is `{epoch, backbone, state_dict, best_result, optimizer}` with keys `module.backbone.*`,
`module.decoders.{task}.*` (the task heads) and `module.tam_model{0,1}.*` (training only).
Files are read with torch's weights-only unpickler, which refuses everything but tensors and
plain containers; the numpy scalars in `best_result` are allowed by name (NUMPY_SAFE_GLOBALS).

Every way a checkpoint can be wrong ends in a ModelLoadError with a one-line message
that names the file or key, because users feed this arbitrary files from other repos
and a torch traceback tells them nothing about which tensor is off.
"""
from __future__ import annotations

import logging
import math
import os
import re
import shutil
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import yaml

from codesign.errors import brief, brief_list
from codesign.fsutil import atomic_dir
from codesign.model.config import TASK_KINDS, ModelConfig, TaskSpec
from codesign.model.heads import VIT_UP_CONVS
from codesign.model.m3vit import M3ViT
from codesign.yamlio import read_yaml

WEIGHT_FILES = ("model.pt", "model.pth", "model.safetensors")
CONFIG_FILES = ("config.yaml", "config.yml")
SHARD_FILE = re.compile(r"^(0|[1-9][0-9]*)\.pth$")  # rank files: 0.pth, 1.pth, ...
EXPERT_KEY = re.compile(r"\.mlp\.experts\.(htoh4|h4toh)\.(weight|bias)$")
SPLIT_QKV_KEY = re.compile(r"^(?P<attn>.*\.attn)\.q\.(?P<kind>weight|bias)$")
# Wrappers that training frameworks put around the parameter names.
KEY_PREFIXES = ("module.", "backbone.")
CHECKPOINT_WRAPPERS = ("state_dict", "model")
# Checkpoint entries that do not affect inference, dropped on purpose (anything else unexpected is an
# error): BatchNorm step counters, training counters saved as tensors next to the weights, and M3ViT's
# task-affinity modules (tam_model0, tam_model1, ...: used only by its training loss).
IGNORED_KEY_SUFFIXES = ("num_batches_tracked",)
IGNORED_TOP_LEVEL_KEYS = ("epoch", "step", "global_step", "iteration", "best_score", "best_acc", "lr")
TRAINING_ONLY_KEY = re.compile(r"^tam_model\d*\.")
TASK_HEAD_KEY = re.compile(r"^decoders\.(?P<task>[^.]+)\.(?P<rest>.+)$")
# FastMoE's NoisyGate (M3ViT --moe_gate_type noisy) has a w_noise next to w_gate, and renormalises
# the softmax over the top-k logits; the model here implements the noisy_vmoe gate only.
NOISY_GATE_KEY = re.compile(r"\.mlp\.gate\.(\d+\.)?w_noise$")
# What torch's weights-only unpickler may build besides tensors and plain containers: the numpy
# scalars (and their dtypes) that training scripts leave in their metrics, e.g. M3ViT's best_result.
# numpy 1.x pickles the scalar constructor as numpy.core.multiarray.scalar, numpy 2.x as numpy._core.
NUMERIC_DTYPES = ("?", "b", "h", "i", "l", "q", "B", "H", "I", "L", "Q", "e", "f", "d")
try:  # numpy >= 2 (numpy 1.26 has this module too, as an alias)
    from numpy._core.multiarray import scalar as NUMPY_SCALAR
except ImportError:  # numpy < 1.26
    from numpy.core.multiarray import scalar as NUMPY_SCALAR
NUMPY_SAFE_GLOBALS = [
    (NUMPY_SCALAR, "numpy.core.multiarray.scalar"),
    (NUMPY_SCALAR, "numpy._core.multiarray.scalar"),
    np.dtype,
    *dict.fromkeys(type(np.dtype(code)) for code in NUMERIC_DTYPES),
]
SAFE_GLOBAL_NAMES = {"numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype",
                     *(f"numpy.dtypes.{type(np.dtype(code)).__name__}" for code in NUMERIC_DTYPES)}
UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")

log = logging.getLogger("codesign")

INT_FIELDS = ("patch_size", "in_chans", "embed_dim", "depth", "num_heads", "num_experts", "top_k", "gate_task_dim",
              "head_channels")
FLOAT_FIELDS = ("mlp_ratio", "moe_mlp_ratio", "ln_eps")
STR_FIELDS = ("gate_type", "head")
BOOL_FIELDS = ("final_norm",)
# Guards against configs (fuzzed or mistyped) that would exhaust memory when the model is built.
MAX_PARAMETERS = 500_000_000
MAX_WIDTH = 1 << 20


class ModelLoadError(ValueError):
    """Why a model could not be loaded, always on one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


# ---------------------------------------------------------------- public API

def load_model(path: str | Path, config: str | Path | dict | ModelConfig | None = None) -> M3ViT:
    """Build the float M3ViT from a checkpoint file or folder, in eval mode and float32."""
    path = Path(path)
    weight_files = find_weight_files(path)
    cfg = resolve_config(path, config)
    shards = [normalise_keys(read_state_dict(f)) for f in weight_files]
    state = index_task_heads(fuse_split_qkv(merge_expert_shards(shards, weight_files)), cfg)
    state, training_only = drop_training_only(state)
    _refuse_noisy_gate(state, path)
    model = _build(cfg)
    _load_checked(model, state, path)
    model.load_summary = load_summary(path, weight_files, state, training_only, cfg)
    log.info(model.load_summary)
    return model.float().eval()


def save_model(model: M3ViT, out_dir: str | Path) -> Path:
    """Write out_dir/model.pt and out_dir/config.yaml all at once: readers see the old or the new model.

    Other files already in out_dir (a README, plots) are kept.
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, force=True) as staging:
        state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        torch.save(state, staging / "model.pt")
        (staging / "config.yaml").write_text(yaml.safe_dump(model.cfg.to_dict(), sort_keys=False))
        _copy_unrelated_files(out_dir, staging)
    return out_dir


# ---------------------------------------------------------------- locating files

def find_weight_files(path: Path) -> list[Path]:
    """The checkpoint file, or a folder's model.* file, or its expert-parallel shards in rank order."""
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}")
    if not path.is_dir():
        return [path]
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return [path / name]
    ranks = sorted(int(m.group(1)) for f in path.iterdir() if (m := SHARD_FILE.match(f.name)))
    if not ranks:
        raise ModelLoadError(f"no weights in {path}: expected one of {', '.join(WEIGHT_FILES)} "
                             "or shards 0.pth, 1.pth, ...")
    missing = sorted(set(range(max(ranks) + 1)) - set(ranks))
    if missing:
        raise ModelLoadError(f"shard file not found: {path / f'{missing[0]}.pth'} (shards must be numbered 0..N-1)")
    return [path / f"{rank}.pth" for rank in range(len(ranks))]


def resolve_config(path: Path, config) -> ModelConfig:
    if isinstance(config, ModelConfig):
        return config
    if isinstance(config, Mapping):
        return config_from_dict(config, "config argument")
    if isinstance(config, (str, os.PathLike)):
        return read_config_file(Path(config))
    if config is not None:
        raise ModelLoadError(f"config must be a path, a dict or a ModelConfig, not {type(config).__name__}")
    folder = path if path.is_dir() else path.parent
    for name in CONFIG_FILES:
        if (folder / name).is_file():
            return read_config_file(folder / name)
    raise ModelLoadError(f"no model config for {path}: pass config= or put config.yaml in {folder}")


# ---------------------------------------------------------------- config

def read_config_file(path: Path) -> ModelConfig:
    if not path.is_file():
        raise ModelLoadError(f"config file not found: {path}")
    return config_from_dict(read_yaml(path, ModelLoadError), str(path))


def config_from_dict(raw, source: str = "config") -> ModelConfig:
    """ModelConfig.from_dict behind a type check, so any malformed input becomes a ModelLoadError."""
    if not isinstance(raw, Mapping):
        raise ModelLoadError(f"bad model config in {source}: expected a mapping of fields, got {type(raw).__name__}")
    fields = dict(raw)
    if isinstance(fields.get("tasks"), (list, tuple)):
        fields["tasks"] = [asdict(t) if isinstance(t, TaskSpec) else t for t in fields["tasks"]]
    problems = _config_type_problems(fields)
    if problems:
        raise ModelLoadError(f"bad model config in {source}: " + "; ".join(problems))
    for name in FLOAT_FIELDS:
        if name in fields:
            fields[name] = float(fields[name])
    try:
        return ModelConfig.from_dict(fields)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{source}: {exc}") from None


def _config_type_problems(raw: Mapping) -> list[str]:
    unknown = [brief(k) for k in raw if k not in ModelConfig.__dataclass_fields__]
    problems = [f"unknown field(s) {brief_list(unknown)}"] if unknown else []
    problems += [p for name in INT_FIELDS if name in raw for p in _int_problem(name, raw[name])]
    problems += [p for name in FLOAT_FIELDS if name in raw for p in _float_problem(name, raw[name])]
    problems += [f"{name} must be a string, not {brief(raw[name])}" for name in STR_FIELDS
                 if name in raw and not isinstance(raw[name], str)]
    problems += [f"{name} must be true or false, not {brief(raw[name])}" for name in BOOL_FIELDS
                 if name in raw and not isinstance(raw[name], bool)]
    if "img_size" in raw:
        problems += _img_size_problem(raw["img_size"])
    if "moe_blocks" in raw:
        blocks = raw["moe_blocks"]
        if not isinstance(blocks, (list, tuple)) or not all(_is_int(b) for b in blocks):
            problems.append(f"moe_blocks must be a list of block indices, not {brief(blocks)}")
    if "tasks" in raw:
        problems += _task_problems(raw["tasks"])
    if not problems and {"embed_dim", "mlp_ratio", "moe_mlp_ratio"} & set(raw):
        problems += _hidden_size_problems(raw)
    return problems


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_problem(name: str, value) -> list[str]:
    if not _is_int(value) or value < 1:
        return [f"{name} must be a positive integer, not {brief(value)}"]
    return []


def _img_size_problem(value) -> list[str]:
    sides = list(value) if isinstance(value, (list, tuple)) else [value, value]
    if len(sides) != 2 or not all(_is_int(v) and 1 <= v <= MAX_WIDTH for v in sides):
        return [f"img_size must be a positive integer or [height, width], not {value!r}"]
    return []


def _float_problem(name: str, value) -> list[str]:
    # PyYAML reads "1e-6" (no dot) as a string, so numeric strings are accepted.
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        return [f"{name} must be a positive number, not {brief(value)}"]
    return []


def _task_problems(tasks) -> list[str]:
    if not isinstance(tasks, (list, tuple)):
        return [f"tasks must be a list, not {brief(tasks)}"]
    problems, names = [], []
    for i, task in enumerate(tasks):
        if not isinstance(task, Mapping) or set(task) != {"name", "kind", "out_channels"}:
            problems.append(f"tasks[{i}] must have exactly name, kind and out_channels")
            continue
        if not isinstance(task["name"], str) or not task["name"]:
            problems.append(f"tasks[{i}].name must be a non-empty string")
        if task["kind"] not in TASK_KINDS:
            problems.append(f"tasks[{i}].kind must be one of {', '.join(TASK_KINDS)}, not {brief(task['kind'])}")
        problems += _int_problem(f"tasks[{i}].out_channels", task["out_channels"])
        names.append(task["name"])
    if len(set(map(repr, names))) != len(names):
        problems.append("task names must be unique")
    return problems


def _hidden_size_problems(raw: Mapping) -> list[str]:
    defaults = ModelConfig()
    dim = raw.get("embed_dim", defaults.embed_dim)
    problems = []
    for name in ("mlp_ratio", "moe_mlp_ratio"):
        try:
            hidden = int(dim * float(raw.get(name, getattr(defaults, name))))
        except OverflowError:
            hidden = -1
        if not 1 <= hidden <= MAX_WIDTH:
            problems.append(f"{name} {brief(raw.get(name))} gives an MLP width out of 1..{MAX_WIDTH} for embed_dim {dim}")
    return problems


# ---------------------------------------------------------------- reading tensors

def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of one checkpoint file, unwrapped from {"state_dict": ...} / {"model": ...}."""
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    content = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)
    for _ in range(len(CHECKPOINT_WRAPPERS)):
        if not isinstance(content, Mapping):
            break
        wrapped = [content[k] for k in CHECKPOINT_WRAPPERS if isinstance(content.get(k), Mapping)]
        if not wrapped:
            break
        content = wrapped[0]
    if not isinstance(content, Mapping):
        raise ModelLoadError(f"{path} holds a {type(content).__name__}, not a state_dict")
    # Non-tensor entries (epoch counters, optimizer state) are not part of the model.
    tensors = {k: v for k, v in content.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelLoadError(f"{path} holds no tensors")
    return tensors


def _read_torch(path: Path):
    # mmap first: a checkpoint's optimizer state and training-only modules are then never paged in.
    # Read in full when that fails (a legacy or otherwise unmappable file), before judging the file.
    for mmap in dict.fromkeys((zipfile.is_zipfile(path), False)):
        try:
            with torch.serialization.safe_globals(NUMPY_SAFE_GLOBALS):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except BaseException as exc:  # noqa: BLE001 - any failure inside torch.load means a bad file
            _reraise_interrupts(exc)
            error = exc
    raise ModelLoadError(_why_unreadable(path, error)) from None


def _why_unreadable(path: Path, exc: BaseException) -> str:
    """A corrupt file, a valid one holding objects the weights-only reader refuses, or a whole pickled model."""
    refused = [name for name in _pickled_globals(path, exc) if name not in SAFE_GLOBAL_NAMES]
    if any(name.startswith("torch.nn.modules.") for name in refused):
        return (f"{path} is a pickled nn.Module ({refused[0]}), not a state_dict: save its state_dict "
                "(torch.save(model.state_dict(), file)) and load that file")
    if refused:
        return (f"{path} is a valid PyTorch file but holds objects that are not loaded without running their "
                f"code: {', '.join(refused[:3])}{' ...' if len(refused) > 3 else ''}; save only tensors "
                "(a state_dict) and plain numbers or strings next to them")
    return _not_a_checkpoint(path, exc)


def _pickled_globals(path: Path, exc: BaseException) -> list[str]:
    """The classes and functions a torch file's pickle names, without running any of them ([] if unparsable)."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - not a zip checkpoint: a legacy file names its global in the error
        return UNSAFE_GLOBAL.findall(str(exc))


def _read_safetensors(path: Path):
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except BaseException as exc:  # noqa: BLE001 - the Rust reader raises PanicException, a BaseException
        _reraise_interrupts(exc)
        raise ModelLoadError(_not_a_checkpoint(path, exc)) from None


def _reraise_interrupts(exc: BaseException) -> None:
    if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        raise exc


def _not_a_checkpoint(path: Path, exc: BaseException) -> str:
    return f"cannot read {path}: not a valid PyTorch/safetensors file (corrupt or truncated? {type(exc).__name__})"


# ---------------------------------------------------------------- M3ViT-style normalisation

def normalise_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip DataParallel `module.` and M3ViT `backbone.` prefixes; `decoders.*` stays as it is."""
    return {_strip_prefixes(key): value for key, value in state.items()}


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in KEY_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def merge_expert_shards(shards: list[dict], files: list[Path]) -> dict[str, torch.Tensor]:
    """FastMoE expert parallelism: each rank holds a slice of the experts and a copy of the rest."""
    if len(shards) == 1:
        return shards[0]
    merged: dict[str, torch.Tensor] = {}
    for shard, file in zip(shards, files):
        for key, value in shard.items():
            if EXPERT_KEY.search(key):
                continue
            if key in merged and not _same_tensor(merged[key], value):
                raise ModelLoadError(f"shard {file} disagrees with {files[0]} on non-expert tensor {key}")
            merged.setdefault(key, value)
    expert_keys = dict.fromkeys(k for shard in shards for k in shard if EXPERT_KEY.search(k))
    for key in expert_keys:
        merged[key] = _concat_experts(key, [shard[key] for shard in shards if key in shard])
    return merged


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))


def _concat_experts(key: str, parts: list[torch.Tensor]) -> torch.Tensor:
    if not _stackable(parts):
        found = [list(p.shape) for p in parts]
        raise ModelLoadError(f"expert tensor {key} has different shapes across shards: {found}")
    return torch.cat(parts, dim=0)


def _stackable(parts: list[torch.Tensor]) -> bool:
    """Concatenable along dim 0: same trailing shape, and no scalars."""
    return all(p.dim() > 0 for p in parts) and len({tuple(p.shape[1:]) for p in parts}) == 1


def fuse_split_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Attention with separate q/k/v projections becomes the fused qkv layout (q, k, v stacked)."""
    fused = dict(state)
    for key in state:
        match = SPLIT_QKV_KEY.match(key)
        if not match:
            continue
        attn, kind = match["attn"], match["kind"]
        parts = [f"{attn}.{p}.{kind}" for p in "qkv"]
        if all(p in state for p in parts) and _stackable([state[p] for p in parts]):
            fused[f"{attn}.qkv.{kind}"] = torch.cat([state[p] for p in parts], dim=0)
            for p in parts:
                del fused[p]
    return fused


def index_task_heads(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """M3ViT keeps its heads in a ModuleDict keyed by task name (`decoders.semseg.*`); ours are indexed."""
    index = {task.name: str(i) for i, task in enumerate(cfg.tasks)}
    renamed = {}
    for key, value in state.items():
        match = TASK_HEAD_KEY.match(key)
        if match and match["task"] in index:
            key = f"decoders.{index[match['task']]}.{match['rest']}"
            if key in state or key in renamed:
                raise ModelLoadError(f"task head {brief(match['task'])} appears both by name and by index ({key})")
        renamed[key] = value
    return renamed


def drop_training_only(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state without M3ViT's training-only modules (tam_model*), and the keys dropped."""
    dropped = [k for k in state if TRAINING_ONLY_KEY.match(k)]
    return {k: v for k, v in state.items() if not TRAINING_ONLY_KEY.match(k)}, dropped


def _refuse_noisy_gate(state: dict, source: Path) -> None:
    noisy = [k for k in state if NOISY_GATE_KEY.search(k)]
    if noisy:
        raise ModelLoadError(f"{source} has {noisy[0]}: its gates are FastMoE's NoisyGate (M3ViT --moe_gate_type "
                             "noisy), which renormalises over the top-k; only the noisy_vmoe gate is supported")


def load_summary(path: Path, files: list[Path], state: dict, training_only: list[str], cfg: ModelConfig) -> str:
    """One line: what was loaded from where, and what was left out on purpose."""
    heads = [k for k in state if k.startswith("decoders.")]
    source = f"{path} ({len(files)} rank files)" if len(files) > 1 else str(path)
    parts = [f"loaded {source}: {len(state) - len(heads)} backbone tensors",
             f"{cfg.head} heads for {', '.join(t.name for t in cfg.tasks)} ({len(heads)} decoders.* tensors)"
             if heads else "no task heads"]
    if training_only:
        modules = sorted({k.split(".", 1)[0] for k in training_only})
        parts.append(f"{len(training_only)} training-only tensors ignored ({', '.join(m + '.*' for m in modules)})")
    return "; ".join(parts)


# ---------------------------------------------------------------- building and filling the model

def parameter_count(cfg: ModelConfig) -> int:
    """Parameters and buffers of M3ViT(cfg), computed without allocating it."""
    d, blocks = cfg.embed_dim, cfg.depth
    attention = 4 * d * d + 4 * d + 4 * d  # qkv, proj, two layer norms
    dense_mlp = 2 * d * cfg.mlp_hidden + cfg.mlp_hidden + d
    gates = cfg.gate_in_dim * cfg.num_experts * (cfg.num_tasks if cfg.gate_type == "multi" else 1)
    moe_mlp = cfg.num_experts * (2 * d * cfg.moe_hidden + cfg.moe_hidden + d) + gates
    moe = len(set(cfg.moe_blocks))
    embed = cfg.patch_features * d + d + d + cfg.num_tokens * d
    g = cfg.gate_task_dim
    task_represent = cfg.num_tasks * g + g + g * g + g + 2 * g if cfg.gate_type == "task_embed" else 0
    final_norm = 2 * d if cfg.final_norm else 0
    heads = sum(_head_size(cfg, t.out_channels) for t in cfg.tasks)
    return (embed + task_represent + blocks * attention + (blocks - moe) * dense_mlp + moe * moe_mlp + final_norm
            + heads)


def _head_size(cfg: ModelConfig, out_channels: int) -> int:
    d, w = cfg.embed_dim, cfg.head_channels
    if cfg.head == "linear":
        return (d + 1) * cfg.patch_size**2 * out_channels
    convs = (d * 9 + 1) * w + (VIT_UP_CONVS - 1) * (w * 9 + 1) * w + (w + 1) * out_channels
    return 2 * d + convs + VIT_UP_CONVS * 4 * w  # LayerNorm, convolutions, BatchNorm weights and statistics


def _build(cfg: ModelConfig) -> M3ViT:
    size = parameter_count(cfg)
    if size > MAX_PARAMETERS:
        raise ModelLoadError(f"the config describes {size:,} parameters, "
                             f"more than the {MAX_PARAMETERS:,} this tool accepts")
    try:
        return M3ViT(cfg)
    except Exception as exc:  # noqa: BLE001 - e.g. a config too large to allocate
        raise ModelLoadError(f"cannot build the model for this config: {type(exc).__name__}: {exc}") from None


def _load_checked(model: M3ViT, state: dict[str, torch.Tensor], source: Path) -> None:
    expected = model.state_dict()
    _check_missing(expected, state, source)
    _check_unexpected(expected, state, source)
    values = {}
    for key, reference in expected.items():
        if key not in state:
            values[key] = reference  # an untrained head, allowed and warned about above
            continue
        tensor = state[key]
        if tuple(tensor.shape) != tuple(reference.shape):
            raise ModelLoadError(f"shape mismatch for {key} in {source}: the config expects "
                                 f"{list(reference.shape)}, the checkpoint has {list(tensor.shape)}")
        tensor = tensor.to(torch.float32)
        if not bool(torch.isfinite(tensor).all()):
            raise ModelLoadError(f"tensor {key} in {source} contains NaN or inf")
        values[key] = tensor
    try:
        model.load_state_dict(values, strict=True)
    except Exception as exc:  # noqa: BLE001 - should not happen after the checks, but never leak a traceback
        raise ModelLoadError(f"cannot load {source}: {type(exc).__name__}: {exc}") from None


def _ignored(key: str) -> bool:
    return key.endswith(IGNORED_KEY_SUFFIXES) or key in IGNORED_TOP_LEVEL_KEYS


def _check_unexpected(expected: dict, state: dict, source: Path) -> None:
    # A checkpoint with more blocks, experts or heads than the config would otherwise load
    # "successfully" as a truncated, wrong model.
    unexpected = [k for k in state if k not in expected and not _ignored(k)]
    if unexpected:
        raise ModelLoadError(f"{source} has unexpected key {unexpected[0]} ({len(unexpected)} of {len(state)} "
                             "checkpoint keys are not in the model the config describes)")


def _check_missing(expected: dict, state: dict, source: Path) -> None:
    missing = [k for k in expected if k not in state]
    has_heads = any(k.startswith("decoders.") for k in state)
    # A backbone-only checkpoint (heads trained elsewhere) is usable, so only warn then.
    fatal = [k for k in missing if has_heads or not k.startswith("decoders.")]
    if fatal:
        raise ModelLoadError(f"{source} is missing key {fatal[0]} ({len(fatal)} of {len(expected)} model keys missing)")
    if missing:
        warnings.warn(f"{source} has no task heads (decoders.*); they stay randomly initialised", stacklevel=3)


# ---------------------------------------------------------------- atomic folder replacement

def _owned_by_checkpoint(name: str) -> bool:
    return name in WEIGHT_FILES or name in CONFIG_FILES or bool(SHARD_FILE.match(name))


def _copy_unrelated_files(old_dir: Path, new_dir: Path) -> None:
    if not old_dir.is_dir():
        return
    for entry in old_dir.iterdir():
        if _owned_by_checkpoint(entry.name):
            continue  # stale weights would shadow or contradict the new model.pt
        if entry.is_dir():
            shutil.copytree(entry, new_dir / entry.name, symlinks=True)
        else:
            shutil.copy2(entry, new_dir / entry.name, follow_symlinks=False)


