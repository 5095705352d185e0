"""compare_results on a small generated-looking project: bit-exact act images, a board .npy dump
with one wrong element, and an empty results folder."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from codesign.cli import main
from codesign.emit.data import Vector, write_data_dir
from codesign.model.data import make_dataset
from codesign.quant.quantize import quantize_input
from codesign.report.compare import CompareError, compare_results, output_region
from codesign.testing import make_test_design

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGES = 2


def _save_model(model, model_dir: Path) -> None:
    try:
        from codesign.frontend.loader import save_model
    except ImportError:  # the frontend may not exist yet; this is the layout it writes
        import yaml

        model_dir.mkdir(parents=True)
        (model_dir / "config.yaml").write_text(yaml.safe_dump(model.cfg.to_dict()))
        torch.save(model.state_dict(), model_dir / "model.pt")
        return
    save_model(model, model_dir)


def _add_image_index(manifest_path: Path, image_of: dict[str, int]) -> None:
    manifest = json.loads(manifest_path.read_text())
    for vec in manifest["vectors"]:
        vec["image"] = image_of[vec["id"]]
    manifest_path.write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The parts of a generated project that compare reads, built from a random-weight design."""
    out = tmp_path_factory.mktemp("project")
    design = make_test_design()
    data = make_dataset(IMAGES, design.model.cfg, seed=5)
    x_q = quantize_input(data.images, design.qm)
    tasks = range(design.model.cfg.num_tasks)
    vectors = [Vector(f"img{i}_task{t}", t, x_q[i]) for i in range(IMAGES) for t in tasks]
    write_data_dir(out / "data", design.prog, design.qm, vectors)
    _add_image_index(out / "data" / "manifest.json", {f"img{i}_task{t}": i for i in range(IMAGES) for t in tasks})
    np.savez_compressed(out / "data" / "images.npz", images=data.images, seg=data.seg, depth=data.depth)
    _save_model(design.model, out / "model")
    (out / "project.json").write_text(json.dumps({"board": "zcu104", "wbits": 8, "abits": 8, "model_dir": "model",
                                                  "output_scale": design.qm.output_scale}))
    return out


def _manifest(project: Path) -> dict:
    return json.loads((project / "data" / "manifest.json").read_text())


def test_golden_act_images_are_bit_exact_and_reported(project, tmp_path):
    results = tmp_path / "csim"
    results.mkdir()
    for vec in _manifest(project)["vectors"]:
        shutil.copy(project / "data" / vec["expected"], results / f"{vec['id']}.act.bin")

    report = compare_results(project, results, tmp_path / "report")

    assert report.all_bit_exact and not report.missing and len(report.vectors) == 2 * IMAGES
    assert all(v.first_bad_layer is None and v.max_abs_diff == 0 for v in report.vectors)
    for task in report.tasks:
        assert task.metrics["result"] == task.metrics["golden"]
        assert task.agreement["result"] == task.agreement["golden"]
    for name in ("report.md", "report.html", "summary.json"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    pngs = sorted((tmp_path / "report").glob("*.png"))
    assert len(pngs) == 2 * len(report.tasks)
    assert all(png.read_bytes().startswith(PNG_SIGNATURE) for png in pngs)
    html = (tmp_path / "report" / "report.html").read_text()
    assert all(f"src='{png.name}'" in html for png in pngs)  # relative, so the folder can be moved
    assert json.loads((tmp_path / "report" / "summary.json").read_text())["all_bit_exact"] is True
    assert "BIT-EXACT" in report.summary_text()


def test_board_dump_with_one_wrong_element(project, tmp_path):
    manifest = _manifest(project)
    results = tmp_path / "board"
    results.mkdir()
    *present, absent = manifest["vectors"]
    for vec in present:
        output = output_region(manifest, (project / "data" / vec["expected"]).read_bytes()).astype(np.int8)
        np.save(results / f"{vec['id']}.npy", output)
    broken = present[0]
    output = np.load(results / f"{broken['id']}.npy")
    output[3, 5] += 3 if output[3, 5] < 120 else -3
    np.save(results / f"{broken['id']}.npy", output)

    report = compare_results(project, results, tmp_path / "report")

    assert not report.all_bit_exact
    assert report.missing == [absent["id"]]
    wrong = next(v for v in report.vectors if v.id == broken["id"])
    assert (wrong.differing, wrong.max_abs_diff, wrong.first_diff) == (1, 3, [3, 5])
    assert wrong.first_bad_layer is None  # only an act image tells which layer went wrong
    assert all(v.bit_exact for v in report.vectors if v is not wrong)
    task = next(t for t in report.tasks if t.name == wrong.task)
    assert (task.differing, task.max_abs_diff, task.bit_exact) == (1, 3, task.vectors - 1)
    for t in report.tasks:
        assert all(np.isfinite(v) for m in t.metrics.values() for v in m.values() if isinstance(v, float))
    text = report.summary_text()
    assert "INCOMPLETE" in text and absent["id"] in text  # a missing result: no verdict, whatever the others say
    assert "| NO |" in (tmp_path / "report" / "report.md").read_text()


def test_corrupt_act_image_names_the_layer_and_unreadable_files_are_listed(project, tmp_path):
    manifest = _manifest(project)
    results = tmp_path / "cosim"
    results.mkdir()
    first, second, *_ = manifest["vectors"]
    act = bytearray((project / "data" / first["expected"]).read_bytes())
    act[manifest["output"]["offset"]] ^= 0x01  # flip the LSB of output element [0, 0]
    (results / f"{first['id']}.act.bin").write_bytes(bytes(act))
    (results / f"{second['id']}.act.bin").write_bytes(b"too short")

    report = compare_results(project, results, tmp_path / "report")

    (only,) = report.vectors
    assert (only.differing, only.max_abs_diff, only.first_diff, only.first_bad_layer) == (1, 1, [0, 0], "norm")
    assert len(report.problems) == 1 and report.problems[0].startswith(f"{second['id']}.act.bin")
    assert not report.all_bit_exact
    with pytest.raises(CompareError, match="no results in"):
        compare_results(project, results, tmp_path / "report", source="npy")


def test_results_folder_without_results_is_an_error(project, tmp_path):
    (tmp_path / "notes.txt").write_text("no results here")
    with pytest.raises(CompareError, match="no results in"):
        compare_results(project, tmp_path, tmp_path / "report")
    with pytest.raises(CompareError, match="not found"):
        compare_results(project, tmp_path / "absent")


# ---------------------------------------------------------------- incomplete or wrong data never passes

def _golden_results(project: Path, folder: Path, suffix: str = ".act.bin") -> list[dict]:
    folder.mkdir()
    vectors = _manifest(project)["vectors"]
    for vec in vectors:
        if suffix == ".act.bin":
            shutil.copy(project / "data" / vec["expected"], folder / f"{vec['id']}.act.bin")
        else:
            np.save(folder / f"{vec['id']}.npy", output_region(_manifest(project), (project / "data" / vec["expected"])
                                                              .read_bytes()).astype(np.int8))
    return vectors


def _compare_cli(project: Path, results: Path, out: Path, capsys) -> tuple[int, str, str]:
    rc = main(["compare", str(project), str(results), "-o", str(out)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err.strip()


def test_one_result_of_four_is_incomplete_not_bit_exact(project, tmp_path, capsys):
    first, *others = _golden_results(project, tmp_path / "r")
    for vec in others:
        (tmp_path / "r" / f"{vec['id']}.act.bin").unlink()
    report = compare_results(project, tmp_path / "r", tmp_path / "report")
    assert (report.verdict, report.complete, report.all_bit_exact) == ("INCOMPLETE", False, False)
    assert report.missing == [v["id"] for v in others] and report.vectors[0].bit_exact
    rc, out, err = _compare_cli(project, tmp_path / "r", tmp_path / "report", capsys)
    assert rc == 2 and out.startswith("compare: INCOMPLETE: 1/4 results match")
    assert err == (f"codesign compare: error: results in {tmp_path}/r are incomplete: 3 of 4 vectors have no "
                   f"result ({', '.join(v['id'] for v in others)})")


@pytest.mark.parametrize("suffix", [".act.bin", ".npy"])
def test_bytes_past_the_data_make_a_file_no_result(project, tmp_path, suffix):
    """Issue 14: 100 KB of junk appended to every result file still compared as BIT-EXACT."""
    vectors = _golden_results(project, tmp_path / "r", suffix)
    for vec in vectors[1:]:
        with open(tmp_path / "r" / f"{vec['id']}{suffix}", "ab") as f:
            f.write(bytes(100 * 1024))
    report = compare_results(project, tmp_path / "r", tmp_path / "report")
    assert not report.complete and not report.all_bit_exact and len(report.vectors) == 1
    assert [p.split(":")[0] for p in report.problems] == [f"{v['id']}{suffix}" for v in vectors[1:]]
    assert " bytes, " in report.problems[0]
    with open(tmp_path / "r" / f"{vectors[0]['id']}{suffix}", "ab") as f:
        f.write(bytes(100 * 1024))
    with pytest.raises(CompareError, match="^no readable results in .*: .* bytes, "):
        compare_results(project, tmp_path / "r", tmp_path / "report")


def test_a_truncated_file_is_incomplete_and_counted_against_all_vectors(project, tmp_path, capsys):
    vectors = _golden_results(project, tmp_path / "r")
    path = tmp_path / "r" / f"{vectors[2]['id']}.act.bin"
    path.write_bytes(path.read_bytes()[:1000])
    rc, out, err = _compare_cli(project, tmp_path / "r", tmp_path / "report", capsys)
    assert rc == 2 and out.startswith("compare: INCOMPLETE: 3/4 results match")
    assert err.endswith(f"1 result file(s) unreadable or of the wrong size ({vectors[2]['id']}.act.bin: has 1000 "
                        f"bytes, an act image has {_manifest(project)['act_bytes']})")


def test_a_flipped_intermediate_layer_is_a_mismatch(project, tmp_path, capsys):
    man = _manifest(project)
    vectors = _golden_results(project, tmp_path / "r")
    attn = next(r for r in man["regions"] if r["name"] == "b1.attn")
    path = tmp_path / "r" / f"{vectors[0]['id']}.act.bin"
    act = bytearray(path.read_bytes())
    act[attn["addr"] + 7] ^= 0x01  # the output is still the golden one
    path.write_bytes(bytes(act))
    rc, out, _ = _compare_cli(project, tmp_path / "r", tmp_path / "report", capsys)
    assert rc == 1 and out.startswith("compare: MISMATCH: 3/4 results match")
    assert f"{vectors[0]['id']}: not bit-exact at layer b1.attn" in out
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    flipped = next(v for v in summary["vectors"] if v["id"] == vectors[0]["id"])
    assert (flipped["differing"], flipped["first_bad_layer"], flipped["bit_exact"]) == (0, "b1.attn", False)
    assert (summary["verdict"], summary["complete"]) == ("MISMATCH", True)
    row = next(line for line in (tmp_path / "report" / "report.md").read_text().splitlines()
               if line.startswith(f"| {vectors[0]['id']} |"))
    assert "| NO |" in row and "| b1.attn |" in row


def test_results_of_vectors_the_project_lacks_are_incomplete(project, tmp_path, capsys):
    """Results of another project (more vectors) are not this project's verdict."""
    vectors = _golden_results(project, tmp_path / "r")
    shutil.copy(tmp_path / "r" / f"{vectors[0]['id']}.act.bin", tmp_path / "r" / "img9_task0.act.bin")
    rc, out, err = _compare_cli(project, tmp_path / "r", tmp_path / "report", capsys)
    assert rc == 2 and out.startswith("compare: INCOMPLETE: 4/4 results match")
    assert err.endswith("1 result file(s) for vectors the project does not have (img9_task0.act.bin)")


# ---------------------------------------------------------------- report polish (issue 14)


def _golden_folder(project: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for vec in _manifest(project)["vectors"]:
        shutil.copy(project / "data" / vec["expected"], folder / f"{vec['id']}.act.bin")
    return folder


def _table(markdown: str, title: str) -> list[list[str]]:
    block = markdown.split(f"## {title}\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in block if not row.startswith("|---")]


def test_tables_have_one_metric_per_column(project, tmp_path):
    report = compare_results(project, _golden_folder(project, tmp_path / "csim"), tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    seg = _table(md, "semseg: task metrics")
    assert seg[0] == ["model", "pixel_acc", "miou", "labels as float"] and [r[0] for r in seg[1:]] == [
        "float", "golden", "result"]
    assert seg[3][1] == f"{report.tasks[0].metrics['result']['pixel_acc']:.4f}" and seg[1][3] == "—"
    assert _table(md, "depth: task metrics")[0] == ["model", "rmse", "mae", "RMSE vs float"]
    vectors = _table(md, "Per vector")
    assert vectors[0][-2:] == ["labels as float", "RMSE vs float"]
    depth_row = next(r for r in vectors if r[1] == "depth")
    depth_vector = next(v for v in report.vectors if v.id == depth_row[0])
    assert depth_row[-2] == "—" and depth_row[-1] == f"{depth_vector.agreement['result']['rmse_vs_float']:.4f}"
    assert "## Cycles and latency" not in md  # neither cosim cycles nor an estimate here


def test_cosim_cycles_and_the_estimate_give_cycles_and_latency(project, tmp_path):
    copy = Path(shutil.copytree(project, tmp_path / "proj"))
    (copy / "reports").mkdir()
    (copy / "reports" / "estimate.json").write_text(json.dumps({"cycles": 11591, "latency_ms": 0.057955,
                                                                 "clock_mhz": 200, "routing": "uniform"}))
    results = _golden_folder(copy, tmp_path / "cosim" / "results")
    ids = [v["id"] for v in _manifest(copy)["vectors"]]
    (results.parent / "cosim.json").write_text(json.dumps({"simulator": "verilator", "vectors": [
        {"id": vid, "task": i % 2, "status": "ok", "cycles": 100_000 + i} for i, vid in enumerate(ids)]}))
    report = compare_results(copy, results, tmp_path / "report")
    rows = _table((tmp_path / "report" / "report.md").read_text(), "Cycles and latency")
    assert rows[0] == ["source", "vector", "task", "cycles", "latency (ms)", "clock (MHz)"]
    assert rows[1] == ["cosim (verilator), RTL core", ids[0], "semseg", "100,000", "0.5000", "200"]
    assert rows[-1] == ["HLS estimate, board design (uniform)", "-", "each", "11,591", "0.0580", "200"]
    assert json.loads((tmp_path / "report" / "summary.json").read_text())["timing"] == report.timing


def test_segmentation_has_a_class_legend_and_depth_a_colour_bar_with_units(project, tmp_path):
    from codesign.model.data import CLASS_NAMES, DEPTH_UNITS
    from codesign.report.compare import _read_results, find_result_files, load_project, predictions_figure, task_outputs

    proj = load_project(project)
    by_task, _ = _read_results(proj, find_result_files(_golden_folder(project, tmp_path / "r"), proj.manifest))
    seg = predictions_figure(task_outputs(proj, 0, by_task[0]), proj.data)
    assert [t.get_text() for t in seg.legends[0].get_texts()] == list(CLASS_NAMES)
    depth = predictions_figure(task_outputs(proj, 1, by_task[1]), proj.data)
    assert not depth.legends and [ax.get_ylabel() for ax in depth.axes][-1] == DEPTH_UNITS
