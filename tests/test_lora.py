"""dva finetune --strategy lora: adapters only, a small folder, applied on top of the base model by dva run."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dva.core import adapters
from dva.core.errors import ConfigError
from dva.finetune.config import FinetuneConfig
from dva.finetune.lora import LoRA
from dva.finetune.schedule import parse_schedule
from dva.finetune.trainer import train

LORA_OPTIONS = ("lora_rank", "lora_alpha", "lora_text_encoder")


def config(model, data, out, schedule, **overrides) -> FinetuneConfig:
    """A LoRA run's settings; the strategy's options (``lora_rank``, ...) go to ``options``."""
    options = {"lora_rank": 4, "lora_alpha": 4.0, **{key: overrides.pop(key) for key in LORA_OPTIONS if key in overrides}}
    settings = dict(
        base_model=str(model), data=str(data), out=str(out), schedule=parse_schedule(schedule), device="cpu",
        learning_rate=1e-2, batch_size=2, prior_weight=0.0, checkpoint_every=0, strategy="lora", options=options,
    )
    return FinetuneConfig(**{**settings, **overrides})


def log_rows(out: Path) -> list[dict]:
    with open(out / "train_log.csv") as handle:
        return list(csv.DictReader(handle))


def load_base(model: Path, catalogue, source=None):
    """UNet and encoder as dva.core.runtime.assemble loads them (fp32, CPU)."""
    from dva.core.model_folder import inspect_model
    from dva.core.registry import Recipe
    from dva.core.runtime import load_diffusion_parts, load_encoder

    source = source or inspect_model(str(model))
    unet, _, _ = load_diffusion_parts(source, torch.device("cpu"), torch.float32)
    encoder = load_encoder(Recipe(encoder_options={"max_length": 77}), catalogue, source, int(unet.config.cross_attention_dim))
    return unet.eval(), encoder.eval()


def unet_output(unet, encoder) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    latents = torch.randn(1, 4, 32, 32, generator=generator)
    with torch.no_grad():
        return unet(latents, torch.tensor([500]), encoder.encode(["Normal chest scan"])).sample


@pytest.fixture(scope="module")
def trained(catalogue, tiny_radbert_model, dataset, tmp_path_factory):
    """One LoRA run (UNet + text encoder adapters), with deep copies of the modules as training left them."""
    kept = {}
    original = LoRA.save

    def keep(self, run):
        kept["unet"], kept["encoder"] = copy.deepcopy(run.unwrapped("unet")).eval(), copy.deepcopy(run.raw_encoder).eval()
        return original(self, run)

    out = tmp_path_factory.mktemp("lora") / "lora"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LoRA, "save", keep)
        train(config(tiny_radbert_model, dataset, out, "Normal:2,Lung Opacity:1", lora_text_encoder=True,
                          class_prompts={"Normal": "Normal chest scan"}), catalogue)
    return out, kept


def test_adapters_train_into_a_small_folder_and_apply_lora_reproduces_the_trained_model(
    catalogue, tiny_radbert_model, trained
):
    out, kept = trained
    assert [row["class"] for row in log_rows(out)] == ["Normal"] * 2 + ["Lung Opacity"]
    info = json.loads((out / "dva.json").read_text())
    assert info["format"] == "dva-model" and info["strategy"] == "lora" and info["encoder"] == "radbert"
    assert Path(info["base_model"]) == tiny_radbert_model.resolve()
    assert info["lora"]["rank"] == 4 and info["lora"]["text_encoder"] == "text_encoder_lora"
    assert info["prompts"]["healthy"] == "Normal chest scan"
    assert adapters.is_lora_folder(out) and not adapters.is_lora_folder(tiny_radbert_model)
    assert not (out / "unet").exists() and not (out / "text_encoder").exists()
    adapter = out / "unet_lora" / "adapter_model.safetensors"
    base_unet = tiny_radbert_model / "unet" / "diffusion_pytorch_model.safetensors"
    assert adapter.stat().st_size < base_unet.stat().st_size / 5, (adapter.stat().st_size, base_unet.stat().st_size)
    for part in ("unet_lora", "text_encoder_lora"):
        weights = load_file(str(out / part / "adapter_model.safetensors"))
        assert weights and all("lora_" in key for key in weights)
        assert any(key.endswith("lora_B.weight") and weights[key].abs().max() > 0 for key in weights), part

    # a fresh base model with the adapters applied computes what the trained one did
    expected = unet_output(kept["unet"], kept["encoder"])
    for merge in (False, True):
        unet, encoder = load_base(tiny_radbert_model, catalogue)
        plain = unet_output(unet, encoder)
        adapters.apply_lora(unet, encoder, out, merge=merge)
        got = unet_output(unet, encoder)
        assert not torch.allclose(plain, expected, atol=1e-4), "training changed the output"
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_a_resumed_run_ends_with_the_adapters_of_an_uninterrupted_one_and_base_weights_stay(
    catalogue, tiny_radbert_model, dataset, tmp_path
):
    settings = dict(checkpoint_every=2, keep_checkpoints=1, prompt_dropout=0.3, lora_text_encoder=True)
    train(config(tiny_radbert_model, dataset, tmp_path / "whole", "Normal:2,Lung Opacity:2", **settings), catalogue)

    def interrupt(step, total, label, loss):
        if step == 3:
            raise KeyboardInterrupt

    interrupted = config(tiny_radbert_model, dataset, tmp_path / "resumed", "Normal:2,Lung Opacity:2", **settings)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, catalogue, on_step=interrupt)
    checkpoint = tmp_path / "resumed" / "checkpoints" / "step-00000002"
    assert [p.name for p in checkpoint.parent.iterdir()] == [checkpoint.name]
    assert not (tmp_path / "resumed" / "dva.json").exists()

    # the checkpoint holds the whole UNet: every base weight equals the base model's, bit for bit
    base = load_file(str(tiny_radbert_model / "unet" / "diffusion_pytorch_model.safetensors"))
    state = load_file(str(checkpoint / "model.safetensors"))
    frozen = {key.replace(".base_layer", ""): value for key, value in state.items() if "lora_" not in key}
    assert frozen.keys() == base.keys()
    assert all(torch.equal(frozen[key], base[key]) for key in base)

    interrupted.resume = "latest"
    train(interrupted, catalogue)
    assert [int(r["step"]) for r in log_rows(tmp_path / "resumed")] == [1, 2, 3, 4]  # each step once
    for part in ("unet_lora", "text_encoder_lora"):
        whole = load_file(str(tmp_path / "whole" / part / "adapter_model.safetensors"))
        resumed = load_file(str(tmp_path / "resumed" / part / "adapter_model.safetensors"))
        assert whole.keys() == resumed.keys()
        for key in whole:
            torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=1e-6, msg=f"{part}: {key}")


def test_dva_run_loads_a_lora_folder_on_its_base_model(catalogue, tiny_radbert_model, trained, images, tmp_path, monkeypatch):
    """`dva run --model LORA_FOLDER`: the base model named in dva.json is loaded and the adapters applied."""
    from dva.core.model_folder import inspect_model
    from dva.core.registry import load_entries, resolve
    from dva.core.run import run

    out, _ = trained
    applied = []
    original = adapters.apply_lora

    def apply_lora(unet, encoder, folder, **kwargs):
        applied.append(str(folder))
        return original(unet, encoder, folder, **kwargs)

    monkeypatch.setattr(adapters, "apply_lora", apply_lora)
    source = inspect_model(str(out))
    assert source.location == str(tiny_radbert_model.resolve()) and source.dva["lora_folder"] == str(out)
    recipe = resolve(load_entries(), catalogue, "default", {"model": str(out), "steps": 4})
    result = run(recipe, [str(images[0])], tmp_path / "run", catalogue)
    assert result.exit_code == 0 and applied == [str(out)]
    assert result.header["prompt"] == "Normal chest scan" and result.header["encoder"]["name"] == "radbert"


def test_wrong_settings_are_refused_before_training(catalogue, tiny_radbert_model, trained, dataset, tmp_path):
    out, _ = trained
    cases = [
        (dict(encoder="clip"), "Normal:1", "dreambooth"),
        (dict(), "Normal:1,Pneumonia:1", "Pneumonia"),
        (dict(lora_rank=0), "Normal:1", "rank"),
        (dict(base_model=str(out)), "Normal:1", "LoRA folder"),
    ]
    for overrides, schedule, message in cases:
        with pytest.raises(ConfigError, match=message):
            train(config(tiny_radbert_model, dataset, tmp_path / "lora", schedule, **overrides), catalogue)
    assert not (tmp_path / "lora" / "train_log.csv").exists()


def test_a_lora_folder_whose_base_model_is_gone_says_so(trained, tmp_path):
    out, _ = trained
    info = json.loads((out / "dva.json").read_text())
    info["base_model"] = str(tmp_path / "gone")
    (tmp_path / "dva.json").write_text(json.dumps(info))
    from dva.core.model_folder import resolve_lora_source

    with pytest.raises(ConfigError, match="base model"):
        resolve_lora_source(tmp_path)


def test_lora_from_the_command_line_writes_a_small_folder(tiny_radbert_model, dataset, tmp_path, capsys):
    from dva.cli import main

    out = tmp_path / "adapters"
    with pytest.raises(SystemExit) as done:
        main(["finetune", "--strategy", "lora", "--model", str(tiny_radbert_model), "--data", str(dataset),
              "--schedule", "Normal:1", "--out", str(out), "--prior-weight", "0", "--device", "cpu", "--lora-rank", "2"])
    assert done.value.code == 0, capsys.readouterr().err
    info = json.loads((out / "dva.json").read_text())
    assert info["strategy"] == "lora" and info["lora"]["rank"] == 2
    assert not (out / "unet").exists() and (out / "unet_lora" / "adapter_model.safetensors").is_file()


def test_lora_loss_goes_down_on_phantoms(catalogue, tiny_radbert_model, tmp_path):
    from dva.datasets.phantoms import make_phantoms

    data = make_phantoms(tmp_path / "phantoms", 4, 64, seed=3)
    settings = FinetuneConfig(
        base_model=str(tiny_radbert_model), data=str(data), out=str(tmp_path / "adapters"),
        schedule=parse_schedule("Lung Opacity:24"), device="cpu", learning_rate=0.1, batch_size=2, prior_weight=0.0,
        checkpoint_every=0, cache_latents=True, strategy="lora",
    )
    losses = []
    train(settings, catalogue, on_step=lambda step, total, label, loss: losses.append(loss))
    assert np.mean(losses[-6:]) < 0.97 * np.mean(losses[:6]), losses
