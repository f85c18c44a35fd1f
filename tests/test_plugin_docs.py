"""Every hook is documented in docs/plugins.md, with its arguments and every field of the spec its
``register`` accepts, and every hook has a ``test_hook_<name>`` here that a plugin module exercises
(datasette's rule: a hook added without documentation or a test fails this module)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import types
from pathlib import Path

import numpy as np
import pytest

from dva import (
    ComponentSpec, ConfigError, DatasetSpec, EncoderSpec, FinetunerSpec, InputError, MetricSpec, ModalitySpec, Option,
    PriorSpec, SchedulerSpec, hookimpl,
)
from dva.core import hookspecs
from dva.core.plugins import HOOK_FOR_KIND, load_catalogue
from dva.core.specs import SPEC_KINDS
from dva.testing import conformance

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
HOOKS = {name: function for name, function in vars(hookspecs).items() if hasattr(function, "dva_spec")}
HEADING = re.compile(r"^### `(\w+)\(([^)]*)\)`\s*$", re.MULTILINE)


def hook_sections() -> dict[str, tuple[list[str], str]]:
    """``{hook: (documented arguments, section text)}`` from the ``### `hook(args)` `` headings."""
    text = DOCS.read_text(encoding="utf-8")
    found = {}
    headings = list(HEADING.finditer(text))
    for index, heading in enumerate(headings):
        end = headings[index + 1].start() if index + 1 < len(headings) else text.find("\n## ", heading.end())
        arguments = [a.strip() for a in heading[2].split(",") if a.strip()]
        found[heading[1]] = (arguments, text[heading.end() : end if end != -1 else len(text)])
    return found


def plugin(name: str, **hooks) -> types.ModuleType:
    module = types.ModuleType(name)
    for hook_name, function in hooks.items():
        setattr(module, hook_name, hookimpl(function))
    return module


def catalogue_with(**hooks):
    return load_catalogue(entry_points=False, strict=True, extra=[plugin("doc_plugin", **hooks)])


# -- the rules --------------------------------------------------------------------------------------


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_every_hook_is_documented_with_its_arguments(hook):
    sections = hook_sections()
    assert hook in sections, f"docs/plugins.md has no '### `{hook}(...)`' section"
    assert sections[hook][0] == list(inspect.signature(HOOKS[hook]).parameters)


def test_only_existing_hooks_are_documented():
    assert set(hook_sections()) <= set(HOOKS)


@pytest.mark.parametrize("kind", sorted(SPEC_KINDS))
def test_what_register_accepts_is_documented_field_by_field(kind):
    spec_class, (_, section) = SPEC_KINDS[kind], hook_sections()[HOOK_FOR_KIND[kind]]
    assert f"`{spec_class.__name__}`" in section
    common = {field.name for field in dataclasses.fields(ComponentSpec)}
    for field in {field.name for field in dataclasses.fields(spec_class)} - common:
        assert f"`{field}`" in section, f"{spec_class.__name__}.{field} is not documented under {HOOK_FOR_KIND[kind]}"
    text = DOCS.read_text(encoding="utf-8")
    assert all(f"`{field}`" in text for field in common)


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_every_hook_has_a_test(hook):
    assert f"test_hook_{hook}" in globals(), f"no test_hook_{hook} in {__name__}"


def test_every_conformance_check_is_documented():
    text = DOCS.read_text(encoding="utf-8")
    checks = [name for name in vars(conformance) if name.startswith("check_")]
    assert checks and all(f"`{name}(" in text for name in checks)


def section(title: str) -> str:
    """The text of docs/plugins.md's ``## title`` section."""
    text = DOCS.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_the_docs_and_the_example_plugin_use_only_public_dva_names():
    """A plugin author imports ``dva`` (and ``dva.testing`` in tests), never dva's internals."""
    internal = re.compile(r"^\s*(from|import)\s+dva\.(core|components|plugins|finetune|datasets)\b", re.MULTILINE)
    example = DOCS.parents[1] / "examples" / "dva-mri"
    for path in [DOCS, *sorted(example.rglob("*.py"))]:
        assert not internal.search(path.read_text(encoding="utf-8")), f"{path} imports dva internals"
    assert "dva.core" not in DOCS.read_text(encoding="utf-8")


def test_the_smallest_prior_plugin_in_the_docs_installs_conforms_and_is_as_long_as_they_say(
    tmp_path, dva_install_plugin
):
    text = section("The smallest prior plugin")
    files = {}
    for block in re.findall(r"^```(?:toml|python)\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        name, _, body = block.partition("\n")
        files[name.removeprefix("# ")] = body
    assert set(files) == {"pyproject.toml", "dva_my_prior/__init__.py", "dva_my_prior/prior.py"}
    for name, body in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body, encoding="utf-8")
    lines = sum(1 for body in files.values() for line in body.splitlines() if line.strip())
    assert f"three files, {lines} lines" in text
    dva_install_plugin(tmp_path)
    import dva_my_prior

    specs = conformance.check_plugin(dva_my_prior)
    conformance.check_light_import("dva_my_prior")
    conformance.check_prior(specs["prior"]["my-sdedit"])
    conformance.check_prior(specs["prior"]["my-sdedit"], {"strength": 0.5}, steps=4)


# -- one test per hook ------------------------------------------------------------------------------


def test_hook_register_encoders():
    from dva.core.registry import load_entries, resolve

    spec = EncoderSpec(
        name="doc-bert", implementation="dva.components.text_encoders:TextEncoder", family="bert",
        tiny_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16},
    )
    catalogue = catalogue_with(register_encoders=lambda register: register(spec))
    assert resolve(load_entries(), catalogue, "default", {"encoder": "doc-bert"}).encoder == "doc-bert"
    assert tuple(catalogue.get("encoder", "doc-bert").create().encode(["normal"]).shape) == (1, 77, 32)


def test_hook_register_priors():
    from dva.core.registry import load_entries, resolve

    options = {"strength": Option(float, 0.5, "noise level", 0.0, 1.0)}
    spec = PriorSpec(name="doc-sdedit", implementation="dva.components.priors:SDEditPrior", options=options)
    catalogue = catalogue_with(register_priors=lambda register: register(spec))
    recipe = resolve(load_entries(), catalogue, "default", {"prior": "doc-sdedit", "strength": 0.3})
    assert recipe.prior_options == {"strength": 0.3}
    assert catalogue.get("prior", "doc-sdedit").create(**recipe.prior_options).strength == 0.3
    with pytest.raises(ConfigError, match="between 0.0 and 1.0"):
        resolve(load_entries(), catalogue, "default", {"prior": "doc-sdedit", "strength": 2.0})


def test_hook_register_schedulers():
    from dva.testing.tiny import sd_scheduler

    spec = SchedulerSpec(name="doc-lms", implementation="diffusers:LMSDiscreteScheduler",
                         config_overrides={"timestep_spacing": "trailing"})
    catalogue = catalogue_with(register_schedulers=lambda register: register(spec))
    scheduler = catalogue.get("scheduler", "doc-lms").from_config(sd_scheduler().config)
    assert type(scheduler).__name__ == "LMSDiscreteScheduler" and scheduler.config.timestep_spacing == "trailing"


def noop_train(config, catalogue, on_step=lambda step, total, label, loss: None) -> Path:
    """A fine-tuning strategy that trains nothing: one step reported, an output folder written."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    on_step(1, 1, config.schedule[0].label, 0.5)
    (out / "dva.json").write_text(json.dumps({"strategy": "doc-noop"}))
    return out


def test_hook_register_finetuners(dva_plugins, dataset, tmp_path, capsys):
    from dva.cli import main

    spec = FinetunerSpec(name="doc-noop", implementation=f"{__name__}:noop_train")
    dva_plugins(plugin("doc_plugin", register_finetuners=lambda register: register(spec)))
    with pytest.raises(SystemExit) as done:
        main(["finetune", "--strategy", "doc-noop", "--model", "unused", "--data", str(dataset),
              "--schedule", "Normal:1", "--out", str(tmp_path / "model")])
    assert done.value.code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "model" / "dva.json").read_text()) == {"strategy": "doc-noop"}


class AbsoluteDifference:
    def score(self, image, counterfactual, mask=None) -> dict[str, float]:
        return {"l1": float(np.abs(image - counterfactual).mean())}


def test_hook_register_metrics(tmp_path):
    spec = MetricSpec(name="doc-l1", implementation=f"{__name__}:AbsoluteDifference", scope="pairs", columns=("l1",))
    catalogue = catalogue_with(register_metrics=lambda register: register(spec))
    assert conformance.check_metric(catalogue.get("metric", "doc-l1"), {"l1": 0.0}, tmp_path) == {"l1": 0.0}


def read_stack(path, mask=None, first: int = 0):
    """A '.stack.npy' file: (N, H, W) images in [0, 1]; images from ``first`` on."""
    from dva import ScanImage, ScanInput, file_sha256

    stack = np.load(path)
    if stack.ndim != 3:
        raise InputError(f"{path}: a stack is (N, H, W), not {stack.shape}; save one.")
    images = tuple(ScanImage(stack[k].astype(np.float32), f"layer{k}", stack[k] > 0.1) for k in range(first, len(stack)))
    return ScanInput(Path(path), file_sha256(path), "stack", images, {"shape": stack.shape, "first": first})


def write_stack(folder, source, results) -> list[str]:
    """Every image's attribution map put back into a stack of the input's shape."""
    from dva import atomic_write_bytes

    maps = np.zeros(source.context["shape"], np.float32)
    for offset, result in enumerate(results):
        maps[source.context["first"] + offset] = result.attribution
    buffer = __import__("io").BytesIO()
    np.save(buffer, maps)
    atomic_write_bytes(Path(folder) / "attribution.npy", buffer.getvalue())
    return ["attribution.npy"]


def test_hook_register_modalities(tiny_sd, tmp_path):
    """A file expands into named images; dva run writes each in its folder, then the modality's own output."""
    from dva.core.modality import modality_for_inputs
    from dva.core.registry import load_entries, resolve
    from dva.core.run import run

    spec = ModalitySpec(
        name="doc-stack", implementation=f"{__name__}:read_stack", writer=f"{__name__}:write_stack",
        healthy_prompt="normal stack", extensions=(".stack.npy",), options={"first": Option(int, 0, minimum=0)},
    )
    catalogue = catalogue_with(register_modalities=lambda register: register(spec))
    path = tmp_path / "in" / "scan.stack.npy"
    path.parent.mkdir()
    np.save(path, np.stack([np.full((32, 48), 0.2 + 0.2 * k, np.float32) for k in range(3)]))
    assert modality_for_inputs([str(path.parent)], catalogue) == "doc-stack"
    (tmp_path / "chest.png").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"different modalities: chest.png \(chest-xray\), scan.stack.npy \(doc-stack\)"):
        modality_for_inputs([str(path), str(tmp_path / "chest.png")], catalogue)
    conformance.check_modality(catalogue.get("modality", "doc-stack"), path, tmp_path / "check", first=1)
    recipe = resolve(load_entries(), catalogue, "default", {
        "model": str(tiny_sd), "steps": 2, "modality": "doc-stack", "modality_options": {"first": 1},
    })
    result = run(recipe, [str(path.parent)], tmp_path / "out", catalogue)
    assert result.exit_code == 0 and result.header["prompt"] == "normal stack"
    assert [job.key for job in result.jobs] == ["scan/layer1", "scan/layer2"]
    assert (tmp_path / "out" / "scan" / "layer2" / "fullsize" / "counterfactual.png").is_file()
    maps = np.load(tmp_path / "out" / "scan" / "attribution.npy")
    assert maps.shape == (3, 32, 48) and not maps[0].any() and maps[1:].any()
    assert json.loads((tmp_path / "out" / "scan" / "record.json").read_text())["files"] == ["attribution.npy"]


def open_list(location, **options):
    """A folder with ``list.txt``: one ``label file`` per line."""
    from dva import LabelledDataset, Sample

    root = Path(location)
    rows = [line.split(maxsplit=1) for line in (root / "list.txt").read_text().splitlines() if line.strip()]
    return LabelledDataset(root, "doc-list", [Sample(root / name, label) for label, name in rows])


def looks_like_list(location) -> bool:
    return (Path(location) / "list.txt").is_file()


def test_hook_register_datasets(dataset, tmp_path):
    import shutil

    from dva.datasets.layouts import open_dataset

    spec = DatasetSpec(name="doc-list", implementation=f"{__name__}:open_list", detect=f"{__name__}:looks_like_list")
    catalogue = catalogue_with(register_datasets=lambda register: register(spec))
    root = tmp_path / "listed"
    root.mkdir()
    for index, image in enumerate(sorted(dataset.rglob("*.png"))[:2]):
        shutil.copy(image, root / f"{index}.png")
    (root / "list.txt").write_text("Normal 0.png\nEffusion 1.png\n")
    opened = open_dataset(root, "auto", catalogue=catalogue)
    assert opened.layout == "doc-list" and opened.classes() == ["Normal", "Effusion"]
    conformance.check_dataset_layout(catalogue.get("dataset", "doc-list"), root)


def test_hook_register_commands():
    import click
    from click.testing import CliRunner

    def register_commands(cli):
        @cli.command(name="doc-hello")
        @click.argument("who")
        def hello(who):
            click.echo(f"hello {who}")

    catalogue = catalogue_with(register_commands=register_commands)
    group = click.Group("dva")
    catalogue.manager.hook.register_commands(cli=group)
    assert CliRunner().invoke(group, ["doc-hello", "reader"]).output == "hello reader\n"
