"""The docs' settings tables, generated from the settings schema (``dva.core.settings``).

``python -m dva.cli.settings_docs`` rewrites each table between its ``<!-- BEGIN name -->`` and
``<!-- END name -->`` markers; ``tests/test_settings.py`` fails while a table differs from what the schema
gives, so a setting cannot go undocumented and the docs cannot state another default.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from dva.core.settings import RUN_SETTINGS, Setting, select

ROOT = Path(__file__).resolve().parents[2]
BEGIN = "<!-- BEGIN {name}: generated from dva/core/settings.py by `python -m dva.cli.settings_docs`; edit there -->"
END = "<!-- END {name} -->"
HUGE = 2**31  # an upper bound this large is no practical limit, and is not shown


def _value(value: Any) -> str:
    """A default as TOML writes it."""
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`' if value == "" else f"`{value}`"
    if isinstance(value, dict):
        return "`{}`" if not value else f"`{value}`"
    return f"`{value}`"


def default_text(setting: Setting) -> str:
    """What a setting is when nothing sets it."""
    if setting.option.default is None or setting.option.type is dict and not setting.option.default:
        return setting.unset or "none"
    return _value(setting.option.default)


def type_text(setting: Setting) -> str:
    """The kind of value a registry key holds, with its bounds or choices."""
    option = setting.option
    if setting.component:
        return "component"
    if option.choices:
        return "one of " + ", ".join(f"`{choice}`" for choice in option.choices)
    kind = {str: "string", int: "int", float: "float", bool: "bool", dict: "table"}[option.type]
    low, high = option.minimum, option.maximum
    if high is not None and high >= HUGE:
        high = None
    if low is not None and high is not None:
        return f"{kind} {low:g} to {high:g}"
    if low is not None:
        return f"{kind} ≥ {low:g}"
    return f"{kind} ≤ {high:g}" if high is not None else kind


def flag_text(setting: Setting) -> str:
    """The flag as typed: ``--steps``, ``--prior-option KEY=VALUE``, ``--compile``/``--no-compile``."""
    metavar = setting.metavar or ("KEY=VALUE" if setting.option.type is dict else "")
    return "/".join(f"`{flag}{' ' + metavar if metavar else ''}`" for flag in setting.flags)


def key_text(setting: Setting) -> str:
    """Which registry key a flag sets: ``steps``, the ``strength`` option of ``prior``, or none."""
    if setting.in_entry:
        return f"`{setting.name}`"
    kind, _, option = setting.target.partition(".")
    if option:
        return f"`{kind}` option `{option}`"
    return f"`{kind}` options" if kind else ""


def _table(header: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def keys_table(settings: Iterable[Setting]) -> str:
    """The keys a registry entry may hold."""
    return _table(["key", "type", "default", "flag", "meaning"], (
        [f"`{s.name}`", type_text(s), default_text(s), flag_text(s), s.text] for s in settings if s.in_entry
    ))


def flags_table(settings: Iterable[Setting]) -> str:
    """A command's flags."""
    return _table(["flag", "registry key", "default", "meaning"], (
        [flag_text(s), key_text(s), default_text(s), s.text] for s in settings
    ))


def tables() -> dict[str, dict[str, Callable[[], str]]]:
    """Each docs file's generated tables, by marker name."""
    from dva.cli.finetune import FINETUNE_FLAGS, STRATEGY_FLAGS, TABLE_ONLY
    from dva.cli.run import RUN_FLAGS

    return {
        "docs/registry.md": {"registry-keys": lambda: keys_table(RUN_SETTINGS)},
        "docs/usage.md": {"run-flags": lambda: flags_table(select(RUN_SETTINGS, RUN_FLAGS))},
        "docs/finetune.md": {"finetune-flags": lambda: flags_table((*FINETUNE_FLAGS, *TABLE_ONLY)),
                             "finetune-strategy-options": lambda: keys_table(STRATEGY_FLAGS)},
    }


def render(text: str, name: str, table: str) -> str:
    """``text`` with the block between ``name``'s markers replaced by ``table``."""
    begin, end = BEGIN.format(name=name), END.format(name=name)
    if text.count(begin) != 1 or text.count(end) != 1:
        raise ValueError(f"expected one '{begin}' and one '{end}'")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n{table}\n{end}{tail}"


def stale(root: Path = ROOT) -> list[str]:
    """The docs files whose generated tables differ from the schema's (empty: all current)."""
    return [path for path, blocks in tables().items() if _rendered(root / path, blocks) != (root / path).read_text()]


def _rendered(path: Path, blocks: dict[str, Callable[[], str]]) -> str:
    text = path.read_text()
    for name, make in blocks.items():
        text = render(text, name, make())
    return text


def main(root: Path = ROOT) -> int:
    """Rewrite the generated tables; print the files changed."""
    for path, blocks in tables().items():
        text = _rendered(root / path, blocks)
        if text != (root / path).read_text():
            (root / path).write_text(text)
            print(f"rewrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
