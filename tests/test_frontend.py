"""Checkpoint loading: our own format and every failure mode (M3ViT's real layouts: test_m3vit_layouts.py)."""
from __future__ import annotations

import re
import tempfile
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from codesign.frontend import ModelLoadError, load_model, save_model
from codesign.frontend.loader import config_from_dict, fuse_split_qkv, read_config_file
from codesign.model.config import ModelConfig
from codesign.model.m3vit import M3ViT
from codesign.model.train import torch_threads
from codesign.testing import alias_bomb
from m3vit_checkpoints import write_checkpoint


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors: a second thread only adds contention. Restored for other test modules."""
    with torch_threads(1):
        yield


TINY = dict(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_experts=4, top_k=2, moe_blocks=[1])


def tiny_config(**changes) -> ModelConfig:
    return ModelConfig.from_dict({**TINY, **changes})


def make_model(cfg: ModelConfig | None = None, seed: int = 0) -> M3ViT:
    torch.manual_seed(seed)
    model = M3ViT(cfg or tiny_config()).eval()
    with torch.no_grad():  # biases start at zero; make them matter so a dropped bias is caught
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model


def outputs(model: M3ViT) -> list[torch.Tensor]:
    images = torch.randn(2, model.cfg.in_chans, *model.cfg.image_hw, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return [model(images, t) for t in range(model.cfg.num_tasks)]


def assert_same_outputs(a: M3ViT, b: M3ViT) -> None:
    for out_a, out_b in zip(outputs(a), outputs(b), strict=True):
        assert torch.equal(out_a, out_b)


def write_config(folder: Path, cfg: ModelConfig) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))


def load_error(path, config=None) -> str:
    with pytest.raises(ModelLoadError) as info:
        load_model(path, config)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- round trips

def test_save_load_round_trip(tmp_path):
    model = make_model()
    out = save_model(model, tmp_path / "ckpt")
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model.pt"]
    loaded = load_model(out)
    assert loaded.cfg == model.cfg and not loaded.training
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert_same_outputs(model, loaded)


def test_save_replaces_weights_keeps_other_files_and_leaves_no_temp(tmp_path):
    save_model(make_model(seed=0), tmp_path / "ckpt")
    (tmp_path / "ckpt" / "README.md").write_text("notes")
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"stale")
    newer = make_model(seed=1)
    save_model(newer, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "README.md").read_text() == "notes"
    assert not (tmp_path / "ckpt" / "model.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    assert_same_outputs(newer, load_model(tmp_path / "ckpt"))


@pytest.mark.parametrize("changes", [{"img_size": [16, 32]}, {"final_norm": False, "head": "vit_up", "head_channels": 8},
                                     {"gate_type": "shared"}, {"gate_type": "task_embed", "gate_task_dim": 8}])
def test_m3vit_shapes_heads_and_gates_round_trip(tmp_path, changes):
    model = make_model(tiny_config(**changes))
    loaded = load_model(save_model(model, tmp_path / "ckpt"))
    assert loaded.cfg == model.cfg and yaml.safe_load((tmp_path / "ckpt" / "config.yaml").read_text())["img_size"] == \
        changes.get("img_size", 16)
    assert_same_outputs(model, loaded)


def test_single_file_with_config_beside_or_given(tmp_path):
    model = make_model()
    save_model(model, tmp_path / "ckpt")
    assert_same_outputs(model, load_model(tmp_path / "ckpt" / "model.pt"))
    assert_same_outputs(model, load_model(str(tmp_path / "ckpt" / "model.pt"), model.cfg))
    assert_same_outputs(model, load_model(tmp_path / "ckpt" / "model.pt", model.cfg.to_dict()))
    assert_same_outputs(model, load_model(tmp_path / "ckpt" / "model.pt", tmp_path / "ckpt" / "config.yaml"))


def test_safetensors_round_trip(tmp_path):
    model = make_model()
    write_config(tmp_path / "st", model.cfg)
    save_file(model.state_dict(), str(tmp_path / "st" / "model.safetensors"))
    assert_same_outputs(model, load_model(tmp_path / "st"))
    assert_same_outputs(model, load_model(tmp_path / "st" / "model.safetensors", model.cfg))


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_wrapped_state_dict_with_training_extras(tmp_path, wrapper):
    model = make_model()
    path = tmp_path / "model.pth"
    torch.save({wrapper: model.state_dict(), "epoch": 7, "optimizer": {"lr": 0.1}}, path)
    assert_same_outputs(model, load_model(path, model.cfg))


def test_task_onehot_gate_loads(tmp_path):
    model = make_model(tiny_config(gate_type="task_onehot"))
    gate = model.state_dict()["blocks.1.mlp.gate.w_gate"]
    assert gate.shape == (16 + model.cfg.num_tasks, 4)
    loaded = load_model(save_model(model, tmp_path / "onehot"))
    assert loaded.cfg.gate_type == "task_onehot"
    assert_same_outputs(model, loaded)


def test_shards_disagreeing_on_shared_weights_are_rejected(tmp_path):
    fixture = write_checkpoint("nyud_mg.sharded", tmp_path)
    rank1 = torch.load(fixture.path / "1.pth", weights_only=False)
    rank1["state_dict"]["module.backbone.cls_token"] = fixture.full["module.backbone.cls_token"] + 1
    torch.save(rank1, fixture.path / "1.pth")
    message = load_error(fixture.path, fixture.cfg)
    assert "cls_token" in message and "1.pth" in message


def test_split_qkv_projections_are_fused():
    """q/k/v kept apart (no known M3ViT writer; a tolerance for re-exported ViTs) become the fused qkv."""
    parts = {f"blocks.0.attn.{p}.{kind}": torch.randn(4, 4) if kind == "weight" else torch.randn(4)
             for p in "qkv" for kind in ("weight", "bias")}
    fused = fuse_split_qkv(parts)
    assert sorted(fused) == ["blocks.0.attn.qkv.bias", "blocks.0.attn.qkv.weight"]
    assert torch.equal(fused["blocks.0.attn.qkv.weight"],
                       torch.cat([parts[f"blocks.0.attn.{p}.weight"] for p in "qkv"]))


# ---------------------------------------------------------------- error cases

@pytest.fixture
def saved(tmp_path) -> tuple[M3ViT, Path]:
    model = make_model()
    return model, save_model(model, tmp_path / "ckpt")


def test_missing_file_is_named(tmp_path):
    assert "nope.pt" in load_error(tmp_path / "nope.pt", tiny_config())


def test_folder_without_weights(tmp_path):
    write_config(tmp_path / "empty", tiny_config())
    assert "no weights" in load_error(tmp_path / "empty")


def test_missing_shard_is_named(tmp_path):
    fixture = write_checkpoint("cityscapes_tiny_yml.sharded", tmp_path)
    (fixture.path / "1.pth").rename(fixture.path / "2.pth")
    assert "1.pth" in load_error(fixture.path, fixture.cfg)


@pytest.mark.parametrize("name", ["model.pt", "model.safetensors"])
def test_corrupt_and_truncated_files_are_named(saved, name):
    model, folder = saved
    (folder / "model.pt").unlink()
    path = folder / name
    path.write_bytes(b"definitely not a checkpoint")
    message = load_error(folder)
    assert name in message and "not a valid PyTorch/safetensors file" in message

    whole = tmp_bytes(model, name)
    path.write_bytes(whole[: len(whole) // 2])
    message = load_error(path)
    assert name in message and "not a valid PyTorch/safetensors file" in message


def tmp_bytes(model: M3ViT, name: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        if name.endswith(".safetensors"):
            save_file(model.state_dict(), str(path))
        else:
            torch.save(model.state_dict(), path)
        return path.read_bytes()


def test_missing_config(saved):
    _, folder = saved
    (folder / "config.yaml").unlink()
    assert "config" in load_error(folder / "model.pt")


@pytest.mark.parametrize("change, field", [({"num_heads": 3}, "num_heads"), ({"patch_size": "eight"}, "patch_size"),
                                           ({"num_heads": 0}, "num_heads"), ({"tasks": [{"name": "x"}]}, "tasks[0]"),
                                           ({"colour": 1}, "colour"), ({"gate_type": "dense"}, "gate_type"),
                                           ({"img_size": [16]}, "img_size"), ({"img_size": [16, "x"]}, "img_size"),
                                           ({"img_size": [16, 20]}, "width 20"), ({"final_norm": 1}, "final_norm"),
                                           ({"head": "mlp"}, "head"),
                                           ({"gate_type": "task_embed", "gate_task_dim": 0}, "gate_task_dim")])
def test_bad_config_field_is_named(saved, change, field):
    _, folder = saved
    (folder / "config.yaml").write_text(yaml.safe_dump({**TINY, **change}))
    message = load_error(folder)
    assert field in message and "config.yaml" in message


@pytest.mark.parametrize("text", [
    alias_bomb("embed_dim"),
    "a: &a [*a]\nembed_dim: *a\n",  # a list that contains itself: infinite once expanded
])
def test_an_alias_bomb_in_a_config_is_refused_quickly(saved, text):
    """Issue 14: a 590-byte bomb in a config field ran 130 s and ended in a MemoryError traceback."""
    _, folder = saved
    (folder / "config.yaml").write_text(text)
    start = time.monotonic()
    message = load_error(folder)
    assert time.monotonic() - start < 2
    assert message == (f"{folder}/config.yaml: invalid YAML: the aliases expand to more than 100000 nodes "
                       f"(an alias bomb?)")


def test_long_config_values_are_quoted_briefly(saved):
    _, folder = saved
    (folder / "config.yaml").write_text(yaml.safe_dump({**TINY, "gate_type": ["g" * 5000] * 100,
                                                        "x" * 5000: 1}))
    message = load_error(folder)
    assert "gate_type must be a string, not ['gggg" in message and len(message) < 600


def test_unparsable_yaml(saved):
    _, folder = saved
    (folder / "config.yaml").write_text("img_size: [16\n")
    assert "config.yaml" in load_error(folder)


def test_missing_key_is_named_with_count(tmp_path):
    model = make_model()
    state = model.state_dict()
    del state["blocks.0.attn.proj.weight"], state["blocks.0.attn.proj.bias"]
    torch.save(state, tmp_path / "model.pt")
    message = load_error(tmp_path / "model.pt", model.cfg)
    assert "blocks.0.attn.proj.weight" in message and "2 of" in message


def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
    model = make_model()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    message = load_error(tmp_path / "model.pt", tiny_config(num_experts=8))
    assert "blocks.1.mlp.experts.htoh4.weight" in message
    assert "[8, 32, 16]" in message and "[4, 32, 16]" in message


def test_nan_tensor_is_named(tmp_path):
    model = make_model()
    state = model.state_dict()
    state["blocks.1.mlp.gate.0.w_gate"][0, 0] = float("nan")
    torch.save(state, tmp_path / "model.pt")
    assert "blocks.1.mlp.gate.0.w_gate" in load_error(tmp_path / "model.pt", model.cfg)


def test_checkpoint_without_heads_warns_and_partial_heads_fail(tmp_path):
    model = make_model()
    backbone = {k: v for k, v in model.state_dict().items() if not k.startswith("decoders.")}
    torch.save(backbone, tmp_path / "backbone.pt")
    with pytest.warns(UserWarning, match="decoders"):
        loaded = load_model(tmp_path / "backbone.pt", model.cfg)
    assert torch.equal(loaded.forward_backbone(torch.zeros(1, 3, 16, 16), 0),
                       model.forward_backbone(torch.zeros(1, 3, 16, 16), 0))

    one_head = {**backbone, **{k: v for k, v in model.state_dict().items() if k.startswith("decoders.0.")}}
    torch.save(one_head, tmp_path / "one_head.pt")
    assert "decoders.1" in load_error(tmp_path / "one_head.pt", model.cfg)


def test_deeper_checkpoint_than_config_names_first_extra_key_and_count(tmp_path):
    deep = make_model(tiny_config(depth=3))
    torch.save(deep.state_dict(), tmp_path / "model.pt")
    extra = [k for k in deep.state_dict() if k.startswith("blocks.2.")]
    message = load_error(tmp_path / "model.pt", tiny_config(depth=2))
    assert f"unexpected key {extra[0]} ({len(extra)} of {len(deep.state_dict())}" in message


def test_training_only_entries_are_ignored(tmp_path):
    model = make_model()
    state = {**model.state_dict(), "epoch": torch.tensor(12), "backbone.bn.num_batches_tracked": torch.tensor(5),
             "module.tam_model0.layers0.0.weight": torch.ones(2, 2), "tam_model1.decoder0.1.running_var": torch.ones(2)}
    torch.save({"state_dict": state, "optimizer": {"state": {}}}, tmp_path / "model.pth")
    loaded = load_model(tmp_path / "model.pth", model.cfg)
    assert_same_outputs(model, loaded)
    assert "2 training-only tensors ignored (tam_model0.*, tam_model1.*)" in loaded.load_summary


def test_noisy_gate_checkpoints_are_refused(tmp_path):
    """FastMoE's NoisyGate (w_gate + w_noise) renormalises over the top-k: other semantics than noisy_vmoe."""
    model = make_model()
    state = {**model.state_dict(), "blocks.1.mlp.gate.0.w_noise": torch.ones(16, 4)}
    torch.save(state, tmp_path / "model.pth")
    message = load_error(tmp_path / "model.pth", model.cfg)
    assert "blocks.1.mlp.gate.0.w_noise" in message and "NoisyGate" in message


def test_task_heads_keyed_by_task_name_map_to_the_task_index(tmp_path):
    model = make_model(tiny_config(tasks=[{"name": "depth", "kind": "depth", "out_channels": 1},
                                          {"name": "semseg", "kind": "seg", "out_channels": 4}]))
    names = [t.name for t in model.cfg.tasks]
    by_name = {re.sub(r"^decoders\.(\d+)\.", lambda m: f"decoders.{names[int(m[1])]}.", k): v
               for k, v in model.state_dict().items()}
    assert "decoders.semseg.proj.weight" in by_name and by_name["decoders.semseg.proj.weight"].shape[0] == 64 * 4
    torch.save(by_name, tmp_path / "model.pt")
    assert_same_outputs(model, load_model(tmp_path / "model.pt", model.cfg))

    by_name["decoders.normals.proj.bias"] = torch.zeros(3)  # a task the config does not have
    torch.save(by_name, tmp_path / "model.pt")
    assert "unexpected key decoders.normals.proj.bias (1 of" in load_error(tmp_path / "model.pt", model.cfg)


def test_file_holding_something_else(tmp_path):
    torch.save([torch.zeros(3)], tmp_path / "list.pt")
    assert "list.pt" in load_error(tmp_path / "list.pt", tiny_config())


# ---------------------------------------------------------------- fuzzing

FIELDS = list(ModelConfig.__dataclass_fields__)
SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(["name", "kind", "out_channels", "x"]) | st.text(max_size=4), inner, max_size=4), max_leaves=10)
SMALL_INTS = st.integers(-2, 70)
CONFIG_DICTS = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), VALUES | SMALL_INTS, max_size=8)


@settings(max_examples=300, deadline=None)
@given(raw=CONFIG_DICTS | st.builds(lambda changes: {**TINY, **changes}, CONFIG_DICTS))
def test_fuzzed_config_dicts_give_config_or_model_load_error(raw):
    try:
        cfg = config_from_dict(raw)
    except ModelLoadError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(cfg, ModelConfig)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                      CONFIG_DICTS.map(lambda d: yaml.safe_dump(d, allow_unicode=True))))
def test_fuzzed_yaml_config_files(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        read_config_file(path)
    except ModelLoadError as exc:
        assert "\n" not in str(exc)


@pytest.fixture(scope="module")
def valid_files() -> dict[str, bytes]:
    model = make_model()
    return {name: tmp_bytes(model, name) for name in ("model.pt", "model.safetensors")}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["model.pt", "model.safetensors"]), data=st.data())
def test_fuzzed_model_files_give_model_or_model_load_error(tmp_path, valid_files, name, data):
    original = valid_files[name]
    corrupt = data.draw(st.one_of(
        st.binary(max_size=300),
        st.integers(0, len(original)).map(lambda n: original[:n]),
        st.lists(st.tuples(st.integers(0, len(original) - 1), st.integers(0, 255)), min_size=1, max_size=8)
        .map(lambda edits: flip(original, edits)),
    ))
    path = tmp_path / name
    path.write_bytes(corrupt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = load_model(path, tiny_config())
        except ModelLoadError as exc:
            assert "\n" not in str(exc)
        else:
            assert isinstance(model, M3ViT)


def flip(original: bytes, edits: list[tuple[int, int]]) -> bytes:
    changed = bytearray(original)
    for position, value in edits:
        changed[position] = value
    return bytes(changed)


def test_config_of_wrong_type_and_config_with_taskspec_objects(saved):
    model, folder = saved
    assert "config must be" in load_error(folder, config=5)
    as_objects = {**model.cfg.to_dict(), "tasks": list(model.cfg.tasks)}
    assert_same_outputs(model, load_model(folder, as_objects))
