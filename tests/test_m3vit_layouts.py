"""Loading checkpoints laid out exactly as VITA-Group/M3ViT writes them (tests/m3vit_checkpoints.py)."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from codesign.cli import main
from codesign.frontend import ModelLoadError, load_model
from codesign.frontend.loader import find_weight_files, merge_expert_shards, normalise_keys, read_state_dict
from codesign.model.train import torch_threads
from codesign.model.zoo import M3VIT_CONFIGS
from codesign.quant.quantize import folded_gates
from m3vit_checkpoints import VARIANTS, config_from_meta, read_layout, save_like_m3vit, write_checkpoint


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    with torch_threads(1):
        yield


def expected_state(fixture) -> dict[str, torch.Tensor]:
    """What the model must hold: M3ViT's own merge, prefixes stripped, heads by task index, no training state."""
    index = {t.name: str(i) for i, t in enumerate(fixture.cfg.tasks)}
    state = {}
    for key, value in fixture.full.items():
        if ".tam_model" in key or key.endswith("num_batches_tracked"):
            continue
        key = key.removeprefix("module.").removeprefix("backbone.")
        key = re.sub(r"^decoders\.([^.]+)\.", lambda m: f"decoders.{index[m[1]]}.", key)
        state[key] = value
    return state


@pytest.fixture(scope="module")
def pascal(tmp_path_factory):
    return write_checkpoint("pascal_mg.sharded", tmp_path_factory.mktemp("pascal"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_real_layout_loads_every_tensor_as_m3vit_merges_it(tmp_path, variant):
    fixture = write_checkpoint(variant, tmp_path)
    model = load_model(fixture.path, fixture.cfg)
    loaded, expected = model.state_dict(), expected_state(fixture)
    assert sorted(loaded) == sorted(expected)
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    tam = sum(".tam_model" in k for k in fixture.layout.files[0].keys if "blocks." not in k)
    assert (f"{tam} training-only tensors ignored" in model.load_summary) == (tam > 0)
    assert "vit_up heads for " + ", ".join(fixture.layout.meta["tasks"]) in model.load_summary


def test_fixture_reproduces_the_reported_failure(pascal):
    """Plain weights-only torch.load refuses the file (numpy scalars in best_result); the loader reads it."""
    with pytest.raises(Exception, match="numpy.core.multiarray.scalar"):
        torch.load(pascal.path / "0.pth", weights_only=True)
    assert set(torch.load(pascal.path / "1.pth", weights_only=False, mmap=True)["state_dict"]) == {
        k for k in pascal.layout.files[1].keys if int(re.search(r"blocks\.(\d+)", k)[1]) < 2}


def test_sharded_and_single_file_give_the_same_model(tmp_path):
    sharded = write_checkpoint("pascal_mg.sharded", tmp_path / "a", seed=3)
    single = write_checkpoint("pascal_mg.single", tmp_path / "b", seed=3)
    assert sharded.path.is_dir() and single.path.is_file()
    a, b = load_model(sharded.path, sharded.cfg), load_model(single.path, single.cfg)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_zoo_configs_are_the_ones_m3vit_trains():
    for name, variant in [("pascal-small", "pascal_mg.sharded"), ("nyud-small", "nyud_mg.sharded"),
                          ("cityscapes-tiny", "cityscapes_tiny_yml.sharded")]:
        assert M3VIT_CONFIGS[name] == config_from_meta(read_layout(variant).meta)
    assert M3VIT_CONFIGS["pascal-small"].num_tokens == 1025 and M3VIT_CONFIGS["nyud-small"].num_tokens == 1201
    assert M3VIT_CONFIGS["cityscapes-tiny"].num_tokens == 129


@pytest.mark.parametrize("variant, hw, tokens, semseg_classes", [("pascal_mg.sharded", (512, 512), 1025, 21),
                                                                  ("nyud_mg.sharded", (480, 640), 1201, 40)])
def test_heads_and_backbone_run_at_the_real_shapes(tmp_path, variant, hw, tokens, semseg_classes):
    fixture = write_checkpoint(variant, tmp_path)
    model = load_model(fixture.path, fixture.cfg)
    images = torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out_tokens = model.forward_backbone(images, 1)
        out = model.head(out_tokens, 0)
    assert out_tokens.shape == (1, tokens, 384) and out.shape == (1, semseg_classes, *hw)
    assert model.norm is None  # M3ViT's backbone has no final norm: each head has its own


# ---------------------------------------------------------------- the task-conditioned gates

def task_embedding(state: dict, task: int, tasks: int) -> torch.Tensor:
    """M3ViT's gate_task_represent, written out from the checkpoint tensors: onehot -> fc1 -> GELU -> fc2 -> LN."""
    fc1 = state["gate_task_represent.fc1.weight"]
    h = F.one_hot(torch.tensor(task), tasks).to(fc1.dtype) @ fc1.T
    h = F.gelu(h + state["gate_task_represent.fc1.bias"])
    h = h @ state["gate_task_represent.fc2.weight"].T + state["gate_task_represent.fc2.bias"]
    return F.layer_norm(h, h.shape, state["gate_task_represent.norm.weight"], state["gate_task_represent.norm.bias"],
                        1e-6)


def unfolded_logits(state: dict, block: int, x: torch.Tensor, task: int, tasks: int, gate_type: str):
    """Gate logits as M3ViT computes them: [x, task embedding] @ w_gate, or x @ w_gate when it ignores the task."""
    w = state[f"blocks.{block}.mlp.gate.w_gate"]
    if gate_type == "shared":
        return x @ w
    embedding = task_embedding(state, task, tasks).expand(x.shape[0], -1)
    return torch.cat([x, embedding], dim=1) @ w


@pytest.mark.parametrize("variant", ["pascal_onehot64.sharded", "pascal_onehot_default.sharded"])
def test_task_conditioned_gates_fold_exactly_into_per_task_weight_and_bias(tmp_path, variant):
    fixture = write_checkpoint(variant, tmp_path)
    model = load_model(fixture.path, fixture.cfg)
    cfg, state = model.cfg, {k: v.double() for k, v in model.state_dict().items()}
    x = torch.randn(50, cfg.embed_dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w, b = folded_gates(model, model.blocks[1].mlp)  # [tasks, E, D], [tasks, E]
    assert w.shape == (cfg.num_tasks, cfg.num_experts, cfg.embed_dim)
    for task in range(cfg.num_tasks):
        reference = unfolded_logits(state, 1, x, task, cfg.num_tasks, cfg.gate_type).numpy()
        np.testing.assert_allclose(x.numpy() @ w[task].T + b[task], reference, rtol=0, atol=1e-5)
    assert np.abs(b).max() > 0.1 if cfg.gate_type == "task_embed" else not b.any()


def test_the_float_model_routes_with_the_unfolded_gate(tmp_path):
    fixture = write_checkpoint("pascal_onehot64.sharded", tmp_path)
    model = load_model(fixture.path, fixture.cfg)
    state = model.state_dict()
    images = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(2))
    for task in (0, 4):
        trace: dict = {}
        with torch.no_grad():
            model.forward_backbone(images, task, trace)
        x = trace["b1.ln2"][0]
        reference = unfolded_logits(state, 1, x, task, 5, "task_embed")
        torch.testing.assert_close(trace["b1.gate.logits"][0], reference, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- why a file does not load

def test_corrupt_rank_file_is_called_corrupt(pascal, tmp_path):
    data = (pascal.path / "1.pth").read_bytes()
    broken = tmp_path / "best_model.pth.tar"
    broken.mkdir()
    (broken / "0.pth").write_bytes((pascal.path / "0.pth").read_bytes())
    (broken / "1.pth").write_bytes(data[: len(data) // 2])
    message = str(pytest.raises(ModelLoadError, load_model, broken, pascal.cfg).value)
    assert "1.pth" in message and "not a valid PyTorch/safetensors file (corrupt or truncated?" in message


def test_valid_file_with_other_objects_is_not_called_corrupt(tmp_path):
    save_like_m3vit({"state_dict": {"cls_token": torch.zeros(1)}, "best_result": np.array([0.5, 0.25])},
                    tmp_path / "model.pth")
    message = str(pytest.raises(ModelLoadError, load_model, tmp_path / "model.pth", M3VIT_CONFIGS["nyud-small"]).value)
    assert "is a valid PyTorch file but holds objects" in message and "numpy" in message
    assert "corrupt" not in message


def test_pickled_module_is_told_to_save_its_state_dict(tmp_path):
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), tmp_path / "model.pth")
    message = str(pytest.raises(ModelLoadError, load_model, tmp_path / "model.pth", M3VIT_CONFIGS["nyud-small"]).value)
    assert "pickled nn.Module" in message and "save its state_dict" in message


def merged_as_loaded(fixture) -> dict[str, torch.Tensor]:
    files = find_weight_files(fixture.path)
    return merge_expert_shards([normalise_keys(read_state_dict(f)) for f in files], files)


def test_shard_merge_equals_m3vits_on_every_key(pascal):
    merged = merged_as_loaded(pascal)
    expected = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in pascal.full.items()}
    assert sorted(merged) == sorted(expected)
    assert all(torch.equal(merged[k], expected[k]) for k in expected)


def test_full_depth_pascal_small_merges_and_loads_as_m3vit_does(tmp_path):
    """The 12-block PASCAL-small checkpoint at its real size (~270 MB written, ~5 s)."""
    fixture = write_checkpoint("pascal_mg.sharded", tmp_path, depth=12)
    merged = merged_as_loaded(fixture)
    assert len(merged) == 526
    assert all(torch.equal(merged[k.removeprefix("module.").removeprefix("backbone.")], v)
               for k, v in fixture.full.items())
    loaded, expected = load_model(fixture.path, fixture.cfg).state_dict(), expected_state(fixture)
    assert sorted(loaded) == sorted(expected)
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_cli_reports_heads_and_training_only_tensors_in_one_info_line(tmp_path, capsys):
    fixture = write_checkpoint("cityscapes_tiny_yml.sharded", tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(fixture.cfg.to_dict()))
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).standard_normal((2, 3, 128, 256)).astype(np.float32))
    argv = ["estimate", str(fixture.path), "--config", str(tmp_path / "config.yaml"), "--calib",
            str(tmp_path / "calib.npy")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    first = captured.out.splitlines()[0]
    assert first == (f"loaded {fixture.path} (2 rank files): 30 backbone tensors; vit_up heads for semseg, depth "
                     "(64 decoders.* tensors); 201 training-only tensors ignored (tam_model0.*, tam_model1.*, "
                     "tam_model2.*)")
    assert captured.err == ""
