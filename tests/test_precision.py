"""Per-layer precision: the quantizer's chosen formats, the YAML config, mixed precision in the
golden model and the ISA interpreter."""
import dataclasses
import re

import numpy as np
import pytest

from codesign.emit.data import Vector
from codesign.model.config import ModelConfig
from codesign.quant import arith as A
from codesign.quant.golden import run_golden
from codesign.quant.precision import (LayerFormat, Precision, PrecisionError, chosen_precision, dump_precision,
                                      layer_names, load_precision, needed_acc_bits)
from codesign.quant.quantize import quantize_input
from codesign.schedule.isa import decode_program, execute
from codesign.schedule.program import load_input, read_region
from codesign.testing import make_test_design, run_program

SMALL = ModelConfig(img_size=16, embed_dim=32, num_heads=2, depth=2, moe_blocks=(1,), num_experts=4, top_k=2)
# Some layers 4-bit weights, some 6-bit activations, one 12-bit layer (EB = 2), the MoE at mixed widths.
MIXED = Precision({
    "b0.qkv": LayerFormat(4, 8), "b0.attn": LayerFormat(8, 6), "b0.fc1": LayerFormat(4, 6),
    "b0.fc2": LayerFormat(6, 8), "b1.proj": LayerFormat(12, 12), "b1.gate": LayerFormat(6, 7),
    "b1.fc1": LayerFormat(5, 6), "b1.fc2": LayerFormat(4, 8), "b1.mlp": LayerFormat(8, 6), "b1.ln2": LayerFormat(8, 7),
    "input": LayerFormat(8, 7), "b0.res1": LayerFormat(8, 7), "norm": LayerFormat(8, 6),
}, LayerFormat(8, 8))
# The same at widths <= 8: one byte per element.
MIXED8 = Precision({n: LayerFormat(min(f.wbits, 8), min(f.abits, 8)) for n, f in MIXED.items()}, MIXED.default)


def _beyond_calibration(design, seed: int = 1):
    """Random patches over the input's whole integer range: far outside the calibration range, so
    that every layer saturates somewhere (calibrated inputs rarely reach a layer's limits)."""
    cfg, bits = design.qm.cfg, design.qm.input_bits
    x = np.random.default_rng(seed).integers(A.qmin(bits), A.qmax(bits) + 1, (cfg.num_tokens, cfg.patch_features))
    x[0] = 0
    return Vector("beyond", 1, x)


def test_chosen_precision_lists_every_layer_with_its_accumulator():
    design = make_test_design(SMALL)
    p = chosen_precision(design.qm)
    assert list(p) == layer_names(SMALL)
    assert p["b0.qkv"] == LayerFormat(8, 8, A.signed_sum_bits(14, 32))  # 8x8-bit products, K = embed_dim 32
    assert p["b0.ln1"].acc_bits is None and p["b1.mlp"].acc_bits == A.signed_sum_bits(14, 2)


def test_the_dumped_config_loads_back_to_the_same_precision():
    design = make_test_design(SMALL, precision=MIXED)
    p = chosen_precision(design.qm)
    text = dump_precision(p, "SMALL")
    assert text.startswith("# codesign per-layer precision for SMALL")
    assert "\n  b0.ln1:  {abits: 8}\n" in text  # no wbits: LayerNorm has no weight tensor
    assert load_precision(text, layer_names(SMALL)) == p


def test_an_unedited_config_gives_the_same_program_and_weights():
    plain = make_test_design(SMALL)
    again = make_test_design(SMALL, precision=load_precision(dump_precision(chosen_precision(plain.qm)),
                                                              layer_names(SMALL)))
    assert plain.prog.code == again.prog.code and plain.prog.wgt == again.prog.wgt


@pytest.mark.parametrize("precision, eb", [(MIXED, 2), (MIXED8, 1)])
def test_mixed_precision_program_matches_golden_bit_exactly(precision, eb):
    design = make_test_design(SMALL, precision=precision)
    assert design.prog.elem_bytes == eb
    obits = {i.layer: i.obits for i in design.prog.instrs}
    assert [i.obits for i in decode_program(design.prog.code)] == list(obits.values())  # encoded in word 0
    assert obits["b0.attn"] == 6 and obits["b1.gate"] == 7 and obits["b1.e0.fc1"] == 6
    for vec in [*design.vectors, _beyond_calibration(design)]:
        act = run_program(design, vec)
        golden = run_golden(design.qm, vec.x_q, vec.task)
        for name in design.prog.trace_names:
            assert np.array_equal(read_region(design.prog, act, name), golden.trace[name]), name


def test_every_layer_saturates_to_its_own_width():
    design = make_test_design(SMALL, precision=MIXED8)
    res = run_golden(design.qm, design.vectors[0].x_q, 0, detail=True)
    layer = {"b0.attn": "b0.attn", "b0.gelu": "b0.fc1", "b0.mlp": "b0.fc2", "b1.mlp": "b1.mlp", "b1.ln2": "b1.ln2",
             "b0.ln1": "b0.ln1"}
    for trace, name in layer.items():
        bits = MIXED8.abits(name)
        values = res.trace[trace]
        assert values.min() >= A.qmin(bits) and values.max() <= A.qmax(bits), trace
    # calibrated to its width: the 6-bit attention output uses its range (max |x| on the calibration data)
    assert np.abs(res.trace["b0.attn"]).max() > A.qmax(6) // 2
    assert res.detail["b1.gate.probs"].max() <= A.qmax(7)
    w = design.qm.blocks[0].qkv.w
    assert np.abs(w).max() == A.qmax(4)  # 4-bit weights, per-channel scale: each row reaches qmax


def test_an_edited_config_changes_the_outputs():
    plain, mixed = make_test_design(SMALL), make_test_design(SMALL, precision=MIXED8)
    vec = plain.vectors[0]
    a, b = run_golden(plain.qm, vec.x_q, 0), run_golden(mixed.qm, vec.x_q, 0)
    assert not np.array_equal(a.trace["b0.qkv"], b.trace["b0.qkv"])
    # the same calibration ranges, each at its layer's width: b0.attn has 6 bits, b0.proj 8
    assert mixed.qm.scales["b0.attn"] == pytest.approx(plain.qm.scales["b0.attn"] * A.qmax(8) / A.qmax(6), rel=1e-12)
    assert mixed.qm.scales["b0.gelu"] == pytest.approx(plain.qm.scales["b0.gelu"] * A.qmax(8) / A.qmax(6), rel=1e-12)
    assert not np.array_equal(a.output, b.output)
    assert a.output.max() > A.qmax(6) and b.output.max() <= A.qmax(6)  # norm: 6 bits


def test_the_profile_plots_each_layer_against_its_own_format():
    from codesign.report.profiling import profile_panels

    plain, mixed = make_test_design(SMALL), make_test_design(SMALL, precision=MIXED8)
    (title, wrows), (_, arows) = profile_panels(mixed.model, mixed.qm)
    assert title == "weights (per-layer widths, per-channel scales)"
    plain_rows = {r.name: r for r in profile_panels(plain.model, plain.qm)[0][1]}
    rows = {r.name: r for r in wrows}
    # 4-bit b0.qkv: one LSB is (2**7 - 1) / (2**3 - 1) = 127/7 times the int8 one; b1.qkv stays int8
    assert rows["b0.qkv"].low - plain_rows["b0.qkv"].low == pytest.approx(np.log2(127 / 7))
    assert rows["b1.qkv"].low == plain_rows["b1.qkv"].low
    attn = {r.name: r for r in arows}["b0.attn"]
    assert 2.0**attn.high == pytest.approx(mixed.qm.scales["b0.attn"] * A.qmax(6))


def test_the_accumulator_need_follows_the_input_width():
    need = needed_acc_bits(SMALL, MIXED)
    # b0.proj reads the 6-bit attention output: 8-bit weights x 6-bit inputs, K = 32
    assert need["b0.proj"] == A.signed_sum_bits(7 + 5, 32)
    assert need["b1.proj"] == A.signed_sum_bits(11 + 7, 32)
    assert need["b1.mlp"] == A.signed_sum_bits(6 + 7, SMALL.top_k)


NAMES = layer_names(SMALL)


HEAD = "default: {wbits: 8, abits: 8}\nlayers:\n"


@pytest.mark.parametrize("text, message", [
    (HEAD + "  b9.qkv: {wbits: 4}\n", r"unknown layer 'b9.qkv' \(the model's layers: input"),
    (HEAD + "  b0.ln1: {wbits: 4}\n", r"b0.ln1: unknown field 'wbits' \(the layer has no weights\)"),
    (HEAD + "  b0.qkv: {wbits: 17}\n", r"b0.qkv.wbits: integer width must be in 2..16, got 17"),
    ("default: {wbits: 8, abits: 1}\n", r"default.abits: integer width must be in 2..16, got 1"),
    (HEAD + "  b0.qkv: {abits: 6.5}\n", r"b0.qkv.abits must be an integer, got 6.5"),
    (HEAD + "  b0.qkv: {wbits: 8, bits: 6}\n", r"b0.qkv: unknown field 'bits' \(expected wbits, abits, acc_bits\)"),
    ("layers: {}\n", r"no `default` format"),
    ("- 1\n", r"expected a mapping with `default` and `layers`"),
])
def test_a_bad_config_is_one_line(text, message):
    with pytest.raises(PrecisionError, match="^precision: " + message) as exc:
        load_precision(text, NAMES)
    assert "\n" not in str(exc.value)


def test_an_accumulator_below_the_need_is_refused_before_calibration():
    text = "default: {wbits: 8, abits: 8}\nlayers:\n  b0.qkv: {wbits: 8, abits: 8, acc_bits: 20}\n"
    p = load_precision(text, NAMES)
    with pytest.raises(PrecisionError, match=r"^b0.qkv: acc_bits 19 is below the 20 bits its exact sums need"):
        make_test_design(SMALL, precision=Precision({"b0.qkv": LayerFormat(8, 8, 19)}))
    assert p["b0.qkv"].acc_bits == 20  # 20 = the need: accepted
    make_test_design(SMALL, precision=p)


def test_an_moe_sum_beyond_int32_is_refused():
    """16-bit probabilities times 16-bit outputs: 2 experts fit int32 (< 2**31), 3 do not."""
    p = Precision({"b1.gate": LayerFormat(8, 16), "b1.fc2": LayerFormat(8, 16)})
    assert needed_acc_bits(SMALL, p)["b1.mlp"] == 32
    with pytest.raises(PrecisionError, match=r"^b1.mlp: gate probabilities of 16 bits times expert outputs of 16 "
                                             r"bits need 33-bit sums, above the int32 MoE accumulator$"):
        make_test_design(dataclasses.replace(SMALL, top_k=3), precision=p)


def test_uniform_precision_is_the_wbits_abits_of_before():
    a = make_test_design(SMALL, wbits=4, abits=6)
    b = make_test_design(SMALL, precision=Precision.uniform(4, 6))
    assert a.prog.code == b.prog.code and a.prog.wgt == b.prog.wgt


# ---------------------------------------------------------------------------
# the command line on the default embedded model: config -> generate --precision -> csim / cosim
# ---------------------------------------------------------------------------
# Some layers with 4-bit weights, some 6/7-bit activations, b2.proj at 12 bits (EB = 2), the MoE
# block's gate, experts and combine at their own widths.
EDITED = """\
default: {wbits: 8, abits: 8}
layers:
  b0.qkv:  {wbits: 4, abits: 8}
  b0.attn: {abits: 6}
  b0.fc1:  {wbits: 4, abits: 6}
  b1.gate: {wbits: 6, abits: 7}
  b1.fc1:  {wbits: 5, abits: 6}
  b1.fc2:  {wbits: 4, abits: 8}
  b1.mlp:  {abits: 6}
  b2.proj: {wbits: 12, abits: 12}
  b3.res1: {abits: 7}
"""


def _cli(capsys, *argv) -> tuple[int, str, str]:
    from codesign.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _data_files(project) -> dict[str, bytes]:
    return {str(p.relative_to(project)): p.read_bytes() for p in sorted((project / "data").rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def edited_project(tmp_path_factory):
    from codesign.cli import main

    root = tmp_path_factory.mktemp("precision")
    (root / "edited.yaml").write_text(EDITED)
    assert main(["generate", "default", "--precision", str(root / "edited.yaml"), "-o", str(root / "edited"),
                 "--images", "1"]) == 0
    return root / "edited"


@pytest.fixture(scope="module")
def plain_project(tmp_path_factory):
    from codesign.cli import main

    out = tmp_path_factory.mktemp("precision_plain") / "plain"
    assert main(["generate", "default", "-o", str(out), "--images", "1"]) == 0
    return out


def test_config_then_generate_with_the_unedited_file_is_byte_identical(plain_project, tmp_path, capsys):
    code, text, _ = _cli(capsys, "config", "default")
    assert code == 0 and text.startswith("# codesign per-layer precision for default")
    (tmp_path / "cfg.yaml").write_text(text)
    assert _cli(capsys, "generate", "default", "--precision", tmp_path / "cfg.yaml", "-o", tmp_path / "a",
                "--images", "1")[0] == 0
    a, b = _data_files(tmp_path / "a"), _data_files(plain_project)
    assert set(a) == set(b) and "data/weights.bin" in a and "data/program.bin" in a
    assert all(a[name] == b[name] for name in a), [name for name in a if a[name] != b[name]]


def test_the_edited_config_changes_the_program_and_the_outputs(edited_project, plain_project):
    import json

    plain, edited = _data_files(plain_project), _data_files(edited_project)
    man = json.loads(edited["data/manifest.json"])
    assert man["elem_bytes"] == 2 and man["abits"] == 12  # the 12-bit b2.proj: two-byte elements
    obits = {i["layer"]: i["obits"] for i in man["instructions"]}
    widths = [obits[n] for n in ("b0.attn", "b0.gelu", "b1.gate", "b2.proj", "b0.proj")]
    assert widths == [6, 6, 7, 12, 8]  # each instruction's own output width (word 0 bits 20:16)
    vec = man["vectors"][0]["expected"]
    assert plain["data/" + vec] != edited["data/" + vec]
    project = json.loads((edited_project / "project.json").read_text())
    assert Precision.from_dict(project["precision"]).of("b2.proj") == LayerFormat(12, 12)


@pytest.mark.skipif(__import__("shutil").which("g++") is None, reason="g++ not installed")
def test_the_edited_default_model_is_bit_exact_in_csim_and_reported_against_float(edited_project, tmp_path):
    """golden == ISA interpreter (checked by generate for every vector) == compiled C++; the
    accuracy against the float model is the only place with a tolerance."""
    from codesign import api

    res = api.csim(edited_project, dump_dir=tmp_path / "dump")
    assert res.ok and not res.failed and len(res.passed) == 2
    rep = api.compare(edited_project, tmp_path / "dump", tmp_path / "report")
    assert rep.all_bit_exact
    seg, depth = (t for t in rep.tasks)
    print(f"edited precision vs float: {seg.name} {seg.agreement}, {depth.name} {depth.agreement}")
    assert seg.agreement["result"]["label_agreement"] >= 0.9  # the float model's labels, pixel by pixel
    assert depth.agreement["result"]["rmse_vs_float"] <= 0.1  # depth (targets in 0..1) against the float model


def test_a_mixed_project_rebuilds_its_integer_model_for_your_images(edited_project):
    """predict re-quantises from model/ and project.json: the per-layer formats must come back, or
    the rebuilt program would not match data/program.bin (load_project_model checks it)."""
    from codesign.model.data import make_dataset
    from codesign.sim.predict import load_project_model

    pm = load_project_model(edited_project)
    assert pm.qm.precision.of("b0.fc1") == LayerFormat(4, 6) and pm.prog.elem_bytes == 2
    images = make_dataset(1, pm.qm.cfg, seed=5).images
    x_q = quantize_input(images, pm.qm)[0]
    act = bytearray(pm.prog.act_bytes)
    load_input(pm.prog, act, x_q)
    execute(pm.prog.code, pm.prog.wgt, act, 1, pm.prog.abits, pm.prog.elem_bytes)
    golden = run_golden(pm.qm, x_q, 1)
    assert np.array_equal(read_region(pm.prog, act, pm.prog.output.name), golden.output)


# The uarch RTL core holds int8 elements: the edit without b2.proj's 12-bit widths.
EDITED_INT8 = EDITED.replace("  b2.proj: {wbits: 12, abits: 12}\n", "  b2.proj: {wbits: 6, abits: 8}\n")


def test_an_edit_wider_than_the_rtl_core_says_why_it_has_no_rtl(edited_project, capsys):
    """A 12-bit layer gets the HLS project but no RTL; cosim says why in one line, exit 2."""
    code, _, err = _cli(capsys, "cosim", edited_project)
    assert code == 2 and err.count("\n") == 1, err
    assert "The RTL core was not generated: " in err and "needs int8 elements" in err, err


@pytest.mark.slow
def test_the_edited_default_model_is_bit_exact_in_cosim(tmp_path):
    """About 2 minutes (Verilator build + 2.4 M simulated cycles per vector), on the 2x32 twin."""
    from codesign import api
    from codesign.cli import main
    from codesign.testing import RTL_TWIN_ARG

    assert EDITED_INT8 != EDITED
    (tmp_path / "edited.yaml").write_text(EDITED_INT8)
    assert main(["generate", "default", "--precision", str(tmp_path / "edited.yaml"), "-o", str(tmp_path / "p"),
                 "--images", "1", "--rtl-array", RTL_TWIN_ARG]) == 0
    res = api.cosim(tmp_path / "p", "verilator")
    assert res.all_passed, res.summary_text()


@pytest.mark.parametrize("edit, message", [
    ("  b9.qkv: {wbits: 4}\n", r"unknown layer 'b9.qkv' \(the model's layers: input, patch"),
    ("  b0.qkv: {wbits: 17}\n", r"b0.qkv.wbits: integer width must be in 2..16, got 17"),
    ("  b0.ln1: {wbits: 4}\n", r"b0.ln1: unknown field 'wbits' \(the layer has no weights\)"),
    ("  b0.qkv: {wbits: 8, abits: 8, acc_bits: 12}\n", r"b0.qkv: acc_bits 12 is below the 21 bits its exact sums need"),
])
def test_a_bad_edit_is_one_line_and_exit_2(tmp_path, capsys, edit, message):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("default: {wbits: 8, abits: 8}\nlayers:\n" + edit)
    code, _, err = _cli(capsys, "generate", "default", "--precision", cfg, "-o", tmp_path / "out")
    assert code == 2
    assert re.fullmatch(r"codesign generate: error: " + re.escape(str(cfg)) + ": " + message + r".*\n", err), err
    assert not (tmp_path / "out").exists()


def test_widths_and_a_precision_file_together_are_refused(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("default: {wbits: 8, abits: 8}\n")
    code, _, err = _cli(capsys, "config", "default", "--precision", cfg, "--wbits", "4")
    assert code == 2 and err == ("codesign config: error: --wbits/--abits do not apply with --precision (its "
                                 "`default:` covers the layers it does not list)\n")
