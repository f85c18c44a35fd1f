"""``dva plugins``: every registered component by kind, who provides it, and broken plugins."""

from __future__ import annotations

import json

import click

from dva.core.errors import PluginError

PLURALS = {"modality": "modalities", "dataset": "dataset layouts"}


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--strict", is_flag=True, help="Exit with an error if any plugin is broken (for plugin CI).")
def plugins(as_json: bool, strict: bool) -> int:
    """List registered encoders, priors, schedulers, fine-tuners, metrics and modalities."""
    from dva.core.plugins import get_catalogue

    catalogue = get_catalogue()
    data = {
        "components": {
            kind: [
                {
                    "name": name,
                    "description": item.spec.description,
                    "plugin": item.plugin.name,
                    "distribution": item.plugin.distribution,
                    "version": item.plugin.version,
                }
                for name, item in sorted(found.items())
            ]
            for kind, found in catalogue.components.items()
        },
        "broken": [
            {"plugin": b.info.name, "distribution": b.info.distribution, "version": b.info.version, "error": b.error}
            for b in catalogue.broken
        ],
    }
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        from rich.console import Console

        from dva.evaluate.tables import Table, print_table

        console = Console()
        for kind, rows in data["components"].items():
            if rows:
                print_table(console, Table(kind, PLURALS.get(kind, kind + "s"), ["name", "description", "provided by"],
                                           [[row["name"], row["description"], f"{row['distribution']} {row['version']}"]
                                            for row in rows]))
        for broken in data["broken"]:
            console.print(
                f"[bold red]Broken plugin[/] {broken['plugin']} ({broken['distribution']} {broken['version']}): "
                f"{broken['error']}",
                highlight=False,
            )
    if strict and catalogue.broken:
        raise PluginError(f"{len(catalogue.broken)} plugin(s) failed to load; see above.")
    return 0
