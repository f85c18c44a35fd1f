"""Time per image of ``dva run`` against the bare diffusers img2img pipeline, same components, same run.

Both sides load the same tiny Stable Diffusion folder (``dva.testing.tiny.make_tiny_sd``, random
weights) and run the same settings (SDEdit strength, steps, guidance, PNDM scheduler, CPU float32,
seed 0) on the same input files:

* baseline: ``StableDiffusionImg2ImgPipeline.from_pretrained(folder)`` called per image with the prompt
  string, ``generator=torch.Generator().manual_seed(0)``, ``output_type="pil"``; the counterfactual is
  saved as one PNG (what a notebook user would do). Inputs are read with PIL and resized to the
  model resolution.
* dva: ``dva.core.run.run`` with a recipe resolved from the ``default`` registry entry plus overrides;
  it also writes maps, overlays, full-size outputs, per-image records, the manifest and the report.

Loading is timed apart from the per-image time. Inside dva, ``runtime.prior.generate`` and the output
steps are wrapped with timers so the overhead splits into sampling overhead and output writing.
Configurations are interleaved (their order rotates each repeat) so load from other processes hits
all of them alike; the table shows the best and the median of the repeats, and every ratio is against
the baseline measured in this same run.

    .venv/bin/python benchmarks/bench_run.py            # full run, a few minutes on 2 CPU cores
    .venv/bin/python benchmarks/bench_run.py --quick    # smoke run, seconds
    .venv/bin/python benchmarks/bench_run.py --json results.json
"""

from __future__ import annotations

import argparse
import contextlib
import io as io_module
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "dva" / "samples" / "cxr-nih-sample" / "images"  # bundled X-rays
PROMPT = "normal chest x ray"  # the chest-xray modality's healthy prompt, what dva's default recipe uses


# -- set-up ---------------------------------------------------------------------------------------


def write_results(path: Path, payload: dict[str, Any]) -> None:
    """Every repeat and setting of a benchmark run, as JSON (values JSON cannot hold as strings)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"results written to {path}")


def quiet_libraries() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore")


def make_inputs(folder: Path, count: int, side: int) -> tuple[list[Path], str]:
    """``count`` 8-bit grayscale PNGs of ``side`` px: real NIH chest X-rays (64 px) upscaled, else synthetic."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(SAMPLE_DIR.glob("*.png"))[:count] if SAMPLE_DIR.is_dir() else []
    paths = []
    for index in range(count):
        if index < len(sources):
            with Image.open(sources[index]) as image:
                picture = image.convert("L").resize((side, side), Image.BICUBIC)
        else:
            rng = np.random.default_rng(index)
            y, x = np.mgrid[0:side, 0:side] / side
            pixels = 0.5 + 0.3 * np.sin(6 * x + index) * np.cos(4 * y) + 0.05 * rng.standard_normal((side, side))
            picture = Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8), mode="L")
        path = folder / f"cxr_{index:03d}.png"
        picture.save(path)
        paths.append(path)
    kind = f"{len(sources)} real NIH chest X-rays (64 px, upscaled)" if sources else "synthetic"
    if 0 < len(sources) < count:
        kind += f" + {count - len(sources)} synthetic"
    return paths, f"{kind}, {side}x{side} 8-bit gray PNG"


def machine() -> dict[str, Any]:
    import diffusers
    import PIL
    import transformers

    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
    }


def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux ``/proc/stat``), else None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class ForeignLoad:
    """Share of the machine's CPUs that *other* processes used while a measurement ran."""

    def __enter__(self) -> ForeignLoad:
        self.busy, self.own, self.wall = busy_cpu_seconds(), time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        busy = busy_cpu_seconds()
        wall = time.perf_counter() - self.wall
        if busy is None or self.busy is None or wall <= 0:
            self.share = None
            return
        foreign = (busy - self.busy) - (time.process_time() - self.own)
        self.share = max(0.0, foreign / (wall * (os.cpu_count() or 1)))


class Quiet:
    """Before a sample, wait until other processes use under ``threshold`` of the CPUs, within a total budget."""

    def __init__(self, budget_s: float, threshold: float = 0.1) -> None:
        self.budget_s, self.threshold, self.waited_s = budget_s, threshold, 0.0

    def wait(self) -> None:
        while self.waited_s < self.budget_s:
            with ForeignLoad() as probe:
                time.sleep(0.5)
            self.waited_s += 0.5
            if probe.share is None or probe.share < self.threshold:
                return


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# -- timers ---------------------------------------------------------------------------------------


class Timers:
    """Accumulated seconds per label; ``wrap`` swaps a module attribute for a timed version."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def timed(self, label: str, function: Callable) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - started
                self.calls[label] += 1

        return wrapper

    @contextlib.contextmanager
    def wrap(self, targets: list[tuple[Any, str, str]]):
        originals = [(owner, name, getattr(owner, name)) for owner, name, _ in targets]
        try:
            for owner, name, label in targets:
                setattr(owner, name, self.timed(label, getattr(owner, name)))
            yield self
        finally:
            for owner, name, original in originals:
                setattr(owner, name, original)


# -- the two sides --------------------------------------------------------------------------------


def run_baseline(folder: Path, inputs: list[Path], out: Path, settings: dict[str, Any], batch: int) -> dict[str, Any]:
    """The bare diffusers pipeline as a notebook user would call it; returns timings."""
    from diffusers import StableDiffusionImg2ImgPipeline
    from PIL import Image

    started = time.perf_counter()
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    loaded = time.perf_counter()
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    out.mkdir(parents=True, exist_ok=True)
    generate = 0.0
    for first in range(0, len(inputs), batch):
        chunk = inputs[first : first + batch]
        images = [Image.open(p).convert("RGB").resize((resolution, resolution), Image.BICUBIC) for p in chunk]
        began = time.perf_counter()
        result = pipe(
            prompt=PROMPT if batch == 1 else [PROMPT] * len(chunk),
            image=images[0] if batch == 1 else images,
            strength=settings["strength"],
            num_inference_steps=settings["steps"],
            guidance_scale=settings["guidance_scale"],
            generator=torch.Generator().manual_seed(0) if batch == 1
            else [torch.Generator().manual_seed(0) for _ in chunk],
            output_type="pil",
        )
        generate += time.perf_counter() - began
        for path, picture in zip(chunk, result.images):
            picture.save(out / f"{path.stem}.png")
    finished = time.perf_counter()
    return {"load_s": loaded - started, "images_s": finished - loaded, "generate_s": generate, "parts": {}}


def run_dva(folder: Path, input_dir: Path, count: int, out: Path, settings: dict[str, Any], batch: int) -> dict[str, Any]:
    """``dva.core.run.run`` on the same inputs; returns timings with a breakdown of where time goes."""
    import dva.core.attribution
    import dva.core.io
    import dva.core.manifest
    import dva.core.report
    import dva.core.run.read
    import dva.core.run.write
    from dva.core.plugins import get_catalogue
    from dva.core.registry import load_entries, resolve
    from dva.core.run import RunEvents, run

    catalogue = get_catalogue()
    recipe = resolve(
        load_entries(), catalogue, "default",
        {"model": str(folder), "batch_size": batch, "device": "cpu", "dtype": "float32", "seed": 0, **settings},
    )
    timers = Timers()
    marks: dict[str, float] = {}

    class Clock(RunEvents):
        def loaded(self, runtime: Any) -> None:
            marks["loaded"] = time.perf_counter()
            runtime.prior.generate = timers.timed("generate", runtime.prior.generate)

    targets = [
        (dva.core.run.read, "expand", "read + fit inputs"),
        (dva.core.run.write, "write_outputs", "write_outputs (maps, 8 files)"),
        (dva.core.io, "png_bytes", "↳ of which PNG encoding"),
        (dva.core.attribution, "heatmap", "↳ of which colormaps"),
        (dva.core.manifest, "write_record", "record.json"),
        (dva.core.manifest, "write_manifest", "manifest.json"),
        (dva.core.report, "write_report", "report.html"),
        (dva.core.manifest, "versions", "package versions (header)"),
        (dva.core.io, "atomic_write_bytes", "(across all rows above) file writes incl. fsync"),
        (os, "fsync", "(across all rows above) fsync alone"),
    ]
    with timers.wrap(targets):
        started = time.perf_counter()
        result = run(recipe, [str(input_dir)], out, catalogue, events=Clock())
        finished = time.perf_counter()
    if result.count("done") != count:
        statuses = {job.key: (job.status, job.error) for job in result.jobs}
        raise RuntimeError(f"dva run did not generate all {count} images: {statuses}")
    measured = {label: timers.seconds.get(label, 0.0) for _, _, label in targets}
    across = {k: v for k, v in measured.items() if k.startswith("(across")}
    parts = {k: v for k, v in measured.items() if k not in across}
    accounted = timers.seconds.get("generate", 0.0) + sum(v for k, v in parts.items() if not k.startswith("↳"))
    parts["other (prompt embedding, input scan, batching)"] = (finished - marks["loaded"]) - accounted
    parts.update(across)
    return {
        "load_s": marks["loaded"] - started,
        "images_s": finished - marks["loaded"],
        "generate_s": timers.seconds.get("generate", 0.0),
        "parts": parts,
        "manifest_writes": timers.calls.get("manifest.json", 0),
    }


# -- checks ---------------------------------------------------------------------------------------


def max_png_difference(a: Path, b: Path) -> int:
    from PIL import Image

    with Image.open(a) as first, Image.open(b) as second:
        return int(np.abs(np.asarray(first, dtype=np.int16) - np.asarray(second, dtype=np.int16)).max())


def manifest_scaling(sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    """Cost of one ``write_manifest`` call with n image entries (dva rewrites it at most every 15 s, and at the end)."""
    from dva.core.manifest import write_manifest

    entry = {
        "input": "/data/scans/00000000_000.png", "output": "00000000_000", "status": "done", "error": None,
        "sha256": "0" * 64, "original_size": [1024, 1024], "padding": {"top": 0, "bottom": 0, "left": 0, "right": 0},
        "mask": None, "seconds": 1.234,
    }
    header = {"tool": "dva run", "recipe": {"steps": 75}}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            images = [dict(entry, output=f"{i:08d}") for i in range(n)]
            times = []
            for _ in range(3):
                began = time.perf_counter()
                write_manifest(Path(tmp), header, images)
                times.append(time.perf_counter() - began)
            one = min(times)
            rows.append({
                "images": n, "one_write_s": one,
                # batch size 1: a write after each image with 1..n entries, about n/2 entries on average
                "whole_run_batch1_s": one * (n + 1) / 2,
            })
    return rows


def paired_sampling(folder: Path, image: Path, settings: dict[str, Any], pairs: int) -> dict[str, Any]:
    """Sampling alone, alternating calls: dva's ``prior.generate`` vs ``pipe(prompt, image)`` on one image.

    Run-level samples are several seconds apart and drift with the machine; alternating single calls
    in one process is the least noisy way to see whether dva's sampling path itself costs anything.
    """
    from diffusers import StableDiffusionImg2ImgPipeline
    from PIL import Image

    from dva.core.contracts import GenerateRequest
    from dva.core.plugins import get_catalogue
    from dva.core.registry import load_entries, resolve
    from dva.core.run.read import expand
    from dva.core.runtime import assemble

    catalogue = get_catalogue()
    recipe = resolve(load_entries(), catalogue, "default",
                     {"model": str(folder), "device": "cpu", "dtype": "float32", "seed": 0, **settings})
    runtime = assemble(recipe, catalogue)
    positive, negative = runtime.prompt_embeddings()
    modality = catalogue.get("modality", recipe.modality)
    _, (job,) = expand(image, image.stem, modality, recipe.modality_options, runtime.resolution, None)
    tensor = torch.from_numpy(job.model_image)[None, None].repeat(1, 3, 1, 1)
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    picture = Image.open(image).convert("RGB").resize((runtime.resolution,) * 2, Image.BICUBIC)

    def ours() -> Any:
        return runtime.prior.generate(GenerateRequest(tensor, positive, negative, [torch.Generator().manual_seed(0)],
                                                      settings["steps"], settings["guidance_scale"]))

    def theirs() -> Any:
        return pipe(PROMPT, image=picture, strength=settings["strength"], num_inference_steps=settings["steps"],
                    guidance_scale=settings["guidance_scale"], generator=torch.Generator().manual_seed(0)).images[0]

    ours(), theirs()
    times: dict[str, list[float]] = {"dva prior.generate": [], "diffusers pipe()": []}
    for index in range(2 * pairs):
        name, call = [("dva prior.generate", ours), ("diffusers pipe()", theirs)][(index + index // 2) % 2]
        began = time.perf_counter()
        call()
        times[name].append(time.perf_counter() - began)
    stats = {name: {"best": min(v), "median": statistics.median(v)} for name, v in times.items()}
    ratio = {k: stats["dva prior.generate"][k] / stats["diffusers pipe()"][k] for k in ("best", "median")}
    return {"pairs": pairs, "seconds": stats, "ratio": ratio, "samples": times}


def output_writing_at_scale(model_side: int, original: tuple[int, int], repeats: int) -> dict[str, Any]:
    """Seconds for dva's ``write_outputs`` of one image at a real model size and a real scan size (no model)."""
    import dva.core.attribution
    import dva.core.io
    from dva.core.run import Generated, ImageJob
    from dva.core.run.write import write_outputs

    rng = np.random.default_rng(0)
    height, width = original
    side = max(height, width)
    y, x = np.mgrid[0:model_side, 0:model_side] / model_side
    model_image = (0.5 + 0.3 * np.sin(7 * x) * np.cos(5 * y) + 0.02 * rng.standard_normal(x.shape)).astype(np.float32)
    counterfactual = np.clip(model_image[..., None] + 0.05 * rng.standard_normal((model_side, model_side, 3)), 0, 1)
    top, left = (side - height) // 2, (side - width) // 2
    padding = dva.core.io.Padding(top, side - height - top, left, side - width - left)
    times, parts = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(repeats):
            job = ImageJob(Path("scan.png"), "scan", original_size=original, padding=padding, model_image=model_image)
            timers = Timers()
            with timers.wrap([(dva.core.io, "png_bytes", "PNG encoding"), (dva.core.io, "to_original", "resize to original"),
                              (dva.core.attribution, "heatmap", "colormaps"),
                              (dva.core.io, "atomic_write_bytes", "file writes (incl. fsync)")]):
                began = time.perf_counter()
                write_outputs(Path(tmp) / f"r{repeat}", job, Generated(counterfactual.astype(np.float32)))
                times.append(time.perf_counter() - began)
            parts.append(dict(timers.seconds))
            size = sum(p.stat().st_size for p in (Path(tmp) / f"r{repeat}").rglob("*") if p.is_file())
        # What if: the same PNGs encoded with zlib level 1 instead of Pillow's default 6 (pixels identical).
        from PIL import Image

        level1_s, level1_bytes = 0.0, 0
        for path in sorted((Path(tmp) / "r0").rglob("*.png")):
            with Image.open(path) as image:
                image.load()
                buffer = io_module.BytesIO()
                began = time.perf_counter()
                image.save(buffer, format="PNG", compress_level=1)
                level1_s += time.perf_counter() - began
                level1_bytes += len(buffer.getvalue())
        png_bytes_default = sum(p.stat().st_size for p in (Path(tmp) / "r0").rglob("*.png"))
        # report.html's share: one row (four thumbnails re-read from the PNGs just written).
        from dva.core.report import write_report

        began = time.perf_counter()
        write_report(Path(tmp), {"recipe": {}}, [{"output": "r0", "status": "done"}])
        report_s = time.perf_counter() - began
    best = int(np.argmin(times))
    return {"model_px": model_side, "original_hw": list(original), "seconds": times[best],
            "parts_s": parts[best], "bytes": size, "report_row_s": report_s,
            "what_if_png_level1": {"encode_s": level1_s, "png_bytes": level1_bytes, "png_bytes_level6": png_bytes_default}}


# -- the benchmark --------------------------------------------------------------------------------


def bench_size(
    root: Path, sample_size: int, count: int, settings: dict[str, Any], batches: tuple[int, ...], repeats: int,
    quiet: Quiet,
    pairs: int = 6,
) -> dict[str, Any]:
    from dva.testing.tiny import make_tiny_sd

    folder = make_tiny_sd(root / f"tiny-sd-{sample_size}", sample_size=sample_size)
    inputs_side = 128
    input_dir = root / "inputs"
    if not input_dir.exists():
        make_inputs(input_dir, count, inputs_side)
    inputs = sorted(input_dir.glob("*.png"))

    def baseline(batch: int, files: list[Path], out: Path) -> dict[str, Any]:
        return run_baseline(folder, files, out, settings, batch)

    def ours(batch: int, files: list[Path], out: Path) -> dict[str, Any]:
        return run_dva(folder, files[0].parent, len(files), out, settings, batch)

    configs = [(f"{label}, batch {b}", function, b) for b in batches for label, function in
               (("diffusers", baseline), ("dva run", ours))]

    # Warm-up, not timed: imports (matplotlib, cv2), first-call caches and oneDNN kernels for each
    # batch shape; every configuration runs once (with few steps) on as many images as its batch holds.
    warm_settings = {**settings, "steps": min(settings["steps"], 4)}

    def warm_baseline(batch: int, files: list[Path], out: Path) -> dict[str, Any]:
        return run_baseline(folder, files, out, warm_settings, batch)

    def warm_ours(batch: int, files: list[Path], out: Path) -> dict[str, Any]:
        return run_dva(folder, files[0].parent, len(files), out, warm_settings, batch)

    warm_functions = {baseline: warm_baseline, ours: warm_ours}
    for name, function, batch in configs:
        warm = root / f"warm-{sample_size}-{batch}"
        if not (warm / "input").exists():
            (warm / "input").mkdir(parents=True)
            for path in inputs[:batch]:
                shutil.copy(path, warm / "input" / path.name)
        warm_functions[function](batch, sorted((warm / "input").glob("*.png")), warm / name.replace(", ", "-").replace(" ", ""))

    samples: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in configs}
    outs: dict[str, Path] = {}
    for repeat in range(repeats):
        shift = repeat % len(configs)
        for name, function, batch in configs[shift:] + configs[:shift]:
            out = root / f"out-{sample_size}-{repeat}-{name.replace(', ', '-').replace(' ', '')}"
            quiet.wait()
            with ForeignLoad() as foreign:
                sample = function(batch, inputs, out)
            sample["foreign_cpu_share"] = foreign.share
            samples[name].append(sample)
            print(f"  [{sample_size * 2} px] repeat {repeat + 1}/{repeats} {name}: "
                  f"{sample['images_s'] / count:.3f} s/image"
                  + (f" (other processes used {100 * foreign.share:.0f}% of the CPUs)" if (foreign.share or 0) >= 0.01 else ""),
                  flush=True)
            if repeat == 0:
                outs[name] = out
            else:
                shutil.rmtree(out, ignore_errors=True)

    quiet.wait()
    paired = paired_sampling(folder, inputs[0], settings, pairs)
    print(f"  [{sample_size * 2} px] sampling only, {pairs} alternating pairs: dva/diffusers = "
          f"{paired['ratio']['best']:.3f} (best), {paired['ratio']['median']:.3f} (median)", flush=True)

    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet_config = UNet2DConditionModel.load_config(folder, subfolder="unet")
    vae_config = AutoencoderKL.load_config(folder, subfolder="vae")
    resolution = int(unet_config["sample_size"]) * 2 ** (len(vae_config["block_out_channels"]) - 1)

    rows = []
    for name, _, _ in configs:
        runs = samples[name]
        best = min(runs, key=lambda r: r["images_s"])  # the least disturbed repeat, used as a whole
        rows.append({
            "config": name,
            "s_per_image": {"best": best["images_s"] / count,
                            "median": statistics.median(r["images_s"] for r in runs) / count},
            "sampling_s_per_image": {"best": best["generate_s"] / count,
                                     "median": statistics.median(r["generate_s"] for r in runs) / count},
            "breakdown_s_per_image": {k: v / count for k, v in best["parts"].items()},
            "load_s_median": statistics.median(r["load_s"] for r in runs),
            "foreign_cpu_share_max": max((r["foreign_cpu_share"] or 0.0) for r in runs),
            "samples": runs,
        })
    base = rows[0]["s_per_image"]
    for row in rows:
        row["images_per_s"] = 1.0 / row["s_per_image"]["best"]
        row["ratio_vs_first_diffusers"] = {k: row["s_per_image"][k] / base[k] for k in ("best", "median")}

    # Checks: the two sides do the same work (identical counterfactual where no resize is involved),
    # and dva's counterfactual does not depend on the batch size.
    checks: dict[str, Any] = {}
    dva1 = outs.get(f"dva run, batch {batches[0]}")
    base1 = outs.get(f"diffusers, batch {batches[0]}")
    if dva1 and base1 and resolution == inputs_side:
        checks["max_abs_diff_dva_vs_diffusers_8bit"] = max(
            max_png_difference(dva1 / p.stem / "counterfactual.png", base1 / f"{p.stem}.png") for p in inputs
        )
    for batch in batches[1:]:
        other = outs.get(f"dva run, batch {batch}")
        if dva1 and other:
            checks[f"max_abs_diff_dva_batch{batches[0]}_vs_batch{batch}_8bit"] = max(
                max_png_difference(dva1 / p.stem / "counterfactual.png", other / p.stem / "counterfactual.png")
                for p in inputs
            )
    if dva1:
        checks["dva_files_per_image"] = len([p for p in (dva1 / inputs[0].stem).rglob("*") if p.is_file()])
        checks["dva_bytes_per_image"] = sum(p.stat().st_size for p in (dva1 / inputs[0].stem).rglob("*") if p.is_file())
    return {"sample_size": sample_size, "resolution": resolution, "rows": rows, "checks": checks,
            "paired_sampling": paired}


def split_overhead(result: dict[str, Any], batch: int) -> dict[str, float]:
    """dva minus diffusers per image (best repeats): in sampling, and in everything else (reading, writing)."""
    rows = {r["config"]: r for r in result["rows"]}
    base, ours = rows[f"diffusers, batch {batch}"], rows[f"dva run, batch {batch}"]
    split = {}
    for stat in ("best", "median"):
        b_all, d_all = base["s_per_image"][stat], ours["s_per_image"][stat]
        b_gen, d_gen = base["sampling_s_per_image"][stat], ours["sampling_s_per_image"][stat]
        split[stat] = {
            "diffusers_s": b_all,
            "dva_s": d_all,
            "ratio": d_all / b_all,
            "overhead_s": d_all - b_all,
            "sampling_overhead_s": d_gen - b_gen,
            "other_overhead_s": (d_all - d_gen) - (b_all - b_gen),
            "diffusers_other_s": b_all - b_gen,
            "dva_other_s": d_all - d_gen,
        }
    return split


def print_report(results: list[dict[str, Any]], settings: dict[str, Any], count: int, repeats: int, info: dict) -> None:
    print()
    print(f"machine: {info['cpu_model']}, {info['cpu_count']} CPUs, no GPU used, torch {info['torch']} "
          f"({info['torch_threads']} threads), diffusers {info['diffusers']}")
    print(f"settings: {settings}, {count} images; best and median of {repeats} repeats; load time not included")
    for result in results:
        print()
        print(f"### {result['resolution']} px model (tiny SD, sample_size {result['sample_size']})")
        print()
        first = result["rows"][0]["config"].rsplit(" ", 1)[1]
        print(f"| configuration | s/image (best) | s/image (median) | images/s (best) | vs diffusers b{first} (best) "
              f"| vs diffusers b{first} (median) | sampling s/image (best) | load s | other processes' CPU (max) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in result["rows"]:
            e2e, ratio = row["s_per_image"], row["ratio_vs_first_diffusers"]
            print(f"| {row['config']} | {e2e['best']:.3f} | {e2e['median']:.3f} | {row['images_per_s']:.2f} | "
                  f"{ratio['best']:.3f} | {ratio['median']:.3f} | {row['sampling_s_per_image']['best']:.3f} | "
                  f"{row['load_s_median']:.2f} | {100 * row['foreign_cpu_share_max']:.0f}% |")
        print()
        print("| dva vs diffusers, same batch | ratio (best) | ratio (median) | overhead ms/image (best) "
              "| of which sampling | of which reading/writing | diffusers read+save ms | dva read+write ms |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for key, split in result["overhead"].items():
            best, median = split["best"], split["median"]
            print(f"| {key} | {best['ratio']:.3f} | {median['ratio']:.3f} | {1000 * best['overhead_s']:+.1f} | "
                  f"{1000 * best['sampling_overhead_s']:+.1f} | {1000 * best['other_overhead_s']:+.1f} | "
                  f"{1000 * best['diffusers_other_s']:.1f} | {1000 * best['dva_other_s']:.1f} |")
        print()
        dva_rows = [row for row in result["rows"] if row["config"].startswith("dva")]
        labels = ["sampling (prior.generate)"] + list(dva_rows[0]["breakdown_s_per_image"])
        print("| dva, where time goes (ms/image, best repeat) | " + " | ".join(r["config"] for r in dva_rows) + " |")
        print("|---|" + "---:|" * len(dva_rows))
        for label in labels:
            values = [row["sampling_s_per_image"]["best"] if label.startswith("sampling")
                      else row["breakdown_s_per_image"].get(label, 0.0) for row in dva_rows]
            print(f"| {label} | " + " | ".join(f"{1000 * v:.1f}" for v in values) + " |")
        print()
        paired = result["paired_sampling"]
        seconds = paired["seconds"]
        print(f"sampling only, {paired['pairs']} alternating pairs of single calls: dva prior.generate "
              f"{seconds['dva prior.generate']['best']:.3f} s (median {seconds['dva prior.generate']['median']:.3f}), "
              f"diffusers pipe() {seconds['diffusers pipe()']['best']:.3f} s (median {seconds['diffusers pipe()']['median']:.3f}); "
              f"ratio {paired['ratio']['best']:.3f} (best), {paired['ratio']['median']:.3f} (median)")
        print(f"checks: {result['checks']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: one small model, 2 images, 1 repeat")
    parser.add_argument("--json", type=Path, help="write all results (with every repeat) to this file")
    parser.add_argument("--images", type=int, help="number of input images (default 8; --quick 2)")
    parser.add_argument("--repeats", type=int, help="timed repeats per configuration (default 3; --quick 1)")
    parser.add_argument("--steps", type=int, help="scheduler steps (default 16: 8 denoising steps at strength 0.55; --quick 4)")
    parser.add_argument("--strength", type=float, default=0.55, help="SDEdit strength (default 0.55, the registry's)")
    parser.add_argument("--guidance-scale", type=float, default=4.0, help="guidance scale (default 4.0, the registry's)")
    parser.add_argument("--sample-sizes", type=int, nargs="+", help="tiny UNet sample sizes (default 32 64 -> 64, 128 px)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="batch sizes (default 1 8; --quick 1 2)")
    parser.add_argument("--pairs", type=int, help="alternating sampling-only call pairs (default 6; --quick 2)")
    parser.add_argument("--max-wait", type=float, default=None,
                        help="seconds in all that the benchmark may wait, before timed samples, for other processes "
                             "to leave the CPUs idle (default 60; --quick 0)")
    args = parser.parse_args(argv)
    if args.max_wait is None:
        args.max_wait = 0.0 if args.quick else 60.0

    quiet_libraries()
    count = args.images or (2 if args.quick else 8)
    repeats = args.repeats or (1 if args.quick else 3)
    steps = args.steps or (4 if args.quick else 16)
    sample_sizes = tuple(args.sample_sizes or ((32,) if args.quick else (32, 64)))
    pairs = args.pairs or (2 if args.quick else 6)
    batches = tuple(args.batch_sizes or ((1, 2) if args.quick else (1, 8)))
    settings = {"steps": steps, "strength": args.strength, "guidance_scale": args.guidance_scale, "scheduler": "pndm"}
    info = machine()
    load_before = load_average()
    began = time.perf_counter()
    quiet = Quiet(args.max_wait)
    results = []
    with tempfile.TemporaryDirectory(prefix="dva-bench-") as tmp:
        root = Path(tmp)
        _, inputs_kind = make_inputs(root / "inputs", count, 128)
        for sample_size in sample_sizes:
            print(f"tiny SD sample_size {sample_size} ({sample_size * 2} px), {count} images, {repeats} repeats", flush=True)
            result = bench_size(root, sample_size, count, settings, batches, repeats, quiet, pairs)
            result["overhead"] = {f"batch {b}": split_overhead(result, b) for b in batches}
            results.append(result)
    scaling = manifest_scaling((16, 1000) if args.quick else (16, 1000, 10000))
    at_scale = [output_writing_at_scale(512, (1024, 1024), 1)] if args.quick else [
        output_writing_at_scale(512, (1024, 1024), 2), output_writing_at_scale(512, (2500, 2048), 1)]
    elapsed = time.perf_counter() - began
    print_report(results, settings, count, repeats, info)
    print()
    print("manifest.json rewrite cost (dva writes it after every batch; a run at batch 1 pays about n/2 writes of n entries):")
    for row in scaling:
        print(f"  {row['images']:>6} images: one write {1000 * row['one_write_s']:.1f} ms, "
              f"whole run at batch 1 ~ {row['whole_run_batch1_s']:.1f} s")
    print()
    print("dva's write_outputs for one image at real sizes (SD v1 512 px model image, no model involved; best of repeats):")
    for row in at_scale:
        parts = ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in row["parts_s"].items())
        what_if = row["what_if_png_level1"]
        print(f"  original {row['original_hw'][0]}x{row['original_hw'][1]}: {1000 * row['seconds']:.0f} ms "
              f"({parts}; {row['bytes'] / 1e6:.1f} MB written); its report.html row {1000 * row['report_row_s']:.0f} ms; the same PNGs at zlib level 1 would encode in "
              f"{1000 * what_if['encode_s']:.0f} ms, {what_if['png_bytes'] / what_if['png_bytes_level6']:.2f}x the bytes")
    load_after = load_average()
    print(f"\nload average before {load_before}, after {load_after}; benchmark took {elapsed:.0f} s")
    busiest = max((row["foreign_cpu_share_max"] for result in results for row in result["rows"]), default=0.0)
    if busiest > 0.1:
        print(f"WARNING: other processes used up to {100 * busiest:.0f}% of the CPUs during some samples; "
              "the medians are noisier than usual (the best-of column is the more robust one).")
    if args.json:
        payload = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": info,
            "settings": {**settings, "images": count, "repeats": repeats, "batch_sizes": list(batches),
                         "inputs": inputs_kind, "prompt": PROMPT, "device": "cpu", "dtype": "float32"},
            "load_average_before": load_before,
            "load_average_after": load_after,
            "elapsed_s": elapsed,
            "results": results,
            "manifest_scaling": scaling,
            "write_outputs_at_real_sizes": at_scale,
        }
        write_results(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
