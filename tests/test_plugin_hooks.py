"""Hooks go through pluggy: ``specname``, opt-in arguments and typed ``register`` callbacks work as pluggy
and docs/plugins.md say, while each plugin is still loaded alone (one that fails contributes nothing)."""

from __future__ import annotations

import types
import typing
from collections.abc import Callable

import click
import pytest

from dva import PluginError, PriorSpec, SchedulerSpec, hookimpl
from dva.core import hookspecs
from dva.core.plugins import HOOK_FOR_KIND, load_catalogue
from dva.core.specs import SPEC_KINDS

PRIOR = PriorSpec(name="hooked-sdedit", implementation="dva.components.priors:SDEditPrior")
LMS = SchedulerSpec(name="hooked-lms", implementation="diffusers:LMSDiscreteScheduler")


def module(name: str, **functions: Callable) -> types.ModuleType:
    """A plugin module holding ``functions`` under the given attribute names, already marked."""
    plugin = types.ModuleType(name)
    for attribute, function in functions.items():
        setattr(plugin, attribute, function)
    return plugin


def load(*plugins: object):
    return load_catalogue(entry_points=False, extra=plugins)


def test_specname_registers_through_a_function_of_another_name():
    plugin = module("named", my_priors=hookimpl(specname="register_priors")(lambda register: register(PRIOR)))
    catalogue = load(plugin)
    assert catalogue.broken == [] and "hooked-sdedit" in catalogue.names("prior")
    assert catalogue.components["prior"]["hooked-sdedit"].plugin.name == "named"


def test_two_implementations_of_one_hook_in_one_plugin_both_register():
    plugin = module(
        "twice",
        register_priors=hookimpl(lambda register: register(PRIOR)),
        more_schedulers=hookimpl(specname="register_schedulers")(lambda register: register(LMS)),
        register_schedulers=hookimpl(lambda register: register(SchedulerSpec(name="hooked-ddim",
                                                                             implementation="diffusers:DDIMScheduler"))),
    )
    catalogue = load(plugin)
    assert {"hooked-lms", "hooked-ddim"} <= set(catalogue.names("scheduler")) and "hooked-sdedit" in catalogue.names("prior")


def test_a_misspelled_specname_marks_the_plugin_broken():
    plugin = module("typo", my_priors=hookimpl(specname="register_prior")(lambda register: register(PRIOR)))
    catalogue = load(plugin)
    assert [b.info.name for b in catalogue.broken] == ["typo"] and "register_prior" in catalogue.broken[0].error
    with pytest.raises(PluginError, match="typo"):
        load_catalogue(entry_points=False, strict=True, extra=[plugin])


def test_an_argument_less_hook_is_called_and_its_plugin_is_not_broken():
    """docs/plugins.md: a hook may take fewer arguments than its spec; one taking none still runs (for its
    side effects), registers nothing, and the plugin's other hooks register as usual."""
    calls = []

    def register_priors() -> None:
        calls.append("priors")

    def register_commands() -> None:
        calls.append("commands")

    plugin = module("quiet", register_priors=hookimpl(register_priors), register_commands=hookimpl(register_commands),
                    register_schedulers=hookimpl(lambda register: register(LMS)))
    catalogue = load(plugin)
    assert catalogue.broken == [] and sorted(calls) == ["commands", "priors"]
    assert "hooked-lms" in catalogue.names("scheduler")
    assert not [item for item in catalogue.components["prior"].values() if item.plugin.name == "quiet"]


def test_an_implementation_with_an_optional_parameter_gets_only_the_hooks_arguments():
    plugin = module("optional", register_priors=hookimpl(lambda register, extra=PRIOR: register(extra)))
    assert "hooked-sdedit" in load(plugin).names("prior")


def test_a_class_instance_plugin_with_specname_methods_registers():
    class Plugin:
        @hookimpl(specname="register_priors")
        def priors(self, register):
            register(PRIOR)

    assert "hooked-sdedit" in load(Plugin()).names("prior")


def test_a_failing_plugin_does_not_call_or_block_the_others_hooks():
    """Each plugin's hooks are called alone: the other plugin's implementations of the same hook do not run
    again for it, and its failure leaves the first plugin's components in place."""
    calls = []

    def good(register):
        calls.append("good")
        register(PRIOR)

    def bad(register):
        calls.append("bad")
        register(LMS)
        raise RuntimeError("boom")

    catalogue = load(module("good", mine=hookimpl(specname="register_priors")(good)),
                     module("bad", theirs=hookimpl(specname="register_schedulers")(bad)))
    assert calls == ["good", "bad"] and [b.info.name for b in catalogue.broken] == ["bad"]
    assert "hooked-sdedit" in catalogue.names("prior") and "hooked-lms" not in catalogue.names("scheduler")


def test_a_hook_returning_specs_instead_of_registering_them_is_broken_with_a_hint():
    catalogue = load(module("returns", register_priors=hookimpl(lambda register: [PRIOR])))
    assert "call register(spec)" in catalogue.broken[0].error and "hooked-sdedit" not in catalogue.names("prior")


def test_a_hook_wrapper_is_refused_rather_than_silently_ignored():
    def register_priors(register):
        yield

    catalogue = load(module("wrapping", register_priors=hookimpl(wrapper=True)(register_priors)))
    assert [b.info.name for b in catalogue.broken] == ["wrapping"] and "wrapper" in catalogue.broken[0].error


def test_register_commands_with_specname_adds_its_command():
    def my_commands(cli):
        @cli.command(name="hooked-hello")
        def hello():
            click.echo("hello")

    catalogue = load(module("commands", my_commands=hookimpl(specname="register_commands")(my_commands)))
    assert catalogue.broken == [] and catalogue.commands["hooked-hello"].plugin.name == "commands"


@pytest.mark.parametrize("kind", sorted(SPEC_KINDS))
def test_register_is_typed_with_the_spec_class_its_hook_accepts(kind):
    hook = getattr(hookspecs, HOOK_FOR_KIND[kind])
    assert typing.get_type_hints(hook)["register"] == Callable[[SPEC_KINDS[kind]], None]


def test_register_commands_is_typed_with_a_click_group():
    assert typing.get_type_hints(hookspecs.register_commands, {"click": click})["cli"] is click.Group


def test_every_spec_hook_refuses_another_kinds_spec():
    plugin = module("mixed", register_schedulers=hookimpl(lambda register: register(PRIOR)))
    catalogue = load(plugin)
    assert "register_schedulers must register SchedulerSpec objects, got PriorSpec" in catalogue.broken[0].error
