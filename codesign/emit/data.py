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
        "abits": prog.abits,
        "wbits": prog.wbits,
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
        "instructions": [{"op": i.op.name, "layer": i.layer} for i in prog.instrs],
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
                        "expected": f"vec/{vec.id}.act.bin"})
    path = data_dir / "manifest.json"
    path.write_text(json.dumps(manifest(prog, entries), indent=1))
    return path


def load_manifest(project_dir: Path) -> dict:
    return json.loads((Path(project_dir) / "data" / "manifest.json").read_text())


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
