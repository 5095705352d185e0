"""The user's own images through csim (and cosim, slow): `codesign csim OUT --images x.npy`,
api.predict and Design.predict(backend=...); csim's progress lines and its timeout."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
from pathlib import Path

import numpy as np
import pytest

from codesign import api
from codesign.cli import main
from codesign.model.data import make_dataset
from codesign.model.zoo import load_default_model
from codesign.quant.golden import run_golden
from codesign.quant.quantize import quantize_input
from codesign.sim import csim as csim_module
from codesign.sim import predict as predict_module
from codesign.sim.csim import CsimError, run_csim

needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")

CALIB = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def design():
    return api.convert(load_default_model(), calib=CALIB)


@pytest.fixture(scope="module")
def project(design, tmp_path_factory) -> Path:
    return api.generate(design, tmp_path_factory.mktemp("predict") / "proj", images=1)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return make_dataset(3, load_default_model().cfg, seed=99).images


def _npy(folder: Path, images: np.ndarray, name: str = "x") -> str:
    path = folder / f"{name}.npy"
    np.save(path, images)
    return str(path)


def _tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return h.hexdigest()


def _golden_tokens(design, images: np.ndarray, task: int) -> np.ndarray:
    x_q = quantize_input(images, design.qm)
    return np.stack([run_golden(design.qm, x, task).output for x in x_q]) * design.qm.output_scale


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    assert err[-1].startswith(f"codesign {command}: error: "), err
    return err[-1][len(f"codesign {command}: error: "):]


@needs_gxx
def test_csim_runs_the_users_images_bit_exactly_and_leaves_the_project_alone(design, project, images, tmp_path,
                                                                             capsys):
    before = _tree_hash(project / "data")
    out = tmp_path / "run"
    assert main(["csim", str(project), "--images", _npy(tmp_path, images), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "csim: [6/6] PASS img2_task1" in captured.err  # progress per vector, on stderr
    assert captured.out.startswith("predict (csim): 3 image(s) x 2 task(s), 6/6 vectors bit-exact")
    report = json.loads((out / "predict.json").read_text())
    assert report["all_bit_exact"] and [v["id"] for v in report["vectors"]] == [
        f"img{i}_task{t}" for i in range(3) for t in range(2)]
    for task, name in enumerate(["semseg", "depth"]):
        tokens = np.load(out / f"tokens_{name}.npy")
        # the simulated C++ ran these images, not the project's own vector
        np.testing.assert_array_equal(tokens, _golden_tokens(design, images, task).astype(np.float32))
        assert np.load(out / f"head_{name}.npy").shape[0] == 3
    seg = next(t for t in report["tasks"] if t["name"] == "semseg")
    assert 0.9 < seg["agreement"]["result"]["label_agreement"] <= 1.0
    assert seg["agreement"]["result"] == seg["agreement"]["golden"]  # bit-exact: the same head output
    assert sorted(p.name for p in (out / "results").iterdir()) == [f"img{i}_task{t}.act.bin" for i in range(3)
                                                                   for t in range(2)]
    assert _tree_hash(project / "data") == before
    assert not (project / "predict").exists()


@needs_gxx
def test_a_wrong_result_is_a_failure_naming_the_layer(project, images, tmp_path, monkeypatch, capsys):
    """The kernel reads the predict folder's weights: one flipped bit there (the golden expected
    images are made before it) must fail at the first layer that reads it, exit 1."""
    write = predict_module.write_data_dir

    def corrupted(data_dir, prog, qm, vectors):
        path = write(data_dir, prog, qm, vectors)
        weights = {r["name"]: r for r in json.loads(path.read_text())["weights"]}
        blob = bytearray((data_dir / "weights.bin").read_bytes())
        blob[weights["b0.qkv.w"]["addr"] + 3] ^= 0x40
        (data_dir / "weights.bin").write_bytes(bytes(blob))
        return path

    monkeypatch.setattr(predict_module, "write_data_dir", corrupted)
    out = tmp_path / "bad"
    assert main(["csim", str(project), "--images", _npy(tmp_path, images[:1]), "--task", "depth",
                 "--out", str(out)]) == 1
    text = capsys.readouterr().out
    assert "0/1 vectors bit-exact" in text and "FAIL img0_task1: first mismatch at b0.qkv" in text
    assert json.loads((out / "predict.json").read_text())["vectors"][0]["first_mismatch"] == "b0.qkv"


@needs_gxx
def test_design_predict_through_csim_equals_the_golden_model(design, project, images):
    golden = design.predict(images, 1)
    np.testing.assert_array_equal(design.predict(images, 1, backend="csim", project=project),
                                  golden)
    one = design.predict(images[0], 0, backend="csim", project=project)
    assert one.shape == golden.shape[1:]
    assert not list(project.glob("predict*"))


@needs_gxx
def test_design_predict_without_a_project_builds_one_once_in_a_temporary_folder(design, images):
    tokens = design.predict(images[:2], 0, backend="csim")
    np.testing.assert_array_equal(tokens, design.predict(images[:2], 0))
    scratch = design._scratch
    assert (scratch / ".codesign-project").is_file() and (scratch / csim_module.TESTBENCH).is_file()
    stamp = (scratch / "build" / "tb_codesign.key").stat().st_mtime_ns
    design.predict(images[2], 1, backend="csim")
    assert design._scratch == scratch and (scratch / "build" / "tb_codesign.key").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="^backend must be one of golden, csim, cosim, got 'fpga'$"):
        design.predict(images, 0, backend="fpga")


def test_default_results_folder_is_under_predict_with_a_timestamp(project, tmp_path, monkeypatch):
    # one fixed second, so that a loaded machine crossing a second boundary cannot dodge the "-2"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    monkeypatch.setattr(predict_module.time, "strftime", lambda fmt: stamp)
    first = predict_module.checked_predict_dir(project, None)
    assert first.parent == project / "predict" and first.name[:8].isdigit()
    first.mkdir(parents=True)
    try:
        assert predict_module.checked_predict_dir(project, None).name == first.name + "-2"
    finally:
        shutil.rmtree(project / "predict")


@pytest.mark.parametrize("case", ["inside_data", "data", "project", "existing", "first", "dump", "task_alone",
                                  "bad_task", "bad_shape", "vectors"])
def test_refusals_are_one_line_before_any_work(case, project, images, tmp_path, capsys):
    npy = _npy(tmp_path, images)
    command, argv, message = {
        "inside_data": ("csim", ["--images", npy, "--out", str(project / "data" / "mine")],
                        "would overwrite the project's own files"),
        "data": ("csim", ["--images", npy, "--out", str(project / "data")], "would overwrite the project's own"),
        "project": ("cosim", ["--images", npy, "--out", str(project)], "would overwrite the project's own files"),
        "existing": ("csim", ["--images", npy, "--out", str(tmp_path)], f"{tmp_path} exists: choose a new folder"),
        "first": ("csim", ["--images", npy, "--first", "1"], "--first does not apply to --images"),
        "dump": ("csim", ["--images", npy, "--dump", str(tmp_path / "d")], "--dump does not apply to --images"),
        "task_alone": ("csim", ["--task", "0"], "--task needs --images"),
        "bad_task": ("csim", ["--images", npy, "--task", "normals"],
                     "unknown task 'normals': the model's tasks are 0=semseg, 1=depth"),
        "bad_shape": ("csim", ["--images", _npy(tmp_path, images.transpose(0, 2, 3, 1), "hwc")], "look channels-last"),
        "vectors": ("cosim", ["--images", npy, "--vectors", "img0_task0"], "--vectors does not apply to --images"),
    }[case]
    before = _tree_hash(project)
    assert main([command, str(project), *argv]) == 2
    assert message in _one_line_error(capsys, command)
    assert _tree_hash(project) == before


def test_a_project_whose_files_do_not_reproduce_its_data_is_refused(project, images, tmp_path, capsys):
    copy = Path(shutil.copytree(project, tmp_path / "proj", ignore=shutil.ignore_patterns("build")))
    info = json.loads((copy / "project.json").read_text())
    info["scales"]["b0.q"] *= 1.5
    (copy / "project.json").write_text(json.dumps(info))
    assert main(["csim", str(copy), "--images", _npy(tmp_path, images)]) == 2
    assert "program.bin is not what the project's model/ and project.json give" in _one_line_error(capsys, "csim")
    assert not (copy / "predict").exists()


# ---------------------------------------------------------------- csim progress and timeout


def _hanging_testbench(project: Path, tmp_path: Path) -> Path:
    """A copy of the project whose (up-to-date) testbench passes one vector, then hangs."""
    copy = Path(shutil.copytree(project, tmp_path / "hang"))
    assert csim_module.build_testbench(copy) == ""  # the copied binary counts as built
    binary = copy / csim_module.TESTBENCH
    binary.write_text("#!/bin/sh\necho 'PASS img0_task0'\nexec sleep 60\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return copy


@needs_gxx
def test_a_hung_testbench_is_killed_at_its_timeout_naming_it_and_the_vector(project, tmp_path):
    run_csim(project)  # builds the fixture's testbench, which the copy then reuses
    copy = _hanging_testbench(project, tmp_path)
    lines: list[str] = []
    with pytest.raises(CsimError) as excinfo:
        run_csim(copy, timeout=1.5, progress=lines.append)
    assert str(excinfo.value) == ("the testbench did not finish within its 1.5 s timeout (killed on img0_task1, "
                                  "vector 2 of 2); give it longer with --timeout SECONDS")
    assert lines == ["csim: build/tb_codesign is up to date", "csim: running 2 vector(s) (timeout 1.5 s)",
                     lines[2]] and lines[2].startswith("csim: [1/2] PASS img0_task0 (")


def test_the_default_run_timeout_grows_with_the_program_and_the_vectors(project):
    man = json.loads((project / "data" / "manifest.json").read_text())
    one, four = (csim_module.run_timeout(project / "data", man, n) for n in (1, 4))
    assert csim_module.RUN_TIMEOUT_BASE < one < four and four - csim_module.RUN_TIMEOUT_BASE == pytest.approx(
        4 * (one - csim_module.RUN_TIMEOUT_BASE))


def test_csim_timeout_option_is_checked(capsys):
    with pytest.raises(SystemExit):
        main(["csim", "p", "--timeout", "0"])
    assert "argument --timeout: expected a number of seconds > 0, got 0" in capsys.readouterr().err


# ---------------------------------------------------------------- cosim


@pytest.mark.slow
def test_cosim_runs_the_users_images_bit_exactly(design, project, images, tmp_path):
    """The RTL on one image for one task (Verilator: about a minute with its build)."""
    own = project / "cosim"
    res = api.predict(project, images[:1], "depth", "cosim", tmp_path / "rtl")
    assert res.all_bit_exact and [v.id for v in res.vectors] == ["img0_task1"] and res.vectors[0].cycles > 0
    np.testing.assert_array_equal(res.tokens[1], _golden_tokens(design, images[:1], 1))
    assert (tmp_path / "rtl" / "cosim" / "results" / "img0_task1.act.bin").is_file()
    assert not (own / "results").exists() and not (own / "cosim.json").exists()  # the project's own stay as they were
    assert sorted(os.listdir(tmp_path / "rtl" / "data" / "vec")) == ["img0_task1.act.bin", "img0_task1.in.bin"]


def test_generate_writes_the_numerical_profile(project):
    assert (project / "reports" / "profile.png").read_bytes()[:4] == b"\x89PNG"
