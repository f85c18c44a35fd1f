"""The plugin system: built-ins and third-party plugins register alike; broken ones never take the rest down."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from dva import EncoderSpec, PluginError, PriorSpec, hookimpl
from dva.core.plugins import load_catalogue

DVA = [sys.executable, "-m", "dva"]


def plugin_module(name: str, **hooks) -> types.ModuleType:
    module = types.ModuleType(name)
    for hook_name, function in hooks.items():
        setattr(module, hook_name, hookimpl(function))
    return module


def test_builtin_components_are_registered_as_plugins():
    catalogue = load_catalogue(entry_points=False)
    assert {"radbert", "biobert", "pubmedclip", "clip"} <= set(catalogue.names("encoder"))
    assert {"sdedit", "controlnet-canny"} <= set(catalogue.names("prior"))
    assert {"pndm", "ddim", "dpm-solver++", "euler", "unipc"} <= set(catalogue.names("scheduler"))
    assert "chest-xray" in catalogue.names("modality")
    assert catalogue.components["encoder"]["radbert"].plugin.distribution == "dva"


def test_installed_third_party_plugin_is_discovered_with_its_distribution():
    catalogue = load_catalogue()
    fake = catalogue.components["encoder"]["fake-bert"]
    assert (fake.plugin.distribution, fake.plugin.version) == ("dva-fake-plugin", "1.2.3")
    assert "fake-sdedit" in catalogue.names("prior")
    assert "fake-lms" in catalogue.names("scheduler")


def test_broken_plugin_is_recorded_and_the_rest_still_load():
    catalogue = load_catalogue()
    broken = {b.info.distribution: b for b in catalogue.broken}
    assert "dva-broken-plugin" in broken
    assert "ModuleNotFoundError" in broken["dva-broken-plugin"].error
    assert "radbert" in catalogue.names("encoder") and "fake-bert" in catalogue.names("encoder")


def test_strict_loading_turns_a_broken_plugin_into_an_error():
    with pytest.raises(PluginError, match="dva-broken-plugin"):
        load_catalogue(strict=True)


def test_a_misspelled_hook_marks_only_that_plugin_broken():
    typo = plugin_module("typo_plugin", register_encoder=lambda register: None)
    catalogue = load_catalogue(entry_points=False, extra=[typo])
    assert [b.info.name for b in catalogue.broken] == ["typo_plugin"]
    assert "register_encoder" in catalogue.broken[0].error
    assert "radbert" in catalogue.names("encoder")


def test_a_hook_that_raises_marks_the_plugin_broken_and_registers_nothing_of_it():
    def register_priors(register):
        register(PriorSpec(name="half-done", implementation="x:y"))
        raise RuntimeError("boom")

    catalogue = load_catalogue(entry_points=False, extra=[plugin_module("raising", register_priors=register_priors)])
    assert "half-done" not in catalogue.names("prior")
    assert "boom" in catalogue.broken[0].error


def test_duplicate_component_names_are_an_error_naming_both_plugins():
    clash = plugin_module(
        "clash", register_encoders=lambda register: register(EncoderSpec(name="radbert", implementation="x:y"))
    )
    catalogue = load_catalogue(entry_points=False, extra=[clash])
    assert "radbert" in catalogue.broken[0].error and "dva" in catalogue.broken[0].error
    assert catalogue.components["encoder"]["radbert"].plugin.distribution == "dva"
    with pytest.raises(PluginError, match="registered by both"):
        load_catalogue(entry_points=False, extra=[clash], strict=True)


def test_registering_the_wrong_spec_type_is_reported():
    wrong = plugin_module(
        "wrong", register_encoders=lambda register: register(PriorSpec(name="nope", implementation="x:y"))
    )
    catalogue = load_catalogue(entry_points=False, extra=[wrong])
    assert "EncoderSpec" in catalogue.broken[0].error


def test_unknown_component_name_suggests_the_closest():
    catalogue = load_catalogue(entry_points=False)
    with pytest.raises(Exception, match="Did you mean 'radbert'"):
        catalogue.get("encoder", "radbrt")


def test_dva_plugins_json_lists_components_with_their_plugin_and_broken_plugins():
    result = subprocess.run([*DVA, "plugins", "--json"], capture_output=True, text=True, check=True)
    data = json.loads(result.stdout)
    encoders = {row["name"]: row for row in data["components"]["encoder"]}
    assert encoders["radbert"]["distribution"] == "dva"
    assert encoders["fake-bert"]["distribution"] == "dva-fake-plugin"
    assert {row["name"] for row in data["components"]["prior"]} >= {"sdedit", "controlnet-canny"}
    assert {row["name"] for row in data["components"]["scheduler"]} >= {"pndm", "ddim"}
    assert data["broken"][0]["distribution"] == "dva-broken-plugin"


def test_dva_plugins_table_shows_broken_plugins_and_strict_fails():
    table = subprocess.run([*DVA, "plugins"], capture_output=True, text=True)
    assert table.returncode == 0
    assert "radbert" in table.stdout and "Broken plugin" in table.stdout
    strict = subprocess.run([*DVA, "plugins", "--strict"], capture_output=True, text=True)
    assert strict.returncode == 2 and "Traceback" not in strict.stderr


def test_plugins_add_commands_through_register_commands():
    result = subprocess.run([*DVA, "fake-hello"], capture_output=True, text=True, check=True)
    assert "hello from dva-fake-plugin" in result.stdout


@pytest.mark.parametrize("args", [["--help"], ["plugins"], ["registry", "validate"], ["run", "--help"]])
def test_help_plugins_and_registry_do_not_import_torch(args):
    code = (
        "import sys\n"
        "from dva.cli import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
