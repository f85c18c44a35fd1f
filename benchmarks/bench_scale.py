"""Streaming and sharding on the CPU with tiny components: peak memory against the number of images, and
images/s with one and two processes, each ``dva run`` in its own subprocess.

    .venv/bin/python benchmarks/bench_scale.py                  # 50 and 400 images; 1 and 2 processes on 32
    .venv/bin/python benchmarks/bench_scale.py --quick          # smoke run
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_run import load_average, machine, write_results  # noqa: E402


def make_inputs(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (96, 96), dtype=np.uint8)).save(folder / f"scan-{index:04d}.png")
    return folder


def dva_run(model: Path, inputs: Path, out: Path, processes: int = 1) -> dict[str, float]:
    """Wall time and the peak resident memory of the largest process, for one ``dva run``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "dva", "run", str(inputs), "--model", str(model), "--steps", "4",
                    "--batch-size", "4", "--device", "cpu", "--num-processes", str(processes), "--out", str(out)],
                   env=env, check=True, capture_output=True)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"seconds": seconds, "peak_rss_mib": max(peak, before) / 1024}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 and 16 images; 8 for processes")
    parser.add_argument("--sizes", type=int, nargs="+", help="numbers of images for the memory rows (default 50 400)")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    args = parser.parse_args(argv)
    from dva.testing.tiny import make_tiny_dva_model

    sizes = sorted(args.sizes) if args.sizes else ((8, 16) if args.quick else (50, 400))
    shared = 8 if args.quick else 32
    load_before = load_average()
    results: dict[str, list[dict]] = {"memory": [], "processes": []}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        model = make_tiny_dva_model(work / "model")
        for count in sizes:  # smallest first: ru_maxrss of children only grows
            row = dva_run(model, make_inputs(work / f"in-{count}", count), work / f"out-{count}")
            results["memory"].append({"images": count, **row})
        inputs = make_inputs(work / "in-shared", shared)
        for processes in (1, 2):
            row = dva_run(model, inputs, work / f"out-p{processes}", processes)
            results["processes"].append({"processes": processes, "images": shared,
                                         "images_per_s": shared / row["seconds"], **row})
    print("\n| images | wall s | peak RSS of the largest process (MiB) |\n|---:|---:|---:|")
    for row in results["memory"]:
        print(f"| {row['images']} | {row['seconds']:.1f} | {row['peak_rss_mib']:.0f} |")
    base = results["processes"][0]["images_per_s"]
    print("\n| processes | images | wall s (incl. start-up) | images/s | vs 1 process |\n|---:|---:|---:|---:|---:|")
    for row in results["processes"]:
        print(f"| {row['processes']} | {row['images']} | {row['seconds']:.1f} | {row['images_per_s']:.2f} | "
              f"{row['images_per_s'] / base:.2f}x |")
    print(f"\nload average before {load_before}, after {load_average()}")
    if args.json:
        write_results(args.json, {"command": " ".join(sys.argv), "machine": machine(), **results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
