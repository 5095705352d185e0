"""Per-layer precision: the integer format of every layer, chosen by the quantizer or edited.

A `Precision` maps layer names (`layer_names(cfg)`: input, patch, embed, b{i}.ln1 ... norm) to a
`LayerFormat`; a layer it does not list takes `Precision.default`. `codesign config` writes one
as YAML (`dump_precision`), `codesign generate --precision` reads it back (`load_precision`).

What the fields mean for each kind of layer:
- wbits: width of the layer's weights (per-output-channel scales; for `b{i}.gate`, the
  task-folded gate weights). Layers without weights have none (embed's position table is stored at
  embed's abits).
- abits: width of the layer's output activation; its calibrated scale is max|x| / (2**(abits-1) - 1)
  and every instruction saturates to it. `input` is the image patches the host writes; `b{i}.fc1`
  is both the fc1 output and its GELU (the table has 2**abits entries); `b{i}.gate` is the width of
  the gate probabilities (units of 1/(2**(abits-1) - 1)); in an MoE block `b{i}.fc1` / `b{i}.fc2`
  are every expert's and `b{i}.mlp` is the weighted sum of the experts.
- acc_bits: the exact-sum width the layer needs (derived from the widths above and the reduction
  length, `needed_acc_bits`); informational: the hardware's accumulators are as wide as the widest
  layer's need. A value below the need is an error.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..model.config import ModelConfig
from . import arith as A

# Layers (name suffix within a block, or top-level name) that have weights.
WEIGHTED = {"patch", "qkv", "proj", "fc1", "fc2", "gate"}
FIELDS = ("wbits", "abits", "acc_bits")
# The MoE combine accumulates score * expert output in int32 words of `act` (docs/ISA.md).
MOE_ACC_LIMIT = 32


class PrecisionError(ValueError):
    """A precision config that does not fit the model or the arithmetic (one line)."""


@dataclass(frozen=True)
class LayerFormat:
    wbits: int
    abits: int
    acc_bits: int | None = None

    def __post_init__(self):
        for name in ("wbits", "abits"):
            _check_width(getattr(self, name), name)
        if self.acc_bits is not None and (not _is_int(self.acc_bits) or not 1 <= self.acc_bits <= 64):
            raise PrecisionError(f"acc_bits must be an integer in 1..64, got {self.acc_bits!r}")


class Precision(Mapping):
    """Layer name -> LayerFormat for the layers set explicitly; `of(name)` falls back to `default`."""

    def __init__(self, layers: Mapping[str, LayerFormat] | None = None,
                 default: LayerFormat | None = None):
        self.default = LayerFormat(8, 8) if default is None else default
        self._layers = dict(layers or {})
        for name, fmt in self._layers.items():
            if not isinstance(fmt, LayerFormat):
                raise PrecisionError(f"{name}: expected a LayerFormat, got {type(fmt).__name__}")

    @classmethod
    def uniform(cls, wbits: int, abits: int) -> "Precision":
        return cls({}, LayerFormat(wbits, abits))

    def __getitem__(self, name: str) -> LayerFormat:
        return self._layers[name]

    def __iter__(self):
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def of(self, name: str) -> LayerFormat:
        return self._layers.get(name, self.default)

    def wbits(self, name: str) -> int:
        return self.of(name).wbits

    def abits(self, name: str) -> int:
        return self.of(name).abits

    def __eq__(self, other) -> bool:
        return isinstance(other, Precision) and self.default == other.default and self._layers == other._layers

    def __repr__(self) -> str:
        return f"Precision({self._layers!r}, default={self.default!r})"

    def to_dict(self) -> dict:
        """JSON form (project.json): {"default": {...}, "layers": {name: {...}}}."""
        return {"default": _fmt_dict(self.default, True),
                "layers": {n: _fmt_dict(f, True) for n, f in self._layers.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "Precision":
        return cls({n: LayerFormat(**f) for n, f in d["layers"].items()}, LayerFormat(**d["default"]))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_width(v, what: str) -> int:
    if not _is_int(v):
        raise PrecisionError(f"{what} must be an integer, got {v!r}")
    try:
        return A.check_bits(v)
    except ValueError as exc:
        raise PrecisionError(f"{what}: {exc}") from None


def _fmt_dict(f: LayerFormat, weights: bool) -> dict:
    d = {"wbits": f.wbits, "abits": f.abits} if weights else {"abits": f.abits}
    if f.acc_bits is not None:
        d["acc_bits"] = f.acc_bits
    return d


# ---------------------------------------------------------------- the model's layers

def layer_names(cfg: ModelConfig) -> list[str]:
    """Every layer a Precision can name, in execution order."""
    names = ["input", "patch", "embed"]
    for i in range(cfg.depth):
        p = f"b{i}."
        mlp = ["gate", "fc1", "fc2", "mlp"] if cfg.is_moe(i) else ["fc1", "fc2"]
        names += [p + n for n in ["ln1", "qkv", "attn", "proj", "res1", "ln2", *mlp, "res2"]]
    return names + (["norm"] if cfg.final_norm else [])


def has_weights(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in WEIGHTED


def activation_layer(scale_name: str, cfg: ModelConfig) -> str:
    """The layer whose abits sets the width (and so the scale) of a calibrated activation."""
    if "." not in scale_name:
        return scale_name  # input, patch, embed, norm
    block, part = scale_name.split(".", 1)
    moe = cfg.is_moe(int(block[1:]))
    part = {"q": "qkv", "k": "qkv", "v": "qkv", "gelu": "fc1", "expert": "fc2"}.get(part, part)
    if part == "mlp" and not moe:
        part = "fc2"  # a dense block's MLP output is its fc2's
    return f"{block}.{part}"


def needed_acc_bits(cfg: ModelConfig, p: Precision) -> dict[str, int]:
    """Exact-sum width each accumulating layer needs (arith.signed_sum_bits of its products).

    The input of a layer is its producer's output width: patch <- input, qkv <- ln1, proj <- attn,
    fc1 / gate <- ln2, fc2 <- fc1. `b{i}.mlp` of an MoE block: the int32 sum of top_k gate
    probabilities times expert outputs."""
    w, a = p.wbits, p.abits
    need = {"patch": A.matmul_acc_bits(w("patch"), a("input"), cfg.patch_features)}
    d = cfg.embed_dim
    for i in range(cfg.depth):
        b = f"b{i}."
        need[b + "qkv"] = A.matmul_acc_bits(w(b + "qkv"), a(b + "ln1"), d)
        need[b + "attn"] = A.attention_acc_bits(a(b + "qkv"), cfg.head_dim, cfg.num_tokens)
        need[b + "proj"] = A.matmul_acc_bits(w(b + "proj"), a(b + "attn"), d)
        need[b + "fc1"] = A.matmul_acc_bits(w(b + "fc1"), a(b + "ln2"), d)
        hidden = cfg.moe_hidden if cfg.is_moe(i) else cfg.mlp_hidden
        need[b + "fc2"] = A.matmul_acc_bits(w(b + "fc2"), a(b + "fc1"), hidden)
        if cfg.is_moe(i):
            need[b + "gate"] = A.matmul_acc_bits(w(b + "gate"), a(b + "ln2"), d)
            need[b + "mlp"] = A.signed_sum_bits((a(b + "gate") - 1) + (a(b + "fc2") - 1), cfg.top_k)
    return need


def check_precision(cfg: ModelConfig, p: Precision) -> dict[str, int]:
    """PrecisionError for a layer the model does not have, an acc_bits below the need or an MoE sum
    that does not fit int32; else the needed accumulator widths."""
    names = layer_names(cfg)
    unknown = [n for n in p if n not in names]
    if unknown:
        raise PrecisionError(f"unknown layer {unknown[0]!r} (the model's layers: {_listed(names)})")
    need = needed_acc_bits(cfg, p)
    for name, fmt in p.items():
        if fmt.acc_bits is not None and fmt.acc_bits < need.get(name, 0):
            raise PrecisionError(f"{name}: acc_bits {fmt.acc_bits} is below the {need[name]} bits its exact sums "
                                 f"need with these widths")
        if fmt.acc_bits is not None and name not in need:
            raise PrecisionError(f"{name}: acc_bits given, but the layer has no accumulator")
    for name, bits in need.items():
        if name.endswith(".mlp") and bits > MOE_ACC_LIMIT:
            b = name[:-3]
            raise PrecisionError(f"{name}: gate probabilities of {p.abits(b + 'gate')} bits times expert outputs "
                                 f"of {p.abits(b + 'fc2')} bits need {bits}-bit sums, above the int32 MoE accumulator")
    return need


def _listed(names: list[str]) -> str:
    from ..errors import brief_list

    return brief_list(names, 6)


def complete(cfg: ModelConfig, p: Precision) -> Precision:
    """Every layer's format explicitly, with the needed acc_bits (a layer without weights shows the
    default's wbits, which nothing reads: the canonical form that dump and load round-trip)."""
    need = check_precision(cfg, p)
    w = lambda n: p.wbits(n) if has_weights(n) else p.default.wbits  # noqa: E731
    return Precision({n: LayerFormat(w(n), p.abits(n), need.get(n)) for n in layer_names(cfg)}, p.default)


def chosen_precision(qm) -> Precision:
    """The formats a QuantModel was built with, every layer listed, acc_bits filled in."""
    return complete(qm.cfg, qm.precision)


def used_widths(cfg: ModelConfig, p: Precision) -> list[int]:
    """Every width the program stores in its element container (weights of weighted layers,
    every layer's output)."""
    return [p.abits(n) for n in layer_names(cfg)] + [p.wbits(n) for n in layer_names(cfg) if has_weights(n)]


# ---------------------------------------------------------------- YAML

HEADER = """\
# codesign per-layer precision{about}
# Edit and pass to `codesign generate MODEL --precision FILE`.
#   default:  the format of every layer not listed under `layers` (a missing layer = default).
#   wbits:    weight width, 2..16 (per-output-channel scales; gate: the task-folded gate
#             weights). Layers without weights have no wbits (embed's position table has embed's abits).
#   abits:    output activation width, 2..16: the layer's scale is max|x| / (2^(abits-1) - 1) on the
#             calibration images and its instruction saturates to it. input: the image patches;
#             fc1: its output and the GELU after it; gate: the gate probabilities; in an MoE block
#             fc1/fc2 are every expert's and mlp is the experts' weighted sum.
#   acc_bits: exact-sum width the layer needs with these widths (derived, informational: the
#             accumulators are as wide as the widest layer needs). An edited value below the need
#             is an error; a changed width changes the need, so delete or raise it.
# Storage: one element container for the whole program, 1 byte when every width <= 8, else 2.
"""


def dump_precision(p: Precision, about: str = "") -> str:
    """YAML text with the comment header: `default`, then one flow mapping per layer."""
    lines = [HEADER.format(about=f" for {about}" if about else ""),
             f"default: {{wbits: {p.default.wbits}, abits: {p.default.abits}}}", "layers:"]
    width = max([len(n) for n in p] + [1]) + 1
    for name, fmt in p.items():
        fields = ", ".join(f"{k}: {v}" for k, v in _fmt_dict(fmt, has_weights(name)).items())
        lines.append(f"  {name + ':':<{width}} {{{fields}}}")
    return "\n".join(lines) + "\n"


def load_precision(path_or_text, layer_names: list[str]) -> Precision:
    """A Precision from a YAML file (Path, or a str naming a file) or YAML text; PrecisionError
    with one line for anything that does not fit `layer_names` or the widths arith supports."""
    from ..yamlio import MAX_YAML_BYTES, load_yaml, read_yaml

    if isinstance(path_or_text, Path) or (isinstance(path_or_text, str) and _looks_like_path(path_or_text)):
        where = str(path_or_text)
        doc = read_yaml(Path(path_or_text), PrecisionError)
    else:
        where = "precision"
        text = str(path_or_text)
        if len(text.encode()) > MAX_YAML_BYTES:
            raise PrecisionError(f"precision text larger than {MAX_YAML_BYTES // 1024} KiB")
        try:
            doc = load_yaml(text)
        except Exception as exc:  # yaml.YAMLError, RecursionError, ValueError
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise PrecisionError(f"precision: invalid YAML: {first}") from None
    try:
        return _from_doc(doc, list(layer_names))
    except PrecisionError as exc:
        raise PrecisionError(f"{where}: {exc}") from None


def _looks_like_path(text: str) -> bool:
    return "\n" not in text and (Path(text).exists() or ":" not in text)


def _from_doc(doc, names: list[str]) -> Precision:
    from ..errors import brief

    if not isinstance(doc, dict):
        raise PrecisionError("expected a mapping with `default` and `layers`")
    extra = [k for k in doc if k not in ("default", "layers")]
    if extra:
        raise PrecisionError(f"unknown key {brief(extra[0])} (expected default, layers)")
    if "default" not in doc:
        raise PrecisionError("no `default` format (e.g. default: {wbits: 8, abits: 8})")
    default = _format(doc["default"], "default", None, weights=True, need_all=True)
    layers = doc.get("layers") or {}
    if not isinstance(layers, dict):
        raise PrecisionError("`layers` must be a mapping of layer name -> {wbits, abits, acc_bits}")
    out = {}
    for name, value in layers.items():
        if name not in names:
            raise PrecisionError(f"unknown layer {brief(name)} (the model's layers: {_listed(names)})")
        out[name] = _format(value, name, default, weights=has_weights(name), need_all=False)
    return Precision(out, default)


def _format(value, name: str, default: LayerFormat | None, weights: bool, need_all: bool) -> LayerFormat:
    from ..errors import brief

    if not isinstance(value, dict):
        raise PrecisionError(f"{name}: expected a mapping such as {{wbits: 8, abits: 8}}, got {brief(value)}")
    allowed = FIELDS if weights else ("abits", "acc_bits")
    for key in value:
        if key not in allowed:
            why = "the layer has no weights" if key == "wbits" else f"expected {', '.join(allowed)}"
            raise PrecisionError(f"{name}: unknown field {brief(key)} ({why})")
    if need_all:
        missing = [k for k in ("wbits", "abits") if k not in value]
        if missing:
            raise PrecisionError(f"{name}: no {missing[0]}")
    fields = {k: value.get(k, getattr(default, k) if default else None) for k in ("wbits", "abits")}
    for k, v in fields.items():
        _check_width(v, f"{name}.{k}")
    acc = value.get("acc_bits")
    if acc is not None and (not _is_int(acc) or not 1 <= acc <= 64):
        raise PrecisionError(f"{name}.acc_bits must be an integer in 1..64, got {brief(acc)}")
    return LayerFormat(fields["wbits"], fields["abits"], acc)


def as_precision(precision, cfg: ModelConfig) -> Precision | None:
    """A Precision, a path to a YAML config, or None."""
    if precision is None or isinstance(precision, Precision):
        return precision
    if isinstance(precision, (str, Path)):
        p = load_precision(Path(precision), layer_names(cfg))
        try:
            check_precision(cfg, p)  # accumulators and the MoE sum: before any calibration
        except PrecisionError as exc:
            raise PrecisionError(f"{precision}: {exc}") from None
        return p
    raise PrecisionError(f"precision must be a Precision or a path, got {type(precision).__name__}")

