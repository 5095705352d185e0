"""The generated HLS C++ against the Python reference: csim with g++ must be bit-exact.

Each test renders a project (data/ + firmware/ + tb/), builds it with plain g++ (no Vitis) and
runs the testbench, which compares every traced tensor of every test vector with the golden
act image written by codesign.emit.data.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from codesign.boards import load_board
from codesign.emit.data import compare_act, load_manifest
from codesign.emit.hls import CSIM_CXXFLAGS, hls_tile, render_hls
from codesign.model.config import ModelConfig
from codesign.sim import csim
from codesign.sim.csim import CsimError, run_csim
from codesign.testing import make_test_design, write_test_data

needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")

BOARD = load_board("zcu104")


def _render_project(project_dir: Path, design, tile: dict | None = None) -> Path:
    write_test_data(project_dir / "data", design)
    render_hls(project_dir, design.prog, BOARD, tile=tile)
    return project_dir


def _assert_bit_exact(result, design) -> None:
    assert result.failed == {}
    assert sorted(result.passed) == sorted(v.id for v in design.vectors)
    assert result.returncode == 0 and result.ok


@pytest.fixture(scope="module")
def default_design():
    return make_test_design()


@pytest.fixture(scope="module")
def default_project(default_design, tmp_path_factory):
    return _render_project(tmp_path_factory.mktemp("default"), default_design)


@pytest.fixture(scope="module")
def default_csim(default_project):
    """The default design built once and simulated, its final act images dumped."""
    dump_dir = default_project / "dump"
    return default_project, run_csim(default_project, dump_dir=dump_dir), dump_dir


@needs_gxx
def test_default_design_is_bit_exact_for_every_task(default_design, default_csim):
    project, result, dump_dir = default_csim
    _assert_bit_exact(result, default_design)
    assert {v.task for v in default_design.vectors} == set(range(default_design.prog.num_tasks))
    man = load_manifest(project)
    for vec in man["vectors"]:
        dumped = (dump_dir / f"{vec['id']}.act.bin").read_bytes()
        assert compare_act(man, dumped, (project / "data" / vec["expected"]).read_bytes()) is None


@needs_gxx
def test_corrupted_weight_fails_at_the_layer_that_reads_it(default_design, default_csim, tmp_path):
    project = Path(shutil.copytree(default_csim[0], tmp_path / "project"))  # keeps the built testbench
    weights = {r["name"]: r for r in load_manifest(project)["weights"]}
    blob = bytearray((project / "data" / "weights.bin").read_bytes())
    blob[weights["b2.qkv.w"]["addr"]] ^= 0x80
    (project / "data" / "weights.bin").write_bytes(bytes(blob))

    result = run_csim(project)

    assert result.returncode != 0 and not result.ok
    assert result.failed == {v.id: "b2.qkv" for v in default_design.vectors}
    assert "first mismatch at b2.qkv (byte offset" in result.log


@needs_gxx
def test_16_bit_activation_design_is_bit_exact(tmp_path):
    design = make_test_design(abits=12, wbits=8)
    assert design.prog.elem_bytes == 2
    _assert_bit_exact(run_csim(_render_project(tmp_path, design)), design)


@needs_gxx
def test_rendered_cpp_has_hls_interfaces_and_builds_without_warnings(default_csim):
    project, result, _ = default_csim
    top = (project / "firmware" / "codesign_top.cpp").read_text()
    for port in ("prog", "wgt", "act"):
        assert f"#pragma HLS INTERFACE m_axi port={port} bundle=gmem offset=slave depth=" in top
    for port in ("prog", "wgt", "act", "task", "return"):
        assert f"#pragma HLS INTERFACE s_axilite port={port} bundle=control" in top
    assert "void codesign_top(const uint32_t *prog, const int8_t *wgt, int8_t *act, uint32_t task)" in top
    assert {"-Wall", "-Wextra"} <= set(CSIM_CXXFLAGS)
    assert result.build_seconds > 0, "the fixture must have compiled, so the log holds the compiler output"
    assert "warning" not in result.log


@needs_gxx
def test_other_config_and_odd_tile_are_bit_exact(tmp_path):
    cfg = ModelConfig(embed_dim=32, num_heads=2, depth=2, moe_blocks=(1,), num_experts=4, top_k=1)
    design = make_test_design(cfg)
    # A 3 x 5 MAC array leaves partial row and column blocks for every layer.
    _assert_bit_exact(run_csim(_render_project(tmp_path, design, tile={"P": 3, "Q": 5})), design)


# ---------------------------------------------------------------- no compiler needed

def test_testbench_lists_follow_the_manifest(default_project):
    project = default_project
    man = load_manifest(project)
    vectors = (project / "data" / "tb_vectors.txt").read_text().splitlines()
    assert vectors == [f"{v['id']} {v['task']} {v['start']} {v['expected']}" for v in man["vectors"]]
    regions = [line.split() for line in (project / "data" / "tb_regions.txt").read_text().splitlines()]
    assert [name for name, _, _ in regions] == man["trace"]
    patch = next(r for r in man["regions"] if r["name"] == "patch")
    assert regions[0] == ["patch", str(patch["addr"]), str(patch["shape"][0] * patch["shape"][1])]


def test_tile_defaults_cover_the_program_and_reject_small_buffers(default_design):
    tile = hls_tile(default_design.prog)
    assert (tile["P"], tile["Q"]) == (4, 16)
    assert tile["max_m"] % 4 == 0 and tile["max_m"] >= 17 and tile["max_k"] == 256
    with pytest.raises(ValueError, match="max_k=8 < 256"):
        hls_tile(default_design.prog, {"max_k": 8})
    with pytest.raises(ValueError, match="unknown tile key"):
        hls_tile(default_design.prog, {"R": 2})


def test_missing_compiler_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr(csim.shutil, "which", lambda name: None)
    with pytest.raises(CsimError, match=r"^g\+\+ not found: apt-get install g\+\+$"):
        run_csim(tmp_path)
