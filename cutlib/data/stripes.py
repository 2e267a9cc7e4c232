"""The built-in ``stripes`` dataset, the horse->zebra analogue: smooth-coated animals (A) and
striped animals (B) about twice as large, mirroring the paper's distribution mismatch (Fig. 15: 18%
vs 37% of the pixels). Ground truth: animal masks, and for every test scene of A the same scene
with a striped coat (``testA_target``). Any image's scene can be drawn again (``scene_of``) and
rendered with another image's coat (``render``): the ground-truth hybrids that score swaps (cutlib.swaps).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cutlib.data.drawing import SPLITS, clip_uint8, fractal, pixel_grid, segment_distance, smooth_noise, write_splits


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
        dist, t = segment_distance(bx, by, p0, p1)
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
    tex = fractal(rng, size, octaves=4, base=4)[..., None]
    grass = grass_base * (0.75 + 0.5 * tex) * (0.85 + 0.25 * np.clip((v - horizon) / 0.6, 0, 1))[..., None]
    treeline = horizon - 0.04 - 0.08 * smooth_noise(rng, size, 6)[0][None, :] * rng.uniform(0, 1.5)
    trees = np.array([45, 70, 40]) * (0.8 + 0.4 * fractal(rng, size, 3, 6))[..., None]
    img = np.where((v >= horizon)[..., None], grass, np.where((v >= treeline)[..., None], trees, sky))
    return img + rng.normal(0, 3, img.shape)


def _coat_draws(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The random part of a smooth coat (domain A): its colour (brown, bay, chestnut, grey, white) and a
    mottling field (S, S) in [0, 1]."""
    base = rng.choice([[120, 78, 45], [85, 55, 35], [150, 95, 55], [135, 132, 128], [222, 216, 205]])
    return base + rng.normal(0, 8, 3), smooth_noise(rng, size, 5)


def _coat(base: np.ndarray, mottle: np.ndarray, by: np.ndarray) -> np.ndarray:
    """Smooth coat: one colour shaded from the back to the belly (body coordinate ``by``), mildly mottled."""
    shade = 1.1 - 0.5 * np.clip(by + 0.2, 0, 0.8) + 0.08 * (mottle - 0.5)
    return base * shade[..., None]


def _zebra(phase: np.ndarray, by: np.ndarray) -> np.ndarray:
    """High-contrast black/white stripes (domain B) with mild shading."""
    white = np.clip(0.5 + 2.0 * np.sin(phase), 0, 1)[..., None]  # near-binary bands
    shade = (1.05 - 0.25 * np.clip(by + 0.2, 0, 0.8))[..., None]
    return (25 + 215 * white) * shade


# scale ranges tuned so that the animals cover ~18% (A) and ~37% (B) of the pixels on average
SCALE_A, SCALE_B = (0.39, 0.66), (0.66, 1.02)


@dataclass
class Scene:
    """Everything drawn at random for one image: the structure (animal shape and pose, background with
    its shadow) and the texture (coat kind, colour, mottling, stripe phase). ``render`` makes the image."""

    size: int
    domain: str  # "A": smooth coat, "B": striped coat
    animal: Animal
    background: np.ndarray  # (S, S, 3) floats, shadow included
    phase_shift: float  # of the stripes
    coat_base: np.ndarray  # (3,) the smooth coat's colour
    coat_mottle: np.ndarray  # (S, S) its mottling


def draw_scene(rng: np.random.Generator, size: int, domain: str) -> Scene:
    """Draw one scene of ``domain`` ("A" or "B"); the draws are always made in the same order."""
    if domain not in ("A", "B"):
        raise ValueError(f"domain must be 'A' (smooth coats) or 'B' (striped coats), got {domain!r}")
    u, v = pixel_grid(size)
    animal = _sample_animal(rng, SCALE_A if domain == "A" else SCALE_B)
    background = _background(rng, u, v, size)
    # a soft shadow on the ground under the animal
    feet_v = animal.cy + 0.55 * animal.scale
    shadow = np.clip(1 - ((u - animal.cx) / (0.45 * animal.scale)) ** 2 - ((v - feet_v) / (0.06 * animal.scale)) ** 2, 0, 1)
    background = background * (1 - 0.35 * shadow)[..., None]
    phase_shift = float(rng.uniform(0, 2 * np.pi))
    base, mottle = _coat_draws(rng, size)
    return Scene(size, domain, animal, background, phase_shift, base, mottle)


def render(structure: Scene, texture: Scene | None = None, coat: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image (S, S, 3) uint8, animal mask (S, S) uint8) of ``structure``'s animal, pose and background
    wearing ``texture``'s coat (default: its own): the ground-truth hybrid of the two scenes. The coat
    follows the structure animal's body (stripes across it, shading from back to belly); a smooth coat
    keeps the texture scene's colour and mottling, a striped one its stripe phase. ``coat`` ("A" or
    "B") overrides the texture scene's coat kind."""
    texture = structure if texture is None else texture
    if texture.size != structure.size:
        raise ValueError(f"the scenes have different sizes ({structure.size} and {texture.size} px): draw both at one size")
    kind = texture.domain if coat is None else coat
    if kind not in ("A", "B"):
        raise ValueError(f"coat must be 'A' (smooth) or 'B' (striped), got {coat!r}")
    u, v = pixel_grid(structure.size)
    cover, by, phase = _render_animal(structure.animal, u, v, structure.size)
    if kind == "B":
        fur = _zebra(phase + texture.phase_shift, by)
    else:
        fur = _coat(texture.coat_base, texture.coat_mottle, by)
    c = cover[..., None]
    return clip_uint8(structure.background * (1 - c) + fur * c), (cover >= 0.5).astype(np.uint8)


def _stripes_scene(rng: np.random.Generator, size: int, domain: str):
    """One scene: (image A or B, labels) and, for domain A, the same scene striped (its target)."""
    scene = draw_scene(rng, size, domain)
    image, labels = render(scene)
    return image, labels, (render(scene, coat="B")[0] if domain == "A" else None)


def scene_of(split: str, index: int, size: int, seed: int = 0) -> Scene:
    """The scene behind image ``index`` of ``split`` (trainA, trainB, testA, testB) of the stripes
    dataset of this ``size`` and ``seed`` (each image draws from its own generator; see write_splits)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    return draw_scene(np.random.default_rng([seed, SPLITS[split], index]), size, split[-1])


def write(out: Path, size: int, n_train: int, n_test: int, seed: int) -> dict:
    def draw(rng: np.random.Generator, split: str) -> dict[str, np.ndarray]:
        image, labels, target = _stripes_scene(rng, size, split[-1])
        files = {"": image, "_labels": labels}
        if split == "testA":
            files.update(_target=target, _target_labels=labels)
        return files

    write_splits(out, n_train, n_test, seed, draw)
    return {
        "description": "horse->zebra analogue: smooth-coated animals (A) -> striped animals (B), B drawn larger",
        "classes": ["background", "animal"],
        "palette": [[0, 0, 0], [255, 255, 255]],
        "labels": "X_labels/NAME.png: uint8 class id per pixel (0 background, 1 animal)",
        "target": "testA_target/NAME.png: the same scene as testA/NAME.png with a striped coat",
        "scale_range": {"A": list(SCALE_A), "B": list(SCALE_B)},
    }
