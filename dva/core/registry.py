"""``registry.toml``: named recipes (component combinations and settings), resolved with CLI overrides.

Entries may ``extend`` another entry. Every value is a registered component name or a plain option,
never an import path. Errors name the file, the entry and the key.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from dva.core.errors import ConfigError
from dva.core.specs import Option

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REFERENCES = ("input", "reconstruction")
COMPONENT_KEYS = {"encoder": "encoder", "prior": "prior", "scheduler": "scheduler", "modality": "modality"}

PLAIN_KEYS: dict[str, Option] = {
    "description": Option(str, ""),
    "extends": Option(str, None),
    "model": Option(str, None, "diffusers Stable Diffusion folder, hub id, or dva model folder"),
    "revision": Option(str, None, "the hub revision (branch, tag or commit) of a hub model; default: main"),
    "steps": Option(int, 50, "scheduler steps (img2img runs int(steps * strength) of them)", 1, 1000),
    "guidance_scale": Option(float, 7.5, "classifier-free guidance scale (1 or less: none)", 0.0, 100.0),
    "prompt": Option(str, None, "text the counterfactual is steered to (default: the model's healthy prompt, else the modality's)"),
    "negative_prompt": Option(str, ""),
    "seed": Option(int, 0, "seed of every image's own generator", 0, 2**63 - 1),
    "batch_size": Option(int, 1, "images per UNet batch (outputs do not depend on it)", 1, 4096),
    "samples": Option(int, 1, "counterfactuals per image (seeds seed..seed+K-1): map from their mean, plus a per-pixel uncertainty", 1, 64),
    "reference": Option(str, "input", "what the counterfactual is subtracted from: the input (the thesis' map), or the "
                        "prior's unconditional reconstruction from the same noise", choices=REFERENCES),
    "device": Option(str, "auto", "auto, cpu, cuda, cuda:N or mps"),
    "dtype": Option(str, "auto", "auto, float32, float16 or bfloat16", choices=("auto", "float32", "float16", "bfloat16")),
    "finetune": Option(dict, None, "settings of `dva finetune --entry` (see docs/finetune.md)"),
    "compile": Option(bool, False, "torch.compile the UNet (GPU; the first batch pays the compile time)"),
    "channels_last": Option(bool, False, "UNet and VAE in channels-last memory layout (faster convolutions on GPUs)"),
    "vae_slicing": Option(bool, False, "decode a batch one image at a time (less memory at large batch sizes)"),
}

DEFAULT_COMPONENTS = {"encoder": None, "prior": "sdedit", "scheduler": None, "modality": "chest-xray"}
# Options that stay when a flag switches the component to another one that has them too. A prior's
# strength is the noise level of the comparison, not the prior's own; an encoder's path, a ControlNet's
# weights or a tokenizer length belong to their component and never carry over.
CARRIED_OPTIONS: dict[str, tuple[str, ...]] = {"prior": ("strength",)}


@dataclass
class Recipe:
    """A fully resolved combination: what ``dva run`` will do."""

    entry: str | None = None
    description: str = ""
    model: str | None = None
    revision: str | None = None
    modality: str = "chest-xray"
    modality_options: dict[str, Any] = field(default_factory=dict)
    encoder: str | None = None
    encoder_options: dict[str, Any] = field(default_factory=dict)
    prior: str = "sdedit"
    prior_options: dict[str, Any] = field(default_factory=dict)
    scheduler: str | None = None
    scheduler_options: dict[str, Any] = field(default_factory=dict)
    steps: int = 50
    guidance_scale: float = 7.5
    prompt: str | None = None
    negative_prompt: str = ""
    seed: int = 0
    batch_size: int = 1
    samples: int = 1
    reference: str = "input"
    device: str = "auto"
    dtype: str = "auto"
    finetune: dict[str, Any] | None = None
    compile: bool = False
    channels_last: bool = False
    vae_slicing: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def resolve(
    entries: dict[str, Entry],
    catalogue: Any,
    entry: str | None = "default",
    overrides: dict[str, Any] | None = None,
    override_where: dict[str, str] | None = None,
) -> Recipe:
    """Merge an entry (and its ancestors) with CLI overrides, check every value, fill defaults.

    ``overrides`` uses recipe keys plus ``strength`` (a prior option), ``encoder_path`` (an encoder
    option), ``encoder_options``, ``prior_options`` and ``modality_options`` (dicts); ``override_where``
    maps keys to flag names for messages. A component switched by an override keeps only the entry's
    :data:`CARRIED_OPTIONS` that the new component also has.
    """
    merged: dict[str, Any] = {}
    where_of: dict[str, str] = {}
    component_options: dict[str, dict[str, Any]] = {kind: {} for kind in COMPONENT_KEYS}
    carried: dict[str, set[str]] = {kind: set() for kind in COMPONENT_KEYS}
    if entry is not None:
        for item in _chain(entries, entry):
            for key, value in item.values.items():
                where = f"{item.source} [entries.{item.name}] key '{key}'"
                if key in COMPONENT_KEYS:
                    name, options = _component(value, where)
                    previous = merged.get(key)
                    if previous != name:
                        component_options[key] = {}
                    merged[key] = name
                    component_options[key].update(options)
                elif key == "finetune":
                    from dva.finetune.settings import check_finetune_table

                    merged[key] = {**merged.get(key, {}), **check_finetune_table(value, where)}
                elif key in PLAIN_KEYS:
                    merged[key] = PLAIN_KEYS[key].check(value, where)
                else:
                    raise ConfigError(f"{where}: unknown key (known: {', '.join(sorted({*PLAIN_KEYS, *COMPONENT_KEYS}))}).")
                where_of[key] = where
    override_where = override_where or {}
    # Component switches first, so options given by flags apply to the component the flags chose.
    ordered = sorted((overrides or {}).items(), key=lambda item: item[0] not in COMPONENT_KEYS)
    for key, value in ordered:
        if value is None:
            continue
        where = override_where.get(key, f"--{key.replace('_', '-')}")
        if key == "strength":
            component_options["prior"]["strength"] = value
            carried["prior"].discard("strength")
            where_of["prior.strength"] = where
        elif key == "encoder_path":
            component_options["encoder"]["path"] = value
            carried["encoder"].discard("path")
            where_of["encoder.path"] = where
        elif key == "encoder_options":
            component_options["encoder"].update(value)
            carried["encoder"].difference_update(value)
            where_of.update({f"encoder.{option}": f"--encoder-option {option}" for option in value})
        elif key == "prior_options":
            component_options["prior"].update(value)
            carried["prior"].difference_update(value)
        elif key == "modality_options":
            component_options["modality"].update(value)
            where_of.update({f"modality.{option}": f"--modality-option {option}" for option in value})
        elif key in COMPONENT_KEYS:
            if merged.get(key) != value:
                keep = CARRIED_OPTIONS.get(key, ())
                component_options[key] = {k: v for k, v in component_options[key].items() if k in keep}
                carried[key] = set(component_options[key])
            merged[key] = value
            where_of[key] = where
        else:
            merged[key] = PLAIN_KEYS[key].check(value, where)
    recipe = Recipe(entry=entry)
    for key in PLAIN_KEYS:
        if key in merged and key != "extends":
            setattr(recipe, key, merged[key])
    for kind in COMPONENT_KEYS:
        name = merged.get(kind, DEFAULT_COMPONENTS[kind])
        options = component_options[kind]
        if name is not None:
            where = where_of.get(kind, kind)
            try:
                spec = catalogue.get(kind, name)
            except ConfigError as error:
                raise ConfigError(f"{where}: {error}") from error
            options = {k: v for k, v in options.items() if k in spec.options or k not in carried[kind]}
            option_where = {k.split(".", 1)[1]: w for k, w in where_of.items() if k.startswith(kind + ".")}
            options = spec.check_options(options, where, option_where)
        setattr(recipe, kind, name)
        setattr(recipe, f"{kind}_options", options)
    return recipe


def validate(entries: dict[str, Entry], catalogue: Any) -> list[str]:
    """Every problem of every entry (empty list: all entries resolve)."""
    problems = []
    for name in entries:
        try:
            resolve(entries, catalogue, name)
        except ConfigError as error:
            problems.append(str(error))
    return problems
