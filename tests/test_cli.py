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
from codesign.fsutil import atomic_dir
from codesign.model.config import ModelConfig
from codesign.model.zoo import default_model_dir, load_default_model

SUBCOMMANDS = ["generate", "csim", "cosim", "compare", "estimate", "demo"]
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
    """One real `codesign generate` of the embedded model, over a stale folder (--force)."""
    root = tmp_path_factory.mktemp("cli")
    np.save(root / "calib.npy", GOOD_CALIB)  # 4 images calibrate much faster than the default 64
    proj = root / "proj"
    (proj / "stale").mkdir(parents=True)
    (proj / "stale" / "old.txt").write_text("old")
    argv = ["generate", "default", "-o", str(proj), "--images", "1", "--calib", str(root / "calib.npy"), "--force"]
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
def test_existing_output_is_refused_with_a_force_hint(command, capsys, tmp_path):
    out = tmp_path / "keep"
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    assert main([*command, "-o", str(out)]) == 2
    assert one_line_error(capsys, command[0]) == f"{out} exists; pass --force to replace it"
    assert (out / "precious.txt").read_text() == "mine"


@pytest.mark.parametrize("failure, rc", [(KeyboardInterrupt, 130), (RuntimeError, None)])
def test_failed_generate_keeps_the_old_folder_and_no_temp(failure, rc, monkeypatch, tmp_path, capsys):
    out = tmp_path / "proj"
    out.mkdir()
    (out / "precious.txt").write_text("mine")

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
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
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
    if shutil.which("iverilog") is None:
        pytest.skip("icarus verilog not installed")
    rc = main(["cosim", str(project), "--simulator", "icarus", "--timeout-cycles", "5000",
               "--vectors", "img0_task0"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 1
    assert lines[0] == "FAIL first mismatch at <timeout> img0_task0 (task 0): 5002 cycles"
    assert lines[-1] == ("TIMEOUT img0_task0 timed out: limit 5000 cycles, reached 5002; "
                         "last retired: none (the first instruction did not finish)")


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
