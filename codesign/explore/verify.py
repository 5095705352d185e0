"""--verify K: the K best front points generated and run on the hardware models (csim, cosim).

Each point is built the way its generate command builds it (api.convert at the point's array,
weight ports, clock and precision, calibrated on the same images); its program and weights are
checked to be the ones the sweep costed, then csim (and cosim) must be bit-exact with the golden
model on the project's test vectors.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..schedule.program import compile_program
from .context import ExploreContext, PointPrecision, quantize_point

VERIFY_DIR = "verify"


def point_design(ctx: ExploreContext, p: dict, boards, calib_images):
    from .. import api

    board = next(b for b in boards if b.name == p["board"])
    precision = PointPrecision(p["wbits"], p["abits"], p["precision"]).to_precision(ctx.model.cfg)
    return api.convert(ctx.model, board, calib=calib_images, precision=precision, array=(p["P"], p["Q"]),
                       weight_ports=p["weight_ports"], clock_mhz=p["clock_mhz"])


def verify_points(ctx: ExploreContext, points: list[dict], boards, calib_images, out: Path, cosim: bool,
                  progress: bool) -> list[dict]:
    from .. import api

    verified = []
    for i, p in enumerate(points):
        if progress:
            print(f"verify {i + 1}/{len(points)}: {p['board']} {p['P']}x{p['Q']} W{p['wbits']}A{p['abits']} "
                  f"(generate, csim{', cosim' if cosim else ''})", file=sys.stderr, flush=True)
        design = point_design(ctx, p, boards, calib_images)
        swept = compile_program(quantize_point(ctx, PointPrecision(p["wbits"], p["abits"], p["precision"])))
        if bytes(design.prog.code) != bytes(swept.code) or bytes(design.prog.wgt) != bytes(swept.wgt):
            raise RuntimeError(f"point {p['key']}: generate builds another program than the sweep costed")
        project = api.generate(design, out / VERIFY_DIR / p["key"][:12], images=1, force=True)
        cs = api.csim(project)
        rec = {"key": p["key"], "project": str(project), "csim": "bit-exact" if not cs.failed else
               f"MISMATCH ({', '.join(f'{v} at {t}' for v, t in cs.failed.items())})", "bit_exact": not cs.failed}
        if cosim:
            co = api.cosim(project)
            rec["cosim"] = "bit-exact" if co.all_passed else "MISMATCH"
            rec["bit_exact"] = rec["bit_exact"] and co.all_passed
        verified.append(rec)
    return verified
