"""Counterfactuals per second on one GPU at the thesis' settings, against diffusers' img2img and the hardware floor.

An SD v1-4-size UNet (859.5 M) and VAE, and a BERT-base encoder, with random weights (speed does not
depend on weight values), saved as a dva model folder. Thesis settings: 512 px, PNDM 75 steps, strength
0.85 (64 UNet calls), classifier-free guidance 7.5 (UNet batch 2 per image). Measured in the same run:

- (a) baseline: diffusers' ``StableDiffusionImg2ImgPipeline`` in fp16, one image per call (prompt embeddings
  given, as dva gives them);
- (b) ``dva run`` end to end (reading, sampling, maps, PNG writing) at its best settings: bf16,
  ``--batch-size`` (default 8), channels-last, optionally ``--compile``;
- (c) the same with dpm-solver++ at 20 steps (17 UNet calls at strength 0.85).

The floor: 64 UNet calls x 1.61 TFLOP (batch 2) plus the VAE, about 106.5 TFLOP per counterfactual, which
is 107.6 ms at an H100 SXM's 989 TFLOP/s dense bf16 peak; ``fraction of floor`` = floor / measured time.

    python benchmarks/gpu_run.py --json gpu_run.json            # on a CUDA GPU, a few minutes
    .venv/bin/python benchmarks/gpu_run.py --tiny               # CPU smoke run with tiny components
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_run import machine, write_results  # noqa: E402
from gpu_finetune import SD14_UNET, SD14_VAE, TINY_UNET, TINY_VAE, quiet_libraries  # noqa: E402

FLOOR_TFLOP = 106.5  # per counterfactual at the thesis settings (issue 6)
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}  # dense bf16
BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)


def make_model(folder: Path, tiny: bool) -> Path:
    """A dva model folder with random weights: UNet, VAE, PNDM scheduler, a BERT (RadBERT's family)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from dva.core.model_folder import write_dva_json
    from dva.plugins.encoders import BUILTIN_ENCODERS
    from dva.testing.tiny import sd_scheduler

    torch.manual_seed(0)
    dtype = torch.float32 if tiny else torch.float16
    UNet2DConditionModel(**(TINY_UNET if tiny else SD14_UNET)).to(dtype).save_pretrained(folder / "unet")
    AutoencoderKL(**(TINY_VAE if tiny else SD14_VAE)).to(dtype).save_pretrained(folder / "vae")
    sd_scheduler().save_pretrained(folder / "scheduler")
    spec = next(s for s in BUILTIN_ENCODERS if s.name == "radbert")
    spec.create(**({} if tiny else BERT_BASE)).save_pretrained(folder)
    write_dva_json(folder, encoder="radbert", encoder_family="bert", modality="chest-xray",
                   prompts={"healthy": "normal chest x ray"}, base_model="random weights (benchmarks/gpu_run.py)",
                   note="Random weights, for speed measurements only.")
    return folder


def make_inputs(folder: Path, count: int, side: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        paths.append(folder / f"scan-{index:03d}.png")
        Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8)).save(paths[-1])
    return paths


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def baseline(model: Path, inputs: list[Path], settings: dict[str, Any], device: torch.device) -> float:
    """Seconds per counterfactual of diffusers' img2img pipeline, fp16 (fp32 on the CPU), one image per call."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel

    from dva.core.plugins import load_catalogue
    from dva.core.registry import load_entries, resolve
    from dva.core.runtime import load_encoder
    from dva.core.model_folder import inspect_model

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=dtype).to(device)
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae", torch_dtype=dtype).to(device)
    pipe = StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet,
                                          scheduler=PNDMScheduler.from_pretrained(model, subfolder="scheduler"),
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    catalogue = load_catalogue(entry_points=False)
    recipe = resolve(load_entries(), catalogue, "default", {"model": str(model)})
    encoder = load_encoder(recipe, catalogue, inspect_model(str(model)), int(unet.config.cross_attention_dim))
    embeds = encoder.to(device).encode(["normal chest x ray", ""], device).to(dtype)
    size = settings["size"]

    def one(path: Path) -> None:
        image = Image.open(path).convert("RGB").resize((size, size))
        pipe(prompt_embeds=embeds[:1], negative_prompt_embeds=embeds[1:], image=image, strength=settings["strength"],
             num_inference_steps=settings["steps"], guidance_scale=settings["guidance_scale"],
             generator=torch.Generator("cpu").manual_seed(0), output_type="np")

    one(inputs[0])  # warm-up
    synchronize()
    started = time.perf_counter()
    for path in inputs:
        one(path)
    synchronize()
    return (time.perf_counter() - started) / len(inputs)


def dva_run(model: Path, inputs: list[Path], out: Path, overrides: dict[str, Any]) -> float:
    """Seconds per counterfactual of ``dva run`` end to end, after loading (and a warm-up batch)."""
    from dva.core.plugins import load_catalogue
    from dva.core.registry import load_entries, resolve
    from dva.core.run import RunEvents, run

    catalogue = load_catalogue(entry_points=False)
    recipe = resolve(load_entries(), catalogue, "default", {"model": str(model), **overrides})
    warm = inputs[: overrides.get("batch_size", 1)]
    run(recipe, [str(p) for p in warm], out / "warm-up", catalogue)  # compiles, fills caches
    times: dict[str, float] = {}

    class Clock(RunEvents):
        def loaded(self, runtime: Any) -> None:
            times.setdefault("loaded", time.perf_counter())

    run(recipe, [str(p) for p in inputs], out / "timed", catalogue, events=Clock())
    synchronize()
    return (time.perf_counter() - times["loaded"]) / len(inputs)


def peak_tflops(name: str, given: float | None) -> float | None:
    if given:
        return given
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny components on the CPU (smoke run)")
    parser.add_argument("--images", type=int, help="counterfactuals per measurement (default 32; --tiny 4)")
    parser.add_argument("--batch-size", type=int, default=8, help="dva's batch size (default 8)")
    parser.add_argument("--compile", action="store_true", help="also torch.compile the UNet in dva's run")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak (default: known from its name)")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    args = parser.parse_args(argv)
    quiet_libraries()
    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name() if cuda else "cpu"
    count = args.images or (4 if args.tiny else 32)
    settings = {"size": 64 if args.tiny else 512, "steps": 8 if args.tiny else 75, "strength": 0.85,
                "guidance_scale": 7.5}
    best = {"steps": settings["steps"], "strength": settings["strength"], "guidance_scale": settings["guidance_scale"],
            "scheduler": "pndm", "batch_size": args.batch_size, "device": str(device),
            "dtype": "bfloat16" if cuda else "float32", "channels_last": cuda, "compile": args.compile}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        model = make_model(work / "model", args.tiny)
        inputs = make_inputs(work / "inputs", count, settings["size"])
        results["baseline diffusers img2img, fp16, batch 1"] = baseline(model, inputs, settings, device)
        results["dva run, best settings"] = dva_run(model, inputs, work / "best", best)
        fast = {**best, "scheduler": "dpm-solver++", "steps": 20 if not args.tiny else 4}
        results["dva run, dpm-solver++ 20 steps"] = dva_run(model, inputs, work / "fast", fast)
    peak = peak_tflops(name, args.peak_tflops)
    base = results["baseline diffusers img2img, fp16, batch 1"]
    rows = []
    print(f"\n{name}; {count} counterfactuals per row; thesis settings (75 PNDM steps, strength 0.85, guidance 7.5, "
          f"{settings['size']} px){'; TINY components on the CPU: GPU numbers pending' if not cuda else ''}\n")
    print("| variant | s/counterfactual | images/s | vs baseline | fraction of floor |\n|---|---:|---:|---:|---:|")
    for variant, seconds in results.items():
        floor = (FLOOR_TFLOP / seconds / peak) if (peak and cuda and "dpm" not in variant) else None
        rows.append({"variant": variant, "seconds": seconds, "images_per_s": 1 / seconds, "vs_baseline": base / seconds,
                     "fraction_of_floor": floor})
        print(f"| {variant} | {seconds:.3f} | {1 / seconds:.2f} | {base / seconds:.2f}x | "
              f"{'n/a' if floor is None else f'{floor:.0%}'} |")
    if args.json:
        write_results(args.json, {"command": " ".join(sys.argv), "machine": machine(), "gpu": name, "settings": settings,
                                  "best": best, "peak_tflops": peak, "gpu_numbers_pending": not cuda, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
