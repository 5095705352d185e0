"""The project's data/ folder: weight blob, program, memory map and golden test vectors.

Both verification paths (the C++ testbench and the cocotb testbench) read only this folder, so
they check exactly the same thing. Layout:
  data/manifest.json   memory map (see `write_data_dir`)
  data/weights.bin     the `wgt` blob           data/program.bin   the instruction stream
  data/vec/<id>.in.bin the `act` image a run starts from (input placed, everything else zero)
  data/vec/<id>.act.bin the `act` image the golden model ends with
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..quant.golden import run_golden
from ..quant.qmodel import QuantModel
from ..schedule.isa import execute
from ..schedule.program import Program, load_input, read_region


@dataclass
class Vector:
    id: str
    task: int
    x_q: np.ndarray  # integer patch rows [T, F]
    image: int | None = None  # index of the image it was made from (the manifest's "image", for compare)


def golden_act_image(prog: Program, qm: QuantModel, vec: Vector) -> tuple[bytearray, bytearray]:
    """(start image, final image) of `act` for one run; the final image is checked against the
    layer-level golden model so the program and the golden model can never drift apart."""
    start = bytearray(prog.act_bytes)
    load_input(prog, start, vec.x_q)
    final = bytearray(start)
    execute(prog.code, prog.wgt, final, vec.task, prog.abits, prog.elem_bytes)
    golden = run_golden(qm, vec.x_q, vec.task)
    for name in prog.trace_names:
        if not np.array_equal(read_region(prog, final, name), golden.trace[name]):
            raise AssertionError(f"program and golden model disagree at {name} ({vec.id})")
    return start, final


def manifest(prog: Program, vectors: list[dict]) -> dict:
    return {
        "format": 1,
        "elem_bytes": prog.elem_bytes,
        "abits": prog.abits,  # the widest activation; each instruction's own: instructions[i]["obits"]
        "wbits": prog.wbits,  # the widest weight
        "num_tasks": prog.num_tasks,
        "act_bytes": prog.act_bytes,
        "wgt_bytes": len(prog.wgt),
        "prog_bytes": len(prog.code),
        "weights_file": "weights.bin",
        "program_file": "program.bin",
        "input": {"offset": prog.input.addr, "shape": list(prog.input.shape)},
        "output": {"offset": prog.output.addr, "shape": list(prog.output.shape)},
        "trace": list(prog.trace_names),
        "regions": [r.to_dict() for r in prog.regions.values()],
        "weights": [r.to_dict() for r in prog.weights],
        "moe_layers": prog.moe_layers,
        "instructions": [{"op": i.op.name, "layer": i.layer, "obits": i.obits} for i in prog.instrs],
        "vectors": vectors,
    }


def write_data_dir(data_dir: Path, prog: Program, qm: QuantModel, vectors: list[Vector]) -> Path:
    data_dir = Path(data_dir)
    (data_dir / "vec").mkdir(parents=True, exist_ok=True)
    (data_dir / "weights.bin").write_bytes(prog.wgt)
    (data_dir / "program.bin").write_bytes(prog.code)
    entries = []
    for vec in vectors:
        start, final = golden_act_image(prog, qm, vec)
        (data_dir / "vec" / f"{vec.id}.in.bin").write_bytes(bytes(start))
        (data_dir / "vec" / f"{vec.id}.act.bin").write_bytes(bytes(final))
        entries.append({"id": vec.id, "task": vec.task, "start": f"vec/{vec.id}.in.bin",
                        "expected": f"vec/{vec.id}.act.bin"} | ({} if vec.image is None else {"image": vec.image}))
    path = data_dir / "manifest.json"
    path.write_text(json.dumps(manifest(prog, entries), indent=1))
    return path


class ManifestError(ValueError):
    """data/manifest.json is not shaped as write_data_dir writes it (one-line message)."""


def load_manifest(project_dir: Path) -> dict:
    """The project's manifest, checked: everything that reads it may index it without a KeyError."""
    return load_data_manifest(Path(project_dir) / "data")


def load_data_manifest(data_dir: Path) -> dict:
    """The checked manifest of a folder laid out as write_data_dir writes it."""
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: generate the project first")
    try:
        man = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON ({type(exc).__name__}); regenerate the project") from None
    problem = manifest_problem(man)
    if problem:
        raise ManifestError(f"{path}: {problem}; regenerate the project")
    return man


def manifest_problem(man) -> str | None:
    """What is wrong with a manifest's structure, or None."""
    if not isinstance(man, dict):
        return f"expected a JSON object, got {type(man).__name__}"
    for key in ("elem_bytes", "abits", "num_tasks", "act_bytes", "wgt_bytes", "prog_bytes"):
        if not _is_int(man.get(key)) or man[key] < 0:
            return f"{key} must be a non-negative integer"
    if man["elem_bytes"] not in (1, 2):
        return "elem_bytes must be 1 or 2"
    regions = man.get("regions")
    if not isinstance(regions, list) or not all(_is_region(r, man) for r in regions):
        return "regions must be a list of {name, addr, shape, kind} inside the act image"
    out, names = man.get("output"), {r["name"] for r in regions}
    if not isinstance(out, dict) or not _is_region({"addr": out.get("offset"), "shape": out.get("shape")}, man):
        return "output must have an integer offset and shape inside the act image"
    if not isinstance(man.get("trace"), list) or not all(isinstance(n, str) and n in names for n in man["trace"]):
        return "trace must be a list of region names"
    vectors = man.get("vectors")
    if not isinstance(vectors, list) or not vectors:
        return "vectors must be a non-empty list"
    for i, vec in enumerate(vectors):
        if not _is_vector(vec, man["num_tasks"]):
            return f"vectors[{i}] must have an id, a task below num_tasks and relative start and expected files"
    if len({vec["id"] for vec in vectors}) != len(vectors):
        return "vector ids must be unique"
    return None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_region(r, man: dict) -> bool:
    if not isinstance(r, dict) or not _is_int(r.get("addr")) or r["addr"] < 0:
        return False
    shape = r.get("shape")
    if not isinstance(shape, list) or not all(_is_int(n) and n >= 0 for n in shape):
        return False
    if "name" in r or "kind" in r:  # a region, not the output (which has neither)
        if not isinstance(r.get("name"), str) or not isinstance(r.get("kind"), str):
            return False
    nbytes = math.prod(shape) * (4 if r.get("kind") == "i32" else man["elem_bytes"])
    return r["addr"] + nbytes <= man["act_bytes"]


def _is_vector(vec, num_tasks: int) -> bool:
    if not isinstance(vec, dict) or not isinstance(vec.get("id"), str) or not vec["id"].strip():
        return False
    if not _is_int(vec.get("task")) or not 0 <= vec["task"] < max(num_tasks, 1):
        return False
    return all(_is_relative_file(vec.get(key)) for key in ("start", "expected"))


def _is_relative_file(name) -> bool:
    return isinstance(name, str) and bool(name) and not Path(name).is_absolute() and ".." not in Path(name).parts


def region_nbytes(region: dict, elem_bytes: int) -> int:
    """Bytes of a manifest region: int32 tensors take 4 bytes per element, the others elem_bytes."""
    return int(np.prod(region["shape"])) * (4 if region["kind"] == "i32" else elem_bytes)


def compare_act(man: dict, got: bytes, expected: bytes) -> str | None:
    """Name of the first traced tensor (in execution order) that differs, or None when bit-exact."""
    regions = {r["name"]: r for r in man["regions"]}
    eb = man["elem_bytes"]
    for name in man["trace"]:
        r = regions[name]
        size = region_nbytes(r, eb)
        if got[r["addr"]: r["addr"] + size] != expected[r["addr"]: r["addr"] + size]:
            return name
    return None
