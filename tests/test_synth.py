"""`codesign synth`: yosys output parsing, the fit to the board's array, the does-not-fit exit,
and real yosys runs (the AXI shell in CI, the core at reduced arrays as slow tests)."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from codesign import api, cli
from codesign.cli import main
from codesign.report import synth as synth_flow
from codesign.rtl import synth, synth_fit

DATA = Path(__file__).parent / "data" / "yosys"
needs_yosys = pytest.mark.skipif(shutil.which("yosys") is None, reason="yosys not installed (apt-get install yosys)")
HIER_TOTALS = {  # stat_hier.txt's design hierarchy section
    "BUFG": 1, "CARRY4": 1764, "DSP48E2": 122, "FDRE": 7022, "FDSE": 13, "IBUF": 131, "INV": 1562,
    "LUT1": 213, "LUT2": 6301, "LUT3": 3908, "LUT4": 1179, "LUT5": 1125, "LUT6": 3890, "MUXF7": 822,
    "MUXF8": 304, "MUXF9": 120, "OBUF": 310, "RAM32M16": 29, "RAM64M8": 26, "RAMB18E2": 3, "RAMB36E2": 14,
    "SRL16E": 251}
CALIB = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)


# ---------------------------------------------------------------- reading yosys output

def test_cells_are_classified_like_a_vivado_utilisation_report():
    cells = {"LUT2": 10, "LUT6": 5, "FDRE": 7, "FDSE": 1, "DSP48E2": 3, "RAMB36E2": 2, "RAMB18E2": 3,
             "RAM32M16": 4, "SRL16E": 2, "URAM288": 1, "CARRY8": 6, "IBUF": 100, "BUFG": 1}
    res = synth.classify(cells)
    assert (res["lut"], res["ff"], res["dsp"], res["uram"], res["carry"]) == (15, 8, 3, 1, 6)
    assert res["lutram"] == 4 * 8 + 2          # a RAM32M16 takes the 8 LUTs of a SLICEM
    assert res["lut_total"] == 15 + 34
    assert res["bram36_equiv"] == 3.5


def test_stat_text_of_a_flat_run_is_the_top_module_histogram():
    """Captured from `stat -top codesign_top` after synth_xilinx -flatten of the default core at 1x8."""
    cells = synth.parse_stat_text((DATA / "stat_flat.txt").read_text())
    assert cells["DSP48E2"] == 122 and cells["RAMB36E2"] == 14 and cells["RAMB18E2"] == 3
    assert cells["FDRE"] == 6837 and cells["LUT6"] == 3674 and cells["RAM64M8"] == 26
    assert len(cells) == 22


def test_stat_text_of_a_per_module_run_is_the_hierarchy_total():
    """Captured from a run without -flatten: per-module sections, then the design hierarchy's totals."""
    text = (DATA / "stat_hier.txt").read_text()
    cells = synth.parse_stat_text(text)
    assert cells == HIER_TOTALS
    # the per-module sections hold smaller counts: the parser must not stop at the first one
    assert synth.parse_stat_text(text.split("=== design hierarchy ===")[0]) != cells


def test_stat_text_without_counts_is_a_one_line_error():
    with pytest.raises(synth.SynthError, match="no section"):
        synth.parse_stat_text("=== other ===\n   Number of cells: 3\n")


def test_longest_path_counts_cells_lut_levels_and_carry_blocks():
    """Captured ltp of the AXI shell, with the LUT and CARRY names on its path (select -list)."""
    luts = synth.parse_select_list((DATA / "ltp_luts.txt").read_text())
    carry = synth.parse_select_list((DATA / "ltp_carry.txt").read_text())
    lt = synth.parse_ltp((DATA / "ltp.txt").read_text(), luts, carry)
    assert lt == {"cells": 28, "lut_levels": 6, "carry_cells": 21, "from": "\\u_gmem.aw_addr [6]",
                  "to": "$auto$xilinx_dffopt.cc:347:execute$16292"}
    assert synth.parse_ltp((DATA / "ltp.txt").read_text())["lut_levels"] is None


def test_the_array_is_read_from_the_rtl_record(tmp_path):
    """rtl/rtl.json (render_uarch_rtl's record) gives the array; RTL without one (a Vitis export) has none."""
    (tmp_path / "cs_core.v").write_text("module cs_core;\n  localparam P = 17, Q = 128;\n")
    assert synth.rtl_core_shape(tmp_path) is None
    (tmp_path / "rtl.json").write_text('{"core": "uarch", "P": 8, "Q": 32, "weight_ports": 4}')
    assert synth.rtl_core_shape(tmp_path) == (8, 32)
    (tmp_path / "rtl.json").write_text('{"P": 8}')
    with pytest.raises(synth.SynthError, match="not a codesign RTL record"):
        synth.rtl_core_shape(tmp_path)


def shell_rtl(rtl: Path) -> Path:
    """The AXI shell's two modules alone (axi_master, axi_lite_control), one weight master."""
    from codesign.rtl.render import SHELL_TEMPLATES, render_units, weight_port_params

    render_units(rtl, SHELL_TEMPLATES, {"wp": weight_port_params(1)})
    return rtl


def test_missing_yosys_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(synth.shutil, "which", lambda name: None)
    with pytest.raises(synth.SynthError, match="apt-get install yosys"):
        synth.synth_rtl(tmp_path)


def test_a_unit_on_its_own_gets_its_parameters_and_top(tmp_path):
    script = synth.synth_script([Path("a.v")], "xcup", tmp_path, top="cs_vec", params={"EPB": 16, "EB": 1})
    assert "chparam -set EPB 16 -set EB 1 cs_vec; synth_xilinx -family xcup -top cs_vec -flatten;" in script
    # URAM288 only when asked (the flow asks on a board with URAM): yosys never infers it otherwise
    assert "-flatten -uram;" in synth.synth_script([Path("a.v")], "xcup", tmp_path, uram=True)
    assert "stat -top cs_vec;" in script


def test_current_pass_is_the_last_executing_line(tmp_path):
    log = tmp_path / "y.log"
    log.write_text("9.7. Executing OPT_EXPR pass (perform const folding).\n\n9.8. Executing ABC pass (technology "
                   "mapping using ABC).\nsomething else\n")
    assert synth.current_pass(log) == "ABC pass (technology mapping using ABC)"
    log.write_text("ABC: + strash\n" * 10)
    assert synth.current_pass(log) is None and synth.current_pass(tmp_path / "none.log") is None


# ---------------------------------------------------------------- the fit

def _samples(shapes, a, b, c):
    return [(p, q, a + b * p * q + c * (p + q)) for p, q in shapes]


def test_three_independent_sizes_recover_the_model_exactly():
    f = synth_fit.fit(_samples([(2, 32), (8, 32), (4, 64)], 700, Fraction(9, 2), 31))
    assert f.terms == synth_fit.FULL
    assert f.coef == (700, Fraction(9, 2), 31)
    assert f.at(17, 128) == 700 + Fraction(9, 2) * 17 * 128 + 31 * 145
    assert set(f.residuals) == {0}


def test_least_squares_over_four_sizes_is_exact_on_a_noisy_point():
    shapes = [(2, 32), (8, 32), (4, 64), (8, 64)]
    data = _samples(shapes, 100, 2, 5)
    data[3] = (8, 64, data[3][2] + 12)          # one point off the plane by 12
    f = synth_fit.fit(data)
    # exact rational least squares: the residuals are orthogonal to every column
    for col in synth_fit.FULL:
        assert sum(r * synth_fit.TERMS[col](p, q) for r, (p, q, _) in zip(f.residuals, data)) == 0
    assert max(abs(r) for r in f.residuals) > 0


def test_two_sizes_fit_two_terms_and_say_so():
    f = synth_fit.fit(_samples([(2, 32), (8, 32)], 50, 3, 0))
    assert f.terms == synth_fit.TWO_TERM and f.coef == (50, 3)
    assert "2 sizes" in f.why


def test_a_fixed_q_drops_the_p_plus_q_term():
    """The current core renders Q = 8 at every size: P*Q and P+Q are then affine in each other."""
    f = synth_fit.fit(_samples([(2, 8), (8, 8), (4, 8)], 10, 7, 3))
    assert f.terms == synth_fit.TWO_TERM
    assert f.at(272, 8) == 10 + 7 * 272 * 8 + 3 * 280   # exact all the same: c folds into a and b
    assert "affine" in f.why


def test_one_size_cannot_be_fitted():
    with pytest.raises(synth_fit.FitError, match="do not determine"):
        synth_fit.fit([(2, 8, 5.0), (2, 8, 6.0)])


def test_a_fixed_q_core_is_extrapolated_at_the_board_mac_count():
    target, why = synth_flow.fit_target((17, 128), [(2, 8), (8, 8), (4, 8)])
    assert target == (272, 8) and "fixed at 8" in why and "2,176 MACs" in why
    assert synth_flow.fit_target((17, 128), [(2, 32), (8, 32), (4, 64)])[0] == (17, 128)


def test_sizes_option():
    assert synth_flow.parse_sizes("auto") == "auto" and synth_flow.parse_sizes("BOARD") == "board"
    assert synth_flow.parse_sizes("2x8, 4x16") == [(2, 8), (4, 16)]
    for bad in ("2x8", "2x8,2x8", "2by8,4x8", "0x8,2x8"):
        with pytest.raises(ValueError, match="--sizes"):
            synth_flow.parse_sizes(bad)
    assert synth_flow.plan("auto", (4, 16), 16) == ("direct", [(4, 16)])
    assert synth_flow.plan("auto", (17, 128), 32) == ("fit", [(1, 32), (4, 32), (2, 64)])
    assert synth_fit.choose_terms(synth_flow.reduced_sizes(32))[0] == synth_fit.FULL
    assert cli.SYNTH_DIRECT_MAX_MACS == synth_flow.DIRECT_MAX_MACS


# ---------------------------------------------------------------- the flow (yosys faked)

@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "proj"
    api.generate("default", out, images=1, calib=CALIB)
    return out


def _board_array(project: Path) -> tuple[int, int]:
    """The tiling the project's estimate picked (the array `codesign synth` fits to)."""
    tiling = json.loads((project / "reports" / "estimate.json").read_text())["tiling"]
    return tiling["P"], tiling["Q"]


def _fake_yosys(dsp_per_mac: float, base_dsp: int = 100):
    """synth_rtl stand-in: counts linear in the array the rendered core has."""
    def fake(rtl_dir, family="xcup", log=None, timeout_s=0, mode="flat", progress=None, label="", uram=None):
        p, q = synth.rtl_core_shape(rtl_dir)
        macs = p * q
        cells = {"DSP48E2": int(base_dsp + dsp_per_mac * macs), "LUT6": 1000 + 50 * macs, "FDRE": 2000 + 40 * macs,
                 "RAMB36E2": 14, "RAMB18E2": 2}
        if progress:
            progress(f"synth {label}: 30 s, ABC pass")
        return synth.SynthResult(family, 1.0, cells, synth.classify(cells), {"cells": 40, "lut_levels": 9,
                                                                          "carry_cells": 20}, mode, 1.0)
    return fake


def _fake_flow(monkeypatch, fake) -> None:
    """Both yosys paths of the flow faked: a whole-core run, and per-unit runs (the default mode),
    whose one unit is the whole core."""
    def units(rtl_dir, family="xcup", out=None, timeout_s=0, progress=None, uram=None, label="", skip=()):
        res = fake(rtl_dir, family, progress=progress, label=label, mode="per-unit")
        return synth.UnitsResult(family, {"cs_mac": res}, {"cs_mac": 1}, res)
    monkeypatch.setattr(synth_flow, "synth_rtl", fake)
    monkeypatch.setattr(synth_flow, "synth_units", units)


def test_fitted_report_says_it_is_extrapolated(project, monkeypatch, capsys):
    _fake_flow(monkeypatch, _fake_yosys(0.5))
    assert main(["synth", str(project), "--sizes", "1x32,2x32,2x64"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("EXTRAPOLATED, not synthesized at the board's size")
    assert "synth 2x32 (2/3): 30 s, ABC pass" in out.err
    rep = json.loads((project / "reports" / "synth.json").read_text())
    # the docs/UARCH.md core renders the asked array: the fit is evaluated at the board's own
    p, q = _board_array(project)
    assert rep["method"] == "fit" and rep["target_array"] == {"P": p, "Q": q}
    assert [s["array"] for s in rep["sizes"]] == [{"P": 1, "Q": 32}, {"P": 2, "Q": 32}, {"P": 2, "Q": 64}]
    assert rep["board_figure"]["DSP48E2"] == 100 + 0.5 * p * q
    assert rep["board_figure"]["LUT"] == 1000 + 50 * p * q
    assert rep["fit"]["DSP48E2"]["model"] == "r = a + b*P*Q + c*(P+Q)"
    est = json.loads((project / "reports" / "estimate.json").read_text())["resources"]
    assert rep["estimate"]["DSP48E2"] == est["dsp"]["used"]
    assert rep["ratio"]["DSP48E2"] == pytest.approx((100 + 0.5 * p * q) / est["dsp"]["used"])
    assert rep["fits_board"] and rep["ltp"]["2x64"]["lut_levels"] == 9
    assert rep["core"]["core"] == "uarch" and "core: uarch (docs/UARCH.md" in out.out


def test_each_size_is_set_next_to_the_resource_model_of_its_uarch(project, monkeypatch, capsys):
    """The core of every size is the project's Uarch with only P and Q changed, and its model is
    uarch.resource_use of that Uarch."""

    from codesign.boards import load_board

    _fake_flow(monkeypatch, _fake_yosys(0.5))
    assert main(["synth", str(project), "--sizes", "1x32,2x32"]) == 0
    rep = json.loads((project / "reports" / "synth.json").read_text())
    man = json.loads((project / "data" / "manifest.json").read_text())
    board = load_board("zcu104")
    u = synth_flow.project_uarch(project, man, board, _board_array(project))
    assert (u.P, u.Q, u.weight_ports) == (*_board_array(project), 4)
    for size, (p, q) in zip(rep["sizes"], [(1, 32), (2, 32)]):
        assert size["model"] == synth_flow.model_resources(dataclasses.replace(u, P=p, Q=q), board)
        assert size["model_ratio"]["DSP48E2"] == size["measured"]["DSP48E2"] / size["model"]["DSP48E2"]
    assert "yosys / resource model at each size" in capsys.readouterr().out


def test_a_skipped_unit_is_named_and_its_groups_model_figures_stand_in(project, monkeypatch, capsys):
    """--skip-units cs_router: the unit is not synthesized, the output says so, and the total at each
    size is yosys's sum plus the resource model's router group (so the board check still sees it)."""
    fake = _fake_yosys(0.5)
    seen = []

    def units(rtl_dir, family="xcup", out=None, timeout_s=0, progress=None, uram=None, label="", skip=()):
        seen.append(skip)
        res = fake(rtl_dir, family, progress=progress, label=label, mode="per-unit")
        return synth.UnitsResult(family, {"cs_mac": res}, {"cs_mac": 1}, res, {"cs_router": 1})
    monkeypatch.setattr(synth_flow, "synth_units", units)
    assert main(["synth", str(project), "--sizes", "1x32,2x32", "--skip-units", "cs_router"]) == 0
    assert seen == [("cs_router",)] * 2
    out = capsys.readouterr().out
    assert "NOT synthesized (--skip-units): cs_router x1" in out and "the resource model's figures stand in" in out
    rep = json.loads((project / "reports" / "synth.json").read_text())
    size = rep["sizes"][0]
    router = size["unit_model"]["router"]
    assert router["DSP48E2"] > 0 and size["stand_in"] == {"router": router}
    assert size["measured"]["DSP48E2"] == int(100 + 0.5 * 32) + router["DSP48E2"]
    assert size["measured"]["LUT"] == 1000 + 50 * 32 + router["LUT"]
    assert main(["synth", str(project), "--sizes", "1x32,2x32", "--skip-units", "cs_nothing"]) == 2
    assert "--skip-units: cs_nothing" in capsys.readouterr().err


def test_a_design_over_the_board_exits_3_naming_the_resource(project, monkeypatch, capsys):
    p, q = _board_array(project)
    per_mac = 2.0 if 100 + p * q <= 1728 else 1.0   # 100 + per_mac * P*Q DSPs > zcu104's 1,728
    need = 100 + per_mac * p * q
    _fake_flow(monkeypatch, _fake_yosys(per_mac))
    assert main(["synth", str(project), "--sizes", "1x32,2x32"]) == cli.EXIT_DOES_NOT_FIT == 3
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("codesign synth: error: the design does not fit the board (extrapolated): "
                   f"DSP48E2 {need:,.0f} > 1,728 on zcu104")
    rep = json.loads((project / "reports" / "synth.json").read_text())
    assert not rep["fits_board"] and rep["over"] == [{"resource": "DSP48E2", "need": need, "board": 1728}]


def test_a_small_board_array_is_synthesized_directly(project, monkeypatch, capsys):
    _fake_flow(monkeypatch, _fake_yosys(0.5))
    monkeypatch.setattr(synth_flow, "_board_array", lambda estimate: (2, 32))   # 64 MACs <= DIRECT_MAX_MACS
    assert main(["synth", str(project)]) == 0
    assert capsys.readouterr().out.startswith("yosys synthesized the core at the board's 2x32 array: the figures "
                                              "are measured, not extrapolated")
    rep = json.loads((project / "reports" / "synth.json").read_text())
    assert rep["method"] == "direct" and [s["array"] for s in rep["sizes"]] == [{"P": 2, "Q": 32}]
    assert rep["board_figure"]["DSP48E2"] == 100 + 0.5 * 64 and rep["fit"] == {}


def test_an_array_the_core_cannot_take_is_a_one_line_error(project, monkeypatch, capsys):
    _fake_flow(monkeypatch, _fake_yosys(0.5))
    assert main(["synth", str(project), "--sizes", "1x8,2x8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("codesign synth: error: the core cannot be rendered at 1x8: "
                   "the 1x8 array: Q must be a multiple of 2*EPB=32")


def test_scratch_folder_with_foreign_files_is_kept(project, monkeypatch, capsys):
    _fake_flow(monkeypatch, _fake_yosys(0.5))
    mine = project / "synth" / "1x32" / "notes.txt"
    mine.parent.mkdir(parents=True, exist_ok=True)
    mine.write_text("mine")
    assert main(["synth", str(project), "--sizes", "1x32,2x32"]) == 2
    assert "did not write (notes.txt)" in capsys.readouterr().err
    assert mine.read_text() == "mine"
    mine.unlink()


def test_a_second_run_of_the_same_verilog_reuses_the_yosys_result(tmp_path, monkeypatch):
    """yosys takes minutes per size: synth_rtl keeps its result beside its outputs, keyed by the
    Verilog, the family, the mode, the top and the parameters."""
    rtl = shell_rtl(tmp_path / "rtl")
    runs = []

    def fake_run(cmd, log, timeout_s, progress, label):
        runs.append(label)
        out = log.parent
        shutil.copy(DATA / "stat_flat.txt", out / "stat.txt")
        for name in ("ltp", "ltp_luts", "ltp_carry"):
            shutil.copy(DATA / f"{name}.txt", out / f"{name.replace('ltp_', '')}.txt")
        return 1.0

    monkeypatch.setattr(synth, "find_yosys", lambda: "yosys")
    monkeypatch.setattr(synth, "run_yosys", fake_run)
    first = synth.synth_rtl(rtl, log=tmp_path / "out" / "y.log")
    again = synth.synth_rtl(rtl, log=tmp_path / "out" / "y.log")
    assert len(runs) == 1 and again == first and first.cells["DSP48E2"] == 122
    synth.synth_rtl(rtl, log=tmp_path / "out" / "y.log", mode="per-module")
    (rtl / "axi_master.v").write_text((rtl / "axi_master.v").read_text() + "// changed\n")
    synth.synth_rtl(rtl, log=tmp_path / "out" / "y.log", mode="per-module")
    assert len(runs) == 3


# ---------------------------------------------------------------- real yosys

@needs_yosys
def test_timeout_kills_yosys_with_a_one_line_error(tmp_path):
    rtl = shell_rtl(tmp_path / "rtl")
    with pytest.raises(synth.SynthError, match=r"did not finish shell in 1 s \(--timeout\)"):
        synth.synth_rtl(rtl, "xcup", log=tmp_path / "out" / "synth.log", timeout_s=1, label="shell",
                        top="axi_master")


@needs_yosys
def test_an_interrupt_ends_yosys_and_its_abc_processes(tmp_path, monkeypatch):
    rtl = shell_rtl(tmp_path / "rtl")
    started = []
    real_popen = synth.subprocess.Popen
    monkeypatch.setattr(synth.subprocess, "Popen", lambda *a, **k: started.append(real_popen(*a, **k)) or started[-1])
    monkeypatch.setattr(synth, "PROGRESS_EVERY_S", 0.5)

    def ctrl_c(line: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synth.synth_rtl(rtl, "xcup", log=tmp_path / "out" / "synth.log", progress=ctrl_c, top="axi_master")
    assert started[0].returncode is not None        # reaped
    with pytest.raises(ProcessLookupError):         # and nothing of its session is left
        os.killpg(started[0].pid, 0)


@needs_yosys
def test_the_mac_array_is_one_dsp48e2_per_packed_pair_and_what_the_model_counts(tmp_path):
    """cs_mac on its own (~20 s): P*Q/2 DSP48E2 exactly, and its FF and LUT within the +-15% of the
    resource model's mac_pair part (codesign.schedule.uarch.logic_parts)."""
    from types import SimpleNamespace

    from codesign.rtl.render import _environment, uarch_core_params
    from codesign.schedule.uarch import derive_uarch, logic_parts

    prog = SimpleNamespace(instrs=[], elem_bytes=1, wbits=8, abits=8)
    u = dataclasses.replace(derive_uarch(prog, 2, 32, 16, 1), acc_w=25)   # int8 sums of k = 768
    rtl = tmp_path / "rtl"
    rtl.mkdir()
    (rtl / "cs_mac.v").write_text(_environment().get_template("uarch/cs_mac.v.j2").render())
    acc_w = uarch_core_params(u)["ACC_W"]
    res = synth.synth_rtl(rtl, "xcup", log=tmp_path / "out" / "y.log", top="cs_mac",
                          params={"P": u.P, "Q": u.Q, "ACC_W": acc_w, "TW": 8})
    cell = next(p for p in logic_parts(u) if p.name == "mac_pair")
    assert res.resources["dsp"] == u.dsps_array == cell.count
    for key in ("ff", "lut"):
        model = cell.count * getattr(cell, key)
        assert abs(res.resources[key] / model - 1) <= synth_flow.TOLERANCE, (key, res.resources[key], model)


def _render_unit(rtl: Path, templates: tuple[str, ...]) -> None:
    """Templates without variables into rtl/."""
    from codesign.rtl.render import _environment

    rtl.mkdir()
    env = _environment()
    for name in templates:
        (rtl / name.split("/")[-1].replace(".j2", "")).write_text(env.get_template(name).render())


@needs_yosys
def test_the_drain_is_what_the_model_counts(tmp_path):
    """cs_drain on its own at 1x32, ACC_W 31 (~15-30 s): its DSP48E2 exactly, LUT and FF within the
    +-15% of the model's drain group (drain_lane x EPB, drain_control, column_select)."""
    from types import SimpleNamespace

    from codesign.rtl.render import uarch_core_params
    from codesign.schedule.uarch import derive_uarch, logic_parts

    prog = SimpleNamespace(instrs=[], elem_bytes=1, wbits=8, abits=8)
    u = dataclasses.replace(derive_uarch(prog, 1, 32, 16, 1), acc_w=31)
    rtl = tmp_path / "rtl"
    _render_unit(rtl, ("uarch/cs_drain.v.j2", "uarch/cs_fifo.v.j2", "cs_mul.v.j2", "cs_rshift_round.v.j2",
                       "cs_saturate.v.j2"))
    cs = uarch_core_params(u)
    params = {"Q": u.Q, "EPB": u.epb, "EW": 8, "ACC_W": cs["ACC_W"], "ABITS": 8, "TW": 65, "LW": 32,
              "OLOG": cs["OLOG"], "TOKW": cs["TOKW"], "BAW": cs["BAW"], "MULT_W": cs["MULT_W"]}
    res = synth.synth_rtl(rtl, "xcup", log=tmp_path / "out" / "y.log", top="cs_drain", params=params, mode="per-module")
    parts = {p.name: p for p in logic_parts(u)}
    model = {k: sum(parts[n].count * getattr(parts[n], k) for n in ("drain_lane", "drain_control", "column_select"))
             for k in ("dsp", "lut", "ff")}
    # two per lane exactly; the address products follow the bank / list widths (41 at edge-moe-tiny's)
    assert model["dsp"] == 41 and abs(res.resources["dsp"] - model["dsp"]) <= 1, res.resources["dsp"]
    for key, got in (("lut", res.resources["lut_total"]), ("ff", res.resources["ff"])):
        assert abs(got / model[key] - 1) <= synth_flow.TOLERANCE, (key, got, model[key])


def _edge_moe_tiny_memories():
    """A Uarch with edge-moe-tiny's memory shapes at zcu104's 16x64 (768-wide weight rows, 129 tokens,
    16 experts, moe_acc on chip), zcu104's URAM budget, and the template variables rendered there."""
    from types import SimpleNamespace

    from codesign.boards import load_board
    from codesign.rtl.render import uarch_core_params
    from codesign.schedule.tiling import Budget
    from codesign.schedule.uarch import derive_uarch

    prog = SimpleNamespace(instrs=[], elem_bytes=1, wbits=8, abits=8)
    u = dataclasses.replace(derive_uarch(prog, 16, 64, 16, 4), slot_row_beats=48, max_tokens=129,
                            max_experts=16, acc_tokens=129, acc_row_words=12, acc_words=1548, max_dh=64,
                            bank_beats=6192, instrs=303)
    budget = Budget(load_board("zcu104")).limit("uram")
    return u, budget, uarch_core_params(u, uram_budget=budget)


def test_the_rtl_declares_each_memory_as_the_model_binds_it(tmp_path):
    """The render passes resource_use's binding to the memories the model counts: cs_wgt's weight
    slots (one memory of both slots per group, the model's shape), cs_moeacc, the abank copies and
    the router's lists get it as cs_ram's STYLE, sbuf, the program and the sequencer's lists as a
    ram_style attribute."""
    from codesign.rtl.render import render_uarch_rtl
    from codesign.schedule.uarch import RAM_STYLES, resource_use

    u, budget, cs = _edge_moe_tiny_memories()
    bound = {m.name: m for m in resource_use(u, budget).memories}
    assert {n: bound[n].binding for n in ("abank", "wslot", "moe_acc", "lists", "sbuf")} == {
        "abank": "uram", "wslot": "uram", "moe_acc": "uram", "lists": "lutram", "sbuf": "bram36"}
    assert (bound["wslot"].copies, bound["wslot"].depth) == (u.GW, 2 * u.epb * u.slot_row_beats) == (4, 1536)
    assert cs["ram_style"] == {n: RAM_STYLES[m.binding] for n, m in bound.items()}
    render_uarch_rtl(tmp_path, u, uram_budget=budget)
    text = {p.stem: p.read_text() for p in tmp_path.glob("*.v")}
    assert '.DEPTH(2 * EPB * KBM), .AW(SAW), .STYLE("ultra")) u_rows' in text["cs_wgt"]
    assert '.STYLE("ultra")) u_mem' in text["cs_moeacc"]
    assert '.STYLE("ultra")) u_copy' in text["cs_core"]
    assert text["cs_router"].count('.STYLE("distributed")) u_') == 4
    assert '(* ram_style = "block" *) reg  [Q*ACC_W-1:0] sbuf' in text["cs_attn"]
    assert '(* ram_style = "block" *) reg  [BW-1:0] prog_mem' in text["cs_seq"]
    # the sequencer's lists are read combinationally: LUTRAM, a copy a read port (P + 4)
    assert (bound["seq_lists"].binding, bound["seq_lists"].copies) == ("lutram", u.P + 4)
    for mem in ("idx_mem", "score_mem"):
        assert f'(* ram_style = "distributed" *) reg  [BB*4-1:0] {mem} ' in text["cs_seq"]
    # the weight slot's depth in the RTL is the model's
    assert f"localparam [31:0] KBM = {u.slot_row_beats};" in text["cs_core"]


@needs_yosys
def test_the_weight_slots_and_moe_acc_map_to_the_urams_the_model_counts(tmp_path):
    """yosys (-uram off: the attribute alone) maps cs_ram with the weight slots' and moe_acc's shapes
    and rendered STYLE to the URAM288 the model counts and no block RAM (~10 s); with no style it
    takes block RAM instead (at edge-moe-tiny's 16x64: 24 RAMB36 and 57 RAMB18, docs/SYNTH.md)."""
    from codesign.schedule.uarch import resource_use

    u, budget, cs = _edge_moe_tiny_memories()
    bound = {m.name: m for m in resource_use(u, budget).memories}
    for name in ("wslot", "moe_acc"):
        m, rtl = bound[name], tmp_path / name / "rtl"
        rtl.parent.mkdir()
        _render_unit(rtl, ("uarch/cs_ram.v.j2",))
        aw = max(1, (m.depth - 1).bit_length())
        (rtl / "mem_top.v").write_text(
            f"module mem_top(input clk, we, re, input [{aw - 1}:0] waddr, raddr, input [{m.width - 1}:0] wdata,\n"
            f"               output [{m.width - 1}:0] rdata);\n"
            f"    cs_ram #(.WIDTH({m.width}), .DEPTH({m.depth}), .AW({aw}), .STYLE(\"{cs['ram_style'][name]}\")) u (\n"
            f"        .clk(clk), .we(we), .waddr(waddr), .wdata(wdata), .re(re), .raddr(raddr), .rdata(rdata));\n"
            f"endmodule\n")
        res = synth.synth_rtl(rtl, "xcup", log=tmp_path / name / "out" / "y.log", top="mem_top", uram=False)
        assert (res.resources["uram"], res.resources["bram36_equiv"]) == (m.count / m.copies, 0), (name, res.resources)


def test_the_per_unit_clock_proxy_is_the_longest_units_path():
    """Per-unit runs: the core's ltp is the longest of the units' own paths, naming the unit."""
    def res(cells):
        return synth.SynthResult("xcup", 1.0, {}, {}, {"cells": cells, "lut_levels": cells - 1} if cells else {})

    got = synth._longest({"glue": res(3), "cs_seq": res(9), "cs_mac": res(5), "cs_ram.3": res(0)})
    assert got == {"cells": 9, "lut_levels": 8, "unit": "cs_seq"}
    assert synth._longest({"glue": res(0)}) == {}
