"""Fine-tuning strategies are small classes that declare their own options: a plugin's strategy (the one in
docs/plugins.md) trains through dva's one trainer, with options from --finetune-option or a registry table."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dva.core.errors import ConfigError

DOCS = Path(__file__).resolve().parents[1] / "docs"


def dva(capsys, *args: str) -> tuple[int, str]:
    from dva.cli import main

    with pytest.raises(SystemExit) as done:
        main([str(arg) for arg in args])
    return done.value.code, capsys.readouterr().err


@pytest.fixture
def bitfit(dva_plugins, monkeypatch) -> types.ModuleType:
    """The strategy plugin of docs/plugins.md, as module ``dva_bitfit``, registered for this test."""
    text = (DOCS / "plugins.md").read_text()
    section = text[text.index("### `register_finetuners(register)`"):]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)[1]
    module = types.ModuleType("dva_bitfit")
    exec(compile(code, "docs/plugins.md", "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, "dva_bitfit", module)
    dva_plugins(module)
    return module


def test_the_docs_strategy_plugin_trains_only_what_it_says_with_its_own_option(
    bitfit, tiny_radbert_model, dataset, tmp_path, capsys
):
    out = tmp_path / "model"
    code, err = dva(capsys, "finetune", "--strategy", "bitfit", "--finetune-option", "attention_only=true",
                    "--model", tiny_radbert_model, "--data", dataset, "--schedule", "Normal:2", "--out", out,
                    "--prior-weight", "0", "--learning-rate", "1e-2", "--device", "cpu")
    assert code == 0, err
    info = json.loads((out / "dva.json").read_text())
    assert info["strategy"] == "bitfit" and info["settings"]["attention_only"] is True
    before = load_file(str(tiny_radbert_model / "unet" / "diffusion_pytorch_model.safetensors"))
    after = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed and all(key.endswith(".bias") and ".attn" in key for key in changed), sorted(changed)
    encoder = load_file(str(tiny_radbert_model / "text_encoder" / "model.safetensors"))
    trained = load_file(str(out / "text_encoder" / "model.safetensors"))
    assert all(torch.equal(encoder[key], trained[key]) for key in encoder)


def test_a_strategys_options_come_from_a_registry_table_checked_against_its_spec(bitfit, catalogue, tmp_path):
    from dva.core.plugins import get_catalogue
    from dva.core.registry import load_entries, resolve

    mine = tmp_path / "mine.toml"
    mine.write_text('[entries.fit]\nfinetune = { strategy = "bitfit", attention_only = true, schedule = "Normal:1" }\n'
                    '[entries.bad]\nfinetune = { strategy = "bitfit", attention_only = "yes" }\n'
                    '[entries.other]\nfinetune = { strategy = "dreambooth", attention_only = true }\n')
    entries = load_entries([mine])
    assert resolve(entries, get_catalogue(), "fit").finetune["attention_only"] is True
    with pytest.raises(ConfigError, match="attention_only' must be of type bool"):
        resolve(entries, get_catalogue(), "bad")
    with pytest.raises(ConfigError, match="unknown fine-tuning setting 'attention_only'"):
        resolve(entries, get_catalogue(), "other")


def test_an_unknown_option_or_another_strategys_flag_is_refused_before_any_model_loads(
    bitfit, tiny_radbert_model, dataset, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr("dva.core.runtime.load_diffusion_parts", lambda *a, **k: pytest.fail("a model was loaded"))
    common = ("--model", tiny_radbert_model, "--data", dataset, "--schedule", "Normal:1", "--out", tmp_path / "m")
    code, err = dva(capsys, "finetune", *common, "--strategy", "bitfit", "--finetune-option", "attention=true")
    assert code == 2 and "finetuner 'bitfit' has no option 'attention' (options: attention_only)" in err
    code, err = dva(capsys, "finetune", *common, "--lora-rank", "8")
    assert code == 2 and "--lora-rank: an option of strategy 'lora', not of 'dreambooth'" in err
    code, err = dva(capsys, "finetune", *common, "--strategy", "lora", "--lora-rank", "0")
    assert code == 2 and "--lora-rank is 0, but must be between 1 and 1024" in err
    code, err = dva(capsys, "finetune", *common, "--strategy", "lora", "--finetune-option", "lora_alpha=nan")
    assert code == 2 and "--finetune-option lora_alpha is nan, but must be a finite number" in err
    assert not (tmp_path / "m").exists()


def test_the_python_api_checks_the_options_against_the_strategys_spec(catalogue, tiny_radbert_model, dataset, tmp_path):
    from dva.finetune.config import FinetuneConfig
    from dva.finetune.schedule import parse_schedule
    from dva.finetune.trainer import train

    config = FinetuneConfig(base_model=str(tiny_radbert_model), data=str(dataset), out=str(tmp_path / "m"),
                            schedule=parse_schedule("Normal:1"), strategy="lora", options={"lora_rnk": 8})
    with pytest.raises(ConfigError, match="finetuner 'lora' has no option 'lora_rnk'"):
        train(config, catalogue)


def test_the_built_in_strategies_are_small_classes_the_trainer_runs():
    from dva.finetune.strategy import Strategy
    from dva.plugins.finetuners import BUILTIN_FINETUNERS

    for spec in BUILTIN_FINETUNERS:
        strategy = spec.resolve()
        assert issubclass(strategy, Strategy) and strategy.name == spec.name
        assert strategy(**spec.check_options({}, spec.name)).options.keys() == spec.options.keys()


def test_the_docs_list_every_setting_with_its_default():
    """docs/finetune.md's tables are generated from the schema and the strategies' specs (python -m
    dva.cli.settings_docs) and must be current; every setting and option is in them."""
    from dva.cli.finetune import FINETUNE_FLAGS, STRATEGY_FLAGS, TABLE_ONLY
    from dva.cli.settings_docs import default_text, stale
    from dva.core.settings import FINETUNE_SETTINGS
    from dva.finetune.config import COMMAND_SETTINGS

    assert "docs/finetune.md" not in stale()
    text = (DOCS / "finetune.md").read_text()
    rows = {line for line in text.splitlines() if line.startswith("| ")}
    documented = {*FINETUNE_FLAGS, *TABLE_ONLY, *STRATEGY_FLAGS}
    assert {s.name for s in (*FINETUNE_SETTINGS, *COMMAND_SETTINGS)} - {s.name for s in documented} == {"class_prompts"}
    for setting in documented:
        named = f"`{setting.name}`" if setting.in_entry else f"`{setting.flags[0]}"
        assert any(named in row and default_text(setting) in row for row in rows), setting.name
