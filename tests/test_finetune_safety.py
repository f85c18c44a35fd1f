"""dva finetune never writes what was not asked for: real prior-preservation images, no NaN model, no overwritten base,
no resumed run that silently mixes settings, one log row per step."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import click
import pytest
import torch
from safetensors.torch import load_file

from dva.core.errors import ConfigError
from dva.finetune import trainer
from dva.finetune.config import FinetuneConfig
from dva.finetune.data import TextCache, TrainingData
from dva.finetune.strategy import Strategy
from dva.finetune.trainer import train
from tests.test_finetune import config, log_rows


def dva(capsys, *args: str) -> tuple[int, str]:
    """``dva ARGS`` in this process: the exit status and stderr."""
    from dva.cli import main

    with pytest.raises(SystemExit) as done:
        main([str(arg) for arg in args])
    return done.value.code, capsys.readouterr().err


def one_sentence(err: str) -> str:
    """The error of a refusal: one line (after any progress bar), no traceback."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line]
    assert len(errors) == 1 and errors[0] == lines[-1] and errors[0].startswith("Error:"), err
    assert "Traceback" not in err, err
    return errors[0]


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fails the test if any diffusion model is loaded."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")

    monkeypatch.setattr("dva.core.runtime.load_diffusion_parts", refuse)


def snapshot(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def radbert_folder(tiny_radbert_model: Path, folder: Path) -> Path:
    """The tiny RadBERT weights and tokenizer in one folder, as --encoder-path takes them."""
    for part in ("text_encoder", "tokenizer"):
        shutil.copytree(tiny_radbert_model / part, folder, dirs_exist_ok=True)
    return folder


# -- 5. prior preservation: real images of the healthy class ------------------------------------------------------


def test_prior_preservation_trains_on_the_datasets_healthy_images_with_the_healthy_prompt(
    catalogue, tiny_sd, tiny_radbert_model, dataset, tmp_path, monkeypatch
):
    """Stock SD (CLIP) fine-tuned with RadBERT, the thesis' case: the base draws noise through RadBERT, so the prior
    images are the dataset's Normal scans (never generated), prompted as the healthy class, even in a phase that
    trains another class only."""
    drawn: list[Path] = []
    prompts: list[str] = []
    posterior, cache = TrainingData.posterior, TextCache.__call__

    def record_images(self, chosen, device):
        drawn.extend(self._path(sample) for sample in chosen)
        return posterior(self, chosen, device)

    def record_prompts(self, batch, device):
        prompts.extend(batch)
        return cache(self, batch, device)

    monkeypatch.setattr(TrainingData, "posterior", record_images)
    monkeypatch.setattr(TextCache, "__call__", record_prompts)
    out = tmp_path / "model"
    train(config(tiny_sd, dataset, out, "Lung Opacity:2", encoder="radbert",
                 encoder_path=str(radbert_folder(tiny_radbert_model, tmp_path / "radbert")), prior_weight=1.0,
                 train_text_encoder=False, cache_latents=True, class_prompts={"Normal": "Normal chest scan"}), catalogue)
    assert not (out / "class-images").exists(), "no class image was generated"
    normal = {path.resolve() for path in (dataset / "Normal").iterdir()}
    opacity = {path.resolve() for path in (dataset / "Lung Opacity").iterdir()}
    assert {path.resolve() for path in drawn} <= normal | opacity
    assert len(drawn) == 8 and sum(path.resolve() in normal for path in drawn) == 4, "half of each batch: prior images"
    assert prompts.count("Normal chest scan") == 4 and prompts.count("Lung Opacity") == 4
    info = json.loads((out / "dva.json").read_text())
    assert info["prior_preservation"] == {"weight": 1.0, "source": "dataset", "images": "dataset class 'Normal'",
                                          "prompt": "Normal chest scan", "count": 3}


def test_generating_class_images_through_an_encoder_the_base_never_learned_is_refused(
    tiny_sd, dataset, tmp_path, capsys, no_model_loads
):
    code, err = dva(capsys, "finetune", "--model", tiny_sd, "--encoder", "radbert", "--data", dataset,
                    "--schedule", "Normal:1", "--out", tmp_path / "model", "--device", "cpu", "--generate-class-images")
    line = one_sentence(err)
    assert code == 2 and "--generate-class-images" in line and "trained with encoder 'clip', not 'radbert'" in line
    assert not (tmp_path / "model").exists()


def test_class_images_are_generated_only_through_the_base_models_own_encoder(
    catalogue, tiny_radbert_model, dataset, tmp_path
):
    out = tmp_path / "model"
    train(config(tiny_radbert_model, dataset, out, "Lung Opacity:1", prior_weight=1.0, generate_class_images=True,
                 class_images=2, class_steps=2, class_prompt="chest x ray"), catalogue)
    assert len(list((out / "class-images").rglob("*.png"))) == 2
    prior = json.loads((out / "dva.json").read_text())["prior_preservation"]
    assert prior["source"] == "generated" and prior["prompt"] == "chest x ray"


def test_a_dataset_without_the_healthy_class_needs_class_data_or_no_prior(catalogue, tiny_radbert_model, dataset,
                                                                         tmp_path, no_model_loads):
    with pytest.raises(ConfigError, match="healthy class 'COVID', which it lacks.*--class-data DIR.*--prior-weight 0"):
        train(config(tiny_radbert_model, dataset, tmp_path / "m", "Normal:1", prior_weight=1.0, healthy_class="COVID"),
              catalogue)
    with pytest.raises(ConfigError, match="--class-data .*holds no images"):
        train(config(tiny_radbert_model, dataset, tmp_path / "m", "Normal:1", prior_weight=1.0,
                     class_data=str(tmp_path / "nowhere")), catalogue)


def test_the_thesis_recipe_preserves_the_prior_with_real_normal_scans(dataset):
    """finetune-thesis trains SD v1-4 (CLIP) with RadBERT: its prior images are the dataset's Normal scans."""
    from dva.core.model_folder import inspect_model
    from dva.core.plugins import load_catalogue
    from dva.core.registry import load_entries, resolve
    from dva.datasets.layouts import open_dataset
    from dva.finetune.prior import plan_prior
    from dva.finetune.schedule import parse_schedule

    recipe = resolve(load_entries(), load_catalogue(entry_points=False), "finetune-thesis")
    settings = {key: value for key, value in recipe.finetune.items() if key != "strategy"}
    thesis = FinetuneConfig(base_model=recipe.model, encoder=recipe.encoder, data=str(dataset), out="unused",
                                       **{**settings, "schedule": parse_schedule(settings["schedule"])})
    plan = plan_prior(thesis, open_dataset(str(dataset)), inspect_model(recipe.model))
    assert plan is not None and plan.weight == 1.0
    assert plan.describe()["images"] == "dataset class 'Normal'" and plan.prompt == "Normal chest scan"
    assert {path.parent.name for path in plan.files} == {"Normal"}


# -- 8. NaN and infinity -------------------------------------------------------------------------------------------


def test_every_number_flag_of_dva_finetune_is_checked_as_a_typed_option():
    """A number flag that is neither a finetune-table setting nor a strategy's option would skip the finiteness and
    range checks (and click's own range types would answer in click's words, not dva's)."""
    from dva.cli.finetune import finetune
    from dva.core.settings import FINETUNE_SETTINGS
    from dva.plugins.finetuners import BUILTIN_FINETUNERS

    typed = {setting.name for setting in FINETUNE_SETTINGS} | {key for spec in BUILTIN_FINETUNERS for key in spec.options}
    numbers = [param for param in finetune.params if isinstance(param.type, (click.types.FloatParamType,
                                                                            click.types.IntParamType))]
    assert {"snr_gamma", "learning_rate", "lora_rank"} <= {param.name for param in numbers}
    assert [param.name for param in numbers if param.name not in typed] == []
    assert [param.name for param in numbers if isinstance(param.type, click.types._NumberRangeBase)] == []


@pytest.mark.parametrize(("flag", "value"), [("--snr-gamma", "nan"), ("--learning-rate", "inf"),
                                             ("--prior-weight", "nan"), ("--lesion-weight", "-inf")])
def test_non_finite_option_values_are_refused_before_any_model_loads(
    tiny_radbert_model, dataset, tmp_path, capsys, no_model_loads, flag, value
):
    code, err = dva(capsys, "finetune", "--model", tiny_radbert_model, "--data", dataset, "--schedule", "Normal:1",
                    "--out", tmp_path / "model", "--device", "cpu", flag, value)
    assert code == 2 and one_sentence(err) == f"Error: {flag} is {value}, but must be a finite number."
    assert not (tmp_path / "model").exists()


def test_non_finite_settings_are_refused_through_the_python_api_too(catalogue, tiny_radbert_model, dataset, tmp_path,
                                                                    no_model_loads):
    with pytest.raises(ConfigError, match="--snr-gamma is nan, but must be a finite number"):
        train(config(tiny_radbert_model, dataset, tmp_path / "m", "Normal:1", snr_gamma=float("nan")), catalogue)


def nan_loss_from(step_index: int, monkeypatch) -> None:
    """The loss of ``step_index`` (0-based) and later becomes NaN, whatever the strategy."""
    loss = Strategy.loss

    def poisoned(self, run, step, micro, phase):
        value = loss(self, run, step, micro, phase)
        return value * float("nan") if step >= step_index else value

    monkeypatch.setattr(Strategy, "loss", poisoned)


def assert_no_model(out: Path) -> None:
    assert not (out / "dva.json").exists() and not (out / "unet").exists() and not (out / "text_encoder").exists()


def test_a_nan_loss_stops_training_at_its_step_with_exit_2_and_writes_no_model(
    tiny_radbert_model, dataset, tmp_path, capsys, monkeypatch
):
    nan_loss_from(1, monkeypatch)
    out = tmp_path / "model"
    code, err = dva(capsys, "finetune", "--model", tiny_radbert_model, "--data", dataset, "--schedule", "Normal:3",
                    "--out", out, "--device", "cpu", "--prior-weight", "0", "--checkpoint-every", "1")
    line = one_sentence(err)
    assert code == 2 and "Training stopped at step 2 (Normal): the loss is nan, not a finite number" in line
    assert "--resume latest --resume-with-new-settings" in line
    assert_no_model(out)
    assert [path.name for path in (out / "checkpoints").iterdir()] == ["step-00000001"]
    weights = load_file(str(out / "checkpoints" / "step-00000001" / "model.safetensors"))
    assert all(torch.isfinite(weight).all() for weight in weights.values())
    assert [int(row["step"]) for row in log_rows(out)] == [1]


def test_a_nan_loss_stops_textual_inversion_too(catalogue, tiny_radbert_model, dataset, tmp_path, monkeypatch):
    nan_loss_from(0, monkeypatch)
    with pytest.raises(ConfigError, match=r"step 1 \(Normal\): the loss is nan"):
        train(config(tiny_radbert_model, dataset, tmp_path / "m", "Normal:2", strategy="textual-inversion",
                     prompt_template="a {label} scan"), catalogue)
    assert_no_model(tmp_path / "m")


@pytest.mark.parametrize("max_grad_norm", [1.0, 0.0], ids=["clipped", "unclipped"])
def test_a_non_finite_gradient_stops_training_before_it_reaches_the_weights(
    catalogue, tiny_radbert_model, dataset, tmp_path, monkeypatch, max_grad_norm
):
    """A finite loss whose gradient is NaN (sqrt at 0): stopped at that step, not one later through NaN weights."""
    loss = Strategy.loss

    def nan_gradient(self, run, step, micro, phase):
        value = loss(self, run, step, micro, phase)
        weight = next(run.unet.parameters())
        return value + torch.sqrt((weight - weight.detach()).abs().sum())

    monkeypatch.setattr(Strategy, "loss", nan_gradient)
    with pytest.raises(ConfigError, match=r"Training stopped at step 1 \(Normal\): the gradient norm is nan"):
        train(config(tiny_radbert_model, dataset, tmp_path / "m", "Normal:2", max_grad_norm=max_grad_norm), catalogue)
    assert_no_model(tmp_path / "m")


@pytest.mark.parametrize(("schedule", "checkpoint_every", "refused"),
                         [("Normal:3", 2, "checkpoint step 2 was not written"), ("Normal:2", 0, "the model was not written")],
                         ids=["checkpoint", "model"])
def test_non_finite_weights_are_never_saved(catalogue, tiny_radbert_model, dataset, tmp_path, monkeypatch, schedule,
                                            checkpoint_every, refused):
    """Weights made NaN by an optimizer step (finite loss and gradients) stop the run before they are saved."""
    class Poisoning(torch.optim.AdamW):
        steps = 0

        def step(self, closure=None):
            result = super().step(closure)
            Poisoning.steps += 1
            if Poisoning.steps == 2:
                with torch.no_grad():
                    self.param_groups[0]["params"][0].fill_(float("nan"))
            return result

    monkeypatch.setattr(trainer, "make_optimizer", lambda parameters, settings: Poisoning(parameters, lr=1e-3))
    out = tmp_path / "m"
    with pytest.raises(ConfigError, match=rf"Training stopped at step 2: the weight .* holds non-finite numbers, so "
                                          rf"{refused}"):
        train(config(tiny_radbert_model, dataset, out, schedule, checkpoint_every=checkpoint_every), catalogue)
    assert_no_model(out)
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())


# -- 11. --out apart from the base model; --resume with the settings it was trained with ------------------------


@pytest.mark.parametrize("where", ["model itself", "inside the model", "model inside out", "data itself"])
def test_an_out_that_would_overwrite_the_base_model_or_the_dataset_is_refused(
    tiny_radbert_model, dataset, tmp_path, capsys, no_model_loads, where
):
    model = tmp_path / "base" / "model"
    shutil.copytree(tiny_radbert_model, model)
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    before = snapshot(tmp_path)
    out = {"model itself": model, "inside the model": model / "trained", "model inside out": tmp_path / "base",
           "data itself": data}[where]
    code, err = dva(capsys, "finetune", "--model", model, "--data", data, "--schedule", "Normal:1", "--out", out,
                    "--device", "cpu", "--prior-weight", "0")
    line = one_sentence(err)
    assert code == 2 and "--out" in line and ("base model" in line or "dataset" in line)
    assert snapshot(tmp_path) == before


def interrupted_run(catalogue, model: Path, data: Path, out: Path, **settings) -> FinetuneConfig:
    """A 'Normal:3' run stopped after step 3 with a checkpoint at step 2 (logged steps 1-3)."""
    def interrupt(step, total, label, loss):
        if step == 3:
            raise KeyboardInterrupt

    run = config(model, data, out, "Normal:3", checkpoint_every=2, **settings)
    with pytest.raises(KeyboardInterrupt):
        train(run, catalogue, on_step=interrupt)
    assert [int(row["step"]) for row in log_rows(out)] == [1, 2, 3]
    return run


@pytest.mark.parametrize(("change", "shown"), [
    ({"learning_rate": 1e-2}, "--learning-rate 0.001, but this run asks for --learning-rate 0.01"),
    ({"batch_size": 1}, "--batch-size 2, but this run asks for --batch-size 1"),
    ({"schedule": "Lung Opacity:3"}, '--schedule "Normal:3", but this run asks for --schedule "Lung Opacity:3"'),
])
def test_resuming_with_other_settings_is_refused_before_any_model_loads(catalogue, tiny_radbert_model, dataset,
                                                                       tmp_path, monkeypatch, change, shown):
    from dva.finetune.schedule import parse_schedule

    run = interrupted_run(catalogue, tiny_radbert_model, dataset, tmp_path / "m")
    monkeypatch.setattr("dva.core.runtime.load_diffusion_parts", lambda *a, **k: pytest.fail("a model was loaded"))
    if "schedule" in change:
        change = {"schedule": parse_schedule(change["schedule"])}
    resumed = FinetuneConfig(**{**run.__dict__, **change, "resume": "latest"})
    with pytest.raises(ConfigError, match="--resume-with-new-settings") as refused:
        train(resumed, catalogue)
    assert shown in str(refused.value)
    assert [int(row["step"]) for row in log_rows(tmp_path / "m")] == [1, 2, 3], "nothing was touched"


def test_resuming_with_new_settings_when_asked_records_both_parts(catalogue, tiny_radbert_model, dataset, tmp_path):
    run = interrupted_run(catalogue, tiny_radbert_model, dataset, tmp_path / "m")
    run.resume, run.learning_rate, run.resume_with_new_settings = "latest", 1e-2, True
    train(run, catalogue)
    info = json.loads((tmp_path / "m" / "dva.json").read_text())
    assert info["settings"]["learning_rate"] == 1e-2
    parts = [(part["first_step"], part["last_step"], part["settings"]["learning_rate"]) for part in info["settings_history"]]
    assert parts == [(1, 2, 1e-3), (3, 3, 1e-2)]
    assert [int(row["step"]) for row in log_rows(tmp_path / "m")] == [1, 2, 3]
    assert float(log_rows(tmp_path / "m")[-1]["lr"]) == 1e-2


def test_a_run_made_longer_resumes_without_the_flag(catalogue, tiny_radbert_model, dataset, tmp_path):
    """The steps before the checkpoint are the same in both schedules, so nothing is mixed."""
    from dva.finetune.schedule import parse_schedule

    run = interrupted_run(catalogue, tiny_radbert_model, dataset, tmp_path / "m")
    run.resume, run.schedule = "latest", parse_schedule("Normal:3,Lung Opacity:1")
    train(run, catalogue)
    info = json.loads((tmp_path / "m" / "dva.json").read_text())
    assert info["schedule"] == "Normal:3,Lung Opacity:1" and "settings_history" not in info
    assert [row["class"] for row in log_rows(tmp_path / "m")] == ["Normal"] * 3 + ["Lung Opacity"]


def test_a_checkpoint_that_records_no_settings_needs_the_flag(catalogue, tiny_radbert_model, dataset, tmp_path,
                                                             monkeypatch):
    run = interrupted_run(catalogue, tiny_radbert_model, dataset, tmp_path / "m")
    monkeypatch.setattr("dva.core.runtime.load_diffusion_parts", lambda *a, **k: pytest.fail("a model was loaded"))
    trainer = tmp_path / "m" / "checkpoints" / "step-00000002" / "trainer.json"
    trainer.write_text(json.dumps({"schedule": "Normal:3", "step": 2}))  # as an older dva wrote it
    run.resume = "latest"
    with pytest.raises(ConfigError, match="does not record its settings.*--resume-with-new-settings"):
        train(run, catalogue)


def test_the_training_log_keeps_each_step_once_after_a_resume(tmp_path):
    from dva.finetune.validation import TrainingLog

    log = TrainingLog(tmp_path / "train_log.csv", True, 0)
    for step in range(1, 6):
        log.write(step, "Normal", 0.5, 1e-4, step)
    log.close()
    resumed = TrainingLog(tmp_path / "train_log.csv", True, 3)
    resumed.write(4, "Normal", 0.25, 1e-4, 9)
    resumed.close()
    rows = log_rows(tmp_path)
    assert [int(row["step"]) for row in rows] == [1, 2, 3, 4] and rows[-1]["loss"] == "0.250000"
