"""One settings schema (dva.core.settings): the recipe, the registry keys, the click options, the resume
fingerprint and the docs' tables all come from it; the recipe is resolved once and the inputs walked once."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import click
import numpy as np
import pytest
from PIL import Image

from dva.core.manifest import NOT_IN_FINGERPRINT, fingerprint
from dva.core.registry import PLAIN_KEYS, Recipe, load_entries, resolve
from dva.core.settings import FINETUNE_SETTINGS, RUN_SETTINGS, Setting, by_name, entry_keys


def commands() -> dict[str, tuple[click.Command, dict[str, Setting]]]:
    from dva.cli.compare import COMPARE_SETTINGS, compare
    from dva.cli.run import run

    return {"run": (run, by_name(RUN_SETTINGS)), "compare": (compare, by_name((*RUN_SETTINGS, *COMPARE_SETTINGS)))}


def test_the_docs_tables_are_the_schemas():
    """A setting missing from docs/registry.md or docs/usage.md, or a default they state otherwise, fails here."""
    from dva.cli.settings_docs import stale

    assert stale() == [], "the settings tables are stale: run `python -m dva.cli.settings_docs` and commit the docs"


@pytest.mark.parametrize("name", ["run", "compare"])
def test_every_flag_comes_from_the_schema_with_its_default(name):
    command, settings = commands()[name]
    for param in command.params:
        if not isinstance(param, click.Option) or param.name == "help":
            continue
        setting = settings[param.name]
        assert tuple(param.opts + param.secondary_opts) == setting.flags, param.name
        expected = setting.option.default if setting.flag_default else None
        if param.multiple:
            assert param.default in (None, ()), param.name
        else:
            assert param.default == expected, param.name


def test_the_recipe_is_the_schemas_recipe_settings_with_their_defaults():
    recipe = Recipe()
    fields = [field.name for field in dataclasses.fields(Recipe)]
    components = [s.name for s in RUN_SETTINGS if s.component]
    expected = ["entry"] + [n for s in RUN_SETTINGS if s.in_recipe
                            for n in ((s.name, f"{s.name}_options") if s.component else (s.name,))]
    assert fields == expected
    for setting in RUN_SETTINGS:
        if setting.in_recipe:
            assert getattr(recipe, setting.name) == setting.option.default, setting.name
    assert all(getattr(recipe, f"{kind}_options") == {} for kind in components)
    assert Recipe().prior_options is not Recipe().prior_options
    assert set(PLAIN_KEYS) == {s.name for s in RUN_SETTINGS if s.in_entry and not s.component}


# Fingerprints computed before the schema existed (the recipe dataclass and merge written by hand).
FINGERPRINTS = [
    ("thesis", {"steps": 10, "strength": 0.3, "encoder_path": "/x"}, "f6b8a8b00a4b0d0b"),
    ("default", {"prior_options": {"strength": 0.2}, "modality_options": {"bit_depth": 12}}, "3237293c3e493338"),
    # the entry's sampling before issue 16 (steps 50, strength 0.6), pinned: the fingerprint is of the settings
    ("tiny-phantom", {"reference": "reconstruction", "compile": True, "dtype": "float32", "device": "cpu",
                      "steps": 50, "strength": 0.6}, "8a5da0704d2e38a0"),
    (None, {"model": "m"}, "e66f64bd72b11247"),
]


@pytest.mark.parametrize("entry, overrides, expected", FINGERPRINTS)
def test_the_resume_fingerprint_of_the_same_settings_is_unchanged(catalogue, entry, overrides, expected):
    """Runs made before the schema must resume: the recipe's fields and the fingerprint over them stay."""
    assert set(NOT_IN_FINGERPRINT) == {"batch_size", "entry", "description", "finetune", "compile", "channels_last",
                                       "vae_slicing"}
    recipe = resolve(load_entries(), catalogue, entry, overrides)
    assert fingerprint(recipe.to_dict(), {"x": 1}) == expected


def test_the_registry_checks_finetune_tables_without_importing_the_trainer():
    code = ("import sys; from dva.core.registry import resolve, load_entries; from dva.core.plugins import "
            "load_catalogue; r = resolve(load_entries(), load_catalogue(entry_points=False), 'finetune-thesis'); "
            "assert r.finetune['learning_rate'] == 5e-5; "
            "print(sorted(m for m in sys.modules if m.startswith('dva.finetune')))")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "dva.finetune" not in shown.stdout


def test_finetune_flags_override_the_entrys_table_naming_the_flag(catalogue):
    from dva.core.errors import ConfigError

    recipe = resolve(load_entries(), catalogue, "finetune-thesis", {"finetune": {"learning_rate": 1e-4}})
    assert recipe.finetune["learning_rate"] == 1e-4 and recipe.finetune["batch_size"] == 2
    with pytest.raises(ConfigError, match=r"^--learning-rate is nan, but must be a finite number"):
        resolve(load_entries(), catalogue, "finetune-thesis", {"finetune": {"learning_rate": float("nan")}})
    assert set(entry_keys(FINETUNE_SETTINGS)) >= {"strategy", "schedule", "learning_rate", "class_prompts"}


@pytest.mark.parametrize("flags, expected", [
    (["--guidance-scale", "nan"], "--guidance-scale is nan, but must be a finite number."),
    (["--samples", "0"], "--samples is 0, but must be between 1 and 64."),
    (["--prior-option", "low_threshold"], "--prior-option low_threshold: expected KEY=VALUE"),
    (["--prior-option", "strength=2"], "--prior-option strength is 2.0, but must be between 0.0 and 1.0."),
    (["--modality-option", "bit_depth=99"], "--modality-option bit_depth is 99, but must be between 1 and 16."),
    (["--bit-depth", "99"], "99 is not in the range 1<=x<=16"),
    (["--reference", "other"], "'other' is not one of 'input', 'reconstruction'"),
])
def test_bad_flag_values_are_one_sentence_and_exit_2(tmp_path, capsys, flags, expected):
    from dva.cli import main

    scan = tmp_path / "scan.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(scan)
    with pytest.raises(SystemExit) as exited:
        main(["run", str(scan), "--out", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and expected in " ".join(err.split()), err
    assert not (tmp_path / "out").exists()


def test_the_recipe_is_resolved_once_and_the_inputs_walked_once(catalogue, tmp_path, monkeypatch):
    from dva.cli.run import recipe_and_inputs
    from dva.core import io
    from dva.core.registry import Draft

    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / name)
    walks, builds = [], []
    walk, build = io.walk_inputs, Draft.build
    monkeypatch.setattr(io, "walk_inputs", lambda *a, **k: walks.append(a) or walk(*a, **k))
    monkeypatch.setattr(Draft, "build", lambda self, c: builds.append(self) or build(self, c))
    recipe, walked = recipe_and_inputs(catalogue, "default", (), {"steps": 3}, [str(tmp_path)], tmp_path / "out")
    assert (recipe.modality, recipe.steps, len(builds)) == ("chest-xray", 3, 1)
    assert isinstance(walked, io.InputWalk) and len(walks) == 1
    files, missing = walked.select(io.SUPPORTED_EXTENSIONS)  # what core.run reads: no second walk
    assert [f.name for f in files] == ["a.png", "b.png"] and missing == [] and len(walks) == 1
    _, given = recipe_and_inputs(catalogue, "default", (), {"modality": "chest-xray"}, [str(tmp_path)], tmp_path / "o")
    assert given == [str(tmp_path)] and len(walks) == 1  # a chosen modality: the run walks, once


def test_a_walk_selects_what_collect_inputs_gives(tmp_path):
    from dva.core import io

    (tmp_path / "d").mkdir()
    (tmp_path / "e").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "d" / "x.png")
    (tmp_path / "e" / "v.nii.gz").write_bytes(b"0")
    paths = [tmp_path / "d", tmp_path / "e", tmp_path / "none", tmp_path / "d" / "x.png"]
    walk = io.walk_inputs(paths, extensions=(*io.SUPPORTED_EXTENSIONS, ".nii.gz"))
    for extensions in (io.SUPPORTED_EXTENSIONS, (".nii.gz",)):
        assert walk.select(extensions) == io.collect_inputs(paths, extensions=extensions)
    with pytest.raises(ValueError):
        walk.select((".nii",))
