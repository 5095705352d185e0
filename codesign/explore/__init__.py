"""codesign explore: the co-design loop over precision, MAC array, weight ports, clock and board.

Every point is a precision (global widths or a per-layer Precision) on one hardware configuration.
Its accuracy comes from the bit-exact golden model on held-out images against the float model,
its latency and resources from the estimate (codesign.schedule.estimate / tiling). What does not
depend on the point is computed once per run (ExploreContext: calibration ranges, the held-out
images and the float model's outputs on them), and what depends only on the precision once per
precision (the integer model, its program, its accuracy and its expert routing), so a hardware
point costs one tiling and one estimate per task.
"""
from .run import ExploreResult, explore  # noqa: F401
