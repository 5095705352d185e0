"""yosys synth_xilinx on the generated Verilog: resource classes, the real tool, the missing-tool hint."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from codesign.rtl import render_rtl
from codesign.rtl import synth

needs_yosys = pytest.mark.skipif(shutil.which("yosys") is None, reason="yosys not installed (apt-get install yosys)")


def test_cells_are_classified_like_a_vivado_utilisation_report():
    cells = {"LUT2": 10, "LUT6": 5, "FDRE": 7, "FDSE": 1, "DSP48E2": 3, "RAMB36E2": 2, "RAMB18E2": 3,
             "RAM32M16": 4, "SRL16E": 2, "URAM288": 1, "CARRY8": 6, "IBUF": 100, "BUFG": 1}
    res = synth.classify(cells)
    assert (res["lut"], res["ff"], res["dsp"], res["uram"], res["carry"]) == (15, 8, 3, 1, 6)
    assert res["lutram"] == 6
    assert res["bram36_equiv"] == 3.5


def test_missing_yosys_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(synth.shutil, "which", lambda name: None)
    with pytest.raises(synth.SynthError, match="apt-get install yosys"):
        synth.synth_rtl(tmp_path)


@needs_yosys
@pytest.mark.parametrize("weight_ports", [1, 4])
def test_shell_synthesizes_to_xilinx_primitives(tmp_path, weight_ports):
    rtl = tmp_path / "rtl"
    # the AXI shell: small enough for CI (~12 s; with 4 weight masters ~25 s)
    render_rtl(rtl, {"weight_ports": weight_ports}, placeholder_core=True)
    result = synth.synth_rtl(rtl, "xcup", log=tmp_path / "synth.log")
    # The shell is registers and muxes: AXI-Lite register file, burst engine(s), a byte adder;
    # W weight masters add W engines, the pointer registers and the read router
    # (measured: 689 FF / 893 LUT with one master, 1,643 / 2,394 with 4 weight masters).
    engines = 1 + (weight_ports if weight_ports > 1 else 0)
    assert 300 * engines < result.resources["ff"] < 3000 * engines
    assert 300 * engines < result.resources["lut"] < 5000 * engines
    assert result.resources["dsp"] == 0
    assert (tmp_path / "synth.log").exists()
    assert "codesign_top" in (tmp_path / "synth.log").read_text()


@pytest.mark.slow
@needs_yosys
def test_default_core_synthesizes_with_dsps_and_block_rams(tmp_path):
    """Full core, default model sizes: ~6 min of yosys on 2 cores."""
    rtl = tmp_path / "rtl"
    render_rtl(rtl, {})
    result = synth.synth_rtl(rtl, "xcup", log=tmp_path / "synth.log")
    assert result.resources["dsp"] >= 16          # at least the 2x8 MAC array
    assert result.resources["bram36_equiv"] >= 4  # the activation/weight buffers are block RAM
    assert synth.rtl_array(rtl) == "2x8"
