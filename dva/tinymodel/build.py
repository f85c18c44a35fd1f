"""``make tiny-model``: regenerate dva's bundled tiny model from scratch with fixed seeds.

1. ``dva phantoms`` writes the training set (seed :data:`PHANTOM_SEED`);
2. :func:`dva.tinymodel.vae.train_vae` trains the VAE on it (seed ``VaeRecipe.seed``), its PSNR measured on
   held-out phantoms of another seed;
3. :func:`dva.tinymodel.base.make_base_folder` writes the base folder (seeded random UNet, MiniLM reference);
4. ``dva finetune --entry tiny-phantom`` trains the UNet and the projection (the recipe lives in registry.toml);
5. :func:`pack` copies the result into the package (fp16 UNet, safetensors only) with the recipe in dva.json;
6. :func:`measure` scores its healthy counterfactuals against the lesion masks of unseen phantoms (in dva.json);
7. :func:`calibrate` runs ``dva calibrate --entry tiny-phantom`` on the first :data:`CALIBRATION_IMAGES` Normal
   training phantoms (with their lung masks): ``calibration/`` in the model folder (docs/usage.md).

Each stage is skipped when its output exists (``--force`` redoes all), so an interrupted build resumes.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import torch

PHANTOM_SEED = 0
HELD_OUT_SEED = 7
PHANTOMS_PER_CLASS = 300
PHANTOM_SIZE = 128
CLASSES = ("Normal", "Lung Opacity", "Cardiomegaly")
ENTRY = "tiny-phantom"
SHIPPED_PARTS = ("unet", "vae", "scheduler", "projection")
CALIBRATION_IMAGES = 50


def package_model_folder() -> Path:
    """Where the bundled model lives inside the installed package."""
    return Path(str(resources.files("dva") / "models" / ENTRY))


def _log(message: str) -> None:
    print(f"[tiny-model {time.strftime('%H:%M:%S')}] {message}", flush=True)


def make_training_phantoms(work: Path) -> Path:
    from dva.datasets.phantoms import make_phantoms

    folder = work / "phantoms"
    if not (folder / "phantoms.json").is_file():
        make_phantoms(folder, n=PHANTOMS_PER_CLASS, size=PHANTOM_SIZE, seed=PHANTOM_SEED, classes=list(CLASSES))
    return folder


def make_vae(work: Path, phantoms: Path) -> tuple[Path, float]:
    """Train the VAE (or reuse ``work/vae``); returns its folder and its PSNR on held-out phantoms."""
    from diffusers import AutoencoderKL

    from dva.datasets.phantoms import make_phantoms
    from dva.tinymodel.vae import VaeRecipe, load_images, reconstruction_psnr, train_vae

    recipe = VaeRecipe()
    folder = work / "vae"
    held_out = work / "held-out"
    if not (held_out / "phantoms.json").is_file():
        make_phantoms(held_out, n=20, size=PHANTOM_SIZE, seed=HELD_OUT_SEED, classes=list(CLASSES))
    if not (folder / "config.json").is_file():
        images = load_images(sorted(phantoms.glob("*/images/*.png")), recipe.resolution)
        train_vae(images, recipe, log=_log).save_pretrained(folder, safe_serialization=True)
    vae = AutoencoderKL.from_pretrained(str(folder)).eval()
    return folder, reconstruction_psnr(vae, load_images(sorted(held_out.glob("*/images/*.png")), recipe.resolution))


def finetune(base: Path, phantoms: Path, out: Path) -> None:
    """``dva finetune --entry tiny-phantom``: the UNet and projection learn, the encoder stays frozen."""
    if (out / "dva.json").is_file():
        return
    command = [sys.executable, "-m", "dva", "finetune", "--entry", ENTRY, "--model", str(base), "--data", str(phantoms),
               "--out", str(out), "--device", "cpu"]
    _log(" ".join(command))
    subprocess.run(command, check=True)


def pack(trained: Path, target: Path, extra: dict[str, Any]) -> Path:
    """Copy the trained folder's parts into ``target``: UNet in fp16 (upcast on load), dva.json with the recipe."""
    from diffusers import UNet2DConditionModel

    from dva.core.model_folder import read_dva_json, write_dva_json
    from dva.tinymodel.base import TINY_MODEL_NOTE

    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for part in SHIPPED_PARTS[1:]:
        shutil.copytree(trained / part, staging / part)
    unet = UNet2DConditionModel.from_pretrained(str(trained), subfolder="unet")
    unet.to(torch.float16).save_pretrained(staging / "unet", safe_serialization=True)
    fields = read_dva_json(trained)
    fields.pop("format", None), fields.pop("format_version", None)
    fields["data"] = {**fields.get("data", {}), "location": f"dva phantoms --n {PHANTOMS_PER_CLASS} "
                      f"--size {PHANTOM_SIZE} --seed {PHANTOM_SEED}"}
    fields.update(base_model="dva.tinymodel (make tiny-model)", note=TINY_MODEL_NOTE, tiny_model=extra)
    write_dva_json(staging, **fields)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def measure(target: Path) -> dict[str, float]:
    """Score the packed model against ground truth and record it in its dva.json (``tiny_model.lesion_check``).

    Healthy counterfactuals (DDIM 20 steps, guidance 4, strength 0.6) of the first 8 Lung Opacity phantoms of
    the demo seed whose lesion covers at least 2% of the image: mean |input - counterfactual| in the lesion,
    in the rest of the lungs, and outside the lungs.
    """
    import numpy as np

    from dva.core.model_folder import read_dva_json, write_dva_json
    from dva.datasets.phantoms import render_phantom
    from dva.tinymodel.check import TinyPipeline, score_model
    from dva.tinymodel.samples import MIN_LESION_FRACTION, SAMPLE_SEED

    indices = [index for index in range(1, 100)
               if render_phantom("Lung Opacity", index, PHANTOM_SIZE, SAMPLE_SEED)[2].mean() >= MIN_LESION_FRACTION][:8]
    scores = score_model(TinyPipeline(target), indices, seed=SAMPLE_SEED, strength=0.6, steps=20, guidance=4.0)
    result = {"phantom_seed": SAMPLE_SEED, "indices": indices, "strength": 0.6, "steps": 20, "guidance": 4.0,
              "lesion": round(float(np.mean([s.lesion for s in scores])), 4),
              "rest_of_lungs": round(float(np.mean([s.lungs for s in scores])), 4),
              "outside_lungs": round(float(np.mean([s.outside for s in scores])), 4)}
    fields = read_dva_json(target)
    fields.pop("format", None), fields.pop("format_version", None)
    fields["tiny_model"] = {**fields.get("tiny_model", {}), "lesion_check": result}
    write_dva_json(target, **fields)
    return result


def calibrate(target: Path, phantoms: Path) -> None:
    """``dva calibrate`` the packed model on its own healthy training phantoms, with the entry's recipe."""
    images = [phantoms / "Normal" / "images" / f"Normal-{i}.png" for i in range(1, CALIBRATION_IMAGES + 1)]
    command = [sys.executable, "-m", "dva", "calibrate", "--entry", ENTRY, "--model", str(target),
               "--mask", str(phantoms / "Normal" / "masks"), *map(str, images)]
    subprocess.run(command, check=True)


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="build/tiny-model", help="working folder (phantoms, VAE, base, training)")
    parser.add_argument("--target", default=None, help="where the packed model goes (default: inside the package)")
    parser.add_argument("--force", action="store_true", help="redo every stage")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from dva.core.runtime import quiet_libraries
    from dva.tinymodel.base import make_base_folder

    quiet_libraries()
    work = Path(args.work)
    if args.force:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    _log("phantoms")
    phantoms = make_training_phantoms(work)
    _log("VAE")
    vae, psnr = make_vae(work, phantoms)
    _log(f"VAE held-out PSNR {psnr:.2f} dB")
    base = work / "base"
    if not (base / "dva.json").is_file():
        make_base_folder(base, vae)
    _log("UNet (dva finetune)")
    finetune(base, phantoms, work / "trained")
    target = Path(args.target) if args.target else package_model_folder()
    minutes = (time.perf_counter() - started) / 60
    pack(work / "trained", target, {"vae_psnr_db": round(psnr, 2), "phantom_seed": PHANTOM_SEED,
                                    "phantoms_per_class": PHANTOMS_PER_CLASS, "phantom_size": PHANTOM_SIZE,
                                    "recipe": f"registry.toml [entries.{ENTRY}], dva/tinymodel"})
    _log(f"lesion check: {measure(target)}")
    _log("calibration (dva calibrate)")
    calibrate(target, phantoms)
    _log(f"done in {minutes:.1f} min: {target} ({folder_bytes(target) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
