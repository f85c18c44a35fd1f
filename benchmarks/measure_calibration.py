"""Raw against calibrated maps of the bundled model on a fresh phantom set, in one command (docs/benchmarks.md,
"Calibrated maps").

    OMP_NUM_THREADS=1 python benchmarks/measure_calibration.py --seed S [--steps N] [--n 10] [--ablation]

It copies the bundled model (less its calibration) to a temporary folder, calibrates the copy with
``dva calibrate --entry tiny-phantom`` on its own healthy training phantoms (Normal 1 to ``--calibration-images``
of ``dva phantoms --size 128 --seed 0``, with lung masks), makes ``--n`` Normal and ``--n`` Lung Opacity phantoms
of ``--seed`` (64 px), runs ``dva run`` on them with their lung masks, and prints one row per map:

* pixel AUPRC and best Dice on the Lung Opacity phantoms inside the lungs (``dva.metrics.localisation``);
* the null ratio: mean map energy in the lungs, Normal over Lung Opacity (lower is better);
* image AUROC and AUPRC, Normal against Lung Opacity (scikit-learn), from the image score.

The raw row is ``|map|`` scored by the mean of its top 1% in the lungs; the calibrated row is what ``dva run``
wrote (``calibrated`` in ``attribution.safetensors``, ``score`` in ``record.json``). ``--ablation`` also runs
the calibration scans through ``dva run`` and adds rows for the alternatives dva does not use (computed from
those healthy maps with :mod:`dva.core.calibration`'s parts). Whatever the ``tiny-phantom`` entry's scheduler
and steps are, the calibration and the runs share them (``--steps`` overrides both).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.numpy import load_file
from sklearn.metrics import average_precision_score, roc_auc_score

from dva.core import calibration
from dva.core.model_folder import bundled_model
from dva.datasets.phantoms import make_phantoms
from dva.metrics.localisation import energy, localisation

CLASSES = ("Normal", "Lung Opacity")
ENTRY = "tiny-phantom"
CALIBRATION_SEED, CALIBRATION_SIZE, TEST_SIZE = 0, 128, 64  # the bundled model's training phantoms; fresh ones


@dataclass
class Scan:
    """One scan's signed map at the model's size, its lung mask, its lesion (empty when healthy), and what
    dva run wrote for it (its calibrated map and score, when the run was calibrated)."""

    label: str
    signed: np.ndarray
    lungs: np.ndarray
    lesion: np.ndarray
    calibrated: np.ndarray | None = None
    score: float | None = None


# A map variant: (scan -> the map in the lungs, scan -> the image score).
Variant = tuple[Callable[[Scan], np.ndarray], Callable[[Scan], float]]


def dva(*args: str) -> None:
    """Run the dva command line in a subprocess, as a user would."""
    subprocess.run([sys.executable, "-m", "dva", *args], check=True)


def flattened(phantoms: Path, folder: Path, classes: tuple[str, ...], count: int) -> tuple[Path, Path]:
    """Images 1..count of each class of a phantom set, and their lung masks, in ``folder/images`` and
    ``folder/masks`` (one mask folder, matched by name, for ``--mask``)."""
    for kind in ("images", "masks"):
        (folder / kind).mkdir(parents=True, exist_ok=True)
        for label in classes:
            for index in range(1, count + 1):
                name = f"{label}-{index}.png"
                shutil.copy(phantoms / label / kind / name, folder / kind / name)
    return folder / "images", folder / "masks"


def read_scans(run: Path, phantoms: Path | None, classes: tuple[str, ...] = CLASSES) -> list[Scan]:
    """Every image of ``run`` with its phantom's lesion mask (``phantoms``; None: healthy scans, no lesions)."""
    import json

    scans = []
    for label in classes:
        for folder in sorted(p for p in run.iterdir() if p.is_dir() and p.name.startswith(f"{label}-")):
            tensors = load_file(str(folder / "attribution.safetensors"))
            lungs = tensors["mask"].astype(bool)
            lesion = np.zeros_like(lungs)
            if phantoms is not None:
                lesion = np.asarray(Image.open(phantoms / label / "lesions" / f"{folder.name}.png")) > 127
            record = json.loads((folder / "record.json").read_text())
            scans.append(Scan(label, tensors["attribution"], lungs, lesion, tensors.get("calibrated"),
                              record.get("score")))
    return scans


def top_percent(values: np.ndarray, lungs: np.ndarray) -> float:
    """The mean of the top 1% of ``values`` in the lungs (the raw maps' image score)."""
    inside = np.sort(values[lungs])
    return float(inside[-max(1, round(0.01 * inside.size)):].mean())


def row(variant: Variant, scans: list[Scan]) -> dict[str, float]:
    """The benchmark's measures of one map variant over a phantom set."""
    map_of, score_of = variant
    healthy = [s for s in scans if s.label == "Normal"]
    sick = [s for s in scans if s.label == "Lung Opacity"]
    maps = {id(s): np.where(s.lungs, map_of(s), 0.0) for s in scans}
    located = [localisation(maps[id(s)], s.lesion, s.lungs) for s in sick if s.lesion.any()]
    truth = [0] * len(healthy) + [1] * len(sick)
    scores = [score_of(s) for s in healthy + sick]
    return {
        "pixel AUPRC": float(np.nanmean([m.auprc for m in located])),
        "best Dice": float(np.nanmean([m.best_dice for m in located])),
        "null ratio": float(np.mean([energy(maps[id(s)], s.lungs) for s in healthy])
                            / np.mean([energy(maps[id(s)], s.lungs) for s in sick])),
        "image AUROC": float(roc_auc_score(truth, scores)),
        "image AUPRC": float(average_precision_score(truth, scores)),
    }


def dva_variants() -> dict[str, Variant]:
    """The raw map and what dva run wrote."""
    return {
        "raw map, score: top 1% of its magnitude": (
            lambda s: np.abs(s.signed), lambda s: top_percent(np.abs(s.signed), s.lungs)),
        "**calibrated (dva's)**": (lambda s: s.calibrated, lambda s: s.score),
    }


@contextlib.contextmanager
def constants(**values: float) -> Iterator[None]:
    """:mod:`dva.core.calibration`'s constants set to ``values`` for a while (the ablations' other choices)."""
    before = {name: getattr(calibration, name) for name in values}
    for name, value in values.items():
        setattr(calibration, name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(calibration, name, value)


def ablation_variants(healthy: list[Scan]) -> dict[str, Variant]:
    """The alternatives dva does not use, each calibrated on the healthy calibration scans' maps."""
    maps = [(s.signed, s.lungs) for s in healthy]
    made = calibration.compute(maps, {})
    with constants(SMOOTHING=0.0):
        unsmoothed = calibration.compute(maps, {})

    def assessed(made: calibration.Calibration, **fixed: float) -> Variant:
        def assess(s: Scan) -> tuple[np.ndarray, float]:
            with constants(**fixed):
                return made.assess(s.signed, s.lungs)
        return (lambda s: assess(s)[0], lambda s: assess(s)[1])

    def z_map(s: Scan) -> np.ndarray:
        return np.maximum(0.0, made.standardised(s.signed))

    variants = {
        "calibrated, no smoothing": assessed(unsmoothed, SMOOTHING=0.0),
        "z (no excess over k), dva's score": (z_map, lambda s: made.assess(s.signed, s.lungs)[1]),
        "calibrated, score: top 1% of z (no upper quartile subtracted)": (
            lambda s: made.assess(s.signed, s.lungs)[0], lambda s: top_percent(made.standardised(s.signed), s.lungs)),
    }
    for share in (0.05, 0.10):
        with constants(HEALTHY_SHARE=share):
            variants[f"calibrated, k exceeded by {share:.0%} of healthy pixels"] = assessed(
                calibration.compute(maps, {}))
    variants.update(former_and_signed(maps))
    return variants


def former_and_signed(maps: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Variant]:
    """dva's former calibration (format 1: unsmoothed ``|map|``, z clamped at 0, score: top 1% of z) and
    signed statistics (z = |smoothed map - mean| / std, then as dva's)."""
    def statistics(transform: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        values = np.stack([transform(signed) for signed, _ in maps])
        inside = np.stack([lungs for _, lungs in maps])
        count = np.maximum(inside.sum(axis=0), 1)
        mean = (values * inside).sum(axis=0) / count
        std = np.sqrt(((values - mean) ** 2 * inside).sum(axis=0) / np.maximum(count - 1, 1))
        return mean, calibration.floored(std)

    mean, std = statistics(np.abs)
    former = lambda s: np.maximum(0.0, (np.abs(s.signed) - mean) / std)
    signed_mean, signed_std = statistics(calibration.smoothed)

    def signed_z(signed: np.ndarray) -> np.ndarray:
        return np.abs(calibration.smoothed(signed) - signed_mean) / signed_std

    healthy_z = np.concatenate([signed_z(signed)[lungs] for signed, lungs in maps])
    k = float(np.quantile(healthy_z, 1.0 - calibration.HEALTHY_SHARE))  # in-sample: the healthy scans' own
    return {
        "format 1 (no smoothing, z clamped at 0, score: top 1% of z)": (former,
                                                                       lambda s: top_percent(former(s), s.lungs)),
        "signed statistics": (lambda s: np.maximum(0.0, signed_z(s.signed) - k),
                              lambda s: calibration.focal_excess(signed_z(s.signed), s.lungs)),
    }


def measure(work: Path, seed: int, n: int, calibration_images: int, steps: int | None, ablation: bool) -> None:
    """Make the phantoms, calibrate a copy of the bundled model, run it, and print the table."""
    model = work / "model"
    shutil.copytree(bundled_model(), model, ignore=shutil.ignore_patterns(calibration.FOLDER))
    recipe = ["--entry", ENTRY, "--model", str(model), *(["--steps", str(steps)] if steps else [])]
    make_phantoms(work / "calibration-phantoms", calibration_images, CALIBRATION_SIZE, CALIBRATION_SEED, ["Normal"])
    healthy_images, healthy_masks = flattened(work / "calibration-phantoms", work / "calibration-scans", ("Normal",),
                                              calibration_images)
    dva("calibrate", *recipe, "--mask", str(healthy_masks), str(healthy_images))
    make_phantoms(work / "phantoms", n, TEST_SIZE, seed, list(CLASSES))
    images, masks = flattened(work / "phantoms", work / "scans", CLASSES, n)
    dva("run", *recipe, "--calibration", "require", "--mask", str(masks), "--out", str(work / "run"), str(images))
    scans = read_scans(work / "run", work / "phantoms")
    variants = dva_variants()
    if ablation:
        dva("run", *recipe, "--calibration", "off", "--mask", str(healthy_masks), "--out", str(work / "healthy-run"),
            str(healthy_images))
        variants.update(ablation_variants(read_scans(work / "healthy-run", None, ("Normal",))))
    print_table(seed, {name: row(variant, scans) for name, variant in variants.items()})


def print_table(seed: int, rows: dict[str, dict[str, float]]) -> None:
    """The rows as a Markdown table (docs/benchmarks.md)."""
    columns = list(next(iter(rows.values())))
    print(f"| seed | map | {' | '.join(columns)} |")
    print("|---|---|" + "---:|" * len(columns))
    for name, values in rows.items():
        print(f"| {seed} | {name} | " + " | ".join(f"{values[c]:.3f}" for c in columns) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, required=True, help="seed of the fresh phantom set")
    parser.add_argument("--n", type=int, default=10, help="phantoms per class (Normal, Lung Opacity)")
    parser.add_argument("--steps", type=int, default=None, help="scheduler steps (default: the entry's)")
    parser.add_argument("--calibration-images", type=int, default=40, help="healthy training phantoms to calibrate on")
    parser.add_argument("--ablation", action="store_true", help="add rows for the alternatives dva does not use")
    parser.add_argument("--work", type=Path, default=None, help="keep the phantoms, model and runs here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dva-measure-calibration-") as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        measure(work, args.seed, args.n, args.calibration_images, args.steps, args.ablation)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
