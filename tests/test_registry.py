"""registry.toml: named recipes, extended and overridden, validated with errors naming file, entry and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dva.core.errors import ConfigError
from dva.core.registry import builtin_registry_text, load_entries, resolve, validate

ROOT = Path(__file__).resolve().parents[1]


def recipe(catalogue, entry, overrides=None, extra=()):
    return resolve(load_entries(extra), catalogue, entry, overrides)


def test_the_packaged_registry_is_the_top_level_file():
    assert builtin_registry_text() == (ROOT / "registry.toml").read_text()


def test_thesis_entry_is_the_thesis_setting(catalogue):
    thesis = recipe(catalogue, "thesis")
    assert (thesis.encoder, thesis.prior, thesis.scheduler, thesis.steps) == ("radbert", "sdedit", "pndm", 75)
    assert thesis.prior_options["strength"] == 0.85
    assert (thesis.guidance_scale, thesis.prompt) == (7.5, "normal chest x ray")
    assert thesis.model == "CompVis/stable-diffusion-v1-4"


def test_thesis_best_and_induction_extend_the_thesis(catalogue):
    best = recipe(catalogue, "thesis-best")
    assert (best.prior_options["strength"], best.guidance_scale, best.encoder) == (0.55, 4.0, "radbert")
    induce = recipe(catalogue, "induce-cardiomegaly")
    assert (induce.prompt, induce.prior_options["strength"], induce.guidance_scale) == ("cardiomegaly", 0.9, 7.0)


def test_controlnet_entry_and_default_entry(catalogue):
    control = recipe(catalogue, "controlnet-canny")
    assert control.prior == "controlnet-canny"
    assert control.prior_options["controlnet"] == "lllyasviel/sd-controlnet-canny"
    default = recipe(catalogue, "default")
    assert default.encoder is None and default.prompt is None  # the model's healthy prompt, else the modality's


def test_flags_override_the_entry(catalogue):
    overridden = recipe(catalogue, "thesis", {"strength": 0.3, "steps": 20, "scheduler": "ddim", "encoder": "biobert"})
    assert overridden.prior_options["strength"] == 0.3
    assert (overridden.steps, overridden.scheduler, overridden.encoder) == (20, "ddim", "biobert")


def test_switching_prior_by_flag_keeps_the_strength_but_drops_foreign_options(catalogue):
    switched = recipe(catalogue, "controlnet-canny", {"prior": "sdedit"})
    assert switched.prior_options == {"strength": 0.85, "region": ""}  # sdedit's own region: its default


def test_flag_options_apply_to_the_prior_chosen_by_flag_whatever_their_order(catalogue):
    overrides = {"prior_options": {"low_threshold": 50}, "strength": 0.4, "prior": "controlnet-canny"}
    chosen = recipe(catalogue, "thesis", overrides)
    assert chosen.prior == "controlnet-canny"
    assert (chosen.prior_options["low_threshold"], chosen.prior_options["strength"]) == (50, 0.4)


def test_out_of_range_flag_names_the_flag(catalogue):
    with pytest.raises(ConfigError, match=r"--strength is 1.5, but must be between 0.0 and 1.0"):
        recipe(catalogue, "thesis", {"strength": 1.5})


def test_user_registry_adds_and_overrides_entries(catalogue, tmp_path):
    mine = tmp_path / "mine.toml"
    mine.write_text(
        '[entries.mine]\nextends = "thesis-best"\nprompt = "healthy lungs"\n\n'
        '[entries.thesis]\nmodel = "/models/sd"\nencoder = "radbert"\n'
    )
    assert recipe(catalogue, "mine", extra=[mine]).prompt == "healthy lungs"
    assert recipe(catalogue, "mine", extra=[mine]).prior_options["strength"] == 0.55
    assert recipe(catalogue, "thesis", extra=[mine]).model == "/models/sd"


@pytest.mark.parametrize(
    "body, expected",
    [
        ('steps = "many"', r"\[entries.bad\] key 'steps' must be of type int"),
        ('encoder = "radbrt"', r"\[entries.bad\] key 'encoder'.*Did you mean 'radbert'"),
        ('colour = "red"', r"\[entries.bad\] key 'colour': unknown key"),
        ('prior = { name = "sdedit", strenght = 0.5 }', r"\[entries.bad\] key 'prior'.*no option 'strenght'"),
        ('prior = { name = "sdedit", strength = 2 }', r"\[entries.bad\] key 'prior', option 'strength' is 2.0"),
        ('extends = "bad"', r"cycle"),
        ('dtype = "float8"', r"must be one of"),
    ],
)
def test_validate_errors_name_file_entry_and_key(catalogue, tmp_path, body, expected):
    bad = tmp_path / "bad.toml"
    bad.write_text(f"[entries.bad]\n{body}\n")
    problems = validate(load_entries([bad]), catalogue)
    assert len(problems) == 1
    assert str(bad) in problems[0]
    assert __import__("re").search(expected, problems[0]), problems[0]


def test_builtin_registry_is_valid(catalogue):
    assert validate(load_entries(), catalogue) == []


def test_registry_commands(tmp_path):
    dva = [sys.executable, "-m", "dva", "registry"]
    shown = subprocess.run([*dva, "show", "thesis-best", "--json"], capture_output=True, text=True, check=True)
    assert '"strength": 0.55' in shown.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[entries.bad]\nscheduler = "pdnm"\n')
    checked = subprocess.run([*dva, "validate", "--registry", str(bad)], capture_output=True, text=True)
    assert checked.returncode == 2
    assert f"{bad} [entries.bad] key 'scheduler'" in checked.stderr and "Did you mean 'pndm'" in checked.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[entries.x\n")
    parsed = subprocess.run([*dva, "validate", "--registry", str(broken)], capture_output=True, text=True)
    assert parsed.returncode == 2 and "not valid TOML" in parsed.stderr and "Traceback" not in parsed.stderr
