"""The `codesign` command line, run in-process: help, one-line errors (exit 2), atomic --force,
input validation, csim/cosim verdicts and exit codes; and Design.predict's input checks."""
from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from codesign import api
from codesign.cli import main
from codesign.fsutil import PROJECT_MARKER, atomic_dir, mark_project
from codesign.model.config import ModelConfig
from codesign.model.zoo import default_model_dir, load_default_model
from codesign.testing import RTL_TWIN_ARG

SUBCOMMANDS = ["generate", "csim", "cosim", "compare", "report", "estimate", "explore", "demo"]
KNOWN_BOARDS = "kv260, pynq-z2, ultra96v2, zcu102, zcu104"


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    prefix = f"codesign {command}: error: "
    assert err.startswith(prefix), err
    return err[len(prefix):]


def leftovers(folder: Path) -> list[str]:
    """Temporary siblings atomic_dir may leave behind (.<name>.tmp-*, .<name>.old-*)."""
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """One real `codesign generate` of the embedded model, over a stale project (--force)."""
    root = tmp_path_factory.mktemp("cli")
    np.save(root / "calib.npy", GOOD_CALIB)  # 4 images calibrate much faster than the default 64
    proj = root / "proj"
    (proj / "stale").mkdir(parents=True)
    (proj / "stale" / "old.txt").write_text("old")
    mark_project(proj)
    argv = ["generate", "default", "-o", str(proj), "--images", "1", "--calib", str(root / "calib.npy"), "--force",
            "--rtl-array", RTL_TWIN_ARG]
    assert main(argv) == 0
    return proj


# ---------------------------------------------------------------------------
# help and argument checks
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: codesign {command}")


def test_help_documents_the_new_options(capsys):
    for command, text in (("generate", "integer pixels such as uint8 are refused, not rescaled"),
                          ("cosim", "--timeout-cycles N"), ("cosim", "--ideal-memory"), ("demo", "--force")):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert text in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("argv, message", [
    (["generate", "default", "-o", "x", "--images", "0"], "argument --images: expected an integer >= 1, got 0"),
    (["generate", "default", "-o", "x", "--images", "-1"], "argument --images: expected an integer >= 1, got -1"),
    (["generate", "default", "-o", "x", "--images", "two"], "argument --images: expected an integer >= 1, got 'two'"),
    (["cosim", "p", "--timeout-cycles", "0"], "argument --timeout-cycles: expected an integer >= 1, got 0"),
    (["demo", "--eval-images", "0"], "argument --eval-images: expected an integer >= 1, got 0"),
])
def test_counts_below_one_are_refused_by_the_parser(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == f"codesign {argv[0]}: error: {message}"
    assert not (tmp_path / "x").exists()


def test_api_generate_refuses_zero_images_before_converting(tmp_path):
    with pytest.raises(ValueError, match=r"^images \(test images per task\) must be an int >= 1, got 0$"):
        api.generate("no-such-model", tmp_path / "p", images=0)
    with pytest.raises(ValueError, match="got True"):
        api.generate("no-such-model", tmp_path / "p", images=True)


def test_unknown_board_lists_the_known_ones(capsys, tmp_path):
    assert main(["generate", "default", "-o", str(tmp_path / "p"), "--board", "zcu999"]) == 2
    assert one_line_error(capsys, "generate") == f"unknown board 'zcu999'; known boards: {KNOWN_BOARDS}"
    assert not (tmp_path / "p").exists()


# ---------------------------------------------------------------------------
# bad model files: exit 2, one line, no traceback
# ---------------------------------------------------------------------------
def _write_model(folder: Path, state: dict | None = None, raw: bytes | None = None, config: str | None = None) -> Path:
    folder.mkdir()
    src = default_model_dir()
    if raw is not None:
        (folder / "model.pt").write_bytes(raw)
    elif state is not None:
        torch.save(state, folder / "model.pt")
    (folder / "config.yaml").write_text(config or (src / "config.yaml").read_text())
    return folder


def _poisoned_state(value: float) -> dict:
    state = torch.load(default_model_dir() / "model.pt", weights_only=True)
    state["blocks.2.attn.qkv.weight"][3, 5] = value
    return state


MODEL_CASES = {
    "missing": (lambda d: d / "nothing_here.pt", "model file not found: {d}/nothing_here.pt"),
    "corrupt": (lambda d: _write_model(d / "m", raw=bytes(range(256)) * 8),
                "cannot read {d}/m/model.pt: not a valid PyTorch/safetensors file (corrupt or truncated? "
                "UnpicklingError)"),
    "truncated": (lambda d: _write_model(d / "m", raw=(default_model_dir() / "model.pt").read_bytes()[:5000]),
                  "cannot read {d}/m/model.pt: not a valid PyTorch/safetensors file (corrupt or truncated? "
                  "OSError)"),
    "nan": (lambda d: _write_model(d / "m", state=_poisoned_state(float("nan"))),
            "tensor blocks.2.attn.qkv.weight in {d}/m contains NaN or inf"),
    "inf": (lambda d: _write_model(d / "m", state=_poisoned_state(float("inf"))),
            "tensor blocks.2.attn.qkv.weight in {d}/m contains NaN or inf"),
    "config_shape": (lambda d: _write_model(d / "m", state=_poisoned_state(0.0),
                                            config="embed_dim: 32\nnum_heads: 4\n"),
                     "shape mismatch for "),
    "config_field": (lambda d: _write_model(d / "m", state=_poisoned_state(0.0), config="num_heads: 5\n"),
                     "{d}/m/config.yaml: bad model config: embed_dim 64 is not a multiple of num_heads 5"),
}


@pytest.mark.parametrize("case", MODEL_CASES)
def test_bad_model_files_give_one_line(case, capsys, tmp_path):
    make, message = MODEL_CASES[case]
    model = make(tmp_path)
    capsys.readouterr()
    assert main(["generate", str(model), "-o", str(tmp_path / "out")]) == 2
    assert one_line_error(capsys, "generate").startswith(message.format(d=tmp_path))
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path / "out")


# ---------------------------------------------------------------------------
# calibration images
# ---------------------------------------------------------------------------
GOOD_CALIB = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)


def _with_nan(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x[2, 1, 5, 7] = np.nan
    x[3, 0, 0, 0] = np.inf
    return x


CALIB_CASES = {
    "nan": (_with_nan(GOOD_CALIB), "calibration images contain 2 NaN or inf value(s) (of 12288, as float32); "
                                   "the first is in image 2"),
    "float64_overflow": (GOOD_CALIB.astype(np.float64) * 1e300, "calibration images contain 12288 NaN or inf"),
    "uint8": ((GOOD_CALIB > 0).astype(np.uint8) * 255, "calibration images must be floating point "
                                                       "(float16/32/64) in the model's input normalisation, not uint8"),
    "complex": (GOOD_CALIB.astype(np.complex64), "calibration images must be floating point (float16/32/64) in "
                                                 "the model's input normalisation, not complex64"),
    "empty": (GOOD_CALIB[:0], "calibration images: the batch is empty (shape [0, 3, 32, 32])"),
    "size": (GOOD_CALIB[:, :, :16, :16], "calibration images must have shape [N, 3, 32, 32], got [4, 3, 16, 16]"),
    "one_image": (GOOD_CALIB[0], "calibration images must have shape [N, 3, 32, 32], got [3, 32, 32]"),
    "channels_last": (GOOD_CALIB.transpose(0, 2, 3, 1), "calibration images look channels-last [4, 32, 32, 3]"),
}


@pytest.mark.parametrize("case", CALIB_CASES)
def test_bad_calibration_images_give_one_line(case, capsys, tmp_path):
    images, message = CALIB_CASES[case]
    np.save(tmp_path / "calib.npy", images)
    assert main(["estimate", "default", "--calib", str(tmp_path / "calib.npy")]) == 2
    assert one_line_error(capsys, "estimate").startswith(message)


def test_calibration_file_that_is_not_an_array(capsys, tmp_path):
    (tmp_path / "calib.npy").write_bytes(b"not numpy at all")
    np.savez(tmp_path / "two.npz", a=GOOD_CALIB)
    for name, message in (("missing.npy", f"calibration file not found: {tmp_path}/missing.npy"),
                          ("calib.npy", f"{tmp_path}/calib.npy is not a readable .npy array (ValueError)"),
                          ("two.npz", f"{tmp_path}/two.npz is an .npz archive: save the images as one array "
                                      f"with np.save")):
        assert main(["estimate", "default", "--calib", str(tmp_path / name)]) == 2
        assert one_line_error(capsys, "estimate") == message


# ---------------------------------------------------------------------------
# output folders: refuse, --force, atomic replacement, permissions
# ---------------------------------------------------------------------------
def test_force_replaced_the_stale_folder_with_a_readable_project(project):
    assert not (project / "stale").exists()
    assert json.loads((project / "project.json").read_text())["board"] == "zcu104"
    assert stat.S_IMODE(project.stat().st_mode) == 0o777 & ~umask()
    assert leftovers(project) == []


@pytest.mark.parametrize("command", [["generate", "default"], ["demo"]])
def test_existing_project_is_refused_with_a_force_hint(command, capsys, tmp_path):
    out = tmp_path / "keep"
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    mark_project(out)
    assert main([*command, "-o", str(out)]) == 2
    assert one_line_error(capsys, command[0]) == f"{out} exists; pass --force to replace it"
    assert (out / "precious.txt").read_text() == "mine"


NOT_A_PROJECT = ("exists and is not a codesign project (no .codesign-project): --force replaces only codesign "
                 "projects; choose another -o or remove it yourself")


def _user_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command", [["generate", "default"], ["demo"]])
@pytest.mark.parametrize("target, message", [
    (".", "{work} " + NOT_A_PROJECT),
    ("..", "{root} " + NOT_A_PROJECT),
    ("model", "{work}/model " + NOT_A_PROJECT),
    ("notes.txt", "{work}/notes.txt exists and is not a folder"),
])
def test_force_never_replaces_what_codesign_did_not_write(command, target, message, capsys, tmp_path,
                                                          monkeypatch):
    """Issue 14: `-o . --force` emptied the working folder, `-o ..` its parent, `-o MODEL_DIR`
    the user's model, `-o FILE` the file; all exited 0."""
    work = tmp_path / "work"
    shutil.copytree(default_model_dir(), work / "model")
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    before = _user_files(tmp_path)
    monkeypatch.setattr(api, "convert", lambda *a, **k: pytest.fail("converted before refusing"))
    assert main([*command, "-o", target, "--force"]) == 2
    assert one_line_error(capsys, command[0]) == message.format(work=work, root=tmp_path)
    assert _user_files(tmp_path) == before


def test_force_refuses_the_working_project_and_one_holding_the_model(project, capsys, monkeypatch):
    before = _user_files(project)
    monkeypatch.chdir(project / "data")
    assert main(["generate", "default", "-o", "..", "--force"]) == 2
    assert one_line_error(capsys, "generate") == (f"refusing to replace {project}: it is the working folder or "
                                                  f"one of its parents")
    monkeypatch.chdir(project.parent)
    assert main(["generate", str(project / "model"), "-o", str(project), "--force"]) == 2
    assert one_line_error(capsys, "generate") == (f"refusing to replace {project}: it holds {project}/model, an "
                                                  f"input of this run")
    assert _user_files(project) == before


def test_killed_runs_leave_no_project_behind_and_are_cleaned_up(tmp_path):
    out = tmp_path / "proj"
    stale = tmp_path / ".proj.tmp-k1ll3d00"  # what a run killed mid-write leaves
    (stale / "data").mkdir(parents=True)
    with pytest.raises(KeyboardInterrupt), atomic_dir(out, project=True) as tmp:
        (tmp / "data").mkdir()
        assert not (tmp / PROJECT_MARKER).exists()  # written last: an unfinished folder is never a project
        raise KeyboardInterrupt
    with atomic_dir(out, project=True) as tmp:
        (tmp / "f").write_text("x")
    assert (out / PROJECT_MARKER).is_file() and not stale.exists() and leftovers(out) == []


def test_a_second_writer_of_the_same_folder_fails_at_once(tmp_path, capsys, monkeypatch):
    out = tmp_path / "proj"
    entered = []

    def write_while_another_run_writes(tmp, *args):
        entered.append(tmp)
        assert main(["generate", "default", "-o", str(out), "--images", "1"]) == 2

    monkeypatch.setattr(api, "convert", lambda *a, **k: SimpleNamespace(qm=SimpleNamespace(cfg=ModelConfig())))
    monkeypatch.setattr(api, "_write_project", write_while_another_run_writes)
    api.generate("default", out, images=1)
    assert entered and one_line_error(capsys, "generate") == (f"another codesign run is writing {out} (lock "
                                                              f".proj.lock); wait for it or choose another -o")
    assert (out / PROJECT_MARKER).is_file() and leftovers(out) == []


@pytest.fixture
def unwritable(tmp_path):
    """A folder nobody can write in, root included (chmod does not stop root; chattr +i does)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = False
    if os.access(folder, os.W_OK):
        immutable = os.system(f"chattr +i {folder} 2>/dev/null") == 0
        if not immutable:
            pytest.skip("cannot make a folder unwritable here (root without chattr)")
    yield folder
    if immutable:
        os.system(f"chattr -i {folder}")
    folder.chmod(0o755)


def test_unwritable_outputs_are_one_line_errors_before_the_work(project, unwritable, capsys, monkeypatch):
    monkeypatch.setattr(api, "convert", lambda *a, **k: pytest.fail("converted before checking the output"))
    for argv in (["generate", "default", "-o", str(unwritable / "p")],
                 ["estimate", "default", "--json", str(unwritable / "e.json")]):
        assert main(argv) == 2
        assert one_line_error(capsys, argv[0]).startswith(f"cannot write in {unwritable}: ")
    monkeypatch.undo()
    for argv in (["compare", str(project), str(project / "data" / "vec"), "-o", str(unwritable / "c")],
                 ["csim", str(project), "--dump", str(unwritable / "d")]):
        assert main(argv) == 2
        assert one_line_error(capsys, argv[0]).startswith(f"cannot write in {unwritable}: ")


def test_unusable_output_paths_are_one_line_errors(project, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(api, "convert", lambda *a, **k: pytest.fail("converted before checking the output"))
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    long_name = "n" * 300
    cases = [
        (["generate", "default", "-o", f"{tmp_path}/file/p"], f"cannot create {tmp_path}/file/p: {tmp_path}/file "
                                                              f"is not a folder"),
        (["generate", "default", "-o", f"{tmp_path}/{long_name}"], "name too long in "),
        (["generate", "default", "-o", f"{tmp_path}/{'n' * 250}"], "name too long in "),  # no room for .tmp-*
        (["estimate", "default", "--json", str(tmp_path / "folder")], f"{tmp_path}/folder is a folder; give a "
                                                                      f"file name"),
        (["estimate", "default", "--json", f"{tmp_path}/{long_name}"], "name too long in "),
        (["compare", str(project), str(project / "data" / "vec"), "-o", str(tmp_path / "file")],
         f"{tmp_path}/file exists and is not a folder"),
        (["csim", str(project), "--dump", str(tmp_path / "file")], f"{tmp_path}/file exists and is not a folder"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert one_line_error(capsys, argv[0]).startswith(message)
    assert (tmp_path / "file").read_text() == "x"


BAD_VECTOR = "vectors[0] must have an id, a task below num_tasks and relative start and expected files"


@pytest.mark.parametrize("edit, message", [
    (lambda man: man["vectors"][0].pop("start"), BAD_VECTOR),
    (lambda man: man["vectors"][0].update(start="../../../etc/passwd"), BAD_VECTOR),
    (lambda man: man["regions"][-1].update(addr=10 ** 9), "regions must be a list of {name, addr, shape, kind} "
                                                          "inside the act image"),
    (lambda man: man.pop("trace"), "trace must be a list of region names"),
])
def test_malformed_manifests_are_one_line_errors(project, edit, message, capsys, tmp_path):
    copy = tmp_path / "proj"
    shutil.copytree(project, copy)
    path = copy / "data" / "manifest.json"
    man = json.loads(path.read_text())
    edit(man)
    path.write_text(json.dumps(man))
    for argv in (["csim", str(copy)], ["compare", str(copy), str(copy / "data" / "vec")],
                 ["cosim", str(copy), "--simulator", "icarus"]):
        assert main(argv) == 2
        assert one_line_error(capsys, argv[0]) == f"{path}: {message}; regenerate the project"


def test_a_manifest_that_is_a_list_and_project_json_without_scale(project, capsys, tmp_path):
    copy = tmp_path / "proj"
    shutil.copytree(project, copy)
    info = json.loads((copy / "project.json").read_text())
    del info["output_scale"]
    (copy / "project.json").write_text(json.dumps(info))
    assert main(["compare", str(copy), str(copy / "data" / "vec")]) == 2
    assert one_line_error(capsys, "compare") == (f"{copy}/project.json has no positive output_scale: regenerate "
                                                 f"the project")
    (copy / "data" / "manifest.json").write_text("[1, 2]")
    for argv in (["csim", str(copy)], ["cosim", str(copy), "--simulator", "icarus"]):
        assert main(argv) == 2
        assert one_line_error(capsys, argv[0]) == (f"{copy}/data/manifest.json: expected a JSON object, got list; "
                                                   f"regenerate the project")


@pytest.mark.parametrize("failure, rc", [(KeyboardInterrupt, 130), (RuntimeError, None)])
def test_failed_generate_keeps_the_old_folder_and_no_temp(failure, rc, monkeypatch, tmp_path, capsys):
    out = tmp_path / "proj"
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    mark_project(out)

    def half_written(tmp, *args):
        (tmp / "data").mkdir()
        (tmp / "data" / "weights.bin").write_bytes(b"partial")
        raise failure("stopped mid-generate")

    monkeypatch.setattr(api, "convert", lambda *a, **k: SimpleNamespace(qm=SimpleNamespace(cfg=ModelConfig())))
    monkeypatch.setattr(api, "_write_project", half_written)
    argv = ["generate", "default", "-o", str(out), "--images", "1", "--force"]
    if rc is None:
        with pytest.raises(failure, match="stopped mid-generate"):
            main(argv)
    else:
        assert main(argv) == rc
        assert capsys.readouterr().err == "codesign: interrupted\n"
    assert sorted(p.name for p in out.iterdir()) == [PROJECT_MARKER, "precious.txt"]
    assert leftovers(out) == []


def test_atomic_dir_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_dir(tmp_path / "p") as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "p").stat().st_mode) == 0o750


# ---------------------------------------------------------------------------
# csim / cosim verdicts
# ---------------------------------------------------------------------------
def test_csim_names_the_first_diverging_layer(project, capsys):
    man = json.loads((project / "data" / "manifest.json").read_text())
    entry = next(w for w in man["weights"] if w["name"] == "b2.qkv.w")
    path = project / "data" / "weights.bin"
    clean = path.read_bytes()
    bad = bytearray(clean)
    bad[entry["addr"] + 5] ^= 0x80
    try:
        path.write_bytes(bytes(bad))
        assert main(["csim", str(project)]) == 1
    finally:
        path.write_bytes(clean)
    out = capsys.readouterr().out
    assert "FAIL img0_task0: first mismatch at b2.qkv" in out
    assert "csim: 0 passed, 2 failed" in out
    assert main(["csim", str(project)]) == 0
    assert "csim: 2 passed, 0 failed" in capsys.readouterr().out


def test_cosim_timeout_reports_limit_cycle_and_last_instruction(project, capsys):
    rc = main(["cosim", str(project), "--timeout-cycles", "500",
               "--vectors", "img0_task0"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 1
    assert lines[0] == "FAIL first mismatch at <timeout> img0_task0 (task 0): 502 cycles"
    assert lines[-1] == ("TIMEOUT img0_task0 timed out: limit 500 cycles, reached 502; "
                         "last retired: none (the first instruction did not finish)")


def test_a_cosim_run_leaves_none_of_an_earlier_runs_reports(project, capsys):
    """Issue 14: `cosim --timeout-cycles 10` emptied cosim/results/ but kept the old cycles.txt."""
    stale = [project / "reports" / "cycles.txt", project / "reports" / "cycles.json",
             project / "cosim" / "results" / "img0_task0.act.bin", project / "cosim" / "cosim.json"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("from an earlier run")
    assert main(["cosim", str(project), "--timeout-cycles", "10",
                 "--vectors", "img0_task0"]) == 1
    assert "cycles per layer" not in capsys.readouterr().out
    assert [p for p in stale if p.exists() and p.read_text() == "from an earlier run"] == []
    assert json.loads((project / "cosim" / "cosim.json").read_text())["vectors"][0]["status"] == "timeout"


def test_a_cosim_run_that_fails_leaves_no_earlier_results(project, capsys, monkeypatch):
    from codesign.sim import cosim

    stale = [project / "reports" / "cycles.txt", project / "cosim" / "results" / "img0_task0.act.bin",
             project / "cosim" / "cosim.json"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("from an earlier run")

    def crash(*args, **kwargs):
        raise RuntimeError("the simulator crashed")

    monkeypatch.setattr(cosim, "run_images", crash)
    assert main(["cosim", str(project)]) == 2
    assert one_line_error(capsys, "cosim") == "the simulator crashed"
    assert [p for p in stale if p.exists()] == []


def test_icarus_is_refused_on_the_uarch_core_in_one_line_before_any_work(project, capsys):
    before = sorted(p.name for p in (project / "cosim").iterdir()) if (project / "cosim").is_dir() else []
    assert main(["cosim", str(project), "--simulator", "icarus"]) == 2
    assert one_line_error(capsys, "cosim") == ("Icarus does not run the docs/UARCH.md core yet (its MATMUL outputs "
                                               "stay unwritten under Icarus 11): use --simulator verilator")
    after = sorted(p.name for p in (project / "cosim").iterdir()) if (project / "cosim").is_dir() else []
    assert "sim_build_icarus" not in set(after) - set(before)


def test_last_retired_instruction_comes_from_the_trace_after_the_last_finished_run(project):
    build = project / "cosim" / "sim_build_fake"
    build.mkdir(parents=True)
    (build / "codesign_trace.txt").write_text("I 0 1 100\nI 1 4 20\nE 2 120\nI 0 1 100\nI 1 4 20\nI 2 3 40\n")
    assert api._last_retired(project, "fake") == "instruction 2 (LAYERNORM b0.ln1) after 3 instructions"
    shutil.rmtree(build)
    assert api._last_retired(project, "fake") == "unknown (no instruction trace)"


# ---------------------------------------------------------------------------
# Design.predict input checks
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def design():
    return api.convert(load_default_model(), "zcu104", calib=GOOD_CALIB)


def test_predict_batch_and_single_image(design):
    batch = design.predict(GOOD_CALIB[:2], 1)
    assert batch.shape == (2, 17, 64)
    single = design.predict(GOOD_CALIB[1], np.int64(1))
    assert single.shape == (17, 64)
    assert np.array_equal(single, batch[1])
    assert np.array_equal(design.predict(GOOD_CALIB[:1].astype(np.float64).tolist(), 0),
                          design.predict(GOOD_CALIB[:1], 0))


TASKS = "(0=semseg, 1=depth)"
PREDICT_CASES = {
    "task_float": (GOOD_CALIB[:1], 1.5, f"task must be an int index {TASKS}, got 1.5 of type float"),
    "task_bool": (GOOD_CALIB[:1], True, f"task must be an int index {TASKS}, got True of type bool"),
    "task_str": (GOOD_CALIB[:1], "0", f"task must be an int index {TASKS}, got '0' of type str"),
    "task_high": (GOOD_CALIB[:1], 2, f"task 2 out of range: the model has 2 tasks {TASKS}"),
    "task_negative": (GOOD_CALIB[:1], -1, f"task -1 out of range: the model has 2 tasks {TASKS}"),
    "3d_wrong_size": (GOOD_CALIB[0, :, :16, :16], 0,
                      "images must have shape [N, 3, 32, 32] or [3, 32, 32], got [3, 16, 16]"),
    "channels_last": (GOOD_CALIB[:2].transpose(0, 2, 3, 1), 0,
                      "images look channels-last [2, 32, 32, 3]; the model takes channels-first "
                      "[N, 3, 32, 32] or [3, 32, 32]: use x.transpose(0, 3, 1, 2) (or (2, 0, 1) for one image)"),
    "one_channel": (GOOD_CALIB[:2, :1], 0, "images must have shape [N, 3, 32, 32] or [3, 32, 32], got [2, 1, 32, 32]"),
    "empty": (GOOD_CALIB[:0], 0, "images: the batch is empty (shape [0, 3, 32, 32]); at least one image is needed"),
    "nan": (_with_nan(GOOD_CALIB), 0, "images contain 2 NaN or inf value(s) (of 12288, as float32); "
                                      "the first is in image 2"),
    "uint8": ((GOOD_CALIB[:1] > 0).astype(np.uint8), 0, "images must be floating point (float16/32/64)"),
    "ragged": ([[1.0, 2.0], [3.0]], 0, "images are not a regular array (ragged nested lists?)"),
}


@pytest.mark.parametrize("case", PREDICT_CASES)
def test_predict_rejects_bad_input_with_a_clear_message(design, case):
    images, task, message = PREDICT_CASES[case]
    with pytest.raises(ValueError) as exc:
        design.predict(images, task)
    assert str(exc.value).startswith(message)
    assert "\n" not in str(exc.value)


def test_estimate_checks_its_images_too(design):
    with pytest.raises(ValueError, match=r"^images look channels-last"):
        design.estimate(GOOD_CALIB.transpose(0, 2, 3, 1), 0)
    assert design.estimate(GOOD_CALIB[0], 1).to_json() == design.estimate(GOOD_CALIB[:1], 1).to_json()


def test_csim_first_vectors_with_layer_table(project, capsys):
    assert main(["csim", str(project), "--first", "1", "--layers"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["layer", "img0_task0", "img0_task1"]
    assert ["b1.attn", "PASS", "PASS"] in [line.split() for line in out.splitlines()]
    assert "csim: 2 passed, 0 failed" in out


def test_cosim_refuses_a_truncated_weight_blob(project, tmp_path, capsys):
    copy = tmp_path / "proj"
    shutil.copytree(project, copy)
    blob = copy / "data" / "weights.bin"
    blob.write_bytes(blob.read_bytes()[:1000])
    assert main(["cosim", str(copy), "--simulator", "icarus"]) == 2
    err = capsys.readouterr().err
    assert "weights.bin has 1000 bytes" in err and "regenerate" in err and "Traceback" not in err


# ---------------------------------------------------------------------------
# issue 14: --config with 'default', and which routing an estimate assumed
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["generate", "estimate"])
def test_a_config_for_the_embedded_model_is_refused(command, capsys, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("embed_dim: 128\n")
    argv = [command, "default", "--config", str(config)] + (["-o", str(tmp_path / "p")] if command == "generate" else [])
    assert main(argv) == 2
    assert one_line_error(capsys, command) == ("a config does not apply to 'default': the embedded model has its "
                                               "own; give a model folder or file with --config")
    assert not (tmp_path / "p").exists()


def test_both_estimates_say_which_routing_they_assumed_first(project, capsys, tmp_path):
    assert main(["estimate", "default", "--calib", str(project.parent / "calib.npy"),
                 "--json", str(tmp_path / "e.json")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"routing: {api.ROUTING_UNIFORM}"
    assert json.loads((tmp_path / "e.json").read_text())["routing"] == api.ROUTING_UNIFORM
    report = (project / "reports" / "estimate.txt").read_text().splitlines()[0]
    assert report == "routing: the golden model's on test image 0, task 0 (`codesign estimate` assumes uniform routing)"
    assert json.loads((project / "reports" / "estimate.json").read_text())["routing"] == report[len("routing: "):]
