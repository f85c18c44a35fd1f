"""``dva registry show|validate``: explain and check registry entries."""

from __future__ import annotations

import json

import click

from dva.cli.options import click_option
from dva.core.errors import ConfigError
from dva.core.settings import RUN_SETTINGS, select

(_REGISTRIES,) = select(RUN_SETTINGS, ("registries",), help={
    "registries": "A registry file of your own (repeatable); its entries add to or override the built-in ones."})
REGISTRY_OPTION = click_option(_REGISTRIES)
# What an unset (None) recipe value means, shown instead of None.
DEFAULT_MEANING = {s.name: f"({s.unset})" for s in RUN_SETTINGS if s.in_recipe and s.unset}


@click.group()
def registry() -> None:
    """Show and validate named recipes from registry.toml."""


@registry.command()
@click.argument("name", required=False)
@REGISTRY_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(name: str | None, registries: tuple[str, ...], as_json: bool) -> int:
    """Print the resolved recipe of entry NAME, or list all entries."""
    from rich.console import Console

    from dva.core.plugins import get_catalogue
    from dva.core.registry import load_entries, resolve
    from dva.evaluate.tables import Table, print_table

    entries = load_entries(registries)
    if name is None:
        if as_json:
            click.echo(json.dumps({n: e.values for n, e in entries.items()}, indent=2))
            return 0
        rows = [[entry.name, str(entry.values.get("description", "")), entry.source] for entry in entries.values()]
        print_table(Console(), Table("registry", "registry entries", ["entry", "description", "source"], rows))
        return 0
    recipe = resolve(entries, get_catalogue(), name).to_dict()
    if as_json:
        click.echo(json.dumps(recipe, indent=2))
        return 0
    rows = [[key, str(DEFAULT_MEANING[key] if value is None and key in DEFAULT_MEANING else value)]
            for key, value in recipe.items()]
    print_table(Console(), Table("entry", f"entry '{name}' ({entries[name].source})", ["key", "value"], rows))
    return 0


@registry.command()
@REGISTRY_OPTION
def validate(registries: tuple[str, ...]) -> int:
    """Check every entry: component names against the registered plugins, and value types."""
    from dva.core.plugins import get_catalogue
    from dva.core.registry import load_entries
    from dva.core.registry import validate as check

    entries = load_entries(registries)
    problems = check(entries, get_catalogue())
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    if problems:
        raise ConfigError(f"{len(problems)} of {len(entries)} registry entries are invalid.")
    click.echo(f"All {len(entries)} registry entries are valid.")
    return 0
