"""The ``dva`` command line: thin click commands over dva.core, rendered with rich.

Subcommands are imported only when invoked, so ``dva --help`` and ``dva plugins`` never import torch.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from dva.core.errors import ConfigError, DvaError, machine_error
from dva.core.pickles import RefusedPickle, refused_pickle

SUBCOMMANDS = {
    "run": ("dva.cli.run", "run"),
    "plugins": ("dva.cli.plugins", "plugins"),
    "registry": ("dva.cli.registry", "registry"),
    "phantoms": ("dva.cli.phantoms", "phantoms"),
    "finetune": ("dva.cli.finetune", "finetune"),
    "evaluate": ("dva.cli.evaluate", "evaluate"),
    "compare": ("dva.cli.compare", "compare"),
    "calibrate": ("dva.cli.calibrate", "calibrate"),
    "upscale": ("dva.cli.upscale", "upscale"),
    "check-vae": ("dva.cli.check_vae", "check_vae"),
}


class LazyGroup(click.Group):
    """A group whose built-in subcommands are imported on use; plugins add theirs via ``register_commands``."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*SUBCOMMANDS, *super().list_commands(ctx)})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in SUBCOMMANDS:
            module, attribute = SUBCOMMANDS[name]
            return getattr(importlib.import_module(module), attribute)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.version_option(package_name="dva")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """dva: healthy counterfactuals and visual attribution maps with latent diffusion."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


_PLUGIN_COMMANDS: set[str] = set()


def _add_plugin_commands() -> None:
    """Put the current catalogue's plugin commands on ``cli``, replacing those of an earlier catalogue.

    The plugins' ``register_commands`` hooks already ran when the catalogue loaded (a failing one
    marks its plugin broken there); a plugin command never replaces a built-in one.
    """
    from dva.core.plugins import get_catalogue

    for name in _PLUGIN_COMMANDS:
        cli.commands.pop(name, None)
    _PLUGIN_COMMANDS.clear()
    for name, added in get_catalogue().commands.items():
        if name not in SUBCOMMANDS:
            cli.add_command(added.command, name)
            _PLUGIN_COMMANDS.add(name)


def _user_error(error: Exception) -> DvaError | None:
    """The sentence for an error the user can fix, or None for a bug.

    That is dva's own errors; a weights file torch refused to unpickle (its message, which advises
    ``weights_only=False``, is never shown); and an OSError of the user's machine that names its
    file: no permission, a read-only file system, a full disk, a file where a folder should be. Any
    other OSError (a file that vanished, say) may be dva's bug and stays unexpected.
    """
    refusal = refused_pickle(error)
    if refusal is not None:
        return refusal
    if isinstance(error, DvaError):
        return error
    clause = machine_error(error)
    if clause is not None:
        return ConfigError(clause[0].upper() + clause[1:] + ".")
    return None


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one clear sentence per error, exit 2 for usage/config, 1 for failed inputs."""
    from rich.console import Console

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    console = Console(stderr=True)
    try:
        _add_plugin_commands()
        code: Any = cli.main(args=args, prog_name="dva", standalone_mode=False, obj={"argv": args})
        sys.exit(code if isinstance(code, int) else 0)
    except click.exceptions.Abort:
        console.print("[red]Interrupted.[/] Rerun the same command to resume; completed images are kept.", soft_wrap=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        console.print("[red]Interrupted.[/] Rerun the same command to resume; completed images are kept.", soft_wrap=True)
        sys.exit(130)
    except Exception as error:
        known = _user_error(error)
        if known is None:  # an unexpected bug: still one sentence unless --debug
            if debug:
                raise
            console.print(
                f"[bold red]Unexpected error:[/] {type(error).__name__}: {error}. Rerun with --debug for the traceback "
                "and report it.",
                highlight=False,
                soft_wrap=True,
            )
            sys.exit(3)
        if debug and not isinstance(known, RefusedPickle):
            console.print_exception()
        console.print(f"[bold red]Error:[/] {known}", highlight=False, soft_wrap=True)
        sys.exit(known.exit_code)
