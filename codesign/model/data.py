"""Synthetic multi-task scenes: coloured shapes on a textured background.

Every image comes with a per-pixel class map (seg) and a depth map, so one dataset
serves all tasks of the model: saliency (shape vs background), edge (class borders) and
surface normals (from the depth map) are derived from those two. Everything is drawn with numpy from one seed, so the
same (n, cfg, seed) always gives the same data, on any machine.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import ModelConfig, TaskSpec

BACKGROUND, CIRCLE, SQUARE, TRIANGLE = 0, 1, 2, 3
NUM_CLASSES = 4
CLASS_NAMES = ("background", "circle", "square", "triangle")
# Depth maps are relative: 0 at the camera, about 1 at the far edge of the floor.
DEPTH_UNITS = "depth (relative; 1 = far)"
MAX_SHAPES = 3
# Shapes are always nearer than the background so the depth ordering is unambiguous.
# Bigger shapes are nearer (as under perspective), so depth is inferable from the image.
SHAPE_DEPTH = (0.15, 0.55)
SHAPE_DEPTH_JITTER = 0.03
# The background is a floor-like plane: far at the top, nearer at the bottom.
BACKGROUND_DEPTH = (0.95, 0.7)
BACKGROUND_DEPTH_JITTER = 0.02
SHAPE_TILT = 0.004  # depth change per pixel across a shape's plane
MIN_COLOUR_CONTRAST = 0.7
# Shapes sit on a coarse grid of square cells, a quarter of the image's shorter side (one 8-px
# patch at the default 32/8), and span 1-2 cells (8 or 16 px): aligned to patches, a tiny ViT
# learns them in seconds.
GRID_CELLS = 4
SHAPE_CELLS = (1, 2)


@dataclass
class SyntheticData:
    images: np.ndarray  # float32 [n, C, H, W], values roughly in [-1, 1]
    seg: np.ndarray  # int64 [n, H, W], class per pixel (0 = background)
    depth: np.ndarray  # float32 [n, 1, H, W]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index) -> "SyntheticData":
        return SyntheticData(self.images[index], self.seg[index], self.depth[index])

    def target(self, task: TaskSpec) -> np.ndarray:
        """Per-pixel target: int classes [n, H, W] (seg), else float [n, C, H, W]."""
        targets = {"seg": lambda: self.seg, "depth": lambda: self.depth,
                   "saliency": lambda: (self.seg > 0).astype(np.float32)[:, None],
                   "edge": lambda: class_borders(self.seg)[:, None], "normals": lambda: depth_normals(self.depth)}
        if task.kind not in targets:
            raise ValueError(f"no synthetic target for task kind {task.kind!r}")
        return targets[task.kind]()


def class_borders(seg: np.ndarray) -> np.ndarray:
    """float [n, H, W]: 1 where a pixel's right or lower neighbour has another class."""
    edge = np.zeros(seg.shape, np.float32)
    edge[:, :, :-1] += seg[:, :, 1:] != seg[:, :, :-1]
    edge[:, :-1, :] += seg[:, 1:, :] != seg[:, :-1, :]
    return np.minimum(edge, 1)


def depth_normals(depth: np.ndarray) -> np.ndarray:
    """Unit surface normals [n, 3, H, W] of the depth map [n, 1, H, W] (image axes, 1 px units)."""
    dz_dy, dz_dx = np.gradient(depth[:, 0].astype(np.float64), axis=(1, 2))
    normal = np.stack([-dz_dx, -dz_dy, np.ones_like(dz_dx)], axis=1)
    return (normal / np.linalg.norm(normal, axis=1, keepdims=True)).astype(np.float32)


def make_dataset(n: int, cfg: ModelConfig, seed: int) -> SyntheticData:
    rng = np.random.default_rng(seed)
    (height, width), chans = cfg.image_hw, cfg.in_chans
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    background = rng.uniform(-0.6, 0.6, (n, chans)).astype(np.float32)
    shapes = _draw_shape_params(rng, n, (height, width), background)
    masks = _shape_masks(shapes, yy, xx)
    images = np.broadcast_to(background[:, :, None, None], (n, chans, height, width))
    depth = _background_depth(rng, n, yy, xx, height)
    seg = np.zeros((n, height, width), dtype=np.int64)
    for slot in range(MAX_SHAPES):  # far to near, so nearer shapes occlude
        covered = masks[:, slot]
        seg = np.where(covered, shapes["cls"][:, slot, None, None], seg)
        depth = np.where(covered, _shape_plane(shapes, slot, yy, xx), depth)
        images = np.where(covered[:, None], shapes["colour"][:, slot, :, None, None], images)
    images = images + _texture(rng, n, chans, yy, xx, (height, width))
    return SyntheticData(images.astype(np.float32), seg, depth[:, None].astype(np.float32))


def _draw_shape_params(rng: np.random.Generator, n: int, hw: tuple[int, int],
                       background: np.ndarray) -> dict[str, np.ndarray]:
    """Per image up to MAX_SHAPES shapes, sorted far to near so painting in order handles occlusion."""
    count = rng.integers(1, MAX_SHAPES + 1, n)
    cell = max(1, min(hw) // GRID_CELLS)
    rows, cols = (max(GRID_CELLS, side // cell) for side in hw)  # GRID_CELLS along the shorter side
    cells = rng.integers(SHAPE_CELLS[0], SHAPE_CELLS[1] + 1, (n, MAX_SHAPES))
    params = {
        "active": np.arange(MAX_SHAPES)[None, :] < count[:, None],
        "cls": rng.integers(CIRCLE, TRIANGLE + 1, (n, MAX_SHAPES)),
        "extent": (cell * cells).astype(np.float32),
        # Top-left corners in whole cells, chosen so the shape stays inside the image.
        "x0": (cell * rng.integers(0, cols - cells + 1)).astype(np.float32),
        "y0": (cell * rng.integers(0, rows - cells + 1)).astype(np.float32),
        "depth": _depth_from_size(rng, cells),
        "tilt_x": rng.uniform(-SHAPE_TILT, SHAPE_TILT, (n, MAX_SHAPES)).astype(np.float32),
        "tilt_y": rng.uniform(-SHAPE_TILT, SHAPE_TILT, (n, MAX_SHAPES)).astype(np.float32),
        "colour": _contrasting_colours(rng, background),
    }
    far_to_near = np.argsort(-params["depth"], axis=1)
    for key, value in params.items():
        index = far_to_near if value.ndim == 2 else far_to_near[..., None]
        params[key] = np.take_along_axis(value, index, axis=1)
    return params


def _contrasting_colours(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """Random colours in [-1, 1], [n, MAX_SHAPES, C], kept clearly apart from each image's background."""
    colour = rng.uniform(-1, 1, background.shape[:1] + (MAX_SHAPES,) + background.shape[1:])
    bg = background[:, None, :]
    offset = colour - bg
    distance = np.linalg.norm(offset, axis=-1, keepdims=True)
    # Too-similar colours are pushed out along their own direction, keeping the randomness.
    pushed = bg + offset / np.maximum(distance, 1e-6) * MIN_COLOUR_CONTRAST
    return np.clip(np.where(distance < MIN_COLOUR_CONTRAST, pushed, colour), -1, 1).astype(np.float32)


def _shape_masks(p: dict[str, np.ndarray], yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Boolean [n, MAX_SHAPES, H, W] coverage of each shape slot."""
    s, x0, y0 = (p[k][..., None, None] for k in ("extent", "x0", "y0"))
    dx, dy = xx - x0, yy - y0  # position inside the bounding box
    inside_box = (dx >= 0) & (dx < s) & (dy >= 0) & (dy < s)
    circle = (dx - s / 2) ** 2 + (dy - s / 2) ** 2 <= (s / 2) ** 2
    triangle = inside_box & (np.abs(dx - s / 2) <= dy / 2)  # apex at top centre
    cls = p["cls"][..., None, None]
    mask = np.where(cls == CIRCLE, circle, np.where(cls == SQUARE, inside_box, triangle))
    return mask & p["active"][..., None, None]


def _shape_plane(p: dict[str, np.ndarray], slot: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Depth of a slightly tilted plane through the shape's centre, [n, H, W]."""
    def at(key):
        return p[key][:, slot, None, None]

    cx, cy = at("x0") + at("extent") / 2, at("y0") + at("extent") / 2
    return at("depth") + at("tilt_x") * (xx - cx) + at("tilt_y") * (yy - cy)


def _depth_from_size(rng: np.random.Generator, cells: np.ndarray) -> np.ndarray:
    nearness = (cells - SHAPE_CELLS[0]) / max(1, SHAPE_CELLS[1] - SHAPE_CELLS[0])
    far, near = SHAPE_DEPTH[1], SHAPE_DEPTH[0]
    jitter = rng.uniform(-SHAPE_DEPTH_JITTER, SHAPE_DEPTH_JITTER, cells.shape)
    return (far + (near - far) * nearness + jitter).astype(np.float32)


def _background_depth(rng, n: int, yy: np.ndarray, xx: np.ndarray, height: int) -> np.ndarray:
    """[n, H, W] depth of the floor-like background plane, with a small unpredictable offset per image."""
    top, bottom = BACKGROUND_DEPTH
    plane = top + (bottom - top) * yy / height + 0 * xx  # "+ 0 * xx" broadcasts to the full image
    offset = rng.uniform(-BACKGROUND_DEPTH_JITTER, BACKGROUND_DEPTH_JITTER, n).astype(np.float32)
    return plane[None] + offset[:, None, None]


def _texture(rng, n: int, chans: int, yy, xx, hw: tuple[int, int]) -> np.ndarray:
    """Low-frequency stripes plus pixel noise, so colour alone is not a perfect shape detector."""
    height, width = hw
    freq = rng.uniform(1, 3, (n, 2)).astype(np.float32) * 2 * np.pi / np.array([width, height], np.float32)
    phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    stripes = 0.15 * np.sin(freq[:, 0, None, None] * xx + freq[:, 1, None, None] * yy + phase[:, None, None])
    noise = rng.normal(0, 0.08, (n, chans, height, width)).astype(np.float32)
    return stripes[:, None] + noise
