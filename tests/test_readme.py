"""The README's examples run as written: its Python blocks (the RTL one is slow) and the cheap
lines of its command summary, in a fresh folder."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from codesign.cli import main
from codesign.model.config import ModelConfig
from codesign.model.data import make_dataset

README = Path(__file__).resolve().parents[1] / "README.md"
PYTHON_BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), re.M | re.S)
# The command summary: what stands for what when a line is run.
PLACEHOLDERS = {"MODEL": "default", "OUT": "out", "T": "depth"}
CHEAP = ("estimate", "csim", "report")  # run against the project the first Python block made


def _usage_lines() -> list[list[str]]:
    block = README.read_text().split("## Use\n", 1)[1].split("```\n", 2)[1]
    lines = []
    for line in block.splitlines():
        words = shlex.split(line.split("#", 1)[0].replace("[", " ").replace("]", " "))
        if words[:1] == ["codesign"]:
            lines.append([PLACEHOLDERS.get(w, w) for w in words[1:]])
    return lines


def test_the_readme_has_the_blocks_this_test_runs():
    assert len(PYTHON_BLOCKS) == 2 and "cosim(" in PYTHON_BLOCKS[1] and "cosim(" not in PYTHON_BLOCKS[0]
    assert {line[0] for line in _usage_lines()} >= {"generate", "csim", "cosim", "compare", "report", "estimate"}


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """The first Python block, run as written in a fresh folder (its namespace and that folder)."""
    folder = tmp_path_factory.mktemp("readme")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        namespace: dict = {}
        exec(compile(PYTHON_BLOCKS[0], "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    return folder, namespace


def test_the_python_example_runs_as_written(readme_run):
    folder, ns = readme_run
    assert ns["tokens"].shape == (4, 17, 64) and np.array_equal(ns["same"], ns["tokens"])
    assert ns["res"].ok and ns["pred"].all_bit_exact and [t.name for t in ns["pred"].tasks] == ["depth"]
    assert (folder / "profile.png").is_file() and (folder / "out" / "reports" / "profile.png").is_file()


@pytest.mark.parametrize("argv", [line for line in _usage_lines() if line[0] in CHEAP], ids=" ".join)
def test_the_cheap_command_lines_run_as_written(argv, readme_run, monkeypatch, capsys):
    folder, _ = readme_run
    monkeypatch.chdir(folder)
    np.save(folder / "x.npy", make_dataset(2, ModelConfig(), seed=3).images)
    rc = main(argv)
    captured = capsys.readouterr()
    if argv[0] == "report":  # no Vitis here: it says what it looked for
        assert rc == 2 and "no Vitis HLS reports: looked for" in captured.err
    else:
        assert rc == 0, captured.err[-2000:]


@pytest.mark.parametrize("argv", _usage_lines(), ids=" ".join)
def test_every_command_line_has_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main([argv[0], "--help"])
    assert exc.value.code == 0
    options = set(re.findall(r"--[\w-]+", capsys.readouterr().out))
    assert {w for w in argv if w.startswith("--")} <= options


@pytest.mark.slow
def test_the_rtl_example_runs_as_written(readme_run, monkeypatch):
    folder, ns = readme_run
    monkeypatch.chdir(folder)
    exec(compile(PYTHON_BLOCKS[1], "README.md", "exec"), ns)  # noqa: S102
    assert ns["res"].all_passed


def _explore_block() -> list[list[str]]:
    section = README.read_text().split("## Explore", 1)[1]
    block = re.search(r"^```sh\n(.*?)^```", section, re.M | re.S).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def test_the_explore_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """explore on two boards, then the generate command it wrote for the chosen point."""
    import json

    monkeypatch.chdir(tmp_path)
    lines = _explore_block()
    assert [w[:2] for w in lines] == [["codesign", "explore"], ["sh", "explore/generate_chosen.sh"]]
    for words in lines:
        if words[0] == "sh":  # the script explore wrote: its one command, run the same way
            words = shlex.split((tmp_path / words[1]).read_text().splitlines()[-1])
        assert words[0] == "codesign"
        assert main(words[1:]) == 0, capsys.readouterr().err[-2000:]
    report = json.loads((tmp_path / "explore" / "pareto.json").read_text())
    assert report["boards"] == ["zcu104", "kv260"] and report["front"]
    chosen = report["chosen"]
    project = json.loads((tmp_path / "explore" / "chosen_project" / "project.json").read_text())
    assert (project["board"], project["array"]) == (chosen["board"], [chosen["P"], chosen["Q"]])
