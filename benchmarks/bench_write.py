"""Writing at real scan sizes: what a 2500x2048 input adds to ``dva run`` over a 64x64 one, and whether a run on
2500x2048 inputs keeps up with a simulated accelerator.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_write.py            # about 2 minutes on 2 idle cores
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_write.py --quick    # smoke run

(a) **Added cost per image**: ``dva run`` with the bundled tiny model (``--entry tiny-phantom --steps 12``: DDIM
    inversion, maps against the reconstruction) on N 64x64 inputs (the baseline) and on N 2500x2048 inputs, same
    settings, alternating, each configuration ``--repeats`` times; seconds per image from the run's ``started``
    event (the model loaded) to the end of the run (report and manifest written). Goal: at most 0.5 s per image.
(b) **A simulated accelerator**: the test prior ``sim-accelerator`` (``tests/plugins/dva-sim-accelerator``) returns
    its input after sleeping ``--delay`` seconds per image, leaving the CPU free as a GPU would; ``dva run`` gets
    the thread counts it uses on an accelerator (2 readers, 2 writers). Images per second on 2500x2048 inputs
    against the simulated rate (1 / delay), and against the same run on 64x64 inputs (the baseline: what the
    pipeline sustains when writing costs nothing), from the model loaded to the run's end; and the share of
    time the accelerator was busy between its first call's start and its last call's end. Goal: at least 90% of
    the simulated rate. The baseline of the threads' effect: the 2500x2048 run with reading and writing inline.
(c) ``write_outputs`` alone for one image at an SD v1-sized 512 px model size (no model), ``--fullsize all``
    (every image at full size) against the default (the counterfactual only).
(d) CPU time of the parts of writing a 2500x2048 image, and of the alternatives measured.

Inputs are synthetic (a smooth image plus 2% noise, upscaled, 8-bit gray PNG); their content does not change the
timing much. The load average before and after is printed: the machine should be otherwise idle. Beside wall
time, the process's CPU time (all threads) per image, which other processes on the machine change far less.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_run import load_average, machine, write_results  # noqa: E402

SIM_PLUGIN = ROOT / "tests" / "plugins" / "dva-sim-accelerator"
SMALL, LARGE = (64, 64), (2500, 2048)
ACCELERATOR_THREADS = 2  # what dva run uses for readers and writers on CUDA or MPS


def make_inputs(folder: Path, count: int, size: tuple[int, int]) -> Path:
    """``count`` 8-bit gray PNGs of ``size`` (height, width): a smooth pattern upscaled, plus 2% noise."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    height, width = size
    y, x = np.mgrid[0:64, 0:64] / 64
    for index in range(count):
        base = (0.5 + 0.3 * np.sin(7 * x + index) * np.cos(5 * y)).astype(np.float32)
        image = cv2.resize(base, (width, height), interpolation=cv2.INTER_CUBIC)
        image = np.clip(image + 0.02 * rng.standard_normal((height, width)), 0, 1)
        Image.fromarray((image * 255).astype(np.uint8)).save(folder / f"scan-{index:03d}.png")
    return folder


def catalogue_with_simulated_accelerator() -> Any:
    """dva's built-in plugins and the test plugin's ``sim-accelerator`` prior (imported from its folder)."""
    sys.path.insert(0, str(SIM_PLUGIN))
    import dva_sim_accelerator

    from dva.core.plugins import load_catalogue

    return load_catalogue(entry_points=False, extra=(dva_sim_accelerator,))


def timed_run(catalogue: Any, entry: str, settings: dict[str, Any], inputs: Path, out: Path,
              threads: int | None = None) -> dict[str, Any]:
    """One ``dva run`` in this process; seconds per image from the model loaded to the run's end."""
    from dva.core.registry import load_entries, resolve
    from dva.core.run import RunEvents, run

    class Clock(RunEvents):
        started_at, cpu_at = 0.0, 0.0

        def started(self, total: int) -> None:
            self.started_at, self.cpu_at = time.perf_counter(), time.process_time()

    shutil.rmtree(out, ignore_errors=True)
    clock = Clock()
    recipe = resolve(load_entries(), catalogue, entry, settings)
    result = run(recipe, [str(inputs)], out, catalogue, events=clock, writer_threads=threads, reader_threads=threads)
    seconds, cpu = time.perf_counter() - clock.started_at, time.process_time() - clock.cpu_at
    done = result.count("done")
    if done != len(result.jobs):
        raise SystemExit(f"the run on {inputs} did not make every image: {[job.error for job in result.jobs]}")
    return {"images": done, "seconds": seconds, "s_per_image": seconds / done, "cpu_s_per_image": cpu / done}


def added_cost(catalogue: Any, work: Path, count: int, repeats: int) -> dict[str, Any]:
    """(a): s/image on 64x64 and on 2500x2048 inputs, alternating; best of the repeats."""
    settings = {"steps": 12, "device": "cpu"}
    inputs = {size: make_inputs(work / f"in-{size[0]}x{size[1]}", count, size) for size in (SMALL, LARGE)}
    times: dict[tuple[int, int], list[float]] = {SMALL: [], LARGE: []}
    cpu: dict[tuple[int, int], list[float]] = {SMALL: [], LARGE: []}
    for repeat in range(repeats):
        for size in (SMALL, LARGE) if repeat % 2 == 0 else (LARGE, SMALL):
            row = timed_run(catalogue, "tiny-phantom", settings, inputs[size], work / "out-a")
            times[size].append(row["s_per_image"])
            cpu[size].append(row["cpu_s_per_image"])
    small, large = min(times[SMALL]), min(times[LARGE])
    return {"images": count, "settings": "--entry tiny-phantom --steps 12 --device cpu", "small_s": small,
            "large_s": large, "added_s": large - small, "ratio": large / small,
            "small_cpu_s": min(cpu[SMALL]), "large_cpu_s": min(cpu[LARGE]),
            "added_cpu_s": min(cpu[LARGE]) - min(cpu[SMALL]),
            "samples": {f"{h}x{w}": values for (h, w), values in times.items()}}


def simulated_accelerator(catalogue: Any, work: Path, count: int, delay: float) -> dict[str, Any]:
    """(b): images/s on 64x64 and 2500x2048 inputs with the simulated accelerator."""
    import dva_sim_accelerator

    settings = {"prior": "sim-accelerator", "prior_options": {"delay": delay}, "device": "cpu"}
    rows = {}
    for size, threads, name in ((SMALL, ACCELERATOR_THREADS, "64x64"), (LARGE, ACCELERATOR_THREADS, "2500x2048"),
                                (LARGE, 0, "2500x2048, inline (no threads)")):
        inputs = work / f"sim-{size[0]}x{size[1]}"
        if not inputs.is_dir():
            make_inputs(inputs, count, size)
        dva_sim_accelerator.events.clear()
        row = timed_run(catalogue, "default", settings, inputs, work / "out-b", threads=threads)
        calls = dva_sim_accelerator.events
        busy = sum(end - start for _, start, end, _ in calls) / (calls[-1][2] - calls[0][1])
        rows[name] = {**row, "images_per_s": row["images"] / row["seconds"], "accelerator_busy": busy}
    rate = 1.0 / delay
    large, small = rows["2500x2048"], rows["64x64"]
    return {"delay_s": delay, "simulated_images_per_s": rate, "rows": rows,
            "large_of_simulated": large["images_per_s"] / rate, "small_of_simulated": small["images_per_s"] / rate,
            "large_of_small": large["images_per_s"] / small["images_per_s"]}


def write_outputs_alone(size: tuple[int, int], repeats: int, model_side: int = 512) -> dict[str, Any]:
    """(c): seconds of ``write_outputs`` for one image (no model), ``--fullsize all`` against the default."""
    from dva.core import io
    from dva.core.run import Generated, ImageJob
    from dva.core.run.write import write_outputs

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:model_side, 0:model_side] / model_side
    model_image = (0.5 + 0.3 * np.sin(7 * x) * np.cos(5 * y) + 0.02 * rng.standard_normal(x.shape)).astype(np.float32)
    counterfactual = np.clip(model_image[..., None] + 0.05 * rng.standard_normal((model_side, model_side, 3)), 0, 1)
    height, width = size
    side = max(size)
    top, left = (side - height) // 2, (side - width) // 2
    padding = io.Padding(top, side - height - top, left, side - width - left)
    times: dict[str, list[float]] = {"counterfactual": [], "all": []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(repeats):
            for fullsize in ("all", "counterfactual") if repeat % 2 else ("counterfactual", "all"):
                job = ImageJob(Path("scan.png"), "scan", original_size=size, padding=padding, model_image=model_image)
                began = time.perf_counter()
                write_outputs(Path(tmp) / f"{fullsize}-{repeat}", job, Generated(counterfactual.astype(np.float32)),
                              fullsize=fullsize)
                times[fullsize].append(time.perf_counter() - began)
    best = {name: min(values) for name, values in times.items()}
    return {"original_hw": list(size), "model_px": model_side, "default_s": best["counterfactual"],
            "all_s": best["all"], "ratio": best["counterfactual"] / best["all"]}


def cpu_ms(call: Any, repeats: int) -> float:
    """The least CPU time of ``repeats`` calls of ``call`` on this thread, in ms."""
    best = float("inf")
    for _ in range(repeats):
        began = time.thread_time()
        call()
        best = min(best, time.thread_time() - began)
    return 1000 * best


def parts(repeats: int) -> list[tuple[str, float]]:
    """(d): CPU ms of the parts of writing one 2500x2048 image from a 64 px model, and of the alternatives."""
    import cv2
    from matplotlib import colormaps
    from safetensors.numpy import save as save_tensors

    from dva.core import attribution, io

    rng = np.random.default_rng(0)
    gray = np.clip(cv2.resize(rng.uniform(0, 1, (64, 64)).astype(np.float32), LARGE[::-1]), 0, 1)
    signed = (gray - 0.5).astype(np.float32)
    level = io.to_uint8(gray)
    return [
        ("heatmap, matplotlib colormap on floats, to 8 bits", cpu_ms(
            lambda: io.to_uint8(colormaps["inferno"](np.clip(np.abs(signed) / 0.4, 0, 1))[..., :3]), repeats)),
        ("heatmap, lookup table (dva)", cpu_ms(lambda: attribution.heatmap_rgb8(signed, 0.4), repeats)),
        ("counterfactual PNG, RGB", cpu_ms(lambda: io.png_bytes(np.repeat(level[..., None], 3, axis=-1)), repeats)),
        ("counterfactual PNG, gray (dva: Pillow, zlib level 1)", cpu_ms(lambda: io.png_bytes(level), repeats)),
        ("counterfactual PNG, gray, OpenCV level 1", cpu_ms(
            lambda: cv2.imencode(".png", level, [cv2.IMWRITE_PNG_COMPRESSION, 1]), repeats)),
        ("counterfactual PNG, gray, OpenCV level 1 RLE", cpu_ms(lambda: cv2.imencode(".png", level, [
            cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]), repeats)),
        ("attribution.safetensors bytes (20 MB float map)", cpu_ms(
            lambda: save_tensors({"attribution_fullsize": signed}), repeats)),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 images, 1 repeat, smaller write rows")
    parser.add_argument("--images", type=int, default=6, help="images per run for (a) (default 6)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each size for (a) (default 2)")
    parser.add_argument("--delay", type=float, default=0.25, help="the simulated accelerator's seconds per image")
    parser.add_argument("--sim-images", type=int, default=32, help="images per run for (b) (default 32)")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.repeats, args.sim_images = 2, 1, 3
    load_before = load_average()
    catalogue = catalogue_with_simulated_accelerator()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        a = added_cost(catalogue, work, args.images, args.repeats)
        b = simulated_accelerator(catalogue, work, args.sim_images, args.delay)
    c = [write_outputs_alone(size, 1 if args.quick else 3) for size in ((1024, 1024), LARGE)]
    d = parts(1 if args.quick else 5)
    print(f"\n(a) dva run {a['settings']}, {a['images']} images per run, best of {args.repeats}:\n")
    print("| input | s/image | vs 64x64 | CPU s/image |\n|---|---:|---:|---:|")
    print(f"| 64x64 | {a['small_s']:.3f} | 1.00 | {a['small_cpu_s']:.3f} |")
    print(f"| 2500x2048 | {a['large_s']:.3f} | {a['ratio']:.2f} | {a['large_cpu_s']:.3f} |")
    print(f"\nadded by 2500x2048: {a['added_s']:.3f} s/image (goal: at most 0.5); CPU time added: "
          f"{a['added_cpu_s']:.3f} s/image")
    print(f"\n(b) simulated accelerator, {b['delay_s']} s/image ({b['simulated_images_per_s']:.2f} images/s), "
          f"{args.sim_images} images per run, {ACCELERATOR_THREADS} reader and writer threads:\n")
    print("| input | images/s | of the simulated rate | vs 64x64 | accelerator busy | CPU s/image |\n"
          "|---|---:|---:|---:|---:|---:|")
    for name, row in b["rows"].items():
        small = b["rows"]["64x64"]["images_per_s"]
        print(f"| {name} | {row['images_per_s']:.2f} | {row['images_per_s'] / b['simulated_images_per_s']:.0%} | "
              f"{row['images_per_s'] / small:.2f} | {row['accelerator_busy']:.0%} | {row['cpu_s_per_image']:.3f} |")
    print("\n(c) write_outputs alone, one 512 px model image (best of repeats):\n")
    print("| original scan | --fullsize all | --fullsize counterfactual (default) | ratio |\n|---|---:|---:|---:|")
    for row in c:
        height, width = row["original_hw"]
        print(f"| {height}x{width} | {row['all_s']:.2f} s | {row['default_s']:.2f} s | {row['ratio']:.2f} |")
    print("\n(d) parts of writing one 2500x2048 image, CPU ms (best of repeats):\n\n| part | CPU ms |\n|---|---:|")
    for name, ms in d:
        print(f"| {name} | {ms:.0f} |")
    print(f"\nload average before {load_before}, after {load_average()}")
    if args.json:
        write_results(args.json, {"command": " ".join(sys.argv), "machine": machine(), "added_cost": a,
                                  "simulated_accelerator": b, "write_outputs": c, "parts_cpu_ms": dict(d)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
