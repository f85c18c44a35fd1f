"""``make demo``: dva run on the bundled chest X-rays with a tiny model built from configs.

No trained default model ships with dva yet, and real Stable Diffusion weights are gigabytes, so the
demo builds a tiny random model (BERT-family encoder, as the thesis' RadBERT) once into ``.cache/``
and runs the full pipeline on it: reading, SDEdit, maps masked to the lungs, report. It says so loudly.
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

from rich.console import Console


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo-out", help="output folder")
    parser.add_argument("--cache", default=".cache/dva-demo-model", help="where the tiny model is built once")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    console.rule("[bold]dva demo")
    console.print(
        "[bold yellow]This demo runs on a TINY MODEL WITH RANDOM WEIGHTS built from configs[/]: dva does not "
        "ship a trained model yet. Every step is real (reading, SDEdit, attribution maps, lung masks, "
        "manifest, report), but the counterfactuals are not medical. For real results: "
        "dva run --entry thesis --model <Stable Diffusion folder> --encoder-path <RadBERT folder> SCANS",
        soft_wrap=True,
    )
    model = Path(args.cache)
    if not (model / "dva.json").is_file():
        from dva.core.runtime import quiet_libraries
        from dva.testing.tiny import make_tiny_dva_model

        quiet_libraries()
        console.print(f"Building the tiny demo model in {model} ...")
        make_tiny_dva_model(model, encoder="radbert", sample_size=64)
    samples = resources.files("dva") / "samples"
    inputs = [str(samples / "cxr-covid-sample" / "images"), str(samples / "cxr-nih-sample" / "images")]
    from dva.cli import main as dva

    dva(["run", "--model", str(model), "--mask", str(samples / "cxr-covid-sample" / "masks_v7labs"),
         "--steps", "20", "--batch-size", "2", "--out", args.out, *inputs])


if __name__ == "__main__":
    main()
