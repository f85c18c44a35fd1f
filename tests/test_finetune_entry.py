"""Fine-tuning recipes in registry.toml: `dva finetune --entry NAME`, flags overriding, typed checks."""

from __future__ import annotations

import dataclasses
import json

import pytest

from dva.core.errors import ConfigError
from dva.core.plugins import load_catalogue
from dva.core.registry import load_entries, resolve, validate
from dva.core.settings import FINETUNE_SETTINGS


def test_the_config_takes_its_fields_and_defaults_from_the_schema():
    """FinetuneConfig is generated from the schema: every finetune-table setting is a field with the schema's default
    (class_images was 8 in the config but 100 on the command line before)."""
    from dva.finetune.config import COMMAND_SETTINGS, FinetuneConfig
    from dva.finetune.schedule import parse_schedule

    fields = {field.name: field for field in dataclasses.fields(FinetuneConfig)}
    assert {setting.name for setting in (*FINETUNE_SETTINGS, *COMMAND_SETTINGS)} <= set(fields)
    config = FinetuneConfig(base_model="m", data="d", out="o", schedule=parse_schedule("Normal:1"))
    for setting in (*FINETUNE_SETTINGS, *COMMAND_SETTINGS):
        if setting.name not in ("schedule", "base_model", "data", "out"):
            assert getattr(config, setting.name) == setting.option.default, setting.name
    assert config.class_images == 100 and config.strategy == "dreambooth" and config.options == {}


def test_the_thesis_fine_tuning_entry():
    recipe = resolve(load_entries(), load_catalogue(entry_points=False), "finetune-thesis")
    assert recipe.model == "CompVis/stable-diffusion-v1-4" and recipe.encoder == "radbert"
    assert recipe.finetune["schedule"] == "Normal:1200,Lung Opacity:500,COVID:500,Viral Pneumonia:500"
    assert (recipe.finetune["learning_rate"], recipe.finetune["batch_size"], recipe.finetune["mixed_precision"]) == (
        5e-5, 2, "bf16"
    )
    assert recipe.finetune["class_prompts"]["Normal"] == "Normal chest scan"


@pytest.mark.parametrize(
    "table, expected",
    [
        ('{ schedul = "Normal:1" }', "unknown fine-tuning setting 'schedul'"),
        ('{ batch_size = "two" }', "setting 'batch_size' must be of type int"),
        ('{ mixed_precision = "fp8" }', "must be one of"),
        ('"Normal:1"', "must be a table of fine-tuning settings"),
    ],
)
def test_bad_finetune_tables_are_named(tmp_path, table, expected):
    bad = tmp_path / "bad.toml"
    bad.write_text(f"[entries.mine]\nfinetune = {table}\n")
    problems = validate(load_entries([bad]), load_catalogue(entry_points=False))
    assert len(problems) == 1 and f"{bad} [entries.mine] key 'finetune'" in problems[0] and expected in problems[0]


def test_finetune_from_an_entry_with_flags_overriding(tiny_radbert_model, dataset, tmp_path, capsys):
    from dva.cli import main

    mine = tmp_path / "mine.toml"
    mine.write_text(
        f'[entries.tiny]\nmodel = "{tiny_radbert_model}"\nencoder = "radbert"\n'
        'finetune = { schedule = "Normal:1,Lung Opacity:1", prior_weight = 0.0, learning_rate = 1e-3, '
        'class_prompts = { "Normal" = "Normal chest scan" } }\n'
    )
    out = tmp_path / "model"
    with pytest.raises(SystemExit) as done:
        main(["finetune", "--entry", "tiny", "--registry", str(mine), "--data", str(dataset), "--out", str(out),
              "--device", "cpu", "--schedule", "Normal:2"])
    assert done.value.code == 0, capsys.readouterr().err
    info = json.loads((out / "dva.json").read_text())
    assert info["schedule"] == "Normal:2"  # the flag wins
    assert info["prompts"]["healthy"] == "Normal chest scan" and info["settings"]["learning_rate"] == 1e-3
    assert info["settings"]["prior_weight"] == 0.0


def test_an_entry_without_a_finetune_table_is_refused(dataset, tmp_path, capsys):
    from dva.cli import main

    with pytest.raises(SystemExit) as done:
        main(["finetune", "--entry", "thesis", "--data", str(dataset), "--out", str(tmp_path / "m")])
    assert done.value.code == 2 and "has no finetune table" in capsys.readouterr().err


def test_a_missing_schedule_is_named(tiny_radbert_model, dataset, tmp_path, capsys):
    from dva.cli import main

    with pytest.raises(SystemExit) as done:
        main(["finetune", "--model", str(tiny_radbert_model), "--data", str(dataset), "--out", str(tmp_path / "m")])
    assert done.value.code == 2 and "--schedule is missing" in capsys.readouterr().err


def test_out_of_range_flags_are_named(tiny_radbert_model, dataset, tmp_path, capsys):
    from dva.cli import main

    with pytest.raises(SystemExit) as done:
        main(["finetune", "--model", str(tiny_radbert_model), "--data", str(dataset), "--out", str(tmp_path / "m"),
              "--schedule", "Normal:1", "--prompt-dropout", "1.5"])
    assert done.value.code == 2 and "--prompt-dropout is 1.5" in capsys.readouterr().err


def test_a_setting_error_is_a_config_error():
    from dva.plugins.finetuners import BUILTIN_FINETUNERS

    lora = next(spec for spec in BUILTIN_FINETUNERS if spec.name == "lora")
    with pytest.raises(ConfigError):
        lora.options["lora_rank"].check(0, "--lora-rank")
