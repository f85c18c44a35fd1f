"""docs/images/evaluations.png: map quality (pixel AUPRC) against UNet evaluations per image.

Left, the sweep's seed: one line per family of settings (a prior, strength, guidance, reference and sampler,
over step counts), the main families in colour, the frontier dashed; right, the confirmation seed's settings.
The entry's setting, the former entry's and the thesis' are starred.
Run: .venv/bin/python docs/scripts/evaluations_plot.py build/evaluations-6174.json build/evaluations-1729.json
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_evaluations import BUDGET, QUALITY, frontier  # noqa: E402

from dva.core.io import atomic_write_bytes  # noqa: E402

THESIS_EVALUATIONS = 128


def raw_rows(path: Path) -> tuple[list[dict], int]:
    payload = json.loads(path.read_text())
    return [r for r in payload["rows"] if not r["calibrated"]], payload["settings"]["seed"]


HIGHLIGHTED = {  # family: colour; other families of three or more points are drawn as thin grey lines
    "ddim-inversion 0.3, guidance 4 vs reconstruction": "tab:red",
    "ddim-inversion 0.35, guidance 4 vs reconstruction": "tab:orange",
    "ddim-inversion 0.6, guidance 4 vs reconstruction": "tab:blue",
    "ddim-inversion 0.6, guidance 4": "tab:cyan",
    "ddim-inversion 0.6, guidance 1 vs reconstruction": "tab:purple",
    "sdedit 0.55, dpm-solver++ guidance 4": "tab:green",
    "sdedit 0.55, pndm guidance 4": "tab:olive",
}
MARKED = {  # setting: how it is labelled
    "ddim-inversion 0.35, 9 steps, guidance 4 vs reconstruction": "tiny-phantom entry (12)",
    "ddim-inversion 0.6, 50 steps, guidance 4 vs reconstruction": "former entry (120)",
    "sdedit 0.85, pndm 75 steps, guidance 4": "thesis' sampling (128)",
}


def panel(axes, rows: list[dict], seed: int, lines: bool) -> None:
    """One seed's settings: each family's curve over step counts (or points), the marked settings, the frontier."""
    families: dict[str, list[dict]] = {}
    for row in rows:
        families.setdefault(row["family"], []).append(row)
    for family, members in sorted(families.items()):
        members.sort(key=lambda r: r["evaluations"])
        x, y = [r["evaluations"] for r in members], [r[QUALITY] for r in members]
        if family in HIGHLIGHTED:
            axes.plot(x, y, "-" if lines else "", marker="o", markersize=4, linewidth=1.3, color=HIGHLIGHTED[family],
                      label=family)
        elif lines and len(members) >= 3:
            axes.plot(x, y, "-", marker=".", markersize=3, linewidth=0.7, color="0.65",
                      label="ddim-inversion, other strengths, guidance or reference; sdedit, other schedulers")
        else:
            axes.scatter(x, y, s=10, color="0.55", label="single settings (K samples, guidance, strength, reference)",
                         zorder=3)
    for row in rows:
        if row["setting"] in MARKED:
            axes.scatter([row["evaluations"]], [row[QUALITY]], s=110, marker="*", color="black", zorder=5)
            axes.annotate(MARKED[row["setting"]], (row["evaluations"], row[QUALITY]), fontsize=7,
                          xytext=(4, -11), textcoords="offset points")
    best = frontier(rows)
    axes.step([r["evaluations"] for r in best], [r[QUALITY] for r in best], "--", where="post", color="black",
              linewidth=0.8, label="frontier")
    axes.axvline(BUDGET, color="green", linewidth=0.8)
    axes.axvline(THESIS_EVALUATIONS, color="0.3", linewidth=0.8)
    along = axes.get_xaxis_transform()  # x in data, y in axes fractions
    axes.text(BUDGET * 1.05, 0.02, f"{BUDGET} = 1/8 of 128", transform=along, fontsize=7, color="green")
    axes.set_xscale("log", base=2)
    ticks = [2, 4, 8, 16, 32, 64, 128]
    axes.set_xticks(ticks, [str(t) for t in ticks])
    axes.set_xlim(2, 600)  # room for the labels of the settings at 120-128
    axes.set_xlabel("UNet evaluations per image")
    axes.set_title(f"seed {seed}: " + ("the sweep" if lines else "the confirmation"), fontsize=9)
    axes.grid(alpha=0.3)


def draw(sweep: Path, confirm: Path | None, out: Path) -> None:
    panels = [raw_rows(sweep)] + ([raw_rows(confirm)] if confirm is not None else [])
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5.6), dpi=100, squeeze=False)
    for index, (rows, seed) in enumerate(panels):
        panel(axes[0][index], rows, seed, lines=index == 0)
    axes[0][0].set_ylabel("pixel AUPRC, Lung Opacity phantoms")
    handles: dict[str, object] = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    figure.legend(handles.values(), handles.keys(), loc="lower center", ncol=2, fontsize=7, frameon=False)
    figure.suptitle("Map quality against UNet evaluations per image (bundled tiny model, 10 + 10 phantoms per seed)",
                    fontsize=10)
    figure.tight_layout(rect=(0, 0.2, 1, 1))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(out, buffer.getvalue())
    print(f"written {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="bench_evaluations.py --plan sweep's JSON")
    parser.add_argument("confirm", type=Path, nargs="?", help="bench_evaluations.py --plan confirm's JSON")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "evaluations.png")
    args = parser.parse_args(argv)
    draw(args.sweep, args.confirm, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
