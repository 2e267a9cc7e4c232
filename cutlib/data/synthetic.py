"""Built-in procedural datasets with ground truth, so every chapter runs offline in seconds.

``stripes`` is the horse->zebra analogue: smooth-coated animals (A) and striped animals (B) that
are about twice as large, mirroring the paper's distribution mismatch (Fig. 15: 18% vs 37% of
the pixels). ``city`` is the Cityscapes labels->photo analogue (paper Table 1). Both write the
CycleGAN layout plus ground truth: ``X_labels/`` beside every image folder ``X``, ``testA_target/``
(the true domain-B rendering of each test scene of A) and ``meta.json``.
Same seed, same bytes: every image draws from its own generator seeded by (seed, split, index).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from cutlib.paths import data_root

GENERATOR_VERSION = 1
BUILTIN = ("stripes", "city")
DEFAULTS = {"stripes": dict(n_train=400, n_test=100), "city": dict(n_train=400, n_test=100)}
SPLITS = {"trainA": 1, "trainB": 2, "testA": 3, "testB": 4}  # stream ids for the seeds


# ----------------------------------------------------------------------------------------------
# drawing helpers (all on a (S, S) grid of pixel centres in units of the image width)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    return (u + 0.5) / size, (v + 0.5) / size  # u: x / S, v: y / S, both (S, S)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a random (cells x cells) grid upsampled bicubically to (S, S)."""
    grid = rng.random((cells, cells)).astype(np.float32)
    return np.clip(np.asarray(Image.fromarray(grid, "F").resize((size, size), Image.Resampling.BICUBIC)), 0, 1)


def _fractal(rng: np.random.Generator, size: int, octaves: int = 4, base: int = 3) -> np.ndarray:
    """Sum of value-noise octaves (cells base, 2*base, ...), normalised to [0, 1]."""
    total = sum(0.5**o * _smooth_noise(rng, size, base * 2**o) for o in range(octaves))
    return total / sum(0.5**o for o in range(octaves))


def _segment_distance(u, v, p0, p1) -> tuple[np.ndarray, np.ndarray]:
    """Distance of every pixel to the segment p0-p1, and its position t along it (0..1, unclipped)."""
    d = np.subtract(p1, p0)
    t = ((u - p0[0]) * d[0] + (v - p0[1]) * d[1]) / max(float(d @ d), 1e-12)
    tc = np.clip(t, 0, 1)
    return np.hypot(u - p0[0] - tc * d[0], v - p0[1] - tc * d[1]), t


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# stripes: horse -> zebra analogue


@dataclass
class Animal:
    """One animal silhouette: position, size (units of the image width), pose, facing."""

    cx: float
    cy: float
    scale: float
    tilt: float
    legs: tuple[float, float, float, float]  # leg angles (radians from vertical)
    neck: float  # neck angle (0: upright, larger: grazing)
    facing: int  # +1 faces right, -1 left


def _sample_animal(rng: np.random.Generator, scale_range: tuple[float, float]) -> Animal:
    stride = rng.uniform(0.0, 0.45)
    legs = tuple(float(a) for a in (stride, -stride, -stride * 0.8, stride * 0.8) + rng.normal(0, 0.08, 4))
    return Animal(
        cx=rng.uniform(0.22, 0.78),
        cy=rng.uniform(0.48, 0.66),
        scale=rng.uniform(*scale_range),
        tilt=rng.normal(0, 0.08),
        legs=legs,
        neck=rng.uniform(-0.3, 1.4),
        facing=int(rng.choice([-1, 1])),
    )


def _animal_parts(a: Animal) -> list[tuple[str, tuple, tuple, float]]:
    """The silhouette as capsules (name, p0, p1, radius) in body units (body half-length 0.5)."""
    neck_dir = np.array([np.sin(0.6 + 0.5 * a.neck), -np.cos(0.6 + 0.5 * a.neck)])  # up-forward
    neck0 = np.array([0.36, -0.08])
    neck1 = neck0 + 0.36 * neck_dir
    head_dir = np.array([np.cos(0.5 + 0.6 * a.neck), np.sin(0.5 + 0.6 * a.neck)])  # snout direction
    parts = [("body", (-0.32, 0.0), (0.32, 0.0), 0.2), ("neck", tuple(neck0), tuple(neck1), 0.1)]
    parts.append(("head", tuple(neck1), tuple(neck1 + 0.22 * head_dir), 0.075))
    for x0, angle in zip((-0.34, -0.22, 0.2, 0.32), a.legs):
        top = (x0, 0.1)
        parts.append(("leg", top, (x0 + 0.46 * np.sin(angle), 0.1 + 0.46 * np.cos(angle)), 0.055))
    parts.append(("tail", (-0.48, -0.08), (-0.6, 0.28), 0.03))
    return parts


def _render_animal(a: Animal, u: np.ndarray, v: np.ndarray, size: int):
    """Soft coverage (S, S) in [0, 1], body-frame vertical coordinate and stripe phase per pixel."""
    cos, sin = np.cos(a.tilt), np.sin(a.tilt)
    # image -> body frame (units: body half-length 0.5 == a.scale/2 of the image width)
    du, dv = (u - a.cx) / a.scale, (v - a.cy) / a.scale
    bx, by = a.facing * (cos * du + sin * dv), -sin * du + cos * dv
    px_per_unit = a.scale * size
    best = np.full(u.shape, np.inf)  # signed distance in pixels to the nearest part
    phase = np.zeros(u.shape)  # stripe coordinate along that part, in pixels
    period = max(4.0, 0.13 * px_per_unit)  # stripe period in pixels, at least 4
    for name, p0, p1, r in _animal_parts(a):
        dist, t = _segment_distance(bx, by, p0, p1)
        signed = (dist - r) * px_per_unit
        if name == "body":  # bands across the body, bending back over the belly like a zebra's
            along = (bx + 1.0 * by**2 * np.sign(bx + 1e-9)) * px_per_unit
        else:  # bands across the neck, head, legs and tail (stripes run around each limb)
            along = t * np.hypot(*np.subtract(p1, p0)) * px_per_unit
        closer = signed < best
        best = np.where(closer, signed, best)
        phase = np.where(closer, along, phase)
    coverage = np.clip(0.5 - best, 0.0, 1.0)  # 1 px anti-aliased edge
    return coverage, by, 2 * np.pi * phase / period


def _background(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, size: int) -> np.ndarray:
    """Sky gradient over textured grass with a tree line; (S, S, 3) floats in 0..255."""
    horizon = rng.uniform(0.25, 0.5)
    sky_top = rng.choice([[70, 120, 200], [110, 160, 225], [160, 165, 178], [95, 135, 190]]) + rng.normal(0, 10, 3)
    sky_low = np.array([205, 215, 225]) + rng.normal(0, 12, 3)
    mix = np.clip(v / horizon, 0, 1)[..., None]
    sky = sky_top * (1 - mix) + sky_low * mix
    grass_base = rng.choice([[70, 120, 40], [95, 130, 50], [125, 130, 65], [60, 100, 45]]) + rng.normal(0, 8, 3)
    tex = _fractal(rng, size, octaves=4, base=4)[..., None]
    grass = grass_base * (0.75 + 0.5 * tex) * (0.85 + 0.25 * np.clip((v - horizon) / 0.6, 0, 1))[..., None]
    treeline = horizon - 0.04 - 0.08 * _smooth_noise(rng, size, 6)[0][None, :] * rng.uniform(0, 1.5)
    trees = np.array([45, 70, 40]) * (0.8 + 0.4 * _fractal(rng, size, 3, 6))[..., None]
    img = np.where((v >= horizon)[..., None], grass, np.where((v >= treeline)[..., None], trees, sky))
    return img + rng.normal(0, 3, img.shape)


def _coat(rng: np.random.Generator, by: np.ndarray, size: int) -> np.ndarray:
    """Smooth coat (domain A): one colour (brown, bay, chestnut, grey, white) shaded top to belly."""
    base = rng.choice([[120, 78, 45], [85, 55, 35], [150, 95, 55], [135, 132, 128], [222, 216, 205]])
    base = base + rng.normal(0, 8, 3)
    shade = 1.1 - 0.5 * np.clip(by + 0.2, 0, 0.8) + 0.08 * (_smooth_noise(rng, size, 5) - 0.5)
    return base * shade[..., None]


def _zebra(phase: np.ndarray, by: np.ndarray) -> np.ndarray:
    """High-contrast black/white stripes (domain B) with mild shading."""
    white = np.clip(0.5 + 2.0 * np.sin(phase), 0, 1)[..., None]  # near-binary bands
    shade = (1.05 - 0.25 * np.clip(by + 0.2, 0, 0.8))[..., None]
    return (25 + 215 * white) * shade


# scale ranges tuned so that the animals cover ~18% (A) and ~37% (B) of the pixels on average
SCALE_A, SCALE_B = (0.39, 0.66), (0.66, 1.02)


def _stripes_scene(rng: np.random.Generator, size: int, domain: str):
    """One scene: (image A or B, labels) and, for domain A, the same scene striped (its target)."""
    u, v = _grid(size)
    animal = _sample_animal(rng, SCALE_A if domain == "A" else SCALE_B)
    background = _background(rng, u, v, size)
    cover, by, phase = _render_animal(animal, u, v, size)
    # a soft shadow on the ground under the animal
    feet_v = animal.cy + 0.55 * animal.scale
    shadow = np.clip(1 - ((u - animal.cx) / (0.45 * animal.scale)) ** 2 - ((v - feet_v) / (0.06 * animal.scale)) ** 2, 0, 1)
    background = background * (1 - 0.35 * shadow)[..., None]
    phase = phase + rng.uniform(0, 2 * np.pi)
    coat = _coat(rng, by, size)
    labels = (cover >= 0.5).astype(np.uint8)
    c = cover[..., None]
    striped = _to_uint8(background * (1 - c) + _zebra(phase, by) * c)
    if domain == "B":
        return striped, labels, None
    return _to_uint8(background * (1 - c) + coat * c), labels, striped


# ----------------------------------------------------------------------------------------------
# writing a dataset


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", optimize=False)


def _write_splits(out: Path, n_train: int, n_test: int, seed: int, draw) -> None:
    """Write every split of the unaligned layout and its ground truth. ``draw(rng, split)`` returns one
    scene as {folder suffix: uint8 array}: "" the image, "_labels", and for testA "_target", "_target_labels"."""
    counts = {"trainA": n_train, "trainB": n_train, "testA": n_test, "testB": n_test}
    for split, n in counts.items():
        folders = [split, split + "_labels"] + (["testA_target", "testA_target_labels"] if split == "testA" else [])
        for folder in folders:
            (out / folder).mkdir()
        for i in range(n):
            rng = np.random.default_rng([seed, SPLITS[split], i])  # one stream per image: same seed, same bytes
            for suffix, array in draw(rng, split).items():
                _save_png(array, out / f"{split}{suffix}" / f"{i:05d}.png")


def _write_stripes(out: Path, size: int, n_train: int, n_test: int, seed: int) -> dict:
    def draw(rng: np.random.Generator, split: str) -> dict[str, np.ndarray]:
        image, labels, target = _stripes_scene(rng, size, split[-1])
        files = {"": image, "_labels": labels}
        if split == "testA":
            files.update(_target=target, _target_labels=labels)
        return files

    _write_splits(out, n_train, n_test, seed, draw)
    return {
        "description": "horse->zebra analogue: smooth-coated animals (A) -> striped animals (B), B drawn larger",
        "classes": ["background", "animal"],
        "palette": [[0, 0, 0], [255, 255, 255]],
        "labels": "X_labels/NAME.png: uint8 class id per pixel (0 background, 1 animal)",
        "target": "testA_target/NAME.png: the same scene as testA/NAME.png with a striped coat",
        "scale_range": {"A": list(SCALE_A), "B": list(SCALE_B)},
    }


# ----------------------------------------------------------------------------------------------
# city: Cityscapes labels -> photo analogue

# Cityscapes train ids, names and colours (the official 19 evaluation classes)
CITY_CLASSES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                "motorcycle", "bicycle"]
CITY_PALETTE = np.array([[128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153],
                         [153, 153, 153], [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152],
                         [70, 130, 180], [220, 20, 60], [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100],
                         [0, 80, 100], [0, 0, 230], [119, 11, 32]], dtype=np.uint8)
ROAD, SIDEWALK, BUILDING, POLE, SIGN, VEGETATION, TERRAIN, SKY, PERSON, CAR = 0, 1, 2, 5, 7, 8, 9, 10, 11, 13
CITY_USED = [ROAD, SIDEWALK, BUILDING, POLE, SIGN, VEGETATION, TERRAIN, SKY, PERSON, CAR]


class _Scene:
    """A street layout: class ids and instance ids per pixel, plus each instance's attributes.

    Perspective: a flat ground seen from a camera at height 1; a thing of world size s standing on
    the ground at image row v_b appears s * (v_b - horizon) tall (units of the image width).
    """

    def __init__(self, rng: np.random.Generator, size: int):
        self.size, self.u, self.v = size, *_grid(size)
        self.horizon, self.vp = rng.uniform(0.35, 0.5), rng.uniform(0.38, 0.62)
        self.labels = np.full((size, size), SKY, np.uint8)
        self.inst = np.zeros((size, size), np.int32)
        self.objects: list[dict] = [dict(cls=SKY)]

    def paint(self, mask: np.ndarray, cls: int, **attrs) -> None:
        self.objects.append(dict(cls=cls, **attrs))
        self.labels[mask], self.inst[mask] = cls, len(self.objects) - 1

    def ground_u(self, x: float, v) -> np.ndarray:
        """Image column of the ground line at world lateral position x (x = 0 under the camera)."""
        return self.vp + x * (np.asarray(v) - self.horizon)


def _city_layout(rng: np.random.Generator, size: int) -> _Scene:
    s = _Scene(rng, size)
    u, v, H = s.u, s.v, s.horizon
    depth = v - H  # (S, S) > 0 on the ground; proportional to 1 / distance
    road_l, road_r = -rng.uniform(1.2, 2.6), rng.uniform(1.2, 2.6)  # road edges, world units
    walk_l, walk_r = road_l - rng.uniform(0.8, 2.0), road_r + rng.uniform(0.8, 2.0)  # sidewalk outer edges
    ground = depth > 0
    s.paint(ground & (u < s.ground_u(walk_l, v)), SIDEWALK)  # (hidden by facades where they stand)
    s.paint(ground & (u > s.ground_u(walk_r, v)), SIDEWALK)
    grass = [rng.random() < 0.3, rng.random() < 0.3]  # terrain instead of pavement on that side
    s.paint(ground & (u >= s.ground_u(walk_l, v)) & (u < s.ground_u(road_l, v)), TERRAIN if grass[0] else SIDEWALK)
    s.paint(ground & (u <= s.ground_u(walk_r, v)) & (u > s.ground_u(road_r, v)), TERRAIN if grass[1] else SIDEWALK)
    s.paint(ground & (u >= s.ground_u(road_l, v)) & (u <= s.ground_u(road_r, v)), ROAD,
            lane=rng.uniform(-0.3, 0.3) * (road_r - road_l) / 2, road=(road_l, road_r))
    # facades (or a hedge) on each side: vertical planes standing on the sidewalk's outer edge
    for side, x_edge in ((-1, walk_l), (1, walk_r)):
        column_depth = (u - s.vp) / x_edge  # ground depth (v_b - H) of the facade's foot in each column
        hedge = rng.random() < 0.25
        cuts = np.sort(rng.uniform(0.02, 1.2, size=rng.integers(2, 6)))
        bounds = np.concatenate([[0.0], cuts, [10.0]])
        for near, far in zip(bounds[1:], bounds[:-1]):  # blocks along the street
            if not hedge and rng.random() < 0.12:
                continue  # a gap between buildings
            height = rng.uniform(0.6, 1.6) if hedge else rng.uniform(1.5, 5.5)  # world units
            bumps = 0.15 * _smooth_noise(rng, size, 8)[0][None, :] if hedge else 0.0
            top = H - (height + bumps - 1.0) * column_depth  # the camera is at height 1
            mask = (column_depth > far) & (column_depth <= near) & (v >= top) & (v <= H + column_depth)
            if hedge:
                s.paint(mask, VEGETATION)
            else:
                colour = rng.choice([[150, 145, 140], [190, 175, 150], [150, 85, 65], [205, 200, 185], [120, 120, 125]])
                s.paint(mask, BUILDING, colour=colour + rng.normal(0, 10, 3), side=side, x=x_edge,
                        floors=rng.uniform(1.2, 2.0), bays=rng.uniform(1.5, 3.0))
    # things standing on the ground, painted far to near
    things = []
    for _ in range(rng.integers(0, 4)):  # trees and poles (with signs) on the sidewalks
        x = rng.uniform(walk_l, road_l - 0.3) if rng.random() < 0.5 else rng.uniform(road_r + 0.3, walk_r)
        things.append((rng.uniform(0.03, 0.7), rng.choice(["tree", "pole"]), x))
    for _ in range(rng.integers(0, 5)):
        things.append((rng.uniform(0.03, 0.45), "car", rng.uniform(road_l + 0.6, road_r - 0.6)))
    for _ in range(rng.integers(0, 4)):
        x = rng.uniform(walk_l + 0.2, road_l - 0.2) if rng.random() < 0.5 else rng.uniform(road_r + 0.2, walk_r - 0.2)
        things.append((rng.uniform(0.03, 0.6), "person", x))
    for d, kind, x in sorted(things):
        vb, uc = H + d, s.ground_u(x, H + d)
        if kind == "car":
            w, h = rng.uniform(1.0, 1.3) * d, rng.uniform(0.8, 1.0) * d
            body = (abs(u - uc) <= w / 2) & (v <= vb) & (v >= vb - 0.55 * h)
            cabin = (abs(u - uc) <= 0.4 * w) & (v < vb - 0.55 * h) & (v >= vb - h)
            colour = rng.choice([[200, 200, 205], [30, 30, 35], [150, 20, 25], [30, 50, 120], [120, 120, 125],
                                 [230, 230, 230]])
            s.paint(body | cabin, CAR, colour=colour + rng.normal(0, 8, 3), box=(uc - w / 2, vb - h, uc + w / 2, vb))
        elif kind == "person":
            h = rng.uniform(1.0, 1.2) * d
            legs = (abs(u - uc) <= 0.09 * h) & (v <= vb) & (v > vb - 0.45 * h)
            torso = (abs(u - uc) <= 0.14 * h) & (v <= vb - 0.45 * h) & (v > vb - 0.82 * h)
            head = np.hypot(u - uc, v - (vb - 0.9 * h)) <= 0.08 * h
            s.paint(legs | torso | head, PERSON, top=rng.uniform(20, 220, 3), bottom=rng.uniform(20, 120, 3),
                    box=(uc - 0.14 * h, vb - h, uc + 0.14 * h, vb))
        elif kind == "pole":
            h, w = rng.uniform(3.0, 4.5) * d, max(0.12 * d, 0.6 / size)
            s.paint((abs(u - uc) <= w / 2) & (v <= vb) & (v >= vb - h), POLE)
            if rng.random() < 0.6:
                r = 0.25 * d
                s.paint((abs(u - uc) <= r) & (abs(v - (vb - h + r)) <= r), SIGN,
                        colour=rng.choice([[230, 200, 40], [40, 80, 200], [220, 40, 40], [235, 235, 235]]))
        else:  # tree: trunk and crown are both "vegetation" in Cityscapes
            h = rng.uniform(3.0, 5.0) * d
            trunk = (abs(u - uc) <= max(0.08 * d, 0.6 / size)) & (v <= vb) & (v >= vb - 0.6 * h)
            crown = ((u - uc) / (0.3 * h)) ** 2 + ((v - (vb - 0.7 * h)) / (0.32 * h)) ** 2 <= 1
            s.paint(trunk | crown, VEGETATION)
    return s


def _city_photo(s: _Scene, rng: np.random.Generator) -> np.ndarray:
    """Render a layout as a photograph: per-class textures, perspective, lighting, haze, noise."""
    size, u, v, H = s.size, s.u, s.v, s.horizon
    depth = np.maximum(v - H, 1e-3)
    fine, coarse = _fractal(rng, size, 3, 8), _fractal(rng, size, 3, 3)
    img = np.zeros((size, size, 3))
    sky_top = np.array([70, 120, 190]) + rng.normal(0, 15, 3)
    sky_low = np.array([200, 210, 220]) + rng.normal(0, 10, 3)
    mix = np.clip(v / H, 0, 1)[..., None]
    clouds = np.clip(2.5 * (coarse - 0.55), 0, 1)[..., None] * rng.uniform(0, 1)
    sky = (sky_top * (1 - mix) + sky_low * mix) * (1 - clouds) + 235 * clouds
    shade = {-1: 1.0, 1: 1.0}
    shade[int(rng.choice([-1, 1]))] = rng.uniform(0.55, 0.85)  # one side of the street in shadow
    for i, obj in enumerate(s.objects):
        mask = s.inst == i
        if not mask.any():
            continue
        cls = obj["cls"]
        if cls == SKY:
            px = sky
        elif cls == ROAD:
            grey = rng.uniform(80, 115)
            px = np.repeat((grey * (0.85 + 0.3 * fine))[..., None], 3, axis=2)
            z = 1.0 / depth  # distance along the road, for dashes
            on_line = (np.abs(u - s.ground_u(obj["lane"], v)) < 0.05 * depth) & ((0.5 * z) % 1.0 < 0.5)
            left, right = s.ground_u(obj["road"][0] + 0.15, v), s.ground_u(obj["road"][1] - 0.15, v)
            edges = np.minimum(np.abs(u - left), np.abs(u - right))  # the painted edge lines
            px = np.where((on_line | (edges < 0.03 * depth))[..., None], 225.0, px)
        elif cls == SIDEWALK:
            seam = ((1.0 / depth) * 1.5) % 1.0 < 0.12  # transverse tile joints, perspective-correct
            px = (np.array([175, 170, 160]) + rng.normal(0, 8, 3)) * (0.9 + 0.15 * fine)[..., None]
            px = px * np.where(seam, 0.8, 1.0)[..., None]
        elif cls == TERRAIN:
            px = (np.array([120, 150, 60]) + rng.normal(0, 10, 3)) * (0.75 + 0.5 * fine)[..., None]
        elif cls == VEGETATION:
            px = (np.array([55, 95, 35]) + rng.normal(0, 8, 3)) * (0.6 + 0.8 * fine)[..., None]
        elif cls == BUILDING:
            col_depth = np.maximum((u - s.vp) / obj["x"], 1e-3)
            height = (H + col_depth - v) / col_depth  # world height above the ground
            along = 1.0 / col_depth  # distance along the street
            window = ((height * obj["floors"]) % 1.0 > 0.45) & ((along * obj["bays"]) % 1.0 < 0.55) & (height > 0.8)
            px = obj["colour"] * (0.9 + 0.2 * coarse)[..., None] * shade[obj["side"]]
            px = np.where(window[..., None], np.array([55, 65, 80]) * (0.8 + 0.4 * fine)[..., None], px)
        elif cls == CAR:
            x0, y0, x1, y1 = obj["box"]
            rel = (v - y0) / max(y1 - y0, 1e-6)  # 0 at the roof, 1 at the wheels
            px = np.broadcast_to(obj["colour"], img.shape) * (1.05 - 0.2 * rel)[..., None]
            px = np.where((rel < 0.42)[..., None], np.array([45, 55, 65]), px)  # windows
            px = np.where((rel > 0.88)[..., None], np.array([20, 20, 20]), px)  # wheels, shadow
        elif cls == PERSON:
            x0, y0, x1, y1 = obj["box"]
            rel = (v - y0) / max(y1 - y0, 1e-6)
            px = np.where((rel < 0.17)[..., None], np.array([210, 165, 130]),
                          np.where((rel < 0.55)[..., None], obj["top"], obj["bottom"]))
        elif cls == POLE:
            px = np.full(img.shape, 110.0) * (0.9 + 0.2 * fine)[..., None]
        else:  # SIGN
            px = np.broadcast_to(obj["colour"], img.shape).astype(float)
        img[mask] = np.asarray(px, dtype=float)[mask] if np.ndim(px) == 3 else px
    haze = rng.uniform(0.1, 0.5) * np.exp(-10 * np.hypot(u - s.vp, v - H))[..., None]
    img = img * (1 - haze) + sky_low * haze
    img = img * rng.uniform(0.8, 1.15) * (1 + rng.normal(0, 0.05, 3))  # exposure and colour cast
    img = np.asarray(Image.fromarray(_to_uint8(img)).filter(ImageFilter.GaussianBlur(0.4 * size / 64)), float)
    return _to_uint8(img + rng.normal(0, 4, img.shape))


def _write_city(out: Path, size: int, n_train: int, n_test: int, seed: int) -> dict:
    def draw(rng: np.random.Generator, split: str) -> dict[str, np.ndarray]:
        scene = _city_layout(rng, size)
        files = {"_labels": scene.labels}
        if split.endswith("A"):
            files[""] = CITY_PALETTE[scene.labels]  # label map in colour
        if split == "testA":  # the photo of this very layout is the ground truth
            files.update(_target=_city_photo(scene, rng), _target_labels=scene.labels)
        elif split.endswith("B"):
            files[""] = _city_photo(scene, rng)
        return files

    _write_splits(out, n_train, n_test, seed, draw)
    return {
        "description": "Cityscapes labels->photo analogue: colour label maps (A) -> rendered photos of other layouts (B)",
        "classes": CITY_CLASSES,
        "palette": CITY_PALETTE.tolist(),
        "classes_used": CITY_USED,
        "labels": "X_labels/NAME.png: uint8 Cityscapes train id per pixel (0 road ... 18 bicycle)",
        "target": "testA_target/NAME.png: the photo of the layout drawn in testA/NAME.png",
    }


WRITERS = {"stripes": _write_stripes, "city": _write_city}


def dataset_dir(name: str, root: str | Path | None = None, size: int = 64, seed: int = 0,
                n_train: int | None = None, n_test: int | None = None) -> Path:
    """Cache folder of a built-in dataset: ``<root>/<name>_<size>px_seed<seed>`` (+ counts if not default)."""
    root = Path(root) if root is not None else data_root()
    d = DEFAULTS[name]
    n_train = d["n_train"] if n_train is None else n_train
    n_test = d["n_test"] if n_test is None else n_test
    suffix = "" if (n_train, n_test) == (d["n_train"], d["n_test"]) else f"_n{n_train}-{n_test}"
    return root / f"{name}_{size}px_seed{seed}{suffix}"


def make_dataset(name: str, root: str | Path | None = None, size: int = 64, n_train: int | None = None,
                 n_test: int | None = None, seed: int = 0) -> Path:
    """Generate (or reuse from the cache) a built-in dataset and return its folder.

    Written to a temporary folder and renamed into place when complete, so an interrupted run
    leaves no half-made dataset. ``n_train``/``n_test`` are images per domain.
    """
    if name not in WRITERS:
        raise ValueError(f"unknown built-in dataset {name!r}; choose one of {sorted(WRITERS)}")
    if not isinstance(size, int) or size < 16:
        raise ValueError(f"size must be an integer of at least 16 pixels, got {size!r}")
    d = DEFAULTS[name]
    n_train = int(d["n_train"] if n_train is None else n_train)
    n_test = int(d["n_test"] if n_test is None else n_test)
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be positive, got {n_train}, {n_test}")
    final = dataset_dir(name, root, size, seed, n_train, n_test)
    meta_path = final / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("generator_version") == GENERATOR_VERSION:
            return final
        shutil.rmtree(final)  # made by an older generator: rebuild
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the result is a normal folder
    try:
        meta = WRITERS[name](tmp, size, n_train, n_test, seed)
        meta.update(name=name, size=size, seed=seed, n_train=n_train, n_test=n_test,
                    generator_version=GENERATOR_VERSION)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "meta.json").is_file():  # not a concurrent writer that finished first
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
