"""A third-party plugin, registered through the ``dva`` entry-point group like any other."""

import click

from dva import EncoderSpec, ModalitySpec, Option, PriorSpec, RegisterScheduler, SchedulerSpec, hookimpl


@hookimpl
def register_encoders(register):
    register(
        EncoderSpec(
            name="fake-bert",
            implementation="dva.components.text_encoders:TextEncoder",
            description="a BERT-family encoder from a third-party package",
            family="bert",
            default_source="example/fake-bert",
            tiny_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16},
        )
    )


@hookimpl
def register_priors(register):
    register(
        PriorSpec(
            name="fake-sdedit",
            implementation="dva.components.priors:SDEditPrior",
            description="SDEdit under another name",
            options={"strength": Option(float, 0.5, minimum=0.0, maximum=1.0)},
        )
    )


@hookimpl(specname="register_schedulers")  # a function of another name, as pluggy allows
def schedulers(register: RegisterScheduler) -> None:
    register(SchedulerSpec(name="fake-lms", implementation="diffusers:LMSDiscreteScheduler", description="LMS"))


@hookimpl
def register_modalities(register):
    register(ModalitySpec(name="fake-ct", implementation="dva.core.io:read_scan", healthy_prompt="normal ct"))


@hookimpl
def register_commands(cli):
    @cli.command(name="fake-hello")
    def fake_hello():
        """Say hello from the fake plugin."""
        click.echo("hello from dva-fake-plugin")
