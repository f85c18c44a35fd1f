"""``dva phantoms``: write a synthetic chest X-ray dataset with lung and lesion masks and located prompts."""

from __future__ import annotations

import click

from dva.datasets.phantoms import CLASSES


@click.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write the dataset to.")
@click.option("--n", "n", type=int, default=100, show_default=True, help="Phantoms per class.")
@click.option("--size", type=int, default=256, show_default=True, help="Image side in pixels (32 to 2048).")
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed; phantom i of a class depends only on the seed, the class and i.",
)
@click.option(
    "--classes",
    default=",".join(CLASSES),
    show_default=True,
    help="Comma-separated classes to make, from: " + ", ".join(CLASSES) + ".",
)
def phantoms(out: str, n: int, size: int, seed: int, classes: str) -> int:
    """Write synthetic chest X-rays (COVID-19 Radiography layout) with lung masks, lesion masks and prompts.

    OUT/<Class>/images, masks and lesions hold <Class>-<i>.png for i = 1..N; OUT/metadata.csv lists each
    image's class, prompt, zone and lesion fraction; OUT/phantoms.json records the settings. PA view:
    the patient's left is the image's right.
    """
    import csv
    import time
    from collections import Counter
    from pathlib import Path

    from rich.console import Console

    from dva.datasets.phantoms import make_phantoms
    from dva.evaluate.tables import Table, print_table

    started = time.perf_counter()
    root = make_phantoms(Path(out), n=n, size=size, seed=seed, classes=classes.split(","))
    elapsed = time.perf_counter() - started
    with open(root / "metadata.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    counts = Counter(row["class"] for row in rows)
    zones = Counter(row["zone"] for row in rows if row["zone"])
    lesion = Counter()
    for row in rows:
        lesion[row["class"]] += float(row["lesion_fraction"])
    rows = [[label, count, f"{100 * lesion[label] / count:.2f}% of the image", f"{label}/"]
            for label, count in counts.items()]
    console = Console()
    print_table(console, Table("phantoms", f"phantoms in {root}", ["class", "images", "mean lesion area", "folder"],
                               rows, notes=["Each folder holds images/, masks/ (lungs) and lesions/."]))
    if zones:
        console.print("Lung Opacity zones: " + ", ".join(f"{zone} {count}" for zone, count in sorted(zones.items())))
    console.print(
        f"Wrote {len(rows)} phantoms of {size}x{size} px (seed {seed}) in {elapsed:.1f} s; "
        f"metadata in {root / 'metadata.csv'}, settings in {root / 'phantoms.json'}.",
        highlight=False,
        soft_wrap=True,
    )
    return 0
