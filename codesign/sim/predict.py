"""The user's own images through the compiled C++ (csim) or the RTL (cosim), as hls4ml's predict().

The project is quantised again from its model/ and the scales in project.json (checked to give
exactly its data/program.bin and weights.bin), the images become test vectors for every task (or
one) in a data folder of the project's layout (write_data_dir), and the existing runners run them
from there: bit-exact against the golden model, and per task against the float model.

The results folder (default PROJECT/predict/<timestamp>; written whole or not at all):
  images.npy                  the images as given (float32 [N, C, H, W])
  data/                       their vectors, laid out as the project's data/
  results/<id>.act.bin        final act image of each vector (cosim: cosim/results/, beside cosim.json)
  tokens_<task>.npy           the backend's backbone tokens, dequantised [N, T, D]
  head_<task>.npy             the float task head on those tokens [N, C, H, W]
  predict.json, predict.txt   verdict per vector, error vs the float model per task
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..emit.data import Vector, load_data_manifest, write_data_dir
from ..emit.hls import write_tb_lists
from ..fsutil import OutputError, atomic_dir, checked_output_path
from ..model.m3vit import M3ViT
from ..quant.precision import Precision
from ..quant.qmodel import QuantModel
from ..quant.quantize import quantize_input, quantize_with_scales
from ..report.compare import agreement_with_float, load_float_model, output_region, _read_project_info
from ..schedule.program import Program, compile_program
from .csim import Progress

BACKENDS = ("csim", "cosim")


@dataclass
class ProjectModel:
    """What a project was generated from, rebuilt from its model/ and project.json."""

    model: M3ViT
    qm: QuantModel
    prog: Program


def load_project_model(project_dir: Path) -> ProjectModel:
    """The float model, the integer model and the program of a generated project; ValueError
    when they do not reproduce its data/ (then the project was edited or generated otherwise)."""
    project_dir = Path(project_dir)
    info = _read_project_info(project_dir / "project.json")
    scales, wbits, abits = info.get("scales"), info.get("wbits"), info.get("abits")
    if not isinstance(scales, dict) or not all(isinstance(v, (int, float)) and v > 0 for v in scales.values()) \
            or not all(isinstance(b, int) for b in (wbits, abits)):
        raise ValueError(f"{project_dir / 'project.json'} has no valid scales, wbits and abits: regenerate the project")
    model = load_float_model(project_dir / info.get("model_dir", "model"))
    precision = _project_precision(info, project_dir / "project.json")
    qm = quantize_with_scales(model, scales, wbits, abits, precision=precision)
    prog = compile_program(qm)
    check_program_matches(project_dir, prog)
    return ProjectModel(model, qm, prog)


def _project_precision(info: dict, where: Path) -> Precision | None:
    """project.json's per-layer formats (None in a project from before them: uniform wbits/abits)."""
    if "precision" not in info:
        return None
    try:
        return Precision.from_dict(info["precision"])
    except (TypeError, KeyError, AttributeError, ValueError):
        raise ValueError(f"{where} has an invalid precision: regenerate the project") from None


def check_program_matches(project_dir: Path, prog: Program) -> None:
    data = Path(project_dir) / "data"
    man = load_data_manifest(data)
    for name, blob in ((man.get("program_file", "program.bin"), prog.code), (man.get("weights_file", "weights.bin"), prog.wgt)):
        path = data / name
        if not path.is_file() or path.read_bytes() != bytes(blob):
            raise ValueError(f"{path} is not what the project's model/ and project.json give: the project was "
                             f"edited or is from another version; regenerate it")


# ---------------------------------------------------------------- results


@dataclass
class VectorVerdict:
    id: str
    task: int
    image: int
    bit_exact: bool
    first_mismatch: str | None  # first traced tensor that differs, "<timeout>" for an unfinished run
    cycles: int | None = None  # cosim only


@dataclass
class TaskError:
    """One task over the images: bit-exactness and the error against the float model."""

    name: str
    kind: str
    vectors: int
    bit_exact: int
    token_rmse: dict  # {"result": .., "golden": ..}: backbone tokens vs float, float units
    agreement: dict  # {"result": {..}, "golden": {..}}: task head output vs the float model's


@dataclass
class PredictResult:
    backend: str
    out_dir: Path
    images: int
    vectors: list[VectorVerdict]
    tasks: list[TaskError]
    tokens: dict[int, np.ndarray] = field(default_factory=dict)  # task -> backend tokens [N, T, D]

    @property
    def all_bit_exact(self) -> bool:
        return bool(self.vectors) and all(v.bit_exact for v in self.vectors)

    def to_json(self) -> dict:
        return {"backend": self.backend, "images": self.images, "all_bit_exact": self.all_bit_exact,
                "vectors": [asdict(v) for v in self.vectors], "tasks": [asdict(t) for t in self.tasks]}

    def summary_text(self) -> str:
        exact = sum(v.bit_exact for v in self.vectors)
        lines = [f"predict ({self.backend}): {self.images} image(s) x {len(self.tasks)} task(s), {exact}/"
                 f"{len(self.vectors)} vectors bit-exact with the golden model"]
        lines += [f"FAIL {v.id}: first mismatch at {v.first_mismatch}" for v in self.vectors if not v.bit_exact]
        head = (f"{'task':<12}{'bit-exact':>10}   {'token RMS error vs float':<26}"
                f"task output vs float (result / golden)")
        lines += [head, "-" * len(head)]
        for t in self.tasks:
            tokens = f"{_fmt(t.token_rmse['result'])} / {_fmt(t.token_rmse['golden'])}"
            agreement = "; ".join(f"{k} {_fmt(t.agreement['result'][k])} / {_fmt(t.agreement['golden'][k])}"
                                  for k in t.agreement["golden"])
            lines.append(f"{t.name:<12}{f'{t.bit_exact}/{t.vectors}':>10}   {tokens:<26}{agreement}")
        lines.append(f"results: {self.out_dir} (tokens_<task>.npy, head_<task>.npy, predict.json)")
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


# ---------------------------------------------------------------- the run


def predict_project(project_dir: Path, images: np.ndarray, tasks: list[int] | None = None, backend: str = "csim",
                    out_dir: Path | None = None, pm: ProjectModel | None = None, progress: Progress | None = None,
                    **runner_options) -> PredictResult:
    """Run float `images` [N, C, H, W] (checked by the caller, api.checked_images) on a project's
    csim or cosim, for `tasks` (default all); `pm` skips rebuilding the models (a Design's).

    `runner_options` go to run_csim (timeout) or run_cosim (simulator, waves, timeout_cycles, rtl_dir)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    project_dir = Path(project_dir).resolve()
    out_dir = checked_predict_dir(project_dir, out_dir)  # before any slow work
    if pm is None:
        pm = load_project_model(project_dir)
    else:
        check_program_matches(project_dir, pm.prog)
    from ..api import checked_images

    images = checked_images(images, pm.qm.cfg, "images")
    tasks = list(range(pm.qm.cfg.num_tasks)) if tasks is None else list(tasks)
    with atomic_dir(out_dir) as tmp:
        vectors = write_vectors(tmp, pm, images, tasks)
        verdicts, results = _run_backend(backend, project_dir, tmp, vectors, progress, runner_options)
        result = _report(backend, out_dir, pm, images, tasks, verdicts, tmp / "data", results)
        _write_outputs(tmp, result, pm, images)
    return result


def checked_predict_dir(project_dir: Path, out_dir: Path | None) -> Path:
    """A new folder for the results: PROJECT/predict/<timestamp> by default; never the project's
    data/ or anything inside it, never an existing folder."""
    if out_dir is None:
        out_dir = _free_name(project_dir / "predict" / time.strftime("%Y%m%d-%H%M%S"))
    out = checked_output_path(out_dir, "folder", atomic=True)
    data = project_dir / "data"
    if out == data or data in out.parents or out == project_dir or out in project_dir.parents:
        raise OutputError(f"{out} would overwrite the project's own files: choose a folder outside {data}")
    if out.exists():
        raise OutputError(f"{out} exists: choose a new folder for the results (--out)")
    return out


def _free_name(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def write_vectors(folder: Path, pm: ProjectModel, images: np.ndarray, tasks: list[int]) -> list[Vector]:
    """folder/data: one vector per image and task (img<i>_task<t>), in the project's data/ layout."""
    x_q = quantize_input(images, pm.qm)
    vectors = [Vector(f"img{i}_task{t}", t, x_q[i], image=i) for i in range(len(images)) for t in tasks]
    manifest = write_data_dir(folder / "data", pm.prog, pm.qm, vectors)
    write_tb_lists(folder / "data", json.loads(manifest.read_text()))
    np.save(folder / "images.npy", images)
    return vectors


def _run_backend(backend: str, project_dir: Path, folder: Path, vectors: list[Vector], progress,
                 options: dict) -> tuple[dict[str, VectorVerdict], Path]:
    """Verdict per vector id and the folder of <id>.act.bin results."""
    by_id = {v.id: v for v in vectors}
    if backend == "csim":
        from .csim import run_csim

        results = folder / "results"
        res = run_csim(project_dir, dump_dir=results, data_dir=folder / "data", progress=progress, **options)
        verdicts = {vid: VectorVerdict(vid, by_id[vid].task, by_id[vid].image, vid in res.passed, res.failed.get(vid))
                    for vid in by_id}
        return verdicts, results
    from .cosim import run_cosim

    if progress:
        progress(f"cosim: {len(vectors)} vector(s) in one {options.get('simulator', 'verilator')} simulation, "
                 f"after its build (verdicts at the end)")
    res = run_cosim(project_dir, data_dir=folder / "data", **options)
    verdicts = {v.id: VectorVerdict(v.id, v.task, by_id[v.id].image, v.passed, v.first_mismatch, v.cycles)
                for v in res.vectors}
    return verdicts, res.results_dir


@torch.no_grad()
def _report(backend: str, out_dir: Path, pm: ProjectModel, images: np.ndarray, tasks: list[int],
            verdicts: dict[str, VectorVerdict], data: Path, results: Path) -> PredictResult:
    man = load_data_manifest(data)
    scale = pm.qm.output_scale
    batch = torch.as_tensor(images)
    out = PredictResult(backend, out_dir, len(images), [verdicts[v["id"]] for v in man["vectors"]], [])
    for t in tasks:
        ids = [f"img{i}_task{t}" for i in range(len(images))]
        finished = [i for i, vid in enumerate(ids) if (results / f"{vid}.act.bin").is_file()]
        float_tokens = pm.model.forward_backbone(batch, t)
        golden = np.stack([output_region(man, (data / "vec" / f"{vid}.act.bin").read_bytes()) for vid in ids]) * scale
        result = np.stack([output_region(man, (results / f"{ids[i]}.act.bin").read_bytes()) for i in finished]) * scale \
            if finished else np.zeros((0, *golden.shape[1:]))
        out.tokens[t] = result
        out.tasks.append(_task_error(pm, t, float_tokens.double().numpy(), golden, result, finished,
                                     sum(verdicts[vid].bit_exact for vid in ids)))
    return out


def _task_error(pm: ProjectModel, task: int, float_tokens: np.ndarray, golden: np.ndarray, result: np.ndarray,
                finished: list[int], exact: int) -> TaskError:
    spec = pm.qm.cfg.tasks[task]
    float_out = _head(pm.model, float_tokens, task)
    golden_out = _head(pm.model, golden, task)
    rmse = {"golden": _rms(golden - float_tokens), "result": None}
    agreement = {"golden": agreement_with_float(spec.kind, float_out, golden_out)}
    if finished:
        rmse["result"] = _rms(result - float_tokens[finished])
        agreement["result"] = agreement_with_float(spec.kind, float_out[finished], _head(pm.model, result, task))
    else:
        agreement["result"] = dict.fromkeys(agreement["golden"])
    return TaskError(spec.name, spec.kind, len(golden), exact, rmse, agreement)


@torch.no_grad()
def _head(model: M3ViT, tokens: np.ndarray, task: int) -> np.ndarray:
    return model.head(torch.as_tensor(tokens, dtype=torch.float32), task).numpy()


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


def _write_outputs(folder: Path, result: PredictResult, pm: ProjectModel, images: np.ndarray) -> None:
    for t, tokens in result.tokens.items():
        name = pm.qm.cfg.tasks[t].name
        np.save(folder / f"tokens_{name}.npy", tokens.astype(np.float32))
        np.save(folder / f"head_{name}.npy", _head(pm.model, tokens, t) if len(tokens) else np.zeros((0,)))
    (folder / "predict.json").write_text(json.dumps(result.to_json(), indent=1, allow_nan=False))
    (folder / "predict.txt").write_text(result.summary_text() + "\n")
