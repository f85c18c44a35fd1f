"""``registry.toml``: named recipes (component combinations and settings), resolved with CLI overrides.

Entries may ``extend`` another entry. Every value is a registered component name or a plain option,
never an import path. Errors name the file, the entry and the key.
"""

from __future__ import annotations

import copy
import os
import sys
from dataclasses import asdict, dataclass, field, make_dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from dva.core.errors import ConfigError
from dva.core.settings import FINETUNE_SETTINGS, RUN_SETTINGS, by_name, check_finetune_table, entry_keys, recipe_fields
from dva.core.specs import Option

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SETTINGS = by_name(RUN_SETTINGS)
PLAIN_KEYS: dict[str, Option] = entry_keys(RUN_SETTINGS)
COMPONENT_KEYS: tuple[str, ...] = tuple(setting.name for setting in RUN_SETTINGS if setting.component)
DEFAULT_COMPONENTS: dict[str, str | None] = {kind: SETTINGS[kind].option.default for kind in COMPONENT_KEYS}
# Options that stay when a flag switches the component to another one that has them too. A prior's
# strength is the noise level of the comparison, not the prior's own; an encoder's path, a ControlNet's
# weights or a tokenizer length belong to their component and never carry over.
CARRIED_OPTIONS: dict[str, tuple[str, ...]] = {"prior": ("strength",)}


def _recipe_class() -> type:
    """The recipe dataclass, one field per recipe setting of :data:`RUN_SETTINGS` (in their order)."""

    def to_dict(self: Any) -> dict[str, Any]:
        return asdict(self)

    fields = [
        (name, annotation, field(default_factory=lambda value=default: copy.deepcopy(value))
         if isinstance(default, (dict, list)) else default)
        for name, annotation, default in recipe_fields(RUN_SETTINGS)
    ]
    recipe = make_dataclass("Recipe", fields, namespace={"to_dict": to_dict})
    recipe.__module__ = __name__
    recipe.__doc__ = "A fully resolved combination: what ``dva run`` will do (fields: dva.core.settings.RUN_SETTINGS)."
    return recipe


Recipe = _recipe_class()


@dataclass(frozen=True)
class Entry:
    """One ``[entries.NAME]`` table and the file it came from."""

    name: str
    values: dict[str, Any]
    source: str


def builtin_registry_text() -> str:
    return resources.files("dva").joinpath("registry.toml").read_text(encoding="utf-8")


def _parse(text: str, source: str) -> dict[str, Entry]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: not valid TOML ({error}); fix the syntax.") from error
    unknown = sorted(set(data) - {"entries"})
    if unknown:
        raise ConfigError(f"{source}: unknown top-level table '{unknown[0]}'; entries go under [entries.NAME].")
    entries = data.get("entries", {})
    if not isinstance(entries, dict):
        raise ConfigError(f"{source}: 'entries' must be a table of [entries.NAME] tables.")
    parsed = {}
    for name, values in entries.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{source} [entries.{name}]: must be a table of settings.")
        parsed[name] = Entry(name, values, source)
    return parsed


def user_registry_paths(extra: list[str | Path] | tuple = ()) -> list[Path]:
    """User registries: ``$DVA_REGISTRY`` (os.pathsep-separated) then ``--registry`` files, later wins."""
    paths = [Path(p) for p in os.environ.get("DVA_REGISTRY", "").split(os.pathsep) if p]
    return paths + [Path(p) for p in extra]


def load_entries(extra: list[str | Path] | tuple = (), builtin: bool = True) -> dict[str, Entry]:
    """The built-in entries, overridden or extended by user registry files."""
    entries = _parse(builtin_registry_text(), "registry.toml (built in)") if builtin else {}
    for path in user_registry_paths(extra):
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"Registry file {path} cannot be read ({error.strerror}); check --registry.") from error
        except UnicodeDecodeError as error:
            raise ConfigError(
                f"Registry file {path} is not UTF-8 text (byte {error.start}); save it as UTF-8, as TOML requires."
            ) from error
        entries.update(_parse(text, str(path)))
    return entries


def _component(value: Any, where: str) -> tuple[str, dict[str, Any]]:
    if isinstance(value, str):
        return value, {}
    if isinstance(value, dict):
        if not isinstance(value.get("name"), str):
            raise ConfigError(f"{where}: a component table needs a string 'name' key.")
        return value["name"], {k: v for k, v in value.items() if k != "name"}
    raise ConfigError(f"{where}: must be a component name or a table like {{ name = \"...\", option = value }}.")


def _chain(entries: dict[str, Entry], name: str) -> list[Entry]:
    """The entry and its ``extends`` ancestors, root first."""
    chain: list[Entry] = []
    current: str | None = name
    while current is not None:
        if current not in entries:
            from dva.core.errors import unknown_name

            if chain:
                raise ConfigError(f"{chain[-1].source} [entries.{chain[-1].name}] key 'extends': no entry '{current}'.")
            raise unknown_name("registry entry", current, entries)
        if any(e.name == current for e in chain):
            raise ConfigError(f"{entries[current].source} [entries.{current}]: 'extends' forms a cycle; break it.")
        chain.append(entries[current])
        parent = entries[current].values.get("extends")
        current = parent if isinstance(parent, str) else None
    return list(reversed(chain))


def _flag(key: str) -> str:
    """How a flag override is named in messages: the setting's flag (``--strength``, ``--prior-option``)."""
    setting = SETTINGS.get(key)
    if setting is not None and setting.flag:
        return setting.flags[0]
    if setting is not None and setting.target and "." not in setting.target:
        return f"--{setting.target}-option"
    return "--" + key.replace("_", "-")


def _override_order(item: tuple[str, Any]) -> int:
    """Component switches first, so the options flags give apply to the component the flags chose; then a
    component's ``KEY=VALUE`` options, then its dedicated flags (``--strength`` wins over ``strength=``), then
    the rest."""
    setting = SETTINGS.get(item[0])
    if setting is None or not (setting.component or setting.target):
        return 3
    return 0 if setting.component else 1 if "." not in setting.target else 2


@dataclass
class Draft:
    """A recipe being merged, entry first (its ``extends`` chain, root first), then flags; checked as it goes,
    except for the components' options, which :meth:`build` checks against the catalogue once.

    ``names``/``options`` hold each component's name and options; ``carried`` the options a component switched by
    a flag kept (:data:`CARRIED_OPTIONS`); ``where`` names where each value came from, for messages; ``finetune``
    holds the ``finetune`` tables given (values, where, given by flags), checked by :meth:`build`.
    """

    entry: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    names: dict[str, str | None] = field(default_factory=dict)
    options: dict[str, dict[str, Any]] = field(default_factory=lambda: {kind: {} for kind in COMPONENT_KEYS})
    carried: dict[str, set[str]] = field(default_factory=lambda: {kind: set() for kind in COMPONENT_KEYS})
    where: dict[str, str] = field(default_factory=dict)
    finetune: list[tuple[dict[str, Any], str, bool]] = field(default_factory=list)

    @classmethod
    def of(cls, entries: dict[str, Entry], entry: str | None) -> Draft:
        """The draft of ``entry`` (``None``: no entry, the schema's defaults)."""
        draft = cls(entry)
        for item in _chain(entries, entry) if entry is not None else ():
            draft.add_entry(item)
        return draft

    def component(self, kind: str) -> str | None:
        """The component of ``kind`` chosen so far (its default when none was)."""
        return self.names.get(kind, DEFAULT_COMPONENTS[kind])

    def add_entry(self, item: Entry) -> None:
        """Merge one entry table over what is there."""
        for key, value in item.values.items():
            where = f"{item.source} [entries.{item.name}] key '{key}'"
            setting = SETTINGS.get(key)
            if setting is None or not setting.in_entry:
                known = ", ".join(sorted(PLAIN_KEYS.keys() | COMPONENT_KEYS))
                raise ConfigError(f"{where}: unknown key (known: {known}).")
            if setting.component:
                name, options = _component(value, where)
                if self.names.get(key) != name:
                    self.options[key] = {}
                self.names[key] = name
                self.options[key].update(options)
            elif key == "finetune":
                self.finetune.append((value, where, False))
            else:
                self.values[key] = setting.option.check(value, where)
            self.where[key] = where

    def apply(self, overrides: dict[str, Any] | None, where: dict[str, str] | None = None) -> Draft:
        """Merge flag values over the entry's (``None`` values are unset flags); ``where`` names a key's flag
        where it is not the setting's own. Keys are settings of :data:`RUN_SETTINGS` that a registry entry may
        hold or that set a component's options (``strength``, ``prior_options``, ...), and ``finetune`` (a table)."""
        where = where or {}
        for key, value in sorted((overrides or {}).items(), key=_override_order):
            if value is None:
                continue
            said = where.get(key) or _flag(key)
            setting = SETTINGS.get(key)
            if key == "finetune":
                self.finetune.append((value, said, True))
            elif setting is None or not (setting.in_entry or setting.target):
                raise ConfigError(f"{said}: not a setting of a recipe.")
            elif setting.component:
                self._switch(key, value, said)
            elif setting.target:
                self._set_options(setting.target, value, said)
            else:
                self.values[key] = setting.option.check(value, said)
        return self

    def _switch(self, kind: str, name: str, where: str) -> None:
        if self.names.get(kind) != name:
            keep = CARRIED_OPTIONS.get(kind, ())
            self.options[kind] = {k: v for k, v in self.options[kind].items() if k in keep}
            self.carried[kind] = set(self.options[kind])
        self.names[kind] = name
        self.where[kind] = where

    def _set_options(self, target: str, value: Any, where: str) -> None:
        kind, _, option = target.partition(".")
        given = {option: value} if option else dict(value)
        self.options[kind].update(given)
        self.carried[kind].difference_update(given)
        self.where.update({f"{kind}.{key}": where if option else f"{where} {key}" for key in given})

    def build(self, catalogue: Any) -> Recipe:
        """The :data:`Recipe`: each component's options checked against its spec, defaults filled in."""
        recipe = Recipe(entry=self.entry)
        for key, value in self.values.items():
            if SETTINGS[key].in_recipe:
                setattr(recipe, key, value)
        for kind in COMPONENT_KEYS:
            setattr(recipe, kind, self.component(kind))
            setattr(recipe, f"{kind}_options", self._component_options(kind, catalogue))
        if self.finetune:
            recipe.finetune = self._finetune_table(catalogue)
        return recipe

    def _component_options(self, kind: str, catalogue: Any) -> dict[str, Any]:
        name, options = self.component(kind), self.options[kind]
        if name is None:
            return options
        where = self.where.get(kind, kind)
        try:
            spec = catalogue.get(kind, name)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from error
        options = {k: v for k, v in options.items() if k in spec.options or k not in self.carried[kind]}
        option_where = {k.split(".", 1)[1]: w for k, w in self.where.items() if k.startswith(kind + ".")}
        return spec.check_options(options, where, option_where)

    def _finetune_table(self, catalogue: Any) -> dict[str, Any]:
        """The ``finetune`` tables merged in order, each checked; a key the schema lacks is checked against the
        options of the table's strategy."""
        known = entry_keys(FINETUNE_SETTINGS)
        tables = [values for values, _, _ in self.finetune if isinstance(values, dict)]
        strategy_options = None
        if any(key not in known for values in tables for key in values):
            strategy = next((t["strategy"] for t in reversed(tables) if isinstance(t.get("strategy"), str)),
                            known["strategy"].default)
            strategy_options = catalogue.get("finetuner", strategy).options
        merged: dict[str, Any] = {}
        for values, where, flags in self.finetune:
            key_where = _finetune_flag if flags else None
            merged.update(check_finetune_table(values, where, strategy_options, key_where))
        return merged


def _finetune_flag(key: str) -> str:
    setting = by_name(FINETUNE_SETTINGS).get(key)
    return setting.flags[0] if setting is not None and setting.flag else f"--finetune-option {key}"


def resolve(
    entries: dict[str, Entry],
    catalogue: Any,
    entry: str | None = "default",
    overrides: dict[str, Any] | None = None,
    override_where: dict[str, str] | None = None,
) -> Recipe:
    """Merge an entry (and its ancestors) with flag values, check every value, fill defaults: the one merge path
    of ``dva run``, ``dva compare`` and ``dva finetune`` (see :class:`Draft` for the keys of ``overrides``).

    A component switched by an override keeps only the entry's :data:`CARRIED_OPTIONS` that the new component
    also has.
    """
    return Draft.of(entries, entry).apply(overrides, override_where).build(catalogue)


def validate(entries: dict[str, Entry], catalogue: Any) -> list[str]:
    """Every problem of every entry (empty list: all entries resolve)."""
    problems = []
    for name in entries:
        try:
            resolve(entries, catalogue, name)
        except ConfigError as error:
            problems.append(str(error))
    return problems
