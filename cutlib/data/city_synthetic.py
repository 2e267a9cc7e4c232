"""The built-in ``city_synth`` dataset, the GTA5 -> Cityscapes analogue of CyCADA (thesis Sec. 3.4):
a flat-shaded "synthetic" source and the photo-like renders of ``city`` as the target.

    trainA/ testA/   flat-shaded renders (a video game's look) of street layouts, with X_labels/
    trainB/ testB/   photo-like renders (cutlib/data/city.py) of OTHER layouts, with X_labels/
    testA_target/    the photo-like render of each test layout of A (ground truth of the translation)

Both styles draw their layouts from the same generator (``city._city_layout``), in Cityscapes' 19 train
ids, so the label space is shared and only the look differs: the source has one flat colour per class
(or per instance, for buildings, cars and signs), a sky gradient and a shaded street side, and no
texture, windows, lane markings, haze, blur or noise. The target labels are for the oracle and the
evaluation only; an unsupervised adaptation method never sees them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cutlib.data import city
from cutlib.data.drawing import clip_uint8, write_splits

# the flat colour of each class in the synthetic style: saturated, brighter than the photos, not the label palette
SYNTH_COLOURS = {city.SKY: (110, 185, 245), city.ROAD: (95, 85, 105), city.SIDEWALK: (215, 200, 175),
                 city.TERRAIN: (150, 205, 60), city.VEGETATION: (30, 160, 60), city.POLE: (125, 125, 140),
                 city.PERSON: (235, 120, 70)}


def synthetic_render(s: city._Scene, rng: np.random.Generator) -> np.ndarray:
    """Render a layout flat-shaded: (S, S, 3) uint8. One colour per class or instance, a vertical sky
    gradient, ground a little darker towards the horizon, one side of the street in shadow, hard edges."""
    size, v, H = s.size, s.v, s.horizon
    img = np.zeros((size, size, 3))
    shade = {-1: 1.0, 1: 1.0}
    shade[int(rng.choice([-1, 1]))] = 0.7  # the shaded side of the street (a fixed sun)
    ground_light = (0.85 + 0.15 * np.clip((v - H) / 0.3, 0, 1))[..., None]  # (S, S, 1) simple distance shading
    for i, obj in enumerate(s.objects):
        mask = s.inst == i
        if not mask.any():
            continue
        cls = obj["cls"]
        if cls == city.SKY:
            mix = np.clip(v / H, 0, 1)[..., None]
            px = np.array(SYNTH_COLOURS[cls]) * (1 - mix) + np.array([200, 230, 250]) * mix
        elif cls in (city.ROAD, city.SIDEWALK, city.TERRAIN):
            px = np.array(SYNTH_COLOURS[cls]) * ground_light
        elif cls == city.BUILDING:
            px = np.broadcast_to(np.clip(obj["colour"] * 1.15, 0, 255) * shade[obj["side"]], img.shape)
        elif cls in (city.CAR, city.SIGN):
            px = np.broadcast_to(np.clip(np.asarray(obj["colour"], float) * 1.1 + 15, 0, 255), img.shape)
        else:  # vegetation, pole, person: the class colour
            px = np.broadcast_to(np.array(SYNTH_COLOURS[cls], float), img.shape)
        img[mask] = np.asarray(px, dtype=float)[mask]
    return clip_uint8(img)


def write(out: Path, size: int, n_train: int, n_test: int, seed: int) -> dict:
    """Write the splits (cutlib.data.drawing.write_splits): A flat-shaded, B photo-like, labels beside both."""
    def draw(rng: np.random.Generator, split: str) -> dict[str, np.ndarray]:
        scene = city._city_layout(rng, size)
        files = {"_labels": scene.labels}
        if split.endswith("A"):
            files[""] = synthetic_render(scene, rng)
            if split == "testA":  # the photo of this very layout is the ground truth of its translation
                files.update(_target=city._city_photo(scene, rng), _target_labels=scene.labels)
        else:  # drawn exactly as city's B images: same seed, same bytes as city's trainB/testB
            files[""] = city._city_photo(scene, rng)
        return files

    write_splits(out, n_train, n_test, seed, draw)
    return {
        "description": "GTA5->Cityscapes analogue: flat-shaded synthetic street renders (A, source) -> photo-like "
                       "renders of other layouts (B, target), both with labels",
        "classes": city.CITY_CLASSES,
        "palette": city.CITY_PALETTE.tolist(),
        "classes_used": city.CITY_USED,
        "labels": "X_labels/NAME.png: uint8 Cityscapes train id per pixel (0 road ... 18 bicycle), for A and B",
        "target": "testA_target/NAME.png: the photo-like render of the layout drawn in testA/NAME.png",
        "source_style": "flat-shaded (cutlib/data/city_synthetic.py)",
        "target_style": "photo-like (cutlib/data/city.py)",
    }
