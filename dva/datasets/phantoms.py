"""Synthetic chest X-rays ("phantoms") with lung masks, ground-truth lesion masks and located prompts.

A phantom is a frontal (PA) chest radiograph drawn from simple anatomy: body and soft tissue, two
lungs with vessel trees, hila and fine texture, posterior and anterior ribs, clavicles, spine, trachea
and bronchi, the cardiomediastinal silhouette (aortic knob, heart), diaphragm domes, gastric bubble and
bowel gas, then exposure, blur and noise. Classes:

- ``Normal``: no finding; the lesion mask is empty.
- ``Lung Opacity``: one to three soft-edged opacities (consolidation, ground glass or nodules) of
  varied size, density and position inside the lungs; the lesion mask is where an opacity replaces
  at least :data:`LESION_THRESHOLD` of the lung's air, inside the lung mask.
- ``Cardiomegaly``: a heart enlarged from the normal heart of the same phantom (cardiothoracic ratio
  above 0.5); the lesion mask is the part of the enlarged heart that lies over what would otherwise
  be lung, i.e. the heart beyond a normal heart's outline.

Convention: images are PA radiographs seen as the radiologist sees them, so the **patient's left is
the image's right**. Zones are the six conventional lung zones: each lung's vertical extent in its
mask is cut into equal thirds (upper, middle, lower). :func:`lung_zones` recomputes them from a saved
lung mask alone.

Every phantom's randomness derives from ``(seed, class, index)`` only, so phantom *i* of a class is
the same whatever ``n`` is, and phantoms can be generated in any order or in parallel.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dva.core.errors import ConfigError, unknown_name

GENERATOR_VERSION = "1.0"  # bump whenever the files made for a seed change
CLASSES = ("Normal", "Lung Opacity", "Cardiomegaly")
DEFAULT_CLASSES = CLASSES
PROMPTS = {"Normal": "normal chest x ray", "Cardiomegaly": "cardiomegaly"}
ZONES = ("right upper", "right middle", "right lower", "left upper", "left middle", "left lower")
MIN_SIZE, MAX_SIZE = 32, 2048
LESION_THRESHOLD = 0.15  # fraction of the lung's air an opacity must replace to count as lesion
METADATA_COLUMNS = ("class", "file", "prompt", "zone", "lesion_fraction")

# Parameter ranges, in units of the image side (x to the image's right, y down) unless noted.
RANGES: dict[str, tuple[float, float]] = {
    "lung_half_width": (0.39, 0.45),  # midline to the lateral lung border at the base
    "lung_apex_y": (0.06, 0.12),
    "costophrenic_angle_y": (0.76, 0.84),  # right; the left hemidiaphragm sits 0-0.04 lower
    "dome_rise": (0.09, 0.15),  # diaphragm dome above the costophrenic angle
    "ctr_normal": (0.38, 0.46),  # cardiothoracic ratio
    "ctr_cardiomegaly": (0.55, 0.65),
    "ribs_per_side": (9.0, 11.0),
    "pose_rotation_degrees": (-3.0, 3.0),
    "pose_scale": (0.94, 1.04),
    "gamma": (0.9, 1.4),
    "blur_sigma_px_at_256": (0.35, 1.0),
    "noise_sigma": (0.002, 0.01),  # of full scale
    "opacity_count": (1.0, 3.0),
    "opacity_radius": (0.025, 0.15),
    "opacity_density": (0.25, 0.9),  # peak fraction of the lung's air replaced
}


@dataclass(frozen=True)
class Phantom:
    """One rendered phantom: uint8 image, boolean lung and lesion masks, prompt and zone ('' if none)."""

    image: np.ndarray
    lung_mask: np.ndarray
    lesion_mask: np.ndarray
    prompt: str
    zone: str
    ctr: float  # the cardiothoracic ratio drawn (heart width / thoracic width)


# -- public API ---------------------------------------------------------------------------------------


def canonical_class(name: str) -> str:
    """The class spelled as dva writes it: 'lung_opacity' or 'LUNG OPACITY' -> 'Lung Opacity'."""
    key = re.sub(r"[\s_\-]+", " ", str(name)).strip().lower()
    for label in CLASSES:
        if label.lower() == key:
            return label
    raise unknown_name("class", str(name).strip(), CLASSES)


def render_phantom(
    label: str, index: int, size: int = 256, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str, str]:
    """Render phantom ``index`` of class ``label``: ``(image, lung_mask, lesion_mask, prompt, zone)``.

    ``image`` is uint8 (size, size); the masks are boolean of the same size; ``zone`` is one of
    :data:`ZONES` for Lung Opacity and '' otherwise.
    """
    phantom = make_phantom(label, index, size, seed)
    return phantom.image, phantom.lung_mask, phantom.lesion_mask, phantom.prompt, phantom.zone


def make_phantom(label: str, index: int, size: int = 256, seed: int = 0) -> Phantom:
    """Like :func:`render_phantom`, returned as a :class:`Phantom` (with the cardiothoracic ratio drawn)."""
    label = canonical_class(label)
    _check_size(size)
    return _Renderer(label, int(index), int(size), int(seed)).render()


def make_phantoms(
    out: str | Path,
    n: int,
    size: int = 256,
    seed: int = 0,
    classes: Iterable[str] | str = DEFAULT_CLASSES,
) -> Path:
    """Write ``n`` phantoms per class to ``out`` in the COVID-19 Radiography Database layout; returns ``out``.

    ``out/<Class>/{images,masks,lesions}/<Class>-<i>.png`` for i = 1..n, ``out/metadata.csv`` and
    ``out/phantoms.json``. Every file is written atomically. Rerunning into a phantom folder replaces
    it (phantom files of the earlier run that the new one does not make are removed).
    """
    from dva.core.io import atomic_write_png, atomic_write_text

    labels = _check_options(n, size, classes)
    out = Path(out)
    previous = _previous_run(out)
    rows: list[dict[str, str]] = []
    for label in labels:
        for index in range(1, n + 1):
            phantom = make_phantom(label, index, size, seed)
            name = f"{label}-{index}.png"
            atomic_write_png(out / label / "images" / name, phantom.image)
            atomic_write_png(out / label / "masks" / name, _mask_u8(phantom.lung_mask))
            atomic_write_png(out / label / "lesions" / name, _mask_u8(phantom.lesion_mask))
            rows.append(
                {
                    "class": label,
                    "file": f"{label}/images/{name}",
                    "prompt": phantom.prompt,
                    "zone": phantom.zone,
                    "lesion_fraction": f"{phantom.lesion_mask.mean():.6f}",
                }
            )
    _remove_stale(out, previous, labels, n)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METADATA_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "metadata.csv", buffer.getvalue())
    atomic_write_text(out / "phantoms.json", json.dumps(_description(n, size, seed, labels), indent=2) + "\n")
    return out


def lung_zones(lung_mask: np.ndarray) -> np.ndarray:
    """Zone index into :data:`ZONES` of every lung pixel (-1 outside the lungs), from the mask alone.

    The two largest connected parts of the mask are the lungs; the one further to the image's right is
    the patient's left lung (PA view). Each lung's rows, top to bottom, are cut into equal thirds.
    Smaller parts join the lung whose centroid is nearer.
    """
    mask = np.asarray(lung_mask) > 0
    zones = np.full(mask.shape, -1, dtype=np.int8)
    if not mask.any():
        return zones
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    order = sorted(range(1, count), key=lambda k: -stats[k, cv2.CC_STAT_AREA])
    if len(order) >= 2:
        lungs = sorted(order[:2], key=lambda k: centroids[k][0])  # image left first: patient's right lung
        centres = [centroids[k][0] for k in lungs]
        side = np.zeros(count, dtype=np.int8)
        for k in range(1, count):
            side[k] = int(abs(centroids[k][0] - centres[1]) < abs(centroids[k][0] - centres[0]))
        sides = side[labels]
    else:  # one part (lungs touching): split at the image's centre
        sides = (np.arange(mask.shape[1])[None, :] >= mask.shape[1] / 2).astype(np.int8) * np.ones_like(labels, np.int8)
    for lung in (0, 1):  # 0: patient's right (image left), 1: patient's left
        inside = mask & (sides == lung)
        rows = np.flatnonzero(inside.any(axis=1))
        if rows.size == 0:
            continue
        top, height = rows[0], rows[-1] - rows[0] + 1
        third = np.clip(((np.arange(mask.shape[0]) - top) * 3) // height, 0, 2).astype(np.int8)
        zones[inside] = (3 * lung + third[:, None] * np.ones((1, mask.shape[1]), np.int8))[inside]
    return zones


def lesion_zone(lesion_mask: np.ndarray, lung_mask: np.ndarray) -> str:
    """The zone holding most of the lesion's pixels ('' if the lesion has none inside the lungs)."""
    zones = lung_zones(lung_mask)[np.asarray(lesion_mask) > 0]
    zones = zones[zones >= 0]
    if zones.size == 0:
        return ""
    return ZONES[int(np.bincount(zones, minlength=len(ZONES)).argmax())]


def cardiothoracic_ratio(lung_mask: np.ndarray) -> float:
    """Cardiothoracic ratio measured on a lung mask: (MRD + MLD) / widest thorax, as a radiologist does.

    The heart's borders are the lungs' medial borders below the hila. Walking each medial border down
    from its waist (its most medial point below the aortic knob), the heart border is its most lateral
    point on rows where it runs
    nearly vertically, up to where it turns back towards the midline (the heart curving under its apex,
    the right atrium receding) or jumps outwards onto the diaphragm. The thorax is the widest span of the
    lungs' outer borders. NaN if the mask does not hold two lungs.
    """
    mask = np.asarray(lung_mask) > 0
    zones = lung_zones(mask)
    right, left = (zones >= 0) & (zones < 3), zones >= 3
    if not right.any() or not left.any():
        return float("nan")
    width = mask.shape[1]
    columns = np.arange(width)
    thorax = np.where(left, columns, -1).max() - np.where(right, columns, width).min() + 1
    turn, jump = max(2.0, 0.02 * width), max(4.0, 0.05 * width)
    borders = []
    for lung, outward in ((right, -1), (left, 1)):
        rows = np.flatnonzero(lung.any(axis=1))
        if len(rows) < 12:
            return float("nan")
        pick = np.max if outward < 0 else np.min
        inner = np.array([pick(np.flatnonzero(lung[row])) for row in rows])
        lateral = outward * inner.astype(np.float64)  # grows away from the midline
        n = len(rows)
        step = max(1, n // 40)
        # the waist: the most medial point of the border below the aortic knob and above 0.6 of the lung
        knob = int(0.15 * n) + int(np.argmax(lateral[int(0.15 * n) : int(0.45 * n)]))
        window = lateral[knob : max(knob + 1, int(0.6 * n))]
        waist = knob + int(np.flatnonzero(window <= window.min() + 1)[-1])
        best, previous = lateral[waist], lateral[waist]
        for k in range(waist, n - max(step, n // 12)):
            value = lateral[k]
            bulged = best >= lateral[waist] + turn
            if value - previous > jump or (bulged and (value - previous >= 2 or value < best - turn)):
                break  # past the widest point: onto the diaphragm, or the border turns back
            previous = value
            if abs(lateral[k + step] - lateral[k - step]) <= step:  # steady: at most one pixel a row
                best = max(best, value)
        if not np.isfinite(best):
            return float("nan")
        borders.append(outward * best)
    return float((borders[1] - borders[0] - 1) / thorax)


# -- options and files --------------------------------------------------------------------------------


def _check_size(size: int) -> None:
    if not MIN_SIZE <= int(size) <= MAX_SIZE:
        raise ConfigError(f"--size must be between {MIN_SIZE} and {MAX_SIZE} pixels, not {size}.")


def _check_options(n: int, size: int, classes: Iterable[str]) -> list[str]:
    if int(n) < 1:
        raise ConfigError(f"--n must be at least 1 (phantoms per class), not {n}.")
    _check_size(size)
    if isinstance(classes, str):
        classes = classes.split(",")
    names = [c for c in (str(c).strip() for c in classes) if c]
    if not names:
        raise ConfigError(f"--classes names no class; choose from {', '.join(CLASSES)}.")
    return list(dict.fromkeys(canonical_class(name) for name in names))


def _mask_u8(mask: np.ndarray) -> np.ndarray:
    return np.where(mask, 255, 0).astype(np.uint8)


def _previous_run(out: Path) -> dict | None:
    """The description of an earlier phantom run in ``out``; refuses a non-empty folder that is not one."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder.")
    if not out.is_dir() or not any(out.iterdir()):
        return None
    try:
        return json.loads((out / "phantoms.json").read_text())
    except (OSError, ValueError):
        raise ConfigError(
            f"--out {out} is not empty and is not a folder of phantoms (no readable phantoms.json); "
            "give a new or empty folder."
        ) from None


def _remove_stale(out: Path, previous: dict | None, labels: Sequence[str], n: int) -> None:
    """Remove phantom files of an earlier run that this run did not write (more phantoms or other classes)."""
    if not previous:
        return
    for label in previous.get("classes", []):
        if label not in CLASSES:
            continue
        keep = n if label in labels else 0
        pattern = re.compile(rf"{re.escape(label)}-(\d+)\.png")
        for kind in ("images", "masks", "lesions"):
            folder = out / label / kind
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                match = pattern.fullmatch(path.name)
                if match and int(match.group(1)) > keep:
                    path.unlink(missing_ok=True)


def _description(n: int, size: int, seed: int, labels: Sequence[str]) -> dict:
    return {
        "generator": "dva.datasets.phantoms",
        "version": GENERATOR_VERSION,
        "n": n,
        "size": size,
        "seed": seed,
        "classes": list(labels),
        "layout": "<Class>/{images,masks,lesions}/<Class>-<i>.png, i = 1..n",
        "convention": "PA view: the patient's left is the image's right; zones are thirds of each lung's height",
        "zones": list(ZONES),
        "prompts": {
            "Normal": PROMPTS["Normal"],
            "Lung Opacity": "lung opacity in the <zone> zone",
            "Cardiomegaly": PROMPTS["Cardiomegaly"],
        },
        "lesion_threshold": LESION_THRESHOLD,
        "lesion_fraction": "lesion pixels / image pixels",
        "parameter_ranges": {key: list(value) for key, value in RANGES.items()},
    }


# -- rendering ----------------------------------------------------------------------------------------

_SHIFT = 4  # cv2 drawing with 4 fractional bits
_ONE = 1 << _SHIFT


def _rng(seed: int, label: str, index: int, stream: int) -> np.random.Generator:
    key = zlib.crc32(label.encode("utf-8"))
    words = [int(seed) & 0xFFFFFFFF, int(seed) >> 32 & 0xFFFFFFFF, key, int(index) & 0xFFFFFFFF, stream]
    return np.random.default_rng(np.random.SeedSequence(words))


def _u(rng: np.random.Generator, name: str) -> float:
    low, high = RANGES[name]
    return float(rng.uniform(low, high))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class _Renderer:
    """Draws one phantom; geometry in units of the image side, mapped through a small random pose."""

    def __init__(self, label: str, index: int, size: int, seed: int) -> None:
        self.label, self.index, self.size, self.seed = label, index, size, seed
        self.anatomy = _rng(seed, label, index, 0)
        self.lesions = _rng(seed, label, index, 1)
        self.texture = _rng(seed, label, index, 2)
        rng = self.anatomy
        angle = math.radians(_u(rng, "pose_rotation_degrees"))
        scale = _u(rng, "pose_scale")
        shift = np.array([rng.uniform(-0.02, 0.02), rng.uniform(-0.025, 0.03)])
        c, s = math.cos(angle) * scale, math.sin(angle) * scale
        self.pose = np.array([[c, -s], [s, c]])
        self.pose_shift = np.array([0.5, 0.5]) + shift
        self.scale = scale

    # geometry helpers

    def px(self, points: np.ndarray) -> np.ndarray:
        """Normalised (x, y) points through the pose, to pixel coordinates."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        posed = (points - 0.5) @ self.pose.T + self.pose_shift
        return posed * self.size - 0.5

    def fixed(self, points: np.ndarray) -> np.ndarray:
        return np.round(self.px(points) * _ONE).astype(np.int32)

    def fill(self, canvas: np.ndarray, points: np.ndarray, value: float = 1.0) -> np.ndarray:
        cv2.fillPoly(canvas, [self.fixed(points)], float(value), lineType=cv2.LINE_AA, shift=_SHIFT)
        return canvas

    def line(self, canvas: np.ndarray, points: np.ndarray, width: float, value: float = 1.0) -> None:
        thickness = max(1, int(round(width * self.size * self.scale)))
        cv2.polylines(canvas, [self.fixed(points)], False, float(value), thickness, cv2.LINE_AA, _SHIFT)

    def blank(self) -> np.ndarray:
        return np.zeros((self.size, self.size), np.float32)

    def blur(self, image: np.ndarray, sigma: float) -> np.ndarray:
        """Gaussian blur with ``sigma`` in units of the image side; large ones on a smaller copy."""
        sigma_px = sigma * self.size
        if sigma_px < 0.3:
            return image
        factor = int(sigma_px // 6)
        if factor >= 2 and self.size // factor >= 16:
            small = cv2.resize(image, (self.size // factor,) * 2, interpolation=cv2.INTER_AREA)
            small = cv2.GaussianBlur(small, (0, 0), sigma_px / factor, borderType=cv2.BORDER_REPLICATE)
            return cv2.resize(small, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        return cv2.GaussianBlur(image, (0, 0), sigma_px, borderType=cv2.BORDER_REPLICATE)

    def smooth_noise(self, rng: np.random.Generator, cells: int) -> np.ndarray:
        """Smooth noise in about [0, 1] with ``cells`` features across the image."""
        grid = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
        field = cv2.resize(grid, (self.size + 2 * self.size // cells,) * 2, interpolation=cv2.INTER_CUBIC)
        o = self.size // cells
        field = field[o : o + self.size, o : o + self.size]
        return _sigmoid(1.6 * field)

    # anatomy

    def sample_anatomy(self) -> dict:
        rng = self.anatomy
        a: dict = {}
        width = _u(rng, "lung_half_width")
        a["L"] = {-1: width + rng.uniform(-0.012, 0.008), 1: width + rng.uniform(-0.008, 0.012)}
        a["apex"] = {side: _u(rng, "lung_apex_y") for side in (-1, 1)}
        cp = _u(rng, "costophrenic_angle_y")
        a["cp"] = {-1: cp, 1: min(cp + rng.uniform(0.0, 0.04), 0.9)}
        a["dome"] = {side: a["cp"][side] - _u(rng, "dome_rise") for side in (-1, 1)}
        a["dome_x"] = {side: rng.uniform(0.2, 0.27) for side in (-1, 1)}
        a["medial"] = {-1: rng.uniform(0.065, 0.085), 1: rng.uniform(0.06, 0.08)}
        a["arc_lateral"] = {side: a["L"][side] - rng.uniform(0.02, 0.05) for side in (-1, 1)}
        a["arc_height"] = {side: rng.uniform(0.22, 0.32) for side in (-1, 1)}
        a["apex_x"] = {side: rng.uniform(0.15, 0.2) for side in (-1, 1)}
        a["apex_medial_height"] = {side: rng.uniform(0.08, 0.13) for side in (-1, 1)}
        a["bulge"] = {side: rng.uniform(0.0, 0.015) for side in (-1, 1)}
        a["body"] = rng.uniform(0.5, 0.57)  # body half-width
        a["shoulder_y"] = rng.uniform(-0.05, 0.04)
        a["neck"] = rng.uniform(0.13, 0.19)
        a["soft"] = rng.uniform(0.82, 0.92)
        a["profile"] = rng.uniform(1.8, 2.6)
        a["air"] = rng.uniform(0.56, 0.68)
        a["ctr"] = _u(rng, "ctr_normal")
        a["heart_right_share"] = rng.uniform(0.3, 0.38)
        a["heart_drop"] = rng.uniform(0.02, 0.05)
        a["mediastinum"] = (rng.uniform(0.065, 0.085), rng.uniform(0.055, 0.075))
        a["trunk"] = rng.uniform(0.0, 0.01)
        a["lv_start"] = rng.uniform(0.03, 0.08)
        a["ra_start"] = rng.uniform(0.06, 0.11)
        a["ribs"] = int(round(_u(rng, "ribs_per_side")))
        a["rib_top"] = rng.uniform(0.07, 0.11)
        a["rib_step"] = rng.uniform(0.058, 0.07)
        a["rib_curve"] = rng.uniform(1.5, 2.3)
        a["rib_rise"] = rng.uniform(0.5, 0.7)
        a["rib_strength"] = rng.uniform(0.08, 0.13)
        a["rib_width"] = rng.uniform(0.025, 0.031)
        a["texture"] = rng.uniform(0.006, 0.014)
        a["clavicle_y"] = rng.uniform(0.19, 0.25)
        a["clavicle_tilt"] = rng.uniform(0.07, 0.12)
        a["hilum_y"] = rng.uniform(0.39, 0.45)
        a["knob"] = (rng.uniform(0.26, 0.31), rng.uniform(0.02, 0.04))
        a["bubble"] = rng.random() < 0.65
        a["marker"] = rng.random() < 0.5
        a["carina_y"] = rng.uniform(0.3, 0.36)
        return a

    def lung_outline(self, a: dict, side: int) -> np.ndarray:
        """Closed outline of one lung before the cardiomediastinal silhouette is cut out, normalised (x, y)."""
        L, apex, cp, dome, dome_x = a["L"][side], a["apex"][side], a["cp"][side], a["dome"][side], a["dome_x"][side]
        medial, lateral, height = a["medial"][side], a["arc_lateral"][side], a["arc_height"][side]
        apex_d, medial_height = a["apex_x"][side], a["apex_medial_height"][side]
        t = np.linspace(math.pi, math.pi / 2, 20)  # apex: medial quarter, then the lateral one
        d = apex_d + (apex_d - medial) * np.cos(t)
        y = apex + medial_height - medial_height * np.sin(t)
        t = np.linspace(math.pi / 2, 0.0, 25)[1:]
        d = np.concatenate([d, apex_d + (lateral - apex_d) * np.cos(t)])
        y = np.concatenate([y, apex + height - height * np.sin(t)])
        arc_y = apex + height
        s = np.linspace(0.0, 1.0, 30)[1:]  # lateral border down to the costophrenic angle
        d = np.concatenate([d, lateral + (L - lateral) * s + a["bulge"][side] * np.sin(math.pi * s)])
        y = np.concatenate([y, arc_y + (cp - arc_y) * s])
        s = np.linspace(L, 0.02, 40)[1:]  # diaphragm dome, lateral to medial
        bottom = self.dome_y(a, side, s)
        d = np.concatenate([d, s])
        y = np.concatenate([y, bottom])
        d = np.concatenate([d, [0.02, 0.02]])  # medial border (the silhouette cuts the real one)
        y = np.concatenate([y, [0.3, apex + medial_height]])
        return np.stack([0.5 + side * d, y], axis=1)

    def dome_y(self, a: dict, side: int, d: float | np.ndarray):
        """Height of the diaphragm on ``side`` at distance ``d`` from the midline."""
        L, cp, dome, dome_x = a["L"][side], a["cp"][side], a["dome"][side], a["dome_x"][side]
        d = np.asarray(d, dtype=np.float64)
        return np.where(
            d >= dome_x,
            dome + (cp - dome) * ((d - dome_x) / (L - dome_x)) ** 2,
            dome + 0.5 * (cp - dome) * ((dome_x - d) / max(dome_x - 0.03, 1e-3)) ** 2,
        )

    def silhouette(self, a: dict, ctr: float, grow: float = 0.0) -> np.ndarray:
        """Cardiomediastinal silhouette: mediastinum, aortic knob, and a heart ``ctr`` of the thorax wide.

        Right border (image left): superior vena cava, then the right atrium. Left border (image right):
        aortic knob, pulmonary trunk, then the left ventricle down to the apex on the left dome.
        ``grow`` (cardiomegaly) is the width added to a normal heart, a little more of it to the left.
        """
        thorax = a["L"][-1] + a["L"][1]
        width = ctr * thorax
        right = width * a["heart_right_share"]
        left = width - right
        if grow:
            right, left = right + 0.45 * grow, left + 0.55 * grow
        m_r, m_l = a["mediastinum"]
        y = np.linspace(-0.1, 1.1, 160)
        hilum = a["hilum_y"]
        # left border
        knob_y, knob = a["knob"]
        base_l = m_l + 0.006 * np.clip(y - 0.2, 0, None) / 0.3
        base_l = base_l + knob * np.exp(-(((y - knob_y) / 0.032) ** 2))
        base_l = base_l + a["trunk"] * np.exp(-(((y - knob_y - 0.085) / 0.03) ** 2))
        lv_top = hilum + a["lv_start"]
        apex_y = float(self.dome_y(a, 1, left)) - a["heart_drop"]
        t = np.clip((y - lv_top) / max(apex_y - lv_top, 0.05), 0.0, 1.0)
        lv = m_l + (left - m_l) * np.sin(0.5 * math.pi * t)
        below = np.clip((y - apex_y) / 0.12, 0.0, 1.0)
        lv = np.where(y > apex_y, left - (left - m_l) * 0.6 * below**2, lv)
        border_l = np.maximum(base_l, lv)
        # right border
        base_r = m_r + 0.01 * np.clip(y - 0.2, 0, None) / 0.3
        ra_top = hilum + a["ra_start"]
        ra_bottom = float(self.dome_y(a, -1, right))
        t = np.clip((y - ra_top) / max(ra_bottom - ra_top, 0.05), 0.0, 1.0)
        ra = m_r + (right - m_r) * np.sin(0.5 * math.pi * np.minimum(t / 0.6, 1.0))
        ra = ra - 0.12 * right * np.clip((t - 0.6) / 0.4, 0, 1) ** 2
        border_r = np.maximum(base_r, np.where(y > ra_bottom, ra[np.searchsorted(y, ra_bottom) - 1], ra))
        left_side = np.stack([0.5 + border_l, y], axis=1)
        right_side = np.stack([0.5 - border_r, y], axis=1)[::-1]
        return np.concatenate([left_side, right_side])

    def render(self) -> Phantom:
        a = self.sample_anatomy()
        rng = self.anatomy
        size = self.size

        # the cardiomediastinal silhouette: normal, and for cardiomegaly the same heart enlarged
        ctr = a["ctr"]
        normal = self.fill(self.blank(), self.silhouette(a, ctr))
        heart = normal
        if self.label == "Cardiomegaly":
            ctr = _u(self.lesions, "ctr_cardiomegaly")
            grow = (ctr - a["ctr"]) * (a["L"][-1] + a["L"][1])
            heart = self.fill(self.blank(), self.silhouette(a, a["ctr"], grow=grow))
        outlines = [self.fill(self.blank(), self.lung_outline(a, side)) for side in (-1, 1)]
        lung_soft = np.clip(sum(outline * (1.0 - heart) for outline in outlines), 0.0, 1.0)
        lung_mask = lung_soft >= 0.5
        if self.label == "Cardiomegaly":
            normal_lungs = np.clip(sum(outline * (1.0 - normal) for outline in outlines), 0.0, 1.0) >= 0.5
            lesion_mask = normal_lungs & ~lung_mask
        else:
            lesion_mask = np.zeros_like(lung_mask)

        y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
        # body: neck, shoulders, chest wall; soft tissue thicker towards the midline
        body = self.blur(self.fill(self.blank(), self.body_outline(a)), 0.012)
        half = a["body"] + 0.04
        centre_line = (x - self.pose_shift[0]) / half
        thickness = np.sqrt(np.clip(1.0 - centre_line**2, 0.0, 1.0))
        density = body * (a["soft"] * (0.1 + 0.9 * thickness ** a["profile"]))

        # lungs: air, darkest away from the borders and in the upper and middle zones
        edge = self.blur(lung_soft, 0.004)
        deep = self.blur(lung_soft, 0.035)
        base_fade = 1.0 - 0.35 * np.clip((y - self.pose_shift[1] + 0.05) / 0.35, 0.0, 1.0)
        air = a["air"] * (0.45 * edge + 0.55 * deep) * base_fade * (0.85 + 0.3 * self.smooth_noise(rng, 5))

        opacity = np.zeros_like(air)
        zone = ""
        if self.label == "Lung Opacity":
            opacity, lesion_mask = self.opacities(lung_mask, lung_soft)
            zone = lesion_zone(lesion_mask, lung_mask)
        density -= air * (1.0 - opacity)

        vessels = self.vessels(a) + a["texture"] * self.lung_texture()
        density += vessels * edge * (1.0 - 0.7 * opacity)
        density += self.hila(a, x, y) * np.maximum(edge, 0.3)
        beside_spine = np.clip((np.abs(x - self.pose_shift[0]) - 0.05) / 0.06, 0.0, 1.0)
        bones = self.ribs(a) * (0.3 + 0.7 * edge) * beside_spine + self.clavicles(a) + self.spine(a, heart)
        density += bones * body
        density += self.humeral_heads(a)
        density -= self.airways(a) * (1.0 - edge)
        if a["bubble"]:
            density -= self.gastric_bubble(a)
        density -= self.bowel_gas(a)
        density = np.clip(density, 0.0, None)

        image = self.expose(density, a)
        prompt = PROMPTS.get(self.label) or f"lung opacity in the {zone} zone"
        return Phantom(image, lung_mask, lesion_mask, prompt, zone, ctr)

    def body_outline(self, a: dict) -> np.ndarray:
        """Neck, shoulders and chest wall, normalised (x, y)."""
        half, shoulder, neck = a["body"], a["shoulder_y"], a["neck"]
        ys = np.linspace(-0.05, 1.1, 60)
        widths = neck + (half + 0.08 - neck) * _sigmoid((ys - shoulder - 0.06) / 0.025)
        widths = np.minimum(widths, half + 0.08 - 0.06 * np.clip((ys - 0.3) / 0.7, 0, 1))
        left = np.stack([0.5 - widths, ys], axis=1)
        right = np.stack([0.5 + widths, ys], axis=1)[::-1]
        return np.concatenate([left, right])

    def ribs(self, a: dict) -> np.ndarray:
        canvas = self.blank()
        cortex = self.blank()
        rng = self.anatomy
        d = np.linspace(0.035, a["body"] - 0.02, 40)
        for side in (-1, 1):
            step = a["rib_step"] * (1.0 + side * rng.uniform(-0.03, 0.03))
            for k in range(a["ribs"]):
                y0 = a["rib_top"] + k * step * (0.92 + 0.016 * k)
                curve = a["rib_curve"] * (1.0 + 0.05 * k)
                yc = y0 - a["rib_rise"] * d + curve * d**2 + rng.uniform(-0.004, 0.004)
                width = a["rib_width"] + 0.0012 * k
                points = np.stack([0.5 + side * d, yc], axis=1)
                self.line(canvas, points, width, 1.0)
                self.line(cortex, points, width * 0.55, 1.0)
            # anterior ribs: fainter, running down and in from the chest wall
            for k in range(max(4, a["ribs"] - 4)):
                y0 = a["rib_top"] + 0.03 + k * step * 1.15
                da = np.linspace(a["L"][side] + 0.03, 0.16, 20)
                ya = y0 + 0.12 + 0.5 * (a["L"][side] - da) - 0.6 * (a["L"][side] - da) ** 2
                self.line(canvas, np.stack([0.5 + side * da, ya], axis=1), 0.022, 0.22)
        ribs = np.clip(canvas, 0, 1) - 0.35 * np.clip(cortex, 0, 1)
        return a["rib_strength"] * self.blur(ribs, 0.002)

    def clavicles(self, a: dict) -> np.ndarray:
        canvas = self.blank()
        cortex = self.blank()
        for side in (-1, 1):
            t = np.linspace(0, 1, 25)
            d = 0.05 + 0.36 * t
            yc = a["clavicle_y"] - a["clavicle_tilt"] * t + 0.015 * np.sin(2 * math.pi * t) - 0.02 * t**2
            points = np.stack([0.5 + side * d, yc], axis=1)
            self.line(canvas, points, 0.028, 1.0)
            self.line(cortex, points, 0.014, 1.0)
        return 0.1 * self.blur(np.clip(canvas, 0, 1) - 0.3 * np.clip(cortex, 0, 1), 0.003)

    def spine(self, a: dict, heart: np.ndarray) -> np.ndarray:
        canvas = self.blank()
        rng = self.anatomy
        y = -0.02
        height = 0.045
        while y < 1.05:
            h = height * (1.0 + 0.5 * max(0.0, y))
            w = 0.03 + 0.018 * max(0.0, y)
            self.fill(canvas, [[0.5 - w, y], [0.5 + w, y], [0.5 + w, y + h * 0.78], [0.5 - w, y + h * 0.78]], 1.0)
            for side in (-1, 1):  # pedicles
                centre = tuple(int(v) for v in self.fixed([[0.5 + side * w * 0.75, y + h * 0.3]])[0])
                cv2.circle(canvas, centre, max(1, int(0.007 * self.size * _ONE)), 1.3, -1, cv2.LINE_AA, _SHIFT)
            y += h * (1.0 + rng.uniform(-0.02, 0.02))
        spine = self.blur(canvas, 0.004)
        fade = 1.0 - 0.8 * np.clip(np.linspace(-1.0, 1.5, self.size, dtype=np.float32), 0.0, 1.0)[:, None]
        return 0.06 * spine * fade * (1.0 - 0.6 * self.blur(heart, 0.01))

    def humeral_heads(self, a: dict) -> np.ndarray:
        canvas = self.blank()
        for side in (-1, 1):
            centre = self.fixed([[0.5 + side * (a["body"] + 0.05), a["shoulder_y"] + 0.1]])[0]
            radius = int(0.075 * self.size * _ONE)
            cv2.circle(canvas, (int(centre[0]), int(centre[1])), radius, 1.0, -1, cv2.LINE_AA, _SHIFT)
        return 0.12 * self.blur(canvas, 0.006)

    def airways(self, a: dict) -> np.ndarray:
        canvas = self.blank()
        carina = a["carina_y"]
        self.line(canvas, [[0.5, -0.02], [0.5, carina - 0.02], [0.5, carina]], 0.026, 1.0)
        for side, hilum in ((-1, a["hilum_y"] + 0.02), (1, a["hilum_y"])):
            bronchus = [[0.5, carina], [0.5 + side * 0.04, carina + 0.04], [0.5 + side * 0.07, hilum]]
            self.line(canvas, bronchus, 0.015, 0.45)
        return 0.11 * self.blur(canvas, 0.007)

    def hila(self, a: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = np.zeros_like(x)
        for side, dy in ((-1, 0.02), (1, 0.0)):
            cx = self.pose_shift[0] + side * 0.11 * self.scale
            cy = a["hilum_y"] + dy + (self.pose_shift[1] - 0.5)
            out += np.exp(-(((x - cx) / 0.035) ** 2 + ((y - cy) / 0.055) ** 2))
        return 0.09 * out

    def bowel_gas(self, a: dict) -> np.ndarray:
        """A few small pockets of bowel gas low in the abdomen."""
        canvas = self.blank()
        rng = self.anatomy
        top = max(a["cp"][-1], a["cp"][1]) + 0.04
        for _ in range(int(rng.integers(0, 4))):
            cx, cy = 0.5 + rng.uniform(-0.3, 0.3), rng.uniform(top, top + 0.25)
            t = np.linspace(0, 2 * math.pi, 12, endpoint=False)
            r = rng.uniform(0.012, 0.03) * rng.uniform(0.6, 1.4, 12)
            self.fill(canvas, np.stack([cx + 1.6 * r * np.cos(t), cy + r * np.sin(t)], axis=1), rng.uniform(0.4, 1.0))
        return 0.08 * self.blur(canvas, 0.008)

    def gastric_bubble(self, a: dict) -> np.ndarray:
        canvas = self.blank()
        rng = self.anatomy
        cx, cy = 0.5 + rng.uniform(0.14, 0.24), a["dome"][1] + rng.uniform(0.04, 0.07)
        t = np.linspace(0, 2 * math.pi, 30, endpoint=False)
        rx, ry = rng.uniform(0.04, 0.07), rng.uniform(0.025, 0.04)
        flat_bottom = np.where(np.sin(t) < 0, 1.0, 0.5)  # air rises: a dome on a flat fluid level
        self.fill(canvas, np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t) * flat_bottom], axis=1))
        return rng.uniform(0.1, 0.22) * self.blur(canvas, 0.006)

    def vessels(self, a: dict) -> np.ndarray:
        """Pulmonary vessel trees branching out from each hilum, thinning and fading to the periphery."""
        canvas = self.blank()
        rng = self.texture
        trunks = 7
        starts, directions, lengths = [], [], []
        for side, dy in ((-1, 0.02), (1, 0.0)):
            angles = np.linspace(-1.25, 1.3, trunks) + rng.uniform(-0.12, 0.12, trunks)
            directions.append(np.stack([side * np.cos(angles), 1.1 * np.sin(angles)], axis=1))
            roots_x = 0.5 + side * rng.uniform(0.09, 0.12, trunks)
            starts.append(np.stack([roots_x, a["hilum_y"] + dy + 0.05 * np.sin(angles)], axis=1))
            lengths.append(rng.uniform(0.05, 0.08, trunks))
        start, direction, length = np.concatenate(starts), np.concatenate(directions), np.concatenate(lengths)
        width, value = 0.007, 0.8
        for depth in range(6):  # one draw call per generation: all its branches share width and intensity
            end = start + direction * length[:, None]
            mid = 0.5 * (start + end) + rng.normal(0.0, 1.0, start.shape) * (0.15 * length[:, None])
            paths = self.fixed(np.stack([start, mid, end], axis=1)).reshape(len(start), 3, 2)
            thickness = max(1, int(round(width * self.size * self.scale)))
            cv2.polylines(canvas, list(paths), False, float(value), thickness, cv2.LINE_AA, _SHIFT)
            if depth == 5:
                break
            spread = rng.uniform(0.25, 0.6, (len(start), 2)) * np.array([-1.0, 1.0])
            c, s = np.cos(spread), np.sin(spread)
            dx, dy = direction[:, 0:1], direction[:, 1:2]
            direction = np.stack([c * dx - s * dy, s * dx + c * dy], axis=-1).reshape(-1, 2)
            start = np.repeat(end, 2, axis=0)
            length = np.repeat(length, 2) * rng.uniform(0.65, 0.85, 2 * len(length))
            width, value = width * 0.7, value * 0.72
        return 0.08 * self.blur(canvas, 0.003)

    def lung_texture(self) -> np.ndarray:
        """Fine interstitial markings: band-pass noise."""
        noise = self.texture.standard_normal((self.size, self.size)).astype(np.float32)
        fine, coarse = self.blur(noise, 0.005), self.blur(noise, 0.02)
        texture = fine - coarse
        return texture / (float(texture.std()) + 1e-6)

    def opacities(self, lung_mask: np.ndarray, lung_soft: np.ndarray):
        """Soft-edged opacities inside the lungs: the fraction of air replaced, and the lesion mask."""
        rng = self.lesions
        size = self.size
        zones = lung_zones(lung_mask)
        inner = cv2.erode(lung_mask.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=max(1, size // 64)) > 0
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        patchy = self.smooth_noise(rng, max(6, int(rng.uniform(6, 14))))
        ragged = self.smooth_noise(rng, 10)
        minimum = max(6, int(0.0015 * size * size))
        for attempt in range(6):
            keep = np.ones_like(yy)
            count = int(rng.integers(int(RANGES["opacity_count"][0]), int(RANGES["opacity_count"][1]) + 1))
            main_zone = int(rng.integers(0, len(ZONES)))
            for blob in range(count):
                target = main_zone if blob == 0 or rng.random() < 0.5 else int(rng.integers(0, len(ZONES)))
                candidates = np.flatnonzero(((zones == target) & inner).ravel())
                if candidates.size == 0:
                    candidates = np.flatnonzero(inner.ravel()) if inner.any() else np.flatnonzero(lung_mask.ravel())
                if candidates.size == 0:
                    break
                pick = candidates[rng.integers(0, candidates.size)]
                cy, cx = (pick // size + 0.5) / size, (pick % size + 0.5) / size
                kind = rng.choice(["consolidation", "ground glass", "nodule"], p=[0.45, 0.35, 0.2])
                small, large = RANGES["opacity_radius"]
                faint, dense = RANGES["opacity_density"]
                if kind == "nodule":
                    radius, density, power, texture = rng.uniform(small, 0.045), rng.uniform(0.6, dense), 3.0, 0.15
                elif kind == "ground glass":
                    radius, density, power, texture = rng.uniform(0.06, large), rng.uniform(faint, 0.45), 1.3, 0.5
                else:
                    radius, density, power, texture = rng.uniform(0.04, large), rng.uniform(0.45, dense), 2.0, 0.35
                if blob > 0:
                    radius *= 0.7
                angle = rng.uniform(0, math.pi)
                aspect = rng.uniform(0.6, 1.0)
                dx, dy = xx - cx, yy - cy
                u = (dx * math.cos(angle) + dy * math.sin(angle)) / radius
                v = (-dx * math.sin(angle) + dy * math.cos(angle)) / (radius * aspect)
                r2 = (u * u + v * v) * (0.75 + 0.5 * ragged) ** 2
                profile = np.exp(-np.power(r2, power / 2.0) * 1.2)
                fraction = density * profile * (1.0 - texture + texture * patchy)
                keep *= 1.0 - fraction
            opacity = (1.0 - keep) * np.clip(lung_soft, 0.0, 1.0)
            lesion = lung_mask & (opacity >= LESION_THRESHOLD)
            if lesion.sum() >= minimum:
                return opacity.astype(np.float32), lesion
        return opacity.astype(np.float32), lesion  # pathological geometry: keep the last try

    def expose(self, density: np.ndarray, a: dict) -> np.ndarray:
        rng = self.texture
        size = self.size
        gamma = _u(rng, "gamma")
        low = rng.uniform(0.0, 0.08)
        high = rng.uniform(0.88, 1.0)
        image = np.clip(density / a["soft"], 0.0, 1.2) ** gamma
        image = low + (high - low) * image
        # uneven exposure: a soft gradient across the film
        image *= 0.93 + 0.1 * self.smooth_noise(rng, 2)
        if a["marker"]:
            scale = size / 256 * 0.6
            corner = (int(size * rng.uniform(0.82, 0.9)), int(size * rng.uniform(0.06, 0.1)))
            marker = np.zeros((size, size), np.uint8)
            cv2.putText(marker, "L", corner, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, max(1, int(size / 160)), cv2.LINE_AA)
            image = np.maximum(image, marker.astype(np.float32) * (0.95 / 255.0))
        sigma = _u(rng, "blur_sigma_px_at_256") * size / 256
        if sigma >= 0.3:
            image = cv2.GaussianBlur(image, (0, 0), sigma)
        noise_sigma = _u(rng, "noise_sigma")
        grain = rng.standard_normal((size, size)).astype(np.float32)
        grain = 0.6 * grain + 0.8 * cv2.GaussianBlur(grain, (0, 0), max(0.6, size / 256))
        image = image + noise_sigma * grain * (0.5 + np.sqrt(np.clip(image, 0, 1)))
        return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
