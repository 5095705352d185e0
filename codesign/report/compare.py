"""Compare accelerator results with the golden model and the float PyTorch model.

Results come from csim / cosim (`<id>.act.bin`: the whole final `act` image) or from a board
(`<id>.npy`: the output tensor [T, D] the PYNQ driver dumps). For every vector we check
bit-exactness against the golden output, then run the float task head on the dequantised
tokens, because a mismatch only matters as much as it moves the task metric.

Writes report.md, report.html (self-contained, images referenced relatively), summary.json
and PNG plots into `out_dir` (default PROJECT/reports/compare).
"""
from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure  # no pyplot: no global backend state, works without a display
from numpy.lib import format as npy_format

from ..emit.data import ManifestError, compare_act, load_manifest
from ..errors import brief, brief_list
from ..fsutil import checked_output_path
from ..model.config import ModelConfig, TaskSpec
from ..model.data import CLASS_NAMES, DEPTH_UNITS, SyntheticData
from ..model.m3vit import M3ViT
from ..model.train import agreement_with_float, evaluate_outputs
from .timing import TIMING_HEADER, result_timing, timing_rows

SOURCES = {"auto": (".act.bin", ".npy"), "act": (".act.bin",), "npy": (".npy",)}
# The metrics worth a table column; the rest (per-class IoU, target std) stay in summary.json.
HEADLINE_METRICS = {"seg": ("pixel_acc", "miou"), "depth": ("rmse", "mae"), "saliency": ("iou", "f1"),
                    "edge": ("f1", "iou"), "normals": ("mean_angle", "median_angle")}
AGREEMENT_LABELS = {"label_agreement": "labels as float", "rmse_vs_float": "RMSE vs float"}
MAX_FIGURE_IMAGES = 4
NPY_MAGIC = b"\x93NUMPY"
NPY_HEADER_READERS = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}


class CompareError(Exception):
    """A problem that stops the comparison as a whole; the message is one line for the CLI."""


# ---------------------------------------------------------------- inputs


@dataclass
class Project:
    """What the comparison needs from a generated project directory."""

    dir: Path
    manifest: dict
    output_scale: float
    model: M3ViT
    data: SyntheticData

    @property
    def tasks(self) -> tuple[TaskSpec, ...]:
        return self.model.cfg.tasks


def load_project(project_dir: Path) -> Project:
    project_dir = Path(project_dir)
    info = _read_project_info(project_dir / "project.json")
    try:
        manifest = load_manifest(project_dir)
    except (FileNotFoundError, ManifestError) as exc:
        raise CompareError(str(exc)) from None
    images = project_dir / "data" / "images.npz"
    if not images.is_file():
        raise CompareError(f"{images} not found: regenerate the project")
    with np.load(images) as npz:
        data = SyntheticData(npz["images"].astype(np.float32), npz["seg"], npz["depth"])
    _check_image_index(manifest, len(data))
    model = load_float_model(project_dir / info.get("model_dir", "model"))
    return Project(project_dir, manifest, float(info["output_scale"]), model, data)


def _read_project_info(path: Path) -> dict:
    if not path.is_file():
        raise CompareError(f"{path} not found: is {path.parent} a generated project?")
    try:
        info = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CompareError(f"{path} is not valid JSON: regenerate the project") from None
    scale = info.get("output_scale") if isinstance(info, dict) else None
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not np.isfinite(scale) or scale <= 0:
        raise CompareError(f"{path} has no positive output_scale: regenerate the project")
    if not isinstance(info.get("model_dir", "model"), str):
        raise CompareError(f"{path}: model_dir must be a folder name: regenerate the project")
    return info


def _check_image_index(manifest: dict, images: int) -> None:
    """Metrics need each vector's image and targets; older manifests lack the index."""
    bad = [v["id"] for v in manifest["vectors"] if not 0 <= v.get("image", -1) < images]
    if bad:
        raise CompareError(f"manifest vector(s) {', '.join(bad[:3])} have no valid 'image' index into "
                           f"images.npz ({images} images): regenerate the project")


def load_float_model(model_dir: Path) -> M3ViT:
    if not model_dir.is_dir():
        raise CompareError(f"float model folder {model_dir} not found: regenerate the project")
    try:
        from ..frontend.loader import load_model
    except ImportError:  # the frontend is optional here; the project layout is simple enough to read
        return _load_state_dict_model(model_dir)
    return load_model(model_dir).eval()


def _load_state_dict_model(model_dir: Path) -> M3ViT:
    from ..yamlio import read_yaml

    model = M3ViT(ModelConfig.from_dict(read_yaml(model_dir / "config.yaml", CompareError)))
    model.load_state_dict(torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True))
    return model.eval()


def find_result_files(results_dir: Path, manifest: dict, source: str = "auto") -> dict[str, Path]:
    """Result file per vector id; with "auto" a csim/cosim act image wins over a board dump."""
    if source not in SOURCES:
        raise CompareError(f"unknown result source {brief(source)}: use one of {', '.join(SOURCES)}")
    if not Path(results_dir).is_dir():
        raise CompareError(f"results folder {results_dir} not found")
    found = {}
    for vec in manifest["vectors"]:
        for suffix in SOURCES[source]:
            path = Path(results_dir) / f"{vec['id']}{suffix}"
            if path.is_file():
                found[vec["id"]] = path
                break
    if not found:
        wanted = " or ".join(f"<id>{s}" for s in SOURCES[source])
        ids = ", ".join(v["id"] for v in manifest["vectors"][:4])
        raise CompareError(f"no results in {results_dir}: expected {wanted} for vector ids such as {ids}")
    return found


def extra_result_files(results_dir: Path, manifest: dict, source: str = "auto") -> list[str]:
    """Result files for vector ids the manifest does not have: results of another project, or a
    run over vectors that were since removed; either way not what this comparison checks."""
    ids = {vec["id"] for vec in manifest["vectors"]}
    extra = []
    for path in sorted(Path(results_dir).iterdir()):
        suffix = next((s for s in SOURCES[source] if path.name.endswith(s)), None)
        if suffix and path.name[:-len(suffix)] not in ids:
            extra.append(path.name)
    return extra


def output_region(manifest: dict, act_image: bytes) -> np.ndarray:
    """The output tensor [T, D] of a full `act` image, as int64."""
    out = manifest["output"]
    dtype = np.dtype("<i1" if manifest["elem_bytes"] == 1 else "<i2")
    count = int(np.prod(out["shape"]))
    start, end = out["offset"], out["offset"] + count * dtype.itemsize
    if len(act_image) < end:
        raise ValueError(f"act image has {len(act_image)} bytes, the output region ends at byte {end}")
    return np.frombuffer(act_image[start:end], dtype).astype(np.int64).reshape(out["shape"])


def read_result(path: Path, manifest: dict) -> np.ndarray:
    """Output tensor [T, D] of one result file; ValueError when the file does not hold exactly one
    (a file cut short or with bytes beyond the data is not a result)."""
    if path.name.endswith(".act.bin"):
        size = path.stat().st_size
        if size != manifest["act_bytes"]:
            raise ValueError(f"has {size} bytes, an act image has {manifest['act_bytes']}")
        return output_region(manifest, path.read_bytes())
    values = _load_exact_npy(path)
    shape = tuple(manifest["output"]["shape"])
    if values.size != int(np.prod(shape)):
        raise ValueError(f"holds {values.size} values of shape {list(values.shape)}, the output is {list(shape)}")
    if not np.issubdtype(values.dtype, np.integer) and not np.array_equal(values, np.round(values)):
        raise ValueError(f"holds non-integer {values.dtype} values; expected the integer output tensor")
    return values.astype(np.int64).reshape(shape)


def _load_exact_npy(path: Path) -> np.ndarray:
    """np.load ignores bytes after the array: here they make the file not a result."""
    with open(path, "rb") as f:
        if f.read(6) != NPY_MAGIC:
            raise ValueError("not a NumPy .npy file")
        f.seek(0)
        version = npy_format.read_magic(f)
        if version not in NPY_HEADER_READERS:
            raise ValueError(f".npy format version {version} is not supported")
        shape, _, dtype = NPY_HEADER_READERS[version](f)
        data_start = f.tell()
    if dtype.hasobject:
        raise ValueError("holds Python objects, not numbers")
    size = path.stat().st_size
    expected = data_start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size != expected:
        raise ValueError(f"has {size} bytes, its header describes {expected}")
    return np.load(path, allow_pickle=False)


# ---------------------------------------------------------------- per vector and per task


@dataclass
class VectorComparison:
    id: str
    task: str
    task_id: int
    image: int
    result_file: str
    elements: int
    differing: int  # elements that differ from the golden output
    max_abs_diff: int  # in LSB of the output scale
    first_diff: list[int] | None  # [token, channel] of the first differing element
    first_bad_layer: str | None  # first traced layer that differs (act images only)
    token_rmse: dict  # {"result": .., "golden": ..}: backbone tokens vs float, float units
    metrics: dict  # {"float": .., "golden": .., "result": ..}: task metrics on this image
    agreement: dict  # {"golden": .., "result": ..}: task output vs float output

    @property
    def bit_exact(self) -> bool:
        """The output and, for an act image, every traced layer equal the golden model's."""
        return self.differing == 0 and self.first_bad_layer is None


@dataclass
class TaskComparison:
    name: str
    kind: str
    vectors: int
    bit_exact: int  # vectors that match the golden output exactly
    differing: int
    max_abs_diff: int
    token_rmse: dict
    metrics: dict  # over all compared images of the task, as evaluate_outputs computes them
    agreement: dict


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


def _first_diff(result: np.ndarray, expected: np.ndarray) -> list[int] | None:
    where = np.argwhere(result != expected)
    return [int(i) for i in where[0]] if len(where) else None


def _first_bad_layer(path: Path, project: Project, vec: dict) -> str | None:
    """For act images: the earliest traced layer that differs, which points at the faulty instruction."""
    if not path.name.endswith(".act.bin"):
        return None
    expected = (project.dir / "data" / vec["expected"]).read_bytes()
    return compare_act(project.manifest, path.read_bytes(), expected)


@dataclass
class TaskOutputs:
    """Everything computed for the compared vectors of one task, stacked along axis 0."""

    spec: TaskSpec
    task_id: int
    images: list[int]  # index into images.npz per vector
    results: np.ndarray  # int [B, T, D]
    expected: np.ndarray  # int [B, T, D] golden
    float_tokens: np.ndarray  # [B, T, D] float model backbone
    result_tokens: np.ndarray  # dequantised results
    golden_tokens: np.ndarray
    float_out: np.ndarray  # [B, C, H, W] task head outputs
    result_out: np.ndarray
    golden_out: np.ndarray


@torch.no_grad()
def task_outputs(project: Project, task_id: int, entries: list[tuple[dict, Path, np.ndarray]]) -> TaskOutputs:
    """entries: (manifest vector, result file, result tensor [T, D]) of one task."""
    model, scale = project.model, project.output_scale
    images = [int(vec["image"]) for vec, _, _ in entries]
    results = np.stack([res for _, _, res in entries])
    expected = np.stack([_golden_output(project, vec) for vec, _, _ in entries])
    float_tokens = model.forward_backbone(torch.as_tensor(project.data.images[images]), task_id)
    result_tokens, golden_tokens = results * scale, expected * scale
    return TaskOutputs(project.tasks[task_id], task_id, images, results, expected, float_tokens.double().numpy(),
                       result_tokens, golden_tokens, model.head(float_tokens, task_id).numpy(),
                       _head(model, result_tokens, task_id), _head(model, golden_tokens, task_id))


def _golden_output(project: Project, vec: dict) -> np.ndarray:
    return output_region(project.manifest, (project.dir / "data" / vec["expected"]).read_bytes())


def _head(model: M3ViT, tokens: np.ndarray, task_id: int) -> np.ndarray:
    return model.head(torch.as_tensor(tokens, dtype=torch.float32), task_id).numpy()


def compare_vector(project: Project, o: TaskOutputs, i: int, vec: dict, path: Path) -> VectorComparison:
    spec, image = o.spec, o.images[i]
    diff = np.abs(o.results[i] - o.expected[i])
    outputs = {"float": o.float_out[i], "golden": o.golden_out[i], "result": o.result_out[i]}
    return VectorComparison(
        vec["id"], spec.name, o.task_id, image, path.name, int(diff.size), int(np.count_nonzero(diff)),
        int(diff.max()), _first_diff(o.results[i], o.expected[i]), _first_bad_layer(path, project, vec),
        token_rmse={"result": _rms(o.result_tokens[i] - o.float_tokens[i]),
                    "golden": _rms(o.golden_tokens[i] - o.float_tokens[i])},
        metrics={name: evaluate_outputs(spec, out[None], project.data, [image]) for name, out in outputs.items()},
        agreement={"golden": agreement_with_float(spec.kind, o.float_out[i:i + 1], o.golden_out[i:i + 1]),
                   "result": agreement_with_float(spec.kind, o.float_out[i:i + 1], o.result_out[i:i + 1])})


def summarise_task(project: Project, o: TaskOutputs, vectors: list[VectorComparison]) -> TaskComparison:
    """Metrics over all images of the task at once: mIoU of pooled pixels, not a mean of per-image mIoUs."""
    spec = o.spec
    diff = np.abs(o.results - o.expected)
    outputs = {"float": o.float_out, "golden": o.golden_out, "result": o.result_out}
    return TaskComparison(
        spec.name, spec.kind, len(vectors), sum(v.bit_exact for v in vectors), int(np.count_nonzero(diff)),
        int(diff.max()),
        token_rmse={"result": _rms(o.result_tokens - o.float_tokens), "golden": _rms(o.golden_tokens - o.float_tokens)},
        metrics={name: evaluate_outputs(spec, out, project.data, o.images) for name, out in outputs.items()},
        agreement={"golden": agreement_with_float(spec.kind, o.float_out, o.golden_out),
                   "result": agreement_with_float(spec.kind, o.float_out, o.result_out)})


# ---------------------------------------------------------------- the report


@dataclass
class CompareReport:
    project_dir: Path
    results_dir: Path
    out_dir: Path
    vectors: list[VectorComparison]
    tasks: list[TaskComparison]
    missing: list[str]  # vector ids without a result file
    problems: list[str]  # result files that could not be read, or of the wrong size
    extra: list[str] = field(default_factory=list)  # result files of vector ids the project does not have
    expected: int = 0  # vectors in the manifest
    files: list[str] = field(default_factory=list)  # written into out_dir
    timing: list[dict] = field(default_factory=list)  # cycles and latency (codesign.report.timing)

    @property
    def complete(self) -> bool:
        """A result of exactly the right size for every vector of the project, and nothing else."""
        return not self.missing and not self.problems and not self.extra

    @property
    def all_bit_exact(self) -> bool:
        """Complete, and every result matches the golden model exactly (output and traced layers)."""
        return self.complete and bool(self.vectors) and all(v.bit_exact for v in self.vectors)

    @property
    def verdict(self) -> str:
        return "INCOMPLETE" if not self.complete else "BIT-EXACT" if self.all_bit_exact else "MISMATCH"

    def incomplete_reason(self) -> str:
        """One line: why the results cannot be judged as a whole."""
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} of {self.expected} vectors have no result ({brief_list(self.missing, 3)})")
        if self.problems:
            parts.append(f"{len(self.problems)} result file(s) unreadable or of the wrong size "
                         f"({self.problems[0]})")
        if self.extra:
            parts.append(f"{len(self.extra)} result file(s) for vectors the project does not have "
                         f"({brief_list(self.extra, 3)})")
        return f"results in {self.results_dir} are incomplete: " + "; ".join(parts)

    def to_json(self) -> dict:
        return {"project_dir": str(self.project_dir), "results_dir": str(self.results_dir),
                "verdict": self.verdict, "all_bit_exact": self.all_bit_exact, "complete": self.complete,
                "expected": self.expected, "missing": self.missing, "problems": self.problems, "extra": self.extra,
                "tasks": [asdict(t) for t in self.tasks], "timing": self.timing,
                "vectors": [asdict(v) | {"bit_exact": v.bit_exact} for v in self.vectors]}

    def summary_text(self) -> str:
        exact = sum(v.bit_exact for v in self.vectors)
        lines = [f"compare: {self.verdict}: {exact}/{self.expected} results match the golden model "
                 f"({self.results_dir})"]
        for t in self.tasks:
            lines.append(f"  {t.name:<10} {t.bit_exact}/{t.vectors} bit-exact, {t.differing} differing elements "
                         f"(max {t.max_abs_diff} LSB); " + _metric_summary(t))
        lines += [f"  {v.id}: not bit-exact at layer {v.first_bad_layer}" for v in self.vectors
                  if v.first_bad_layer and not v.differing]
        if self.missing:
            lines.append(f"  missing results for {len(self.missing)} vector(s): {', '.join(self.missing)}")
        lines += [f"  unreadable: {p}" for p in self.problems]
        if self.extra:
            lines.append(f"  results for vectors the project does not have: {', '.join(self.extra)}")
        lines.append(f"  report: {self.out_dir / 'report.html'}")
        return "\n".join(lines)




def _metric_summary(t: TaskComparison) -> str:
    # Only the first headline metric, to keep one CLI line per task; the report has them all.
    parts = [f"{key} float {t.metrics['float'][key]:.4f} golden {t.metrics['golden'][key]:.4f} "
             f"result {t.metrics['result'][key]:.4f}" for key in HEADLINE_METRICS.get(t.kind, ())[:1]]
    parts += [f"{key} {value:.4f}" for key, value in t.agreement["result"].items()]
    return "; ".join(parts)


def compare_results(project_dir: Path, results_dir: Path, out_dir: Path | None = None,
                    source: str = "auto") -> CompareReport:
    project = load_project(Path(project_dir))
    files = find_result_files(Path(results_dir), project.manifest, source)
    out_dir = checked_output_path(out_dir if out_dir is not None else Path(project_dir) / "reports" / "compare",
                                  "folder")
    by_task, problems = _read_results(project, files)
    if not any(by_task.values()):
        raise CompareError(f"no readable results in {results_dir}: {problems[0]}")
    vectors, tasks, outputs = [], [], []
    for task_id, entries in by_task.items():
        if not entries:
            continue
        o = task_outputs(project, task_id, entries)
        task_vectors = [compare_vector(project, o, i, vec, path) for i, (vec, path, _) in enumerate(entries)]
        vectors += task_vectors
        tasks.append(summarise_task(project, o, task_vectors))
        outputs.append(o)
    missing = [v["id"] for v in project.manifest["vectors"] if v["id"] not in files]
    report = CompareReport(Path(project_dir), Path(results_dir), out_dir, vectors, tasks, missing, problems,
                           extra_result_files(Path(results_dir), project.manifest, source),
                           len(project.manifest["vectors"]), timing=result_timing(Path(project_dir), Path(results_dir), [s.name for s in project.tasks]))
    write_report(report, project, outputs)
    return report


def _read_results(project: Project, files: dict[str, Path]) -> tuple[dict[int, list], list[str]]:
    by_task: dict[int, list] = {t: [] for t in range(len(project.tasks))}
    problems = []
    for vec in project.manifest["vectors"]:
        path = files.get(vec["id"])
        if path is None:
            continue
        try:
            by_task[int(vec["task"])].append((vec, path, read_result(path, project.manifest)))
        except (ValueError, OSError, EOFError) as err:
            problems.append(f"{path.name}: {err}")
    return by_task, problems


# ---------------------------------------------------------------- plots


def plot_token_errors(path: Path, o: TaskOutputs, output_scale: float) -> None:
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.add_subplot()
    result_error = (o.result_tokens - o.float_tokens).ravel()
    golden_error = (o.golden_tokens - o.float_tokens).ravel()
    span = max(float(np.abs(result_error).max()), float(np.abs(golden_error).max()), output_scale)
    bins = np.linspace(-span, span, 81)
    ax.hist(result_error, bins=bins, color="tab:blue", alpha=0.7, label="result - float")
    # The golden outline shows what quantisation alone costs; a result off the golden adds to it.
    ax.hist(golden_error, bins=bins, histtype="step", color="black", label="golden - float")
    ax.axvspan(-output_scale / 2, output_scale / 2, color="tab:orange", alpha=0.2, label="±½ LSB")
    ax.set(title=f"{o.spec.name}: backbone token error vs float model", xlabel="error (float units)", ylabel="elements")
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=100)


def _show_input(ax, image: np.ndarray) -> None:
    # Per-image min-max scaling: the input range depends on the user's normalisation.
    shown = image.transpose(1, 2, 0) if image.shape[0] == 3 else image[0]
    low, high = float(shown.min()), float(shown.max())
    ax.imshow((shown - low) / max(high - low, 1e-12), cmap=None if shown.ndim == 3 else "gray")


def _seg_colours(num_classes: int) -> ListedColormap:
    from matplotlib import colormaps

    palette = colormaps["tab10" if num_classes <= 10 else "tab20"].colors
    return ListedColormap(palette[:num_classes])


def plot_predictions(path: Path, o: TaskOutputs, data: SyntheticData) -> None:
    predictions_figure(o, data).savefig(path, dpi=80)


def predictions_figure(o: TaskOutputs, data: SyntheticData) -> Figure:
    """Rows of [input, target, float prediction, FPGA-result prediction] for up to four images;
    a class legend (segmentation) or a colour bar with units (depth)."""
    rows = _figure_rows(o)
    fig = Figure(figsize=(8 if o.spec.kind == "seg" else 8.8, 2.1 * len(rows) + 0.3), layout="constrained")
    axes = fig.subplots(len(rows), 4, squeeze=False)
    for ax_row, i in zip(axes, rows):
        image = o.images[i]
        _show_input(ax_row[0], data.images[image])
        maps, style = _prediction_maps(o.spec, [data.target(o.spec)[image], o.float_out[i], o.result_out[i]])
        shown = [ax.imshow(m, interpolation="nearest", **style) for ax, m in zip(ax_row[1:], maps)]
        if o.spec.kind != "seg":
            fig.colorbar(shown[-1], ax=list(ax_row[1:]), label=DEPTH_UNITS if o.spec.kind == "depth" else "output",
                         shrink=0.9)
        exact = np.array_equal(o.results[i], o.expected[i])
        ax_row[0].set_ylabel(f"image {image}" + ("" if exact else "\n(not bit-exact)"))
    for ax, title in zip(axes[0], ("input", "target", "float", "FPGA result")):
        ax.set_title(title)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if o.spec.kind == "seg":
        _class_legend(fig, o.spec.out_channels)
    return fig


def class_names(num_classes: int) -> list[str]:
    return list(CLASS_NAMES) if num_classes == len(CLASS_NAMES) else [f"class {c}" for c in range(num_classes)]


def _class_legend(fig, num_classes: int) -> None:
    from matplotlib.patches import Patch

    colours = _seg_colours(num_classes).colors
    handles = [Patch(color=colours[c], label=name) for c, name in enumerate(class_names(num_classes))]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(num_classes, 6), fontsize="small")


def _figure_rows(o: TaskOutputs) -> list[int]:
    # Results that differ from the golden model first: those are the ones worth looking at.
    order = sorted(range(len(o.images)), key=lambda i: np.array_equal(o.results[i], o.expected[i]))
    return order[:MAX_FIGURE_IMAGES]


def _prediction_maps(spec: TaskSpec, panels: list[np.ndarray]) -> tuple[list[np.ndarray], dict]:
    """2-D maps of [target, float output, result output] and the imshow style they share."""
    if spec.kind == "seg":
        maps = [panels[0]] + [p.argmax(0) for p in panels[1:]]
        return maps, {"cmap": _seg_colours(spec.out_channels), "vmin": -0.5, "vmax": spec.out_channels - 0.5}
    maps = [p[0] for p in panels]
    # One grey scale for the row, so darker means nearer in every panel alike.
    return maps, {"cmap": "gray", "vmin": min(m.min() for m in maps), "vmax": max(m.max() for m in maps)}


# ---------------------------------------------------------------- report files


def write_report(report: CompareReport, project: Project, outputs: list[TaskOutputs]) -> None:
    out = report.out_dir
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    for o in outputs:
        errors, predictions = f"token_error_{o.spec.name}.png", f"predictions_{o.spec.name}.png"
        plot_token_errors(out / errors, o, project.output_scale)
        plot_predictions(out / predictions, o, project.data)
        figures += [(f"{o.spec.name}: token error", errors), (f"{o.spec.name}: predictions", predictions)]
    report.files = [name for _, name in figures] + ["report.md", "report.html", "summary.json"]
    tables = report_tables(report)
    (out / "report.md").write_text(render_markdown(report, tables, figures))
    (out / "report.html").write_text(render_html(report, tables, figures))
    (out / "summary.json").write_text(json.dumps(_json_safe(report.to_json()), indent=1, allow_nan=False))


def _json_safe(value):
    """NaN (the IoU of a class absent from prediction and target) as null: NaN is not JSON."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list):
        return "(" + ", ".join(map(str, value)) + ")"
    return str(value)


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "NO"


def report_tables(report: CompareReport) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table, shared by the Markdown and the HTML report."""
    exactness = [[t.name, str(t.vectors), f"{t.bit_exact}/{t.vectors}", str(t.differing), str(t.max_abs_diff),
                  _fmt(t.token_rmse["golden"]), _fmt(t.token_rmse["result"])] for t in report.tasks]
    agreement_keys = list(dict.fromkeys(k for v in report.vectors for k in v.agreement["result"]))
    vectors = [[v.id, v.task, str(v.image), v.result_file, _yes_no(v.bit_exact), str(v.differing),
                str(v.max_abs_diff), _fmt(v.first_diff), _fmt(v.first_bad_layer)]
               + [_fmt(v.agreement["result"].get(k)) for k in agreement_keys] for v in report.vectors]
    tables = [("Bit-exactness per task", ["task", "vectors", "bit-exact", "differing elements", "max abs diff (LSB)",
                                          "token RMS err golden", "token RMS err result"], exactness)]
    tables += [_metric_table(t) for t in report.tasks]
    tables.append(("Per vector", ["vector", "task", "image", "file", "bit-exact", "differing", "max abs diff",
                                  "first diff (token, ch)", "first differing layer"]
                   + [_agreement_label(k) for k in agreement_keys], vectors))
    if report.timing:
        tables.append(("Cycles and latency", TIMING_HEADER, timing_rows(report.timing)))
    return tables


def _metric_table(t: TaskComparison) -> tuple[str, list[str], list[list[str]]]:
    """One row per model (float, golden, FPGA result), one column per metric."""
    keys, agreement = HEADLINE_METRICS.get(t.kind, ()), list(t.agreement["result"])
    rows = [[model] + [_fmt(t.metrics[model][k]) for k in keys]
            + [_fmt(t.agreement[model][k]) if model in t.agreement else "—" for k in agreement]
            for model in ("float", "golden", "result")]
    return (f"{t.name}: task metrics", ["model", *keys, *map(_agreement_label, agreement)], rows)


def _agreement_label(key: str) -> str:
    return AGREEMENT_LABELS.get(key, key)


def _notes(report: CompareReport) -> list[str]:
    verdict = {"BIT-EXACT": "all results are bit-exact", "MISMATCH": "results DIFFER from the golden model",
               "INCOMPLETE": "INCOMPLETE results: no verdict on the project as a whole"}[report.verdict]
    notes = [f"Verdict: {verdict} ({sum(v.bit_exact for v in report.vectors)}/{report.expected} vectors bit-exact)."]
    if report.missing:
        notes.append(f"Missing results for {len(report.missing)} vector(s): {', '.join(report.missing)}.")
    notes += [f"Unreadable result: {p}" for p in report.problems]
    if report.extra:
        notes.append(f"Results for vectors the project does not have: {', '.join(report.extra)}.")
    notes.append("Token errors are backbone outputs minus the float model's, in float units; "
                 "agreement is the task output's agreement with the float model's.")
    return notes


def render_markdown(report: CompareReport, tables, figures) -> str:
    lines = ["# FPGA results vs golden and float models", "",
             f"Project `{report.project_dir}`, results `{report.results_dir}`.", ""]
    lines += [f"- {note}" for note in _notes(report)] + [""]
    for title, header, rows in tables:
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows] + [""]
    lines += ["## Figures", ""] + [f"![{title}]({name})\n" for title, name in figures]
    return "\n".join(lines)


HTML_STYLE = """body{font-family:sans-serif;margin:2em;max-width:1100px}
table{border-collapse:collapse;margin-bottom:1.5em}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}
th{background:#eee}td:first-child{text-align:left}.bad{color:#b00;font-weight:bold}img{max-width:100%}"""


def _html_cell(value: str) -> str:
    css = ' class="bad"' if value in ("NO",) else ""
    return f"<td{css}>{html.escape(value)}</td>"


def render_html(report: CompareReport, tables, figures) -> str:
    esc = html.escape
    parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'><title>codesign compare</title>",
             f"<style>{HTML_STYLE}</style></head><body>", "<h1>FPGA results vs golden and float models</h1>",
             f"<p>Project <code>{esc(str(report.project_dir))}</code>, results "
             f"<code>{esc(str(report.results_dir))}</code>.</p>", "<ul>"]
    parts += [f"<li>{esc(note)}</li>" for note in _notes(report)] + ["</ul>"]
    for title, header, rows in tables:
        parts += [f"<h2>{esc(title)}</h2>", "<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"]
        parts += ["<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in rows] + ["</table>"]
    parts.append("<h2>Figures</h2>")
    parts += [f"<figure><img src='{esc(name)}' alt='{esc(title)}'><figcaption>{esc(title)}</figcaption></figure>"
              for title, name in figures]
    return "\n".join(parts + ["</body></html>"])
