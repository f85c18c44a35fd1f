"""The plugin system: built-ins and third-party plugins register alike; broken ones never take the rest down.

dva's test plugins (``fake_plugin``, ``broken_plugin``: tests/conftest.py) are installed for one test at a
time, never into the virtualenv: a user's ``dva plugins`` lists dva's own components only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

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


def test_the_default_environment_holds_no_test_plugin_and_none_broken():
    catalogue = load_catalogue()
    test_distributions = {"dva-fake-plugin", "dva-broken-plugin", "dva-mri"}
    distributions = {item.plugin.distribution for found in catalogue.components.values() for item in found.values()}
    assert not distributions & test_distributions
    assert not {"fake-bert", "fake-sdedit", "fake-lms", "fake-ct", "brain-mri"} & {
        name for found in catalogue.components.values() for name in found
    }
    assert catalogue.broken == [] and "fake-hello" not in catalogue.commands
    strict = subprocess.run([*DVA, "plugins", "--strict"], capture_output=True, text=True)
    assert strict.returncode == 0, strict.stderr


def test_a_plugin_installed_for_a_test_is_gone_after_it(tmp_path, monkeypatch):
    from dva.core.plugins import get_catalogue
    from dva.testing.pytest_plugin import installing_plugins

    before = get_catalogue()
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    with installing_plugins(tmp_path / "site") as install:
        assert install(Path(__file__).parent / "plugins" / "dva-fake-plugin") == "dva-fake-plugin"
        assert "fake-bert" in get_catalogue().names("encoder") and "fake-bert" in load_catalogue().names("encoder")
        listed = subprocess.run([*DVA, "plugins", "--json"], capture_output=True, text=True, check=True)
        assert "fake-bert" in listed.stdout
        import dva_fake_plugin  # noqa: F401
    assert get_catalogue() is before and "fake-bert" not in load_catalogue().names("encoder")
    assert "dva_fake_plugin" not in sys.modules and os.environ["PYTHONPATH"] == "/elsewhere"
    assert str(tmp_path / "site") not in sys.path


def test_installed_third_party_plugin_is_discovered_with_its_distribution(fake_plugin):
    catalogue = load_catalogue()
    fake = catalogue.components["encoder"]["fake-bert"]
    assert (fake.plugin.distribution, fake.plugin.version) == ("dva-fake-plugin", "1.2.3")
    assert "fake-sdedit" in catalogue.names("prior")
    assert "fake-lms" in catalogue.names("scheduler")


def test_broken_plugin_is_recorded_and_the_rest_still_load(fake_plugin, broken_plugin):
    catalogue = load_catalogue()
    broken = {b.info.distribution: b for b in catalogue.broken}
    assert "dva-broken-plugin" in broken
    assert "ModuleNotFoundError" in broken["dva-broken-plugin"].error
    assert "radbert" in catalogue.names("encoder") and "fake-bert" in catalogue.names("encoder")


def test_strict_loading_turns_a_broken_plugin_into_an_error(broken_plugin):
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


def test_dva_plugins_json_lists_components_with_their_plugin_and_broken_plugins(fake_plugin, broken_plugin):
    result = subprocess.run([*DVA, "plugins", "--json"], capture_output=True, text=True, check=True)
    data = json.loads(result.stdout)
    encoders = {row["name"]: row for row in data["components"]["encoder"]}
    assert encoders["radbert"]["distribution"] == "dva"
    assert encoders["fake-bert"]["distribution"] == "dva-fake-plugin"
    assert {row["name"] for row in data["components"]["prior"]} >= {"sdedit", "controlnet-canny"}
    assert {row["name"] for row in data["components"]["scheduler"]} >= {"pndm", "ddim"}
    assert data["broken"][0]["distribution"] == "dva-broken-plugin"


def test_dva_plugins_table_shows_broken_plugins_and_strict_fails(broken_plugin):
    table = subprocess.run([*DVA, "plugins"], capture_output=True, text=True)
    assert table.returncode == 0
    assert "radbert" in table.stdout and "Broken plugin" in table.stdout
    strict = subprocess.run([*DVA, "plugins", "--strict"], capture_output=True, text=True)
    assert strict.returncode == 2 and "Traceback" not in strict.stderr


def test_plugins_add_commands_through_register_commands(fake_plugin):
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


# -- a plugin that fails while dva starts never takes dva down (issue 12, item 16) -------------------

COMMANDS_RAISE = '''
from dva import PriorSpec, hookimpl

@hookimpl
def register_priors(register):
    register(PriorSpec(name="rogue-prior", implementation="x:y"))

@hookimpl
def register_commands(cli):
    raise RuntimeError("no commands today")
'''

EXITS_ON_IMPORT = '''
import sys

sys.exit("this plugin refuses to load")
'''


def rogue_project(folder, code: str):
    """A plugin project ``dva-rogue`` 0.1 whose entry module is ``code``."""
    (folder / "dva_rogue").mkdir(parents=True)
    (folder / "dva_rogue" / "__init__.py").write_text(code)
    (folder / "pyproject.toml").write_text(
        '[project]\nname = "dva-rogue"\nversion = "0.1"\n\n[project.entry-points.dva]\nrogue = "dva_rogue"\n'
    )
    return folder


def dva_main(capsys, *args) -> tuple[int, str, str]:
    from dva.cli import main

    with pytest.raises(SystemExit) as exited:
        main(list(args))
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def test_register_commands_that_raises_marks_the_plugin_broken_and_registers_nothing_of_it():
    def register_commands(cli):
        @cli.command(name="half-added")
        def half_added():
            """Added before the hook fails."""

        raise RuntimeError("no commands today")

    rogue = plugin_module(
        "rogue",
        register_priors=lambda register: register(PriorSpec(name="rogue-prior", implementation="x:y")),
        register_commands=register_commands,
    )
    catalogue = load_catalogue(entry_points=False, extra=[rogue])
    assert [b.info.name for b in catalogue.broken] == ["rogue"] and "no commands today" in catalogue.broken[0].error
    assert "rogue-prior" not in catalogue.names("prior") and "half-added" not in catalogue.commands
    assert "sdedit" in catalogue.names("prior")


def test_two_plugins_adding_the_same_command_is_a_clash_naming_both():
    def hello(cli):
        cli.command(name="hello")(lambda: None)

    first, second = (plugin_module(name, register_commands=hello) for name in ("first", "second"))
    catalogue = load_catalogue(entry_points=False, extra=[first, second])
    assert catalogue.commands["hello"].plugin.name == "first"
    assert [b.info.name for b in catalogue.broken] == ["second"] and "added by both" in catalogue.broken[0].error


@pytest.mark.parametrize(
    "code, error",
    [(COMMANDS_RAISE, "no commands today"), (EXITS_ON_IMPORT, "sys.exit")],
    ids=["register_commands raises", "sys.exit on import"],
)
def test_an_installed_plugin_that_fails_at_startup_is_listed_as_broken_and_every_command_still_works(
    code, error, dva_install_plugin, fake_plugin, tmp_path, capsys
):
    dva_install_plugin(rogue_project(tmp_path / "dva-rogue", code))
    status, out, _ = dva_main(capsys, "--help")
    assert status == 0 and "plugins" in out and "fake-hello" in out
    status, out, _ = dva_main(capsys, "plugins", "--json")
    broken = json.loads(out)["broken"]
    assert status == 0 and [(b["distribution"], b["version"]) for b in broken] == [("dva-rogue", "0.1")]
    assert error in broken[0]["error"]
    assert "rogue-prior" not in {row["name"] for row in json.loads(out)["components"]["prior"]}
    status, out, _ = dva_main(capsys, "fake-hello")
    assert status == 0 and "hello from dva-fake-plugin" in out
    status, _, err = dva_main(capsys, "plugins", "--strict")
    assert status == 2 and "1 plugin(s) failed to load" in err and "Traceback" not in err
