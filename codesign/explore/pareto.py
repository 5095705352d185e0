"""The Pareto front of accuracy (higher is better) against latency and DSPs (lower is better)."""
from __future__ import annotations

import numpy as np

# (field, +1 to maximise / -1 to minimise)
OBJECTIVES = (("accuracy", 1), ("latency_ms_per_task", -1), ("dsp", -1))


def objective_matrix(points: list[dict]) -> np.ndarray:
    """One row per point, every objective turned into 'larger is better'."""
    return np.array([[sign * float(p[name]) for name, sign in OBJECTIVES] for p in points], np.float64).reshape(
        len(points), len(OBJECTIVES))


def dominated(values: np.ndarray) -> np.ndarray:
    """values[i] is dominated when another row is >= everywhere and > somewhere."""
    ge = (values[None, :, :] >= values[:, None, :]).all(axis=2)  # ge[i, j]: row j >= row i everywhere
    gt = (values[None, :, :] > values[:, None, :]).any(axis=2)
    return (ge & gt).any(axis=1)


def pareto_front(points: list[dict]) -> list[dict]:
    """The points that fit their board and that no other fitting point dominates, fastest first."""
    fitting = [p for p in points if p["fits"]]
    if not fitting:
        return []
    keep = ~dominated(objective_matrix(fitting))
    return sorted((p for p, k in zip(fitting, keep) if k), key=rank_key)


def rank_key(p: dict):
    return (p["latency_ms_per_task"], p["dsp"], -p["accuracy"], p["key"])


def ranked(front: list[dict], min_accuracy: float) -> list[dict]:
    """The front in order of preference: points at or above `min_accuracy`, fastest first (fewer DSPs,
    then higher accuracy on ties); then the rest, most accurate first."""
    good = sorted((p for p in front if p["accuracy"] >= min_accuracy), key=rank_key)
    rest = sorted((p for p in front if p["accuracy"] < min_accuracy), key=lambda p: (-p["accuracy"], rank_key(p)))
    return good + rest
