"""The built-in ``city`` dataset, the Cityscapes labels->photo analogue (paper Table 1): colour
label maps (A) and rendered street photos of other layouts (B), in Cityscapes' 19 train ids.
Ground truth: the label map of every image, and for every label map the photo of that very layout
(``testA_target``; ``trainA_target`` for paired training, SPADE: cutlib/models/spade.py). The unpaired
methods never read ``trainA_target``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from cutlib.data.drawing import clip_uint8, fractal, pixel_grid, smooth_noise, write_splits

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
        self.size, self.u, self.v = size, *pixel_grid(size)
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
            bumps = 0.15 * smooth_noise(rng, size, 8)[0][None, :] if hedge else 0.0
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
    fine, coarse = fractal(rng, size, 3, 8), fractal(rng, size, 3, 3)
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
    img = np.asarray(Image.fromarray(clip_uint8(img)).filter(ImageFilter.GaussianBlur(0.4 * size / 64)), float)
    return clip_uint8(img + rng.normal(0, 4, img.shape))


def write(out: Path, size: int, n_train: int, n_test: int, seed: int) -> dict:
    def draw(rng: np.random.Generator, split: str) -> dict[str, np.ndarray]:
        scene = _city_layout(rng, size)
        files = {"_labels": scene.labels}
        if split.endswith("A"):
            files[""] = CITY_PALETTE[scene.labels]  # label map in colour
        if split == "testA":  # the photo of this very layout is the ground truth
            files.update(_target=_city_photo(scene, rng), _target_labels=scene.labels)
        elif split.endswith("B"):
            files[""] = _city_photo(scene, rng)
        else:  # trainA: the paired target (SPADE). Rendered after every draw the other files take from rng,
            files.update(_target=_city_photo(scene, rng), _target_labels=scene.labels)  # so their bytes are unchanged
        return files

    write_splits(out, n_train, n_test, seed, draw)
    return {
        "description": "Cityscapes labels->photo analogue: colour label maps (A) -> rendered photos of other layouts (B)",
        "classes": CITY_CLASSES,
        "palette": CITY_PALETTE.tolist(),
        "classes_used": CITY_USED,
        "labels": "X_labels/NAME.png: uint8 Cityscapes train id per pixel (0 road ... 18 bicycle)",
        "target": "testA_target/NAME.png: the photo of the layout drawn in testA/NAME.png",
        "paired_target": "trainA_target/NAME.png: the photo of the layout drawn in trainA/NAME.png (paired training, SPADE)",
    }
