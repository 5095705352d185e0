"""Python API mirroring the CLI: load -> quantize -> compile -> generate -> csim / cosim -> compare."""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .boards import Board, board_variant, load_board
from .emit.data import Vector, write_data_dir
from .fsutil import atomic_dir, checked_project_target
from .model.config import ModelConfig
from .model.data import SyntheticData, make_dataset
from .model.m3vit import M3ViT
from .quant.golden import dequantize_output, run_golden
from .quant.precision import (LayerFormat, Precision, as_precision, chosen_precision, complete,  # noqa: F401
                             dump_precision, load_precision)
from .quant.qmodel import QuantModel
from .quant.quantize import quantize_input, quantize_model
from .report.profiling import PROFILE_FILE
from .schedule.estimate import Estimate, estimate_design, expert_counts_from_golden
from .schedule.program import Program, compile_program
from .schedule.tiling import Tiling, choose_tiling, fixed_tiling

CALIB_SEED = 7
# The built-in calibration set: CALIB_IMAGES images for short sequences (the embedded model's 17
# tokens), fewer for long ones, so that calibration costs about the same tokens for every model
# (M3ViT-small's 1,025 tokens: 8 images, 5 tasks). Ranges are per tensor, over all tokens seen.
CALIB_IMAGES = 64
CALIB_TOKENS = 8192
VECTOR_SEED = 1234


DEFAULT_MODEL = "default"  # the embedded tiny M3ViT (codesign.model.zoo)
# The first line of every estimate says whose expert routing its MoE layers were costed with.
ROUTING_UNIFORM = ("uniform (every expert gets tokens*top_k/experts tokens; a project's reports/estimate.txt "
                   "uses its test image 0's routing instead)")
ROUTING_IMAGE = "the golden model's on test image 0, task {task} (`codesign estimate` assumes uniform routing)"


def load(model: str | Path | M3ViT, config=None) -> M3ViT:
    """A model file/folder (state_dict + YAML, safetensors, M3ViT checkpoints), "default" (the
    embedded tiny M3ViT) or a module."""
    if isinstance(model, M3ViT):
        return model.eval()
    if isinstance(model, str) and model == DEFAULT_MODEL:
        if config is not None:
            raise ValueError("a config does not apply to 'default': the embedded model has its own; give a model "
                             "folder or file with --config")
        from .model.zoo import load_default_model

        return load_default_model()
    from .frontend.loader import load_model

    return load_model(model, config)


def estimate_text(est: Estimate, routing: str) -> str:
    """The estimate's table, first stating the routing it assumed."""
    return f"routing: {routing}\n{est.table()}"


def estimate_json(est: Estimate, routing: str) -> dict:
    return {"routing": routing, **est.to_json()}


def calibration_images(cfg: ModelConfig, count: int | None = None, path: str | Path | None = None) -> np.ndarray:
    """User images from a .npy file [N,C,H,W], else `count` images of the built-in synthetic dataset
    (default: enough for CALIB_TOKENS tokens, at most CALIB_IMAGES)."""
    if path is None:
        return make_dataset(count or default_calibration_count(cfg), cfg, CALIB_SEED).images
    return checked_images(_load_npy(Path(path)), cfg, "calibration images")


def default_calibration_count(cfg: ModelConfig) -> int:
    return min(CALIB_IMAGES, -(-CALIB_TOKENS // cfg.num_tokens))


def _load_npy(path: Path, what: str = "calibration file") -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path} is not a readable .npy array ({type(exc).__name__})") from None
    if not isinstance(data, np.ndarray):
        data.close()
        raise ValueError(f"{path} is an .npz archive: save the images as one array with np.save")
    return data


def checked_images(images, cfg: ModelConfig, what: str = "images", single: bool = False) -> np.ndarray:
    """`images` as float32 [N,C,H,W] with N >= 1 and every value finite, else a one-line ValueError.

    Only floating point is accepted: integer pixels (uint8 0..255) would silently bypass the
    normalisation the model was trained with, so they are rejected rather than guessed at.
    With `single`, one [C,H,W] image is taken as a batch of one.
    """
    try:
        arr = np.asarray(images)
    except ValueError:
        raise ValueError(f"{what} are not a regular array (ragged nested lists?)") from None
    if arr.dtype.kind != "f":
        raise ValueError(f"{what} must be floating point (float16/32/64) in the model's input "
                         f"normalisation, not {arr.dtype}; convert integer pixels the way the model was "
                         f"trained, e.g. x.astype(np.float32) / 255 then normalise")
    arr = _batch_shaped(arr, cfg, what, single)
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, reported below
        arr = arr.astype(np.float32)
    bad = ~np.isfinite(arr)
    if bad.any():
        first = int(np.argwhere(bad)[0][0])
        raise ValueError(f"{what} contain {int(bad.sum())} NaN or inf value(s) (of {arr.size}, as float32); "
                         f"the first is in image {first}")
    return arr


def _batch_shaped(arr: np.ndarray, cfg: ModelConfig, what: str, single: bool) -> np.ndarray:
    chw = (cfg.in_chans, *cfg.image_hw)
    if single and arr.shape == chw:
        return arr[None]
    wanted = f"[N, {', '.join(map(str, chw))}]" + (f" or [{', '.join(map(str, chw))}]" if single else "")
    if arr.ndim == 4 and arr.shape[1:] == chw:
        if arr.shape[0] == 0:
            raise ValueError(f"{what}: the batch is empty (shape {list(arr.shape)}); at least one image is needed")
        return arr
    hwc = chw[1:] + chw[:1]
    if arr.ndim in (3, 4) and arr.shape[-3:] == hwc and hwc != chw:
        raise ValueError(f"{what} look channels-last {list(arr.shape)}; the model takes channels-first "
                         f"{wanted}: use x.transpose(0, 3, 1, 2) (or (2, 0, 1) for one image)")
    raise ValueError(f"{what} must have shape {wanted}, got {list(arr.shape)}")


def checked_task(task, cfg: ModelConfig) -> int:
    """`task` as an int in range, else a one-line ValueError (bools and floats are refused)."""
    n = len(cfg.tasks)
    names = ", ".join(f"{i}={t.name}" for i, t in enumerate(cfg.tasks))
    if isinstance(task, (bool, np.bool_)) or not isinstance(task, (int, np.integer)):
        raise ValueError(f"task must be an int index ({names}), got {task!r} of type {type(task).__name__}")
    if not 0 <= task < n:
        raise ValueError(f"task {int(task)} out of range: the model has {n} tasks ({names})")
    return int(task)


def task_index(task, cfg: ModelConfig) -> int:
    """A task given as its index (an int or digits, e.g. from the command line) or its name."""
    if isinstance(task, str):
        names = [t.name for t in cfg.tasks]
        if task in names:
            return names.index(task)
        if not task.strip().isdigit():
            raise ValueError(f"unknown task {task!r}: the model's tasks are "
                             + ", ".join(f"{i}={n}" for i, n in enumerate(names)))
        task = int(task)
    return checked_task(task, cfg)


def checked_count(value, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be an int >= 1, got {value!r}")
    return int(value)


@dataclass
class Design:
    """Everything generated for one model on one board."""

    model: M3ViT
    qm: QuantModel
    prog: Program
    board: Board
    tiling: Tiling
    _scratch: Path | None = field(default=None, init=False, repr=False, compare=False)

    def predict(self, images: np.ndarray, task: int, backend: str = "golden", project: str | Path | None = None,
                **options) -> np.ndarray:
        """What the accelerator returns, dequantised: backbone tokens [B, T, D].

        `images`: float [B, C, H, W] (channels-first, as the model was trained), or one [C, H, W]
        image, which gives [T, D].  `task`: the task index.  `backend`: "golden" (the
        bit-exact NumPy model), "csim" (the compiled HLS C++) or "cosim" (the RTL), the last two on
        `project` (a project generated from this design) or on one written to a temporary folder
        on first use; `options` go to the runner (csim: timeout; cosim: simulator, timeout_cycles).
        A csim/cosim result that is not bit-exact with the golden model raises AssertionError.
        Bad input raises a one-line ValueError.
        """
        cfg = self.qm.cfg
        task = checked_task(task, cfg)
        batch = checked_images(images, cfg, "images", single=True)
        if backend == "golden":
            x_q = quantize_input(batch, self.qm)
            out = np.stack([dequantize_output(self.qm, run_golden(self.qm, x, task).output) for x in x_q])
        else:
            out = self._simulated(batch, task, backend, project, options)
        return out if np.ndim(images) == 4 else out[0]

    def uarch(self):
        """The compute unit the kernels are generated as: the tiling's array on this board."""
        return self.tiling.uarch

    def _simulated(self, batch: np.ndarray, task: int, backend: str, project, options: dict) -> np.ndarray:
        from .sim.predict import BACKENDS, ProjectModel, predict_project

        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of golden, {', '.join(BACKENDS)}, got {backend!r}")
        project = Path(project) if project is not None else self._scratch_project()
        with tempfile.TemporaryDirectory(prefix="codesign-predict-") as tmp:
            res = predict_project(project, batch, [task], backend, Path(tmp) / "predict",
                                  ProjectModel(self.model, self.qm, self.prog), **options)
        if not res.all_bit_exact:
            bad = next(v for v in res.vectors if not v.bit_exact)
            raise AssertionError(f"{backend} is not bit-exact with the golden model: {bad.id} first differs at "
                                 f"{bad.first_mismatch}")
        return res.tokens[task]

    def _scratch_project(self) -> Path:
        """This design's project in a temporary folder (removed with the design), built once, so that
        repeated predictions reuse its compiled testbench and simulator build."""
        if self._scratch is None:
            root = Path(tempfile.mkdtemp(prefix="codesign-design-"))
            weakref.finalize(self, shutil.rmtree, root, True)
            self._scratch = generate(self, root / "project", images=1)
        return self._scratch

    def profile(self, path: str | Path | None = None):
        """hls4ml's profiling.numerical: per layer, weights and calibration activations (log2|x| box
        plots) against the range of their integer formats; a matplotlib Figure, also saved as
        PNG to `path` when given (generate writes reports/profile.png)."""
        from .report.profiling import profile_figure

        fig = profile_figure(self.model, self.qm)
        if path is not None:
            fig.savefig(Path(path), dpi=80)
        return fig

    def estimate(self, images: np.ndarray | None = None, task: int = 0) -> Estimate:
        counts = None
        if images is not None:
            task = checked_task(task, self.qm.cfg)
            first = checked_images(images, self.qm.cfg, "images", single=True)[:1]
            counts = expert_counts_from_golden(self.qm, quantize_input(first, self.qm)[0], task)
        return estimate_design(self.prog, self.tiling, self.board, counts)


def convert(model, board: str | Board = "zcu104", wbits: int = 8, abits: int = 8, calib=None,
            config=None, precision: Precision | str | Path | None = None, array: tuple[int, int] | None = None,
            weight_ports: int | None = None, clock_mhz: float | None = None) -> Design:
    """Like hls4ml's convert_from_pytorch_model: quantise, compile and size the design for a board.

    `precision`: per-layer formats, a codesign.quant.precision.Precision or the path of a YAML
    config (`codesign config`); it replaces wbits / abits (its `default` covers unlisted layers).
    `array` (P, Q): this MAC array instead of the fastest one that fits (a ResourceError when it
    does not fit); `weight_ports`, `clock_mhz`: the board's weight masters and kernel clock
    overridden (codesign explore writes its chosen point as these)."""
    model = load(model, config)
    precision = as_precision(precision, model.cfg)  # a bad config fails before the calibration
    board = board if isinstance(board, Board) else load_board(board)
    board = board_variant(board, weight_ports, clock_mhz)
    if isinstance(calib, np.ndarray):
        images = checked_images(calib, model.cfg, "calibration images")
    else:
        images = calibration_images(model.cfg, path=calib)
    qm = quantize_model(model, images, wbits=wbits, abits=abits, precision=precision)
    prog = compile_program(qm)
    return Design(model, qm, prog, board, design_tiling(prog, board, array))


def design_tiling(prog: Program, board: Board, array: tuple[int, int] | None = None) -> Tiling:
    """The fastest fitting array, or the given (P, Q) checked against the board and the hardware rules."""
    if array is None:
        return choose_tiling(prog, board)
    P, Q = (checked_count(n, what) for n, what in zip(array, ("array rows P", "array columns Q")))
    return fixed_tiling(prog, board, P, Q)


def precision_config(model, wbits: int = 8, abits: int = 8, precision: Precision | str | Path | None = None,
                     about: str = "") -> str:
    """The YAML `codesign config` prints: every layer's format (uniform wbits / abits, or
    `precision` completed) with the accumulator width it needs. No calibration: the widths and
    the model's shapes decide everything in it."""
    model = load(model)
    p = as_precision(precision, model.cfg) or Precision.uniform(wbits, abits)
    return dump_precision(complete(model.cfg, p), about)


def vector_data(cfg: ModelConfig, images: int) -> SyntheticData:
    return make_dataset(images, cfg, VECTOR_SEED)


RTL_NOT_GENERATED = "NOT_GENERATED.txt"  # rtl/ of a project whose program the RTL core refuses


def _write_project(out: Path, design: Design, data: SyntheticData, project_name: str,
                   rtl_array: tuple[int, int] | None = None) -> None:
    from .emit.hls import render_hls
    from .emit.host import write_host_files
    from .frontend.loader import save_model
    from .rtl.project import render_design_rtl, write_records

    x_q = quantize_input(data.images, design.qm)
    vectors = [Vector(f"img{i}_task{t}", t, x_q[i], image=i) for i in range(len(data))
               for t in range(design.qm.cfg.num_tasks)]
    write_data_dir(out / "data", design.prog, design.qm, vectors)
    write_host_files(out / "data", design.model, design.qm)
    np.savez_compressed(out / "data" / "images.npz", images=data.images, seg=data.seg, depth=data.depth)
    render_hls(out, design.prog, design.board, design.uarch(), project_name=project_name)
    rtl_refused, rtl_record = None, None
    try:
        rtl_record = render_design_rtl(out, design, rtl_array)
    except ValueError as exc:  # a limit of the RTL core (e.g. its score index): the project is HLS only
        rtl_refused = str(exc)
        (out / "rtl").mkdir(exist_ok=True)
        (out / "rtl" / RTL_NOT_GENERATED).write_text(f"The RTL core was not generated: {rtl_refused}\n")
    save_model(design.model, out / "model")
    est = design.estimate(data.images, 0)
    routing = ROUTING_IMAGE.format(task=0)
    (out / "reports").mkdir(exist_ok=True)
    (out / "reports" / "estimate.json").write_text(json.dumps(estimate_json(est, routing), indent=1))
    (out / "reports" / "estimate.txt").write_text(estimate_text(est, routing))
    write_records(out, rtl_record)
    design.profile(out / "reports" / PROFILE_FILE)
    project = {"board": design.board.name, "clock_mhz": design.board.clock_mhz,
               "weight_ports": design.board.memory.weight_ports, "array": [design.tiling.P, design.tiling.Q],
               "wbits": design.qm.wbits, "abits": design.qm.abits, "precision": design.qm.precision.to_dict(),
               "output_scale": design.qm.output_scale, "model_dir": "model", "scales": design.qm.scales,
               "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if rtl_refused:
        project["rtl_not_generated"] = rtl_refused
    (out / "project.json").write_text(json.dumps(project, indent=1))


def generate(model, out_dir: str | Path, board: str | Board = "zcu104", images: int = 2, force: bool = False,
             wbits: int = 8, abits: int = 8, calib=None, config=None, project_name: str = "codesign",
             inputs=(), precision: Precision | str | Path | None = None, array: tuple[int, int] | None = None,
             weight_ports: int | None = None, clock_mhz: float | None = None,
             rtl_array: tuple[int, int] | None = None) -> Path:
    """Write a complete project (HLS C++, RTL, Tcl, host driver, data, reports) to `out_dir`.

    The RTL is built at the tiling's P x Q, weight masters and bus; `rtl_array` (P, Q): a smaller
    twin with the same microarchitecture for fast simulation (a one-line ValueError when the core
    cannot build it). An existing `out_dir` is replaced only with `force`, and only when it is a
    codesign project that holds none of the files read (`model`, `config`, `calib` and any other
    `inputs` paths)."""
    from .rtl.project import check_rtl_array

    images = checked_count(images, "images (test images per task)")
    inputs = [*inputs, *(p for p in (model, config, calib, precision) if isinstance(p, (str, os.PathLike)))]
    checked_project_target(out_dir, force, inputs)  # before the slow conversion, not after it
    if isinstance(model, Design) and precision is not None:
        raise ValueError("precision applies to a model, not to a converted Design (pass it to convert)")
    design = model if isinstance(model, Design) else convert(model, board, wbits, abits, calib, config, precision,
                                                             array, weight_ports, clock_mhz)
    if rtl_array is not None:
        rtl_array = tuple(checked_count(n, what) for n, what in zip(rtl_array, ("RTL array rows P", "RTL array columns Q")))
    check_rtl_array(design, rtl_array)
    data = vector_data(design.qm.cfg, images)
    with atomic_dir(Path(out_dir), force, project=True, protect=inputs) as tmp:
        _write_project(tmp, design, data, project_name, rtl_array)
    return Path(out_dir)


def csim(project_dir: str | Path, dump_dir: str | Path | None = None, first: int | None = None,
         timeout: float | None = None, progress: bool = False):
    """g++ C simulation of the project's testbench; `first=N` runs only the first N vectors of each task.

    `timeout`: seconds for the testbench run (default: grows with the program, see
    codesign.sim.csim.run_timeout); `progress`: print each build step and vector on stderr."""
    from .sim.csim import run_csim

    if first is not None:
        first = checked_count(first, "first")
    return run_csim(Path(project_dir), dump_dir=None if dump_dir is None else Path(dump_dir), first=first,
                    timeout=timeout, progress=stderr_progress if progress else None)


def stderr_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def predict(project_dir: str | Path, images, task=None, backend: str = "csim", out_dir: str | Path | None = None,
            progress: bool = False, **options):
    """A project's csim or cosim on the user's own images (hls4ml's predict on the compiled model).

    `images`: float [N, C, H, W] in the model's input normalisation, or a .npy file of them;
    `task`: an index or name (default every task). The vectors and results go to `out_dir`
    (default PROJECT/predict/<timestamp>), never into the project's data/. Returns a
    codesign.sim.predict.PredictResult: bit-exactness per vector, error vs the float model per task."""
    from .sim.predict import checked_predict_dir, load_project_model, predict_project

    project_dir = Path(project_dir)
    out = checked_predict_dir(project_dir.resolve(), None if out_dir is None else Path(out_dir))
    pm = load_project_model(project_dir)
    cfg = pm.qm.cfg
    if isinstance(images, (str, os.PathLike)):
        images = _load_npy(Path(images), "images file")
    batch = checked_images(images, cfg, "images", single=True)
    tasks = None if task is None else [task_index(task, cfg)]
    if progress:
        options["progress"] = stderr_progress
    return predict_project(project_dir, batch, tasks, backend, out, pm, **options)


def cosim(project_dir: str | Path, simulator: str = "verilator", waves: bool = False, vectors=None,
          timeout_cycles: int | None = None, rtl_dir: str | Path | None = None, memory=None):
    """RTL co-simulation; `timeout_cycles` limits each run (default: 4x a rough estimate + 100k);
    `rtl_dir` simulates other RTL with the same ports (a Vitis HLS export's verilog/) instead of rtl/;
    `memory`: the memory model (default: the project's board DDR latency and bandwidth; "ideal":
    none; a board name)."""
    from .report.cycles import clear_cycles_report
    from .sim.cosim import run_cosim

    if timeout_cycles is not None:
        timeout_cycles = checked_count(timeout_cycles, "timeout_cycles")
    clear_cycles_report(project_dir)  # written again by cycles_report for this run only
    return run_cosim(Path(project_dir), simulator=simulator, waves=waves, vectors=vectors,
                     timeout_cycles=timeout_cycles, rtl_dir=None if rtl_dir is None else Path(rtl_dir),
                     memory=memory)


def cycles_report(project_dir: str | Path, cosim_result, rtl_dir: str | Path | None = None) -> str | None:
    """Simulated cycles per layer next to the HLS estimate and the rooflines (reports/cycles.txt)."""
    from .report.cycles import cycles_report as report

    return report(Path(project_dir), cosim_result, None if rtl_dir is None else Path(rtl_dir))


def synth(project_dir: str | Path, rtl_dir: str | Path | None = None, sizes="auto", mode: str = "per-unit",
          timeout: float = 1800.0, progress: bool = False, skip_units: tuple[str, ...] = ()):
    """yosys synth_xilinx of the project's core at the board's array, or fitted to it from reduced
    arrays (codesign.report.synth); writes reports/synth.{json,txt}; returns the SynthReport
    (`fits_board`, `figures`, `statement`). `sizes`: 'auto', 'board' or a list of (P, Q);
    `skip_units`: units the per-unit mode does not synthesize (their model figures stand in)."""
    from .report.synth import synth_project

    return synth_project(Path(project_dir), None if rtl_dir is None else Path(rtl_dir), sizes=sizes, mode=mode,
                         timeout_s=timeout, progress=stderr_progress if progress else None,
                         skip_units=tuple(skip_units))


def cosim_timeouts(project_dir: str | Path, result) -> list[str]:
    """One line per timed-out run of `result`: the limit, the cycle reached, the last retired instruction."""
    project_dir = Path(project_dir).resolve()
    late = [v for v in result.vectors if v.status == "timeout"]
    if not late:
        return []
    limit = _job_timeout(project_dir / "cosim" / "job" / "job.json")
    last = _last_retired(project_dir, result.simulator)
    return [f"{v.id} timed out: limit {limit} cycles, reached {v.cycles}; last retired: {last}" for v in late]


def _job_timeout(job_file: Path) -> str:
    try:
        return str(json.loads(job_file.read_text())["timeout_cycles"])
    except (OSError, ValueError, KeyError):
        return "?"


def _last_retired(project_dir: Path, simulator: str) -> str:
    """From the core's instruction trace: the runs before a timeout end with an "E" line, so the
    "I pc opcode cycles" lines after the last "E" belong to the run that timed out."""
    from .emit.data import load_manifest
    from .sim.cosim import TRACE_FILE

    trace = project_dir / "cosim" / f"sim_build_{simulator}" / TRACE_FILE
    if not trace.is_file():
        return "unknown (no instruction trace)"
    pending = []
    for line in trace.read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["E"]:
            pending = []
        elif parts[:1] == ["I"] and len(parts) == 4:
            pending.append(int(parts[1]))
    if not pending:
        return "none (the first instruction did not finish)"
    pc = pending[-1]
    instrs = load_manifest(project_dir).get("instructions", [])
    what = f"{instrs[pc]['op']} {instrs[pc]['layer']}" if pc < len(instrs) else "?"
    return f"instruction {pc} ({what}) after {len(pending)} instructions"


def compare(project_dir: str | Path, results_dir: str | Path, out_dir: str | Path | None = None):
    from .report.compare import compare_results

    return compare_results(Path(project_dir), Path(results_dir), None if out_dir is None else Path(out_dir))


def explore(model="default", out_dir: str | Path = "explore", boards=("zcu104",), **options):
    """`codesign explore`: sweep precision x MAC array x weight ports x clock x boards; Pareto
    front, plots and the chosen point's generate command in `out_dir` (resumed when an earlier
    explore wrote it). Options as the CLI's: wbits, abits (lists), arrays [(P, Q)], auto_arrays,
    weight_ports, clocks (lists), per_layer, steps, min_accuracy, eval_images, calib, config,
    workers, dask (scheduler address or distributed.Client), verify, verify_cosim, force, progress.
    Returns codesign.explore.ExploreResult (points, front, chosen, generate, stats, verified)."""
    from .explore import explore as run_explore

    return run_explore(model, out_dir, boards, **options)
