"""Full resolution (``--tile``) and super-resolution (``dva upscale``) measured on phantoms with the bundled model.

The bundled tiny model works at 64 px; phantoms 2-4x larger have known lesions and known full-size originals:

- maps: Lung Opacity phantoms of ``--sizes`` px, the tiny-phantom recipe single-pass (the model's 64 px, the
  map upscaled to the scan) against tiled at the scan's own size (``--tile auto``); pixel AUPRC and best Dice
  of the full-size map against the lesion inside the lungs (``dva.metrics.localisation``), and seconds per image.
  The single-pass baseline is measured in the same run, and each tiled row prints its difference to it.
- super-resolution: phantoms of ``--sr-size`` px shrunk 2x (area averaging), brought back by bicubic
  interpolation (the baseline), through the bundled VAE alone (encode and decode the bicubic upsample: what
  any latent method starts from) and by ``dva upscale`` (SDEdit on the bicubic upsample, tiled) at each of
  ``--strengths``; PSNR, SSIM and MS-SSIM (``dva.metrics.similarity``) against the originals, and differences
  to bicubic.

    .venv/bin/python benchmarks/bench_tiling.py                  # 10 phantoms per class, seeds 9173 and 27611
    .venv/bin/python benchmarks/bench_tiling.py --quick          # smoke run: 2 phantoms, 128 px, 4 steps
    .venv/bin/python benchmarks/bench_tiling.py --json out.json  # also every image's numbers as JSON
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_run import load_average, machine, write_results  # noqa: E402

MAP_SEED, SR_SEED = 9173, 27611  # phantom seeds used nowhere else in the project
ENTRY = "tiny-phantom"  # the bundled model's recipe: ddim-inversion 0.6 against the unconditional reconstruction


def gray(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def make_phantoms(folder: Path, n: int, size: int, seed: int, classes: list[str]) -> Path:
    from dva.datasets.phantoms import make_phantoms as make

    return make(folder, n=n, size=size, seed=seed, classes=classes)


def map_scores(data: Path, out: Path) -> list[dict[str, float]]:
    """Each Lung Opacity phantom's full-size map against its lesion, inside its lungs."""
    from safetensors.numpy import load_file

    from dva.metrics.localisation import localisation

    rows = []
    for image in sorted((data / "Lung Opacity" / "images").glob("*.png")):
        attribution = load_file(str(out / image.stem / "attribution.safetensors"))["attribution_fullsize"]
        lesion = gray(data / "Lung Opacity" / "lesions" / image.name) > 0.5
        lungs = gray(data / "Lung Opacity" / "masks" / image.name) > 0.5
        scores = localisation(attribution, lesion, lungs)
        rows.append({"image": image.stem, "auprc": scores.auprc, "best_dice": scores.best_dice})
    return rows


def map_row(data: Path, work: Path, tile: str, steps: int, batch: int, catalogue: Any) -> dict[str, Any]:
    """One setting's mean AUPRC, best Dice and seconds per image on the Lung Opacity phantoms of ``data``."""
    from dva.core.registry import load_entries, resolve
    from dva.core.run import run

    recipe = resolve(load_entries(), catalogue, ENTRY, {"tile": tile, "steps": steps, "batch_size": batch,
                                                        "calibration": "off"})
    images = sorted((data / "Lung Opacity" / "images").glob("*.png"))
    out = work / f"maps-{data.name}-{tile}"
    started = time.perf_counter()
    result = run(recipe, [str(p) for p in images], out, catalogue)
    seconds = (time.perf_counter() - started) / len(images)
    if result.count("failed"):
        raise RuntimeError(f"{result.count('failed')} images failed in {out}")
    rows = map_scores(data, out)
    return {"tile": tile, "auprc": float(np.mean([r["auprc"] for r in rows])),
            "best_dice": float(np.mean([r["best_dice"] for r in rows])), "seconds": seconds, "images": rows}


def warm_up(data: Path, work: Path, catalogue: Any) -> None:
    """Load the model once before anything is timed (the first run of a process pays for loading it)."""
    from dva.core.registry import load_entries, resolve
    from dva.core.run import run

    recipe = resolve(load_entries(), catalogue, ENTRY, {"steps": 2, "calibration": "off"})
    run(recipe, [str(next(iter(sorted((data / "Lung Opacity" / "images").glob("*.png")))))], work / "warm-up", catalogue)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB) of two [0, 1] images."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def sr_scores(originals: list[Path], made: list[np.ndarray]) -> dict[str, float]:
    from dva.metrics.similarity import similarity

    rows = []
    for path, image in zip(originals, made):
        original = gray(path)
        scores = similarity(original, image)
        rows.append({"psnr": psnr(original, image), "ssim": scores.ssim, "ms_ssim": scores.ms_ssim})
    return {key: float(np.mean([row[key] for row in rows])) for key in ("psnr", "ssim", "ms_ssim")}


def vae_round_trips(images: list[np.ndarray]) -> list[np.ndarray]:
    """Each image encoded (the posterior's mode) and decoded by the bundled model's VAE: the closest any latent
    method can come, as every counterfactual passes through it."""
    import torch
    from diffusers import AutoencoderKL

    import dva

    vae = AutoencoderKL.from_pretrained(Path(dva.__file__).parent / "models" / "tiny-phantom", subfolder="vae").eval()
    made = []
    with torch.no_grad():
        for image in images:
            pixels = torch.from_numpy(image)[None, None].repeat(1, 3, 1, 1) * 2 - 1
            decoded = vae.decode(vae.encode(pixels).latent_dist.mode()).sample
            made.append(np.clip(decoded.mean(1)[0].numpy() / 2 + 0.5, 0.0, 1.0))
    return made


def super_resolution(data: Path, work: Path, strengths: list[float], steps: int, batch: int) -> list[dict[str, Any]]:
    """Bicubic and ``dva upscale`` at each strength, on the phantoms of ``data`` shrunk 2x."""
    from dva.cli.upscale import upscale
    from dva.components.upscaling import bicubic
    from dva.core import io

    originals = sorted(data.glob("*/images/*.png"))
    small = work / "sr-small"
    small.mkdir(parents=True, exist_ok=True)
    for path in originals:
        pixels = gray(path)
        shrunk = io.resize(pixels, (pixels.shape[0] // 2, pixels.shape[1] // 2))
        Image.fromarray((np.clip(shrunk, 0, 1) * 255 + 0.5).astype(np.uint8)).save(small / path.name)
    upsampled = [bicubic(gray(small / p.name), 2) for p in originals]
    rows = [{"method": "bicubic", **sr_scores(originals, upsampled), "seconds": 0.0},
            {"method": "VAE round trip of bicubic", **sr_scores(originals, vae_round_trips(upsampled)), "seconds": 0.0}]
    for strength in strengths:
        out = work / f"sr-{strength}"
        started = time.perf_counter()
        code = upscale.main([str(small), "--scale", "2", "--strength", str(strength), "--steps", str(steps),
                             "--batch-size", str(batch), "--out", str(out)], standalone_mode=False)
        if code:
            raise RuntimeError(f"dva upscale failed ({code}) into {out}")
        seconds = (time.perf_counter() - started) / len(originals)
        made = [gray(out / p.name) for p in originals]
        rows.append({"method": f"dva upscale, strength {strength}", **sr_scores(originals, made), "seconds": seconds})
    return rows


def print_report(maps: dict[int, list[dict[str, Any]]], sr: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    print(f"\nmaps: {ENTRY} recipe, {settings['steps']} steps, {settings['n']} Lung Opacity phantoms (seed "
          f"{settings['map_seed']}); difference to single-pass in brackets")
    print(f"{'size':>5}  {'setting':<22} {'AUPRC':>15} {'best Dice':>15} {'s/image':>16}")
    for size, rows in maps.items():
        base = rows[0]
        for row in rows:
            label = "single-pass (64 px)" if row["tile"] == "off" else f"tiled ({size} px)"
            if row is base:
                print(f"{size:>5}  {label:<22} {row['auprc']:>15.3f} {row['best_dice']:>15.3f} {row['seconds']:>16.2f}")
                continue
            print(f"{size:>5}  {label:<22} {row['auprc']:>6.3f} ({row['auprc'] - base['auprc']:+.3f}) "
                  f"{row['best_dice']:>6.3f} ({row['best_dice'] - base['best_dice']:+.3f}) "
                  f"{row['seconds']:>7.2f} (x{row['seconds'] / base['seconds']:.1f})")
    print(f"\nsuper-resolution x2: {settings['sr_n']} phantoms of {settings['sr_size']} px (seed {settings['sr_seed']}) "
          f"shrunk to {settings['sr_size'] // 2} px; difference to bicubic in brackets")
    base = sr[0]
    print(f"{'method':<30} {'PSNR dB':>15} {'SSIM':>15} {'MS-SSIM':>15} {'s/image':>8}")
    for row in sr:
        cells = [f"{row[key]:.3f}" if row is base else f"{row[key]:.3f} ({row[key] - base[key]:+.3f})"
                 for key in ("psnr", "ssim", "ms_ssim")]
        print(f"{row['method']:<30} {cells[0]:>15} {cells[1]:>15} {cells[2]:>15} {row['seconds']:>8.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10, help="phantoms per class")
    parser.add_argument("--sizes", default="128,256", help="phantom sides for the maps, px")
    parser.add_argument("--sr-size", type=int, default=256, help="side of the super-resolution originals, px")
    parser.add_argument("--strengths", default="0.2,0.4", help="dva upscale strengths")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16, help="tiles per UNet call")
    parser.add_argument("--map-seed", type=int, default=MAP_SEED)
    parser.add_argument("--sr-seed", type=int, default=SR_SEED)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 phantoms, 128 px, 4 steps")
    parser.add_argument("--json", type=Path, help="write every image's numbers here")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.sizes, args.sr_size, args.steps, args.strengths = 2, "128", 128, 4, "0.3"
    from dva.core.plugins import load_catalogue

    catalogue = load_catalogue(entry_points=False)
    settings = {"n": args.n, "steps": args.steps, "map_seed": args.map_seed, "sr_seed": args.sr_seed,
                "sr_size": args.sr_size, "sr_n": 2 * args.n, "batch": args.batch, "load_before": load_average()}
    with tempfile.TemporaryDirectory(prefix="dva-bench-tiling-") as temporary:
        work = Path(temporary)
        maps: dict[int, list[dict[str, Any]]] = {}
        for size in (int(s) for s in args.sizes.split(",")):
            data = make_phantoms(work / f"phantoms-{size}", args.n, size, args.map_seed, ["Lung Opacity"])
            if not maps:
                warm_up(data, work, catalogue)
            maps[size] = [map_row(data, work, tile, args.steps, args.batch, catalogue) for tile in ("off", "auto")]
        data = make_phantoms(work / "sr-originals", args.n, args.sr_size, args.sr_seed, ["Normal", "Lung Opacity"])
        sr = super_resolution(data, work, [float(s) for s in args.strengths.split(",")], args.steps, args.batch)
    print_report(maps, sr, settings)
    if args.json:
        write_results(args.json, {"machine": machine(), "settings": settings, "maps": maps, "super_resolution": sr})
    return 0


if __name__ == "__main__":
    sys.exit(main())
