"""Board files, their loader, and the Tcl/driver templates rendered from them.

Vivado and Vitis HLS are not available in CI, so the rendered Tcl is executed by
plain `tclsh` with every tool command stubbed: this proves the scripts parse,
that their own Tcl logic (env overrides, paths, guards) runs, and which tool
commands they would issue, in which order.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from codesign.boards import Board, BoardError, known_boards, load_board
from codesign.emit.tcl import render_tcl_and_driver
from codesign.testing import alias_bomb, pynq_host_device, register_address

PROJECT = "moe_vit"
ALL_BOARDS = ["kv260", "pynq-z2", "ultra96v2", "zcu102", "zcu104"]

EXPECTED_PART_AND_PERIOD = {
    "zcu104": ("xczu7ev-ffvc1156-2-e", "5.000"),
    "zcu102": ("xczu9eg-ffvb1156-2-e", "5.000"),
    "kv260": ("xck26-sfvc784-2LV-c", "5.000"),
    "ultra96v2": ("xczu3eg-sbva484-1-e", "6.667"),
    "pynq-z2": ("xc7z020clg400-1", "10.000"),
}

TCLSH = shutil.which("tclsh")
needs_tclsh = pytest.mark.skipif(TCLSH is None, reason="tclsh not installed: rendered Tcl cannot be executed")

# Stubs for the Vivado / Vitis HLS commands. Every unknown command is recorded as
# one "CALL name args..." line. Query commands (get_*) return their last argument
# so the scripts' "is it installed?" checks see a non-empty answer; the two queries
# whose value the script then uses as data are stubbed explicitly.
TCL_STUBS = r"""
proc record {cmd arguments} {
    puts stdout [string map {"\n" " "} "CALL $cmd [join $arguments { }]"]
}
proc unknown {cmd args} {
    record $cmd $args
    if {[string match get_* $cmd]} { return [lindex $args end] }
    return ""
}
proc get_property {args} {
    record get_property $args
    if {[lindex $args 0] eq "PROGRESS"} { return "100%" }
    return ""
}
proc get_files {args} {
    record get_files $args
    return $::env(STUB_HWH)
}
source [lindex $argv 0]
"""


# --- loading -------------------------------------------------------------------

def test_known_boards_lists_every_shipped_board():
    assert known_boards() == ALL_BOARDS


@pytest.mark.parametrize("name", ALL_BOARDS)
def test_every_board_loads_with_consistent_fields(name):
    board = load_board(name)
    assert isinstance(board, Board)
    assert board.name == name
    assert board.part == EXPECTED_PART_AND_PERIOD[name][0]
    assert board.resources.dsp > 0 and board.resources.lut > 0
    assert board.ddr_bytes_per_cycle > 0
    assert board.clock_hz == board.clock_mhz * 1e6


def test_derived_properties_for_zcu104():
    board = load_board("zcu104")
    # 19.2 GB/s * 0.7 / 200 MHz
    assert board.ddr_bytes_per_cycle == pytest.approx(67.2)
    assert board.clock_hz == pytest.approx(200e6)


def test_families_select_the_matching_processing_system():
    assert load_board("pynq-z2").ps.type == "processing_system7"
    assert load_board("pynq-z2").memory.axi_data_bits == 64
    assert load_board("zcu104").ps.type == "zynq_ultra_ps_e"


def test_board_can_be_loaded_by_path(tmp_path):
    path = tmp_path / "custom.yaml"
    shutil.copy(Path(__file__).resolve().parents[1] / "boards" / "kv260.yaml", path)
    assert load_board(str(path)).part == "xck26-sfvc784-2LV-c"


def test_unknown_board_error_lists_known_boards():
    with pytest.raises(BoardError) as excinfo:
        load_board("zcu999")
    message = str(excinfo.value)
    assert "zcu999" in message and "\n" not in message
    for name in ALL_BOARDS:
        assert name in message


def _write_board_yaml(tmp_path: Path, edit) -> Path:
    import yaml

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "boards" / "zcu104.yaml").read_text())
    edit(raw)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_missing_field_error_names_file_and_field(tmp_path):
    path = _write_board_yaml(tmp_path, lambda raw: raw.pop("part"))
    with pytest.raises(BoardError, match=r"edited\.yaml: missing field\(s\): part$"):
        load_board(str(path))


def test_missing_nested_field_is_named_with_its_section(tmp_path):
    path = _write_board_yaml(tmp_path, lambda raw: raw["memory"].pop("hp_ports"))
    with pytest.raises(BoardError, match=r"missing field\(s\): memory\.hp_ports"):
        load_board(str(path))


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda raw: raw["resources"].update(dsp=0), "resources.dsp"),
        (lambda raw: raw["resources"].update(lut=-5), "resources.lut"),
        (lambda raw: raw["resources"].update(bram36="312"), "resources.bram36"),
        (lambda raw: raw["resources"].update(ff=True), "resources.ff"),
        (lambda raw: raw.update(clock_mhz=0), "clock_mhz"),
        (lambda raw: raw.update(clock_mhz=1e12), "clock_mhz"),
        (lambda raw: raw.update(clock_mhz=float("nan")), "clock_mhz"),
        (lambda raw: raw["memory"].update(ddr_gbps=float("inf")), "memory.ddr_gbps"),
        (lambda raw: raw["memory"].update(ddr_gbps=5000), "memory.ddr_gbps"),
        (lambda raw: raw["resources"].update(lut=10 ** 12), "resources.lut"),
        (lambda raw: raw["memory"].update(ddr_efficiency=1.5), "memory.ddr_efficiency"),
        (lambda raw: raw["memory"].update(axi_data_bits=100), "memory.axi_data_bits"),
        (lambda raw: raw["memory"].update(read_latency_ns=5), "memory.read_latency_ns"),
        (lambda raw: raw["memory"].update(read_latency_ns=250e3), "memory.read_latency_ns"),
        (lambda raw: raw["memory"].update(read_latency_ns="250"), "memory.read_latency_ns"),
        (lambda raw: raw["memory"].update(weight_ports=0), "memory.weight_ports"),
        (lambda raw: raw["memory"].update(weight_ports=5), "memory.weight_ports"),
        (lambda raw: raw.update(family="versal"), "family"),
        (lambda raw: raw.update(pynq="yes please"), "pynq"),
        (lambda raw: raw.update(resources=[1, 2]), "resources"),
    ],
)
def test_bad_values_are_reported_by_field(tmp_path, edit, field):
    path = _write_board_yaml(tmp_path, edit)
    with pytest.raises(BoardError) as excinfo:
        load_board(str(path))
    message = str(excinfo.value)
    assert f"field {field} " in message and "\n" not in message


def test_zynq7000_keeps_an_hp_port_for_gmem(tmp_path):
    """Zynq-7000 has no HPC port: gmem takes HP0, so at most 3 weight masters fit on its 4 HP ports."""
    path = tmp_path / "z.yaml"
    path.write_text((Path(__file__).parents[1] / "boards" / "pynq-z2.yaml").read_text()
                    .replace("weight_ports: 3", "weight_ports: 4"))
    with pytest.raises(BoardError, match=r"memory\.weight_ports must be at most 3 .* got 4$"):
        load_board(str(path))


@pytest.mark.parametrize("part", ["xcfoo123-bar", "xc7a35tcpg236-1", "zu7ev-ffvc1156-2-e", "xczu"])
def test_unknown_part_is_rejected_listing_the_families(tmp_path, part):
    path = _write_board_yaml(tmp_path, lambda raw: raw.update(part=part))
    with pytest.raises(BoardError) as excinfo:
        load_board(str(path))
    message = str(excinfo.value)
    assert "\n" not in message and f"field part {part!r}" in message
    for family in ("Zynq UltraScale+ (xczu*)", "Zynq-7000 (xc7z*)", "Kria (xck26*)", "Versal (xcv*)"):
        assert family in message


def test_part_must_belong_to_the_boards_family(tmp_path):
    path = _write_board_yaml(tmp_path, lambda raw: raw.update(part="xc7z020clg400-1"))  # family: zynquplus
    with pytest.raises(BoardError, match=r"Zynq-7000 part: family must be 'zynq', got 'zynquplus'$"):
        load_board(str(path))
    versal = _write_board_yaml(tmp_path, lambda raw: raw.update(part="xcvc1902-vsva2197-2MP-e-S"))
    with pytest.raises(BoardError, match="is a Versal part, whose PS the generated block design does not support"):
        load_board(str(versal))


def test_uram_may_be_zero():
    assert load_board("zcu102").resources.uram == 0


def test_unknown_field_is_rejected_as_a_probable_typo(tmp_path):
    path = _write_board_yaml(tmp_path, lambda raw: raw.update(board_prat="x"))
    with pytest.raises(BoardError, match="unknown field\\(s\\): board_prat"):
        load_board(str(path))


def test_ps_type_must_match_family(tmp_path):
    path = _write_board_yaml(tmp_path, lambda raw: raw["ps"].update(type="processing_system7"))
    with pytest.raises(BoardError, match="ps.type"):
        load_board(str(path))


def test_missing_board_file_and_invalid_yaml(tmp_path):
    with pytest.raises(BoardError, match="not found"):
        load_board(str(tmp_path / "nope.yaml"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(BoardError, match="invalid YAML") as excinfo:
        load_board(str(broken))
    assert "\n" not in str(excinfo.value)


# --- rendering -------------------------------------------------------------------

def _render(tmp_path: Path, board_name: str) -> Path:
    out_dir = tmp_path.resolve() / board_name  # resolved: the scripts report normalized paths
    render_tcl_and_driver(out_dir, load_board(board_name), PROJECT)
    return out_dir


def test_render_writes_the_three_files(tmp_path):
    written = render_tcl_and_driver(tmp_path, load_board("zcu104"), PROJECT)
    relative = sorted(str(p.relative_to(tmp_path)) for p in written)
    assert relative == ["host/driver.py", "run_hls.tcl", "vivado/block_design.tcl"]


def test_render_rejects_a_project_name_unsafe_for_tcl(tmp_path):
    with pytest.raises(ValueError, match="identifier"):
        render_tcl_and_driver(tmp_path, load_board("zcu104"), "my project; rm")


@pytest.mark.parametrize("name", ALL_BOARDS)
def test_run_hls_has_exact_part_and_clock_period(tmp_path, name):
    part, period = EXPECTED_PART_AND_PERIOD[name]
    text = (_render(tmp_path, name) / "run_hls.tcl").read_text()
    assert f"\nset_part {part}\n" in text
    assert f"\ncreate_clock -period {period} -name default\n" in text


# --- executing the Tcl under stubs ---------------------------------------------------

def _run_tcl(script: Path, tmp_path: Path, env_overrides: dict | None = None) -> subprocess.CompletedProcess:
    stubs = tmp_path / "stubs.tcl"
    stubs.write_text(TCL_STUBS)
    hwh = tmp_path / "design_1.hwh"
    hwh.write_text("<hwh/>")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODESIGN_")}
    env.update({"STUB_HWH": str(hwh), **(env_overrides or {})})
    # Run from an unrelated directory: the scripts must not depend on the caller's cwd.
    return subprocess.run([TCLSH, str(stubs), str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def _calls(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stderr
    return [line[len("CALL "):] for line in result.stdout.splitlines() if line.startswith("CALL ")]


def _assert_in_order(calls: list[str], expected_prefixes: list[str]) -> None:
    """Each expected prefix matches some call, after the previous match."""
    position = 0
    for prefix in expected_prefixes:
        for index in range(position, len(calls)):
            if calls[index].startswith(prefix):
                position = index + 1
                break
        else:
            pytest.fail(f"no call starting with {prefix!r} after position {position} in:\n" + "\n".join(calls))


def _add_generated_sources(out_dir: Path) -> None:
    """The files the rest of the generator puts next to run_hls.tcl."""
    for relative in ("firmware/codesign_top.cpp", "tb/tb_codesign.cpp", "data/manifest.json"):
        (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / relative).write_text("")


@needs_tclsh
@pytest.mark.parametrize("name", ALL_BOARDS)
def test_run_hls_tcl_issues_the_hls_flow(tmp_path, name):
    out_dir = _render(tmp_path, name)
    _add_generated_sources(out_dir)
    part, period = EXPECTED_PART_AND_PERIOD[name]
    calls = _calls(_run_tcl(out_dir / "run_hls.tcl", tmp_path))
    _assert_in_order(calls, [
        f"open_project -reset {PROJECT}",
        "set_top codesign_top",
        f"add_files firmware/codesign_top.cpp -cflags -std=c++17 -I{out_dir.resolve()}/firmware",
        "add_files -tb tb/tb_codesign.cpp",
        "add_files -tb data",
        "open_solution -reset solution1 -flow_target vivado",
        f"set_part {part}",
        f"create_clock -period {period} -name default",
        "csim_design",
        "csynth_design",
        "export_design -format ip_catalog",
    ])
    assert not any(call.startswith("cosim_design") for call in calls), "cosim is off by default"


@needs_tclsh
def test_run_hls_steps_follow_environment_overrides(tmp_path):
    out_dir = _render(tmp_path, "zcu104")
    _add_generated_sources(out_dir)
    env = {"CODESIGN_CSIM": "0", "CODESIGN_CSYNTH": "0", "CODESIGN_COSIM": "1", "CODESIGN_EXPORT": "0"}
    calls = _calls(_run_tcl(out_dir / "run_hls.tcl", tmp_path, env))
    steps = [c.split()[0] for c in calls if c.split()[0].endswith("_design")]
    assert steps == ["cosim_design"]
    # Without synthesis the project must be reopened, not reset (that would delete the synthesis results).
    assert f"open_project {PROJECT}" in calls


@needs_tclsh
def test_run_hls_fails_clearly_without_firmware(tmp_path):
    out_dir = _render(tmp_path, "zcu104")
    result = _run_tcl(out_dir / "run_hls.tcl", tmp_path)
    assert result.returncode != 0 and "no firmware/*.cpp sources" in result.stderr


def _add_exported_ip(out_dir: Path) -> None:
    (out_dir / PROJECT / "solution1" / "impl" / "ip").mkdir(parents=True)


@needs_tclsh
@pytest.mark.parametrize("name", ALL_BOARDS)
def test_block_design_tcl_issues_the_vivado_flow(tmp_path, name):
    board = load_board(name)
    out_dir = _render(tmp_path, name)
    _add_exported_ip(out_dir)
    zynq_mp = board.family == "zynquplus"
    master = "M_AXI_HPM0_FPD" if zynq_mp else "M_AXI_GP0"
    # gmem (program, activations) and one master per weight port, each on its own PS port
    ports = board.memory.weight_ports
    if zynq_mp:
        links = [("gmem", "S_AXI_HPC0_FPD", "PSU__USE__S_AXI_GP0")] + [
            (f"wgt{p}", f"S_AXI_HP{p}_FPD", f"PSU__USE__S_AXI_GP{p + 2}") for p in range(ports)]
    else:
        links = [("gmem", "S_AXI_HP0", "PCW_USE_S_AXI_HP0")] + [
            (f"wgt{p}", f"S_AXI_HP{p + 1}", f"PCW_USE_S_AXI_HP{p + 1}") for p in range(ports)]
    calls = _calls(_run_tcl(out_dir / "vivado" / "block_design.tcl", tmp_path))
    _assert_in_order(calls, [
        f"create_project -force {PROJECT}_vivado {out_dir}/vivado/{PROJECT}_vivado -part {board.part}",
        f"set_property board_part {board.board_part}",
        f"set_property ip_repo_paths {out_dir}/{PROJECT}/solution1/impl/ip",
        "create_bd_design design_1",
        f"create_bd_cell -type ip -vlnv {board.ps.ip_vlnv} zynq_ps",
        f"apply_bd_automation -rule xilinx.com:bd_rule:{board.ps.type}",
        "set_property -dict",
        "create_bd_cell -type ip -vlnv xilinx.com:hls:codesign_top:1.0 codesign_top_0",
        *["apply_bd_automation -rule xilinx.com:bd_rule:axi4"] * (2 + ports),
        "assign_bd_address",
        "validate_bd_design",
        "make_wrapper",
        "launch_runs impl_1",
        "wait_on_run impl_1",
        f"write_bitstream -force {out_dir}/overlay/{PROJECT}.bit",
    ])
    ps_config = next(c for c in calls if c.startswith("set_property -dict"))
    clock_key = "PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ" if zynq_mp else "PCW_FPGA0_PERIPHERAL_FREQMHZ"
    assert f"CONFIG.{clock_key} {board.clock_mhz}" in ps_config
    axi_rules = " ".join(c for c in calls if "bd_rule:axi4" in c)
    assert f"Master /zynq_ps/{master} Slave /codesign_top_0/s_axi_control" in axi_rules
    for axi_master, slave, use_key in links:
        assert f"Master /codesign_top_0/m_axi_{axi_master} Slave /zynq_ps/{slave}" in axi_rules
        assert f"CONFIG.{use_key} 1" in ps_config
    assert axi_rules.count("Master /codesign_top_0/m_axi_") == 1 + ports
    # PYNQ needs the .hwh next to the .bit, same basename.
    assert (out_dir / "overlay" / f"{PROJECT}.hwh").read_text() == "<hwh/>"


@needs_tclsh
def test_block_design_with_one_weight_port_uses_hp0_only(tmp_path):
    """weight_ports: 1 keeps the single-master design: m_axi_gmem on HP0, no other PS slave port."""
    board = load_board("zcu104")
    board = replace(board, memory=replace(board.memory, weight_ports=1))
    render_tcl_and_driver(tmp_path, board, PROJECT)
    text = (tmp_path / "vivado" / "block_design.tcl").read_text()
    assert "Master /$accel/m_axi_gmem Slave /zynq_ps/S_AXI_HP0_FPD" in text
    assert text.count("Master /$accel/m_axi_") == 1 and "HPC0" not in text and "PSU__USE__S_AXI_GP2 1" in text


@needs_tclsh
def test_block_design_can_stop_before_the_bitstream(tmp_path):
    out_dir = _render(tmp_path, "zcu104")
    _add_exported_ip(out_dir)
    calls = _calls(_run_tcl(out_dir / "vivado" / "block_design.tcl", tmp_path, {"CODESIGN_BITSTREAM": "0"}))
    assert any(c.startswith("make_wrapper") for c in calls)
    assert not any(c.startswith(("launch_runs", "write_bitstream")) for c in calls)


def test_block_design_without_board_part_skips_board_presets(tmp_path):
    import dataclasses

    bare = dataclasses.replace(load_board("zcu104"), board_part=None)
    render_tcl_and_driver(tmp_path, bare, PROJECT)
    text = (tmp_path / "vivado" / "block_design.tcl").read_text()
    assert "board_part" not in text
    assert 'apply_board_preset "0"' in text


@needs_tclsh
def test_block_design_fails_clearly_without_hls_export(tmp_path):
    out_dir = _render(tmp_path, "kv260")
    result = _run_tcl(out_dir / "vivado" / "block_design.tcl", tmp_path)
    assert result.returncode != 0 and "HLS IP not found" in result.stderr


# --- host driver -----------------------------------------------------------------

def _import_driver(path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"rendered_driver_{id(path)}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ALL_BOARDS)
def test_driver_is_valid_python_and_imports_without_pynq(tmp_path, name, monkeypatch):
    path = _render(tmp_path, name) / "host" / "driver.py"
    compile(path.read_text(), str(path), "exec")
    # None in sys.modules makes any `import pynq` raise ImportError.
    monkeypatch.setitem(sys.modules, "pynq", None)
    module = _import_driver(path)
    assert hasattr(module, "CodesignDriver")


MANIFEST = {
    "act_bytes": 256,
    "num_tasks": 2,
    "input": {"offset": 0, "shape": [4, 4]},
    "output": {"offset": 128, "shape": [2, 3]},
    "weights_file": "weights.bin",
    "program_file": "program.bin",
}


def _adder(manifest: dict):
    """An accelerator that writes input[:n] + task to the output region (device memory)."""
    def run(device, regs: dict) -> None:
        act = device.memory(register_address(regs, 0x28))
        assert register_address(regs, 0x10) in device.device_memory and register_address(regs, 0x1C) in device.device_memory
        n_out = int(np.prod(manifest["output"]["shape"]))
        start_in, start_out = manifest["input"]["offset"], manifest["output"]["offset"]
        act[start_out:start_out + n_out] = act[start_in:start_in + n_out] + regs[0x34]
    return run


def _driver_against_pynq(tmp_path: Path, monkeypatch):
    """The rendered driver on the real pynq package over a host device layer (codesign.testing)."""
    pytest.importorskip("pynq")
    from pynq.pl_server.device import Device

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "manifest.json").write_text(json.dumps(MANIFEST))
    np.arange(8, dtype=np.uint32).tofile(data_dir / "program.bin")
    np.arange(32, dtype=np.int8).tofile(data_dir / "weights.bin")
    monkeypatch.setattr(Device, "_active_device", pynq_host_device(_adder(MANIFEST)), raising=False)
    (tmp_path / "overlay.bit").write_bytes(b"")
    module = _import_driver(_render(tmp_path, "zcu104") / "host" / "driver.py")
    return module.CodesignDriver(tmp_path / "overlay.bit", data_dir)


def test_driver_runs_a_task_and_dumps_the_output(tmp_path, monkeypatch):
    driver = _driver_against_pynq(tmp_path, monkeypatch)
    image = np.arange(16, dtype=np.int8).reshape(4, 4)
    output = driver.run(image, task=1)
    assert output.dtype == np.int8 and output.shape == (2, 3)
    np.testing.assert_array_equal(output.reshape(-1), image.reshape(-1)[:6] + 1)
    dumped = driver.dump(tmp_path / "board.npy")
    np.testing.assert_array_equal(np.load(dumped), output)


def test_driver_rejects_bad_task_and_input(tmp_path, monkeypatch):
    driver = _driver_against_pynq(tmp_path, monkeypatch)
    image = np.zeros((4, 4), dtype=np.int8)
    with pytest.raises(ValueError, match=r"task must be an integer in \[0, 1\]"):
        driver.run(image, task=2)
    with pytest.raises(TypeError, match="int8"):
        driver.run(image.astype(np.float32), task=0)
    with pytest.raises(ValueError, match=r"shape \(4, 4\)"):
        driver.run(np.zeros(5, dtype=np.int8), task=0)
    with pytest.raises(RuntimeError, match="run\\(\\) first"):
        driver.dump(tmp_path / "nothing.npy")


def test_an_alias_bomb_in_a_board_file_is_refused_quickly_and_briefly(tmp_path):
    """Issue 14: a bomb in `vendor:` made a 2.1 GB error message and took 6.8 GB of memory."""
    board = (Path(__file__).resolve().parents[1] / "boards" / "zcu104.yaml").read_text().splitlines()
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb("vendor") + "\n".join(row for row in board if not row.startswith("vendor:")))
    start = time.monotonic()
    with pytest.raises(BoardError) as excinfo:
        load_board(str(path))
    assert time.monotonic() - start < 2
    assert str(excinfo.value) == f"{path}: invalid YAML: the aliases expand to more than 100000 nodes (an alias bomb?)"


def test_long_values_are_quoted_briefly(tmp_path):
    path = _write_board_yaml(tmp_path, lambda raw: raw.update(vendor=["v" * 5000] * 100))
    with pytest.raises(BoardError) as excinfo:
        load_board(str(path))
    assert str(excinfo.value).startswith(f"{path}: field vendor must be a non-empty string, got ['vvvvv")
    assert len(str(excinfo.value)) < 400


def test_a_board_file_larger_than_any_board_needs_is_refused(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("# padding\n" * 200_000)
    with pytest.raises(BoardError, match=r"big\.yaml: larger than 1024 KiB"):
        load_board(str(path))
