"""codesign explore: the front is non-dominated, resumption skips done points (also after a kill),
a changed point result changes the front, the Dask path gives the pool path's points, and the
chosen point's generate command builds that point."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from codesign.cli import main
from codesign.explore import explore
from codesign.explore.pareto import OBJECTIVES, pareto_front, ranked
from codesign.explore.store import RESULTS_FILE
from codesign.fsutil import PROJECT_MARKER

REPO = Path(__file__).resolve().parents[1]
# Small sweep: 2 x 2 widths, 3 automatic arrays, 2 boards, 8 held-out images.
SWEEP = dict(boards=["zcu104", "kv260"], wbits=[6, 8], abits=[6, 8], auto_arrays=3, eval_images=8, workers=1)
TIMING = ("seconds",)


def comparable(points: list[dict]) -> list[dict]:
    """Points without their timings, keyed: what must be identical between runs and engines."""
    return sorted(({k: v for k, v in p.items() if k not in TIMING} for p in points), key=lambda p: p["key"])


def dominates(a: dict, b: dict) -> bool:
    """Written out per objective, independently of pareto.dominated's matrix form."""
    better_or_equal = (a["accuracy"] >= b["accuracy"] and a["latency_ms_per_task"] <= b["latency_ms_per_task"]
                       and a["dsp"] <= b["dsp"])
    strictly = (a["accuracy"] > b["accuracy"] or a["latency_ms_per_task"] < b["latency_ms_per_task"]
                or a["dsp"] < b["dsp"])
    return better_or_equal and strictly


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The sweep through the Python API (README's `codesign.api.explore`)."""
    from codesign import api

    out = tmp_path_factory.mktemp("explore") / "sweep"
    return api.explore("default", out, SWEEP["boards"], **{k: v for k, v in SWEEP.items() if k != "boards"})


def test_every_point_is_costed_on_every_board(run):
    assert run.stats["evaluated"] == len(run.points) == run.stats["points"] > 0
    assert {p["board"] for p in run.points} == {"zcu104", "kv260"}
    for prec in {(p["wbits"], p["abits"]) for p in run.points}:  # a precision's shapes on every board
        of_prec = [p for p in run.points if (p["wbits"], p["abits"]) == prec]
        shapes = [{(p["P"], p["Q"]) for p in of_prec if p["board"] == board} for board in ("zcu104", "kv260")]
        assert shapes[0] == shapes[1] and len(shapes[0]) >= 3
    assert {(p["wbits"], p["abits"]) for p in run.points} == {(6, 6), (6, 8), (8, 6), (8, 8)}
    for p in run.points:
        assert p["fits"] == (p["why_not"] == "")
        assert set(p["latency_ms"]) == {"semseg", "depth"} and p["latency_ms_per_task"] > 0
        assert p["fits"] == all(p[r] <= int(0.8 * p[f"{r}_board"]) for r in ("dsp", "ff", "lut", "bram36", "uram"))
    assert any(not p["fits"] for p in run.points)  # zcu104's largest array does not fit the kv260
    # 8-bit weights and activations are closer to float than 6-bit ones (one precision, every array)
    acc = {(p["wbits"], p["abits"]): p["accuracy"] for p in run.points}
    assert acc[(8, 8)] > acc[(6, 6)] and 0.5 < acc[(8, 8)] <= 1.05


def test_front_is_non_dominated_and_covers_every_fitting_point(run):
    fitting = [p for p in run.points if p["fits"]]
    front_keys = {p["key"] for p in run.front}
    assert run.front and front_keys <= {p["key"] for p in fitting}
    for f in run.front:
        assert not any(dominates(p, f) for p in fitting), f["key"]
    for p in fitting:
        if p["key"] not in front_keys:
            assert any(dominates(f, p) for f in run.front), p["key"]
    assert run.chosen is run.front[0]
    assert run.chosen["accuracy"] >= 0.95
    assert run.chosen["latency_ms_per_task"] == min(p["latency_ms_per_task"] for p in run.front
                                                    if p["accuracy"] >= 0.95)


def test_output_files(run):
    out = run.out_dir
    report = json.loads((out / "pareto.json").read_text())
    assert [p["key"] for p in report["front"]] == [p["key"] for p in run.front]
    assert report["chosen"]["key"] == run.chosen["key"]
    points_csv = (out / "points.csv").read_text().splitlines()
    assert len(points_csv) == 1 + len(run.points)
    assert len((out / "pareto.csv").read_text().splitlines()) == 1 + len(run.front)
    header = points_csv[0].split(",")
    on_front = [row.split(",")[header.index("on_front")] for row in points_csv[1:]]
    assert on_front.count("True") == len(run.front)
    for png in ("accuracy_latency.png", "accuracy_latency_zcu104.png", "accuracy_latency_kv260.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    script = (out / "generate_chosen.sh").read_text()
    assert f"--array {run.chosen['P']}x{run.chosen['Q']}" in script and os.access(out / "generate_chosen.sh", os.X_OK)
    assert json.loads((out / PROJECT_MARKER).read_text())["kind"] == "explore"


def test_resume_skips_done_points_and_evaluates_only_new_ones(run, tmp_path):
    again = explore("default", run.out_dir, **SWEEP)
    assert again.stats["evaluated"] == 0 and again.stats["reused"] == len(run.points)
    assert comparable(again.points) == comparable(run.points)
    assert [p["key"] for p in again.front] == [p["key"] for p in run.front]
    wider = explore("default", run.out_dir, **{**SWEEP, "wbits": [4, 6, 8]})
    assert wider.stats["reused"] == len(run.points)
    assert wider.stats["evaluated"] == len(run.points) // 2  # one new weight width of two
    assert {p["wbits"] for p in wider.points} == {4, 6, 8}


def test_a_changed_point_result_changes_the_front(run, tmp_path):
    """The front is computed from the results file: a dominated point made the fastest and smallest joins it."""
    out = tmp_path / "mutated"
    shutil.copytree(run.out_dir, out)
    base = explore("default", out, **SWEEP)
    assert base.stats["evaluated"] == 0 and comparable(base.points) == comparable(run.points)
    front = {p["key"] for p in base.front}
    victim = max((p for p in base.points if p["fits"] and p["key"] not in front), key=lambda p: p["accuracy"])
    lines = (out / RESULTS_FILE).read_text().splitlines()
    edited = []
    for line in lines:
        batch = json.loads(line)
        for p in batch["points"]:
            if p["key"] == victim["key"]:
                p["latency_ms_per_task"] = 1e-6
        edited.append(json.dumps(batch))
    (out / RESULTS_FILE).write_text("\n".join(edited) + "\n")
    after = explore("default", out, **SWEEP)
    assert after.stats["evaluated"] == 0
    assert victim["key"] in {p["key"] for p in after.front}
    if victim["accuracy"] >= 0.95:
        assert after.chosen["key"] == victim["key"]
    # and drops every front point it now dominates: those not more accurate
    gone = {p["key"] for p in base.front if dominates({**victim, "latency_ms_per_task": 1e-6, "dsp": 1}, p)}
    assert gone and not gone & {p["key"] for p in after.front}


def test_pareto_front_by_hand():
    def pt(key, acc, ms, dsp, fits=True):
        return {"key": key, "accuracy": acc, "latency_ms_per_task": ms, "dsp": dsp, "fits": fits}

    pts = [pt("a", 0.99, 1.0, 100), pt("b", 0.98, 0.5, 100), pt("c", 0.97, 0.6, 100),  # c: b is better
           pt("d", 0.90, 0.5, 50), pt("e", 1.0, 0.1, 10, fits=False), pt("f", 0.99, 1.0, 100)]  # f ties a
    assert [p["key"] for p in pareto_front(pts)] == ["d", "b", "a", "f"]
    assert [p["key"] for p in ranked(pareto_front(pts), 0.95)] == ["b", "a", "f", "d"]
    assert [p["key"] for p in ranked(pareto_front(pts), 0.995)] == ["a", "f", "b", "d"]
    assert [name for name, _ in OBJECTIVES] == ["accuracy", "latency_ms_per_task", "dsp"]


def test_dask_cluster_gives_the_pool_path_points(run, tmp_path):
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0")
    with cluster, distributed.Client(cluster) as client:
        res = explore("default", tmp_path / "dask", **{**SWEEP, "wbits": [6], "workers": None}, dask=client)
    assert res.stats["engine"].startswith("Dask cluster at tcp://") and res.stats["evaluated"] == len(res.points)
    # the pool run's points of the same precisions: same keys, same records
    assert comparable(res.points) == comparable([p for p in run.points if p["wbits"] == 6])


def test_the_chosen_generate_command_builds_the_chosen_point(run, tmp_path):
    cmd = shlex.split((run.out_dir / "generate_chosen.sh").read_text().splitlines()[-1])
    assert cmd[:2] == ["codesign", "generate"]
    out = tmp_path / "chosen"
    argv = cmd[1:]
    argv[argv.index("-o") + 1] = str(out)
    assert main(argv + ["--images", "1"]) == 0
    project = json.loads((out / "project.json").read_text())
    c = run.chosen
    assert (project["board"], project["array"], project["weight_ports"], project["clock_mhz"]) == \
        (c["board"], [c["P"], c["Q"]], c["weight_ports"], c["clock_mhz"])
    assert (project["wbits"], project["abits"]) == (c["wbits"], c["abits"])
    est = json.loads((out / "reports" / "estimate.json").read_text())
    used = {r: v["used"] for r, v in est["resources"].items()}
    assert used == {r: c[r] for r in ("dsp", "ff", "lut", "bram36", "uram")}


# A precision takes ~0.5 s at 64 images (0.05 s at 4): the run outlasts the two lines the kill
# waits for by seconds, not by milliseconds, on a loaded machine too.
KILLED_RUN_IMAGES = 64


def _terminal_sigint() -> None:
    """In the child before exec: SIGINT as a terminal's foreground job has it. A suite started in
    the background by a non-interactive shell (`cmd &`) inherits SIGINT ignored, and so would the
    explore run, which then never sees the Ctrl-C this test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_a_killed_run_continues_where_it_stopped(tmp_path, sig):
    out = tmp_path / "killed"
    argv = [sys.executable, "-m", "codesign.cli", "explore", "default", "-o", str(out), "--wbits", "2,3,4,5,6,7,8",
            "--abits", "8", "--auto-arrays", "2", "--eval-images", str(KILLED_RUN_IMAGES), "--workers", "1", "-q"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=_terminal_sigint)
    results = out / RESULTS_FILE
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if results.is_file() and len(results.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, sig)  # the whole process group, as a terminal's Ctrl-C does
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and err.decode().strip().splitlines()[-1] == "codesign: interrupted", err
        assert b"Traceback" not in err
    done_lines = results.read_text().splitlines()
    done = sum(len(json.loads(line)["points"]) for line in done_lines)
    assert 2 <= len(done_lines) < 7
    with open(results, "a") as f:
        f.write('{"precision": {"key": "torn')  # a line the kill cut short
    res = explore("default", out, boards=["zcu104"], wbits=range(2, 9), abits=[8], auto_arrays=2,
                  eval_images=KILLED_RUN_IMAGES, workers=1)
    assert res.stats["reused"] == done and res.stats["evaluated"] == len(res.points) - done > 0
    assert res.stats["precisions"] == 7
    assert results.read_text().endswith("\n") and len(results.read_text().splitlines()) == 7


# ---------------------------------------------------------------- command line

def test_cli_explore_runs_and_resumes(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["explore", "default", "-o", str(out), "--board", "zcu104", "--wbits", "8", "--abits", "8",
            "--array", "9x64,17x128", "--weight-ports", "1,4", "--clock", "150,200", "--eval-images", "4", "-q"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "explore: 8 points (8 evaluated, 0 from results.jsonl)" in text and "chosen: zcu104" in text
    points = (out / "points.csv").read_text().splitlines()
    header = points[0].split(",")
    combos = {tuple(r.split(",")[header.index(c)] for c in ("P", "Q", "weight_ports", "clock_mhz")) for r in points[1:]}
    assert combos == {(P, Q, w, c) for P, Q in (("9", "64"), ("17", "128")) for w in ("1", "4")
                      for c in ("150.0", "200.0")}
    assert main(argv) == 0
    assert "explore: 8 points (0 evaluated, 8 from results.jsonl)" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--wbits", "1"], "wbits: integer width must be in 2..16"),
    (["--board", "nosuch"], "unknown board"),
    (["--verify-cosim"], "--verify-cosim needs --verify"),
    (["--weight-ports", "9"], "HP ports"),
    (["--clock", "5000"], "clocks must be in"),
    (["--array", "200x64"], "arrays are at most"),
])
def test_cli_explore_bad_input_is_one_line_exit_2(tmp_path, capsys, extra, message):
    assert main(["explore", "default", "-o", str(tmp_path / "x"), "-q", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("codesign explore: error: ") and message in err, err
    assert not (tmp_path / "x").exists()


def test_cli_explore_never_touches_a_folder_it_did_not_write(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    for force in ([], ["--force"]):
        assert main(["explore", "default", "-o", str(mine), "-q", *force]) == 2
        assert "is not a codesign folder" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_cli_explore_unreachable_dask_scheduler(tmp_path, capsys, monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setattr("codesign.explore.engine.DASK_CONNECT_TIMEOUT", "1s")
    argv = ["explore", "default", "-o", str(tmp_path / "d"), "--wbits", "8", "--abits", "8", "--eval-images", "2",
            "--dask", "tcp://127.0.0.1:9", "-q"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in err, err


# ---------------------------------------------------------------- per-layer search and --verify

@pytest.fixture(scope="module")
def greedy(tmp_path_factory):
    out = tmp_path_factory.mktemp("greedy") / "sweep"
    return explore("default", out, boards=["zcu104"], wbits=[4, 6, 8], abits=[8], arrays=[(17, 64)], eval_images=8,
                   per_layer=True, steps=2, min_accuracy=0.95, workers=2)


def test_greedy_per_layer_search_lowers_one_layer_per_step_above_the_floor(greedy):
    from codesign.model.zoo import load_default_model
    from codesign.quant.precision import layer_names, load_precision

    names = layer_names(load_default_model().cfg)
    per_layer = [p for p in greedy.points if p["per_layer"]]
    uniform = {(p["wbits"], p["abits"]): p["accuracy"] for p in greedy.points if not p["per_layer"]}
    assert set(uniform) == {(4, 8), (6, 8), (8, 8)} and per_layer
    start = min((k for k, acc in uniform.items() if acc >= 0.95), key=sum)  # the narrowest meeting the floor
    # step 1's candidates: start with one weighted layer one grid width narrower (abits has one width)
    step1 = [p for p in per_layer if len(load_precision(p["precision"], names)) == 1]
    assert step1 and all((p["wbits"], p["abits"]) == start for p in step1)
    lowered = {name: fmt.wbits for p in step1 for name, fmt in load_precision(p["precision"], names).items()}
    assert set(lowered.values()) == {max(w for w in (4, 6, 8) if w < start[0])}
    accepted = max((p for p in step1 if p["accuracy"] >= 0.95), key=lambda p: (p["accuracy"], -p["weight_bits"]))
    assert accepted["weight_bits"] < next(p["weight_bits"] for p in greedy.points if not p["per_layer"]
                                          and (p["wbits"], p["abits"]) == start)
    # step 2's candidates all start from the accepted step-1 precision
    formats = [load_precision(p["precision"], names) for p in per_layer]
    step2 = [f for f in formats if len(f) == 2]
    first = load_precision(accepted["precision"], names)
    assert step2 and all(set(first) <= set(p) and all(p[n] == first[n] for n in first) for p in step2)


def test_a_per_layer_point_is_what_generate_builds(greedy):
    """The sweep's integer model from cached ranges = quantize_model's, for a per-layer point."""
    from codesign.explore.context import build_context
    from codesign.explore.verify import point_design
    from codesign.boards import load_board
    from codesign import api
    from codesign.explore.context import PointPrecision, quantize_point
    from codesign.schedule.program import compile_program

    p = next(p for p in greedy.front if p["per_layer"]) if any(q["per_layer"] for q in greedy.front) else \
        next(p for p in greedy.points if p["per_layer"])
    model = api.load("default")
    calib = api.calibration_images(model.cfg)
    ctx = build_context(model, calib, 2)
    design = point_design(ctx, p, [load_board("zcu104")], calib)
    swept = compile_program(quantize_point(ctx, PointPrecision(p["wbits"], p["abits"], p["precision"])))
    assert bytes(design.prog.code) == bytes(swept.code) and bytes(design.prog.wgt) == bytes(swept.wgt)
    assert (design.tiling.P, design.tiling.Q) == (p["P"], p["Q"]) and design.tiling.used["dsp"] == p["dsp"]


def test_verify_mismatch_exits_1(tmp_path, capsys, monkeypatch):
    from types import SimpleNamespace

    from codesign import api

    monkeypatch.setattr(api, "csim", lambda project: SimpleNamespace(failed={"img0_task0": "b1.mlp"}))
    argv = ["explore", "default", "-o", str(tmp_path / "v"), "--wbits", "8", "--abits", "8", "--array", "17x64",
            "--eval-images", "2", "--verify", "1", "-q"]
    assert main(argv) == 1
    assert "csim MISMATCH (img0_task0 at b1.mlp)" in capsys.readouterr().out
    verified = json.loads((tmp_path / "v" / "pareto.json").read_text())["verified"]
    assert [v["bit_exact"] for v in verified] == [False]


@pytest.mark.slow
def test_verify_runs_csim_and_cosim_on_the_best_points(tmp_path, capsys):
    argv = ["explore", "default", "-o", str(tmp_path / "v"), "--wbits", "6,8", "--abits", "8", "--array", "17x64",
            "--eval-images", "2", "--verify", "1", "--verify-cosim", "-q"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "csim bit-exact, cosim bit-exact" in out
    verified = json.loads((tmp_path / "v" / "pareto.json").read_text())["verified"]
    assert len(verified) == 1 and verified[0]["bit_exact"]


def test_a_point_streams_what_its_banks_cannot_hold_as_generate_does():
    """A 4,097-token program on kv260 at 1x32: banks holding the largest tensor overrun its BRAM,
    the largest bank that fits streams the rest; the point is that tiling, as `generate --array`'s.
    (pynq-z2 at 4x16 was the board: since the resource model counts the vector unit's lanes and the
    sequencer as yosys measures them, no array fits its LUT budget; kv260 at 4x32, until the
    sequencer was refitted to the whole core synthesized at 16x64: now it overruns kv260's LUT.)"""
    from codesign.boards import load_board
    from codesign.explore.point import hardware_point
    from codesign.model.config import ModelConfig
    from codesign.schedule.tiling import Budget, build_tiling, first_overrun, fixed_tiling
    from codesign.testing import make_test_design

    cfg = ModelConfig(img_size=(512, 512), patch_size=8, embed_dim=32, depth=2, num_heads=1, mlp_ratio=2.0,
                      num_experts=4, top_k=2, moe_blocks=(1,))
    prog, board = make_test_design(cfg, images=1).prog, load_board("kv260")
    assert first_overrun(build_tiling(prog, board, 1, 32, Budget(board)).used, Budget(board)) == "bram36"
    point = hardware_point(prog, board, 1, 32, {})
    assert point["fits"], point["why_not"]
    used = fixed_tiling(prog, board, 1, 32).used
    assert {r: point[r] for r in used} == used
