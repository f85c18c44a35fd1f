"""``make demo``: dva run with its bundled tiny model on bundled phantoms, scored against their lesions.

The bundled model (``dva/models/tiny-phantom``, made by ``make tiny-model``) is a 64 px latent diffusion
model trained by ``dva finetune`` on synthetic phantoms only, with the MiniLM BERT as its encoder. The demo
runs ``dva run --entry tiny-phantom`` (the bundled model with its best measured settings: DDIM inversion, maps
against the unconditional reconstruction) on phantoms of a seed it never saw, then
measures each Lung Opacity map against the phantom's ground-truth lesion mask. It then runs one phantom as a
12-bit DICOM file (its counterfactual and map come back as DICOM in the input's study) and checks the model's
VAE on the bundled phantoms and X-rays. It says loudly that the model knows only synthetic chests.
"""

from __future__ import annotations

import argparse
import csv
from importlib import resources
from pathlib import Path

import numpy as np
from rich.console import Console

BANNER = (
    "[bold yellow]This demo runs dva's bundled TINY model[/], trained by `dva finetune` on SYNTHETIC phantom chest "
    "X-rays only (64 px, `make tiny-model`): it shows every step working (healthy counterfactuals, "
    "attribution maps, lung masks, report) and can be scored against the phantoms' known lesions, but it knows "
    "nothing of real radiographs. For real scans: dva run --entry thesis --model <Stable Diffusion folder> "
    "--encoder-path <RadBERT folder> SCANS (docs/models.md)."
)


def lesion_table(out: Path, samples: Path) -> list[tuple[str, float, float]]:
    """(image, mean |map| inside the lesion, mean |map| in the rest of the lungs) for each Lung Opacity sample."""
    from safetensors.numpy import load_file

    from dva.core import io

    rows = []
    with open(samples / "metadata.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            stem = Path(row["file"]).stem
            maps = out / stem / "attribution.safetensors"
            if row["class"] != "Lung Opacity" or not maps.is_file():
                continue
            attribution = np.abs(load_file(str(maps))["attribution_fullsize"])
            lesion = io.read_scan(samples / "lesions" / f"{stem}.png").pixels > 0.5
            lungs = io.read_scan(samples / "masks" / f"{stem}.png").pixels > 0.5
            rows.append((stem, float(attribution[lesion].mean()), float(attribution[lungs & ~lesion].mean())))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo-out", help="output folder")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    console.rule("[bold]dva demo")
    console.print(BANNER, soft_wrap=True)
    from dva.core.model_folder import bundled_model

    if bundled_model() is None:
        console.print("[red]The bundled model is missing[/]: run `make tiny-model` (about an hour on 2 CPU cores).")
        raise SystemExit(2)
    samples = Path(str(resources.files("dva") / "samples" / "phantoms"))
    from dva.cli import main as dva

    try:
        dva(["run", "--entry", "tiny-phantom", "--mask", str(samples / "masks"), "--out", args.out,
             str(samples / "images")])
    except SystemExit as exit:
        if exit.code:
            raise
    out = Path(args.out)
    rows = lesion_table(out, samples)
    if rows:
        console.print("Lung Opacity phantoms: mean |attribution| inside the true lesion vs the rest of the lungs")
        for stem, inside, rest in rows:
            console.print(f"  {stem}: lesion {inside:.3f} · rest of lungs {rest:.3f} · ratio {inside / max(rest, 1e-8):.1f}")
    scores = image_scores(out)
    if scores:
        console.print("Image-level abnormality scores (calibrated on healthy phantoms; higher = less healthy):")
        for image, score in scores:
            console.print(f"  {image}: {score:.2f}")
    console.print(f"[bold]Report:[/] {(out / 'report.html').resolve()}", highlight=False)
    console.print(dicom_line(out / "dicom-input", samples, dva), highlight=False, soft_wrap=True)
    check_vae(out / "check-vae", dva)


def dicom_line(folder: Path, samples: Path, dva) -> str:
    """Run one Lung Opacity phantom as a 12-bit DX DICOM file (made in ``folder``) and say which DICOM outputs it
    got: the counterfactual and the map as new series in the input's own study (docs/usage.md, DICOM outputs)."""
    import pydicom

    from dva.core import io
    from dva.testing.dicom import write_radiograph

    stem = "Lung Opacity-7"
    folder.mkdir(parents=True, exist_ok=True)
    pixels = io.read_scan(samples / "images" / f"{stem}.png").pixels
    source = write_radiograph(folder / "Lung-Opacity-7.dcm", np.rint(pixels * 4095).astype(np.uint16))
    try:
        dva(["run", "--entry", "tiny-phantom", "--mask", str(samples / "masks" / f"{stem}.png"),
             "--out", str(folder / "run"), str(source)])
    except SystemExit as exit:
        if exit.code:
            raise
    written = sorted((folder / "run").glob("*/dicom/*.dcm"))
    if not written:
        return "DICOM input: no DICOM outputs were written (see the run's notes above)."
    study = pydicom.dcmread(source, stop_before_pixels=True).StudyInstanceUID
    same = all(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID == study for path in written)
    return (f"DICOM input {source}: {', '.join(path.name for path in written)} in {written[0].parent}, "
            f"{'each a new series in the input' + chr(39) + 's study' if same else 'NOT in the input' + chr(39) + 's study'}.")


def check_vae(folder: Path, dva) -> None:
    """``dva check-vae`` of the bundled model's VAE on the bundled phantoms and real X-rays into ``folder``: the
    phantoms pass, the real radiographs fail, as a VAE trained on phantoms only should."""
    samples = Path(str(resources.files("dva") / "samples"))
    folders = [samples / "phantoms" / "images", samples / "cxr-nih-sample" / "images", samples / "cxr-covid-sample" / "images"]
    try:
        dva(["check-vae", "--out", str(folder), *map(str, folders)])
    except SystemExit as exit:
        if exit.code:
            raise


def image_scores(out: Path) -> list[tuple[str, float]]:
    """(image, score) from the run's manifest, highest first; empty when the run was not calibrated."""
    import json

    images = json.loads((out / "manifest.json").read_text()).get("images", [])
    found = [(image["output"], float(image["score"])) for image in images if image.get("score") is not None]
    return sorted(found, key=lambda item: -item[1])


if __name__ == "__main__":
    main()
