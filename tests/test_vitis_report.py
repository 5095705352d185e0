"""`codesign report`: Vitis HLS's csynth.xml and cosim report next to the estimate and the schedule
table, on synthetic reports in Vitis HLS's schema (tests/data/vitis_project)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from codesign.cli import main
from codesign.report.vitis import read_csynth

FIXTURE = Path(__file__).parent / "data" / "vitis_project"
REPORT = Path("codesign") / "solution1" / "syn" / "report"


@pytest.fixture
def project(tmp_path) -> Path:
    return Path(shutil.copytree(FIXTURE, tmp_path / "proj"))


def _report(capsys, project: Path) -> list[str]:
    assert main(["report", str(project)]) == 0
    return capsys.readouterr().out.splitlines()


def test_resources_latency_and_loops_next_to_the_estimate_and_the_schedule(project, capsys):
    lines = _report(capsys, project)
    assert lines[0] == f"Vitis HLS 2023.2 synthesis of codesign_top for xczu7ev-ffvc1156-2-e ({project / REPORT / 'csynth.xml'})"
    assert "clock: target 5.00 ns, estimated 3.650 ns" in lines
    rows = {line.split()[0]: line.split()[1:] for line in lines if line[:1].isupper()}
    assert rows["DSP"] == ["1,204", "1,160", "1,728"]
    assert rows["BRAM_18K"] == ["96", "86", "624"]  # the estimate counts 43 BRAM36 = 86 BRAM_18K
    assert "codesign estimate  11,591 per task (0.058 ms at 200 MHz)" in lines
    assert ("cosim              Pass: min 12,020, avg 12,210, max 12,400 per run (codesign_top_cosim.rpt); "
            "avg / estimate 1.05x") in lines
    loops = [line.split() for line in lines if line.startswith(("MATMUL", "ATTN", "GATE"))]
    assert ["MATMUL", "mac_block", "1", "1", "8..512", "11..515", "op_matmul"] in loops  # nested in `tiles`
    assert ["ATTN", "score_block", "1", "2", "<-", "differs", "16", "35", "op_attn"] in loops
    assert ["ATTN", "ev_pass", "1", "not", "in", "the", "report", "-", "-", "-"] in loops
    assert lines[-1] == ("loops of the report that no schedule row names: run (codesign_top, II -), "
                         "VITIS_LOOP_1130_1 (op_attn, II 1), tiles (op_matmul, II -)")


def test_without_a_cosim_report_it_says_how_to_make_one(project, capsys):
    shutil.rmtree(project / "codesign" / "solution1" / "sim")
    assert "cosim              no *_cosim.rpt (CODESIGN_COSIM=1 vitis_hls -f run_hls.tcl runs it)" in _report(
        capsys, project)


def test_without_vitis_reports_it_names_the_files_it_looked_for(project, capsys):
    shutil.rmtree(project / "codesign")
    assert main(["report", str(project)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"codesign report: error: no Vitis HLS reports: looked for {project}/*/solution*/syn/report/"
                   f"csynth.xml (and {project}/*/solution*/sim/report/*_cosim.rpt); run `vitis_hls -f run_hls.tcl` "
                   f"(make hls) in the project first")


def test_a_broken_report_is_one_line(project, capsys):
    (project / REPORT / "op_attn_csynth.xml").write_text("<profile><unclosed>")
    assert main(["report", str(project)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"codesign report: error: {project / REPORT / 'op_attn_csynth.xml'} is not a readable "
                          f"Vitis HLS report (ParseError") and "\n" not in err


def test_the_dsp_column_of_older_reports_is_read(project):
    path = project / REPORT / "csynth.xml"
    path.write_text(path.read_text().replace("<DSP>1204</DSP>", "<DSP48E>1204</DSP48E>"))
    assert read_csynth(path).resources["DSP"] == "1204"
