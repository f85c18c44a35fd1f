"""What the DICOM outputs of a DICOM input (``dva.core.dicom_outputs``) add to writing one image at a real scan size.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_dicom.py            # about a minute on 2 cores
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_dicom.py --quick    # smoke run

For a synthetic 12-bit DX of ``--size`` (default 2500x2048) with a rescale and a linear window, the median of
``--repeats`` of:

- the baseline: encoding the full-size counterfactual as PNG (``dva.core.io.png_bytes``), which every run writes;
- ``dicom_files``: all three DICOM outputs (counterfactual, map, overlay), encoded;
- inverting dva's reading of the input (``stored_values``) as a line (the linear rescale and window), against the
  same inversion by ``np.interp`` alone (as for a curved VOI transform).

Printed as seconds and as ratios to the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def median_seconds(work: Callable[[], object], repeats: int) -> float:
    """The median wall time of ``repeats`` calls of ``work`` (after one call to warm caches and imports)."""
    work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=(2500, 2048), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a 256x200 input, 2 repeats")
    args = parser.parse_args()
    size, repeats = ((256, 200), 2) if args.quick else (tuple(args.size), args.repeats)

    from dva.core import dicom_outputs, io
    from dva.testing.dicom import write_radiograph

    rng = np.random.default_rng(0)
    stored = rng.integers(0, 4096, size).astype(np.uint16)
    with tempfile.TemporaryDirectory() as folder:
        path = write_radiograph(Path(folder) / "dx.dcm", stored, slope=2.0, intercept=-1024.0, window=(3000.0, 6000.0))
        pixels = io.read_scan(path).pixels
        counterfactual = np.clip(pixels + 0.01 * rng.standard_normal(size).astype(np.float32), 0, 1)
        signed, overlay = pixels - counterfactual, np.zeros((*size, 3), np.uint8)
        dataset, raw = dicom_outputs.source_dataset(path)

        baseline = median_seconds(lambda: io.png_bytes(counterfactual), repeats)
        outputs = median_seconds(lambda: dicom_outputs.dicom_files(path, counterfactual, signed, 0.25, overlay),
                                 repeats)
        line = median_seconds(lambda: dicom_outputs.stored_values(dataset, raw, counterfactual), repeats)
        with mock.patch.object(dicom_outputs, "_interpolate", np.interp):
            searched = median_seconds(lambda: dicom_outputs.stored_values(dataset, raw, counterfactual), repeats)

    print(f"{size[0]}x{size[1]} 12-bit DX, median of {repeats}")
    print(f"{'':44s} {'seconds':>8s} {'x baseline':>10s}")
    for name, seconds in (("baseline: full-size counterfactual PNG", baseline),
                          ("dicom_files (3 DICOM outputs)", outputs),
                          ("stored_values, inverted as a line", line),
                          ("stored_values, inverted by np.interp", searched)):
        print(f"{name:44s} {seconds:8.3f} {seconds / baseline:10.2f}")


if __name__ == "__main__":
    main()
