"""dva finetune: DreamBooth with a domain encoder, class by class, resumable, into a model dva run loads."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dva.core.errors import ConfigError
from dva.finetune.config import FinetuneConfig
from dva.finetune.schedule import Phase, parse_schedule, phase_at
from dva.finetune.trainer import train


def config(model, data, out, schedule, **overrides) -> FinetuneConfig:
    settings = dict(
        base_model=str(model), data=str(data), out=str(out), schedule=parse_schedule(schedule), device="cpu",
        learning_rate=1e-3, batch_size=2, prior_weight=0.0, class_images=2, class_steps=2, checkpoint_every=0,
    )
    return FinetuneConfig(**{**settings, **overrides})


def log_rows(out: Path) -> list[dict]:
    with open(out / "train_log.csv") as handle:
        return list(csv.DictReader(handle))


def test_schedule_parsing():
    assert parse_schedule("Normal:1200, Lung Opacity:500,COVID:500") == [
        Phase("Normal", 1200), Phase("Lung Opacity", 500), Phase("COVID", 500)
    ]
    assert phase_at(parse_schedule("A:2,B:3"), 1).label == "A" and phase_at(parse_schedule("A:2,B:3"), 2).label == "B"
    for bad in ("Normal", "Normal:x", "Normal:0", ":5", "A:1,,B:2", "[A:1,B:2]*0", "[A:1,B:2]", "[A:1]*2]"):
        with pytest.raises(ConfigError, match="--schedule"):
            parse_schedule(bad)


def test_classes_may_come_back_and_groups_repeat():
    """Short alternating phases let one model learn several classes: "[A:2,B:3]*2" is A, B, A, B."""
    assert parse_schedule("A:2,B:3,A:1") == [Phase("A", 2), Phase("B", 3), Phase("A", 1)]
    assert parse_schedule("N:5, [A:2,B:3]*2 ,N:1") == [
        Phase("N", 5), Phase("A", 2), Phase("B", 3), Phase("A", 2), Phase("B", 3), Phase("N", 1)
    ]
    assert [phase_at(parse_schedule("[A:1,B:1]*2"), step).label for step in range(4)] == ["A", "B", "A", "B"]


def test_a_phase_may_mix_classes():
    """"A+B:N" trains on both classes at once; the classes keep their order of first appearance."""
    from dva.finetune.schedule import schedule_classes

    phases = parse_schedule("Normal + Lung Opacity:3,COVID:1,Normal:2")
    assert phases[0] == Phase("Normal+Lung Opacity", 3) and phases[0].classes == ("Normal", "Lung Opacity")
    assert phases[0].mixed and not phases[1].mixed
    assert schedule_classes(phases) == ["Normal", "Lung Opacity", "COVID"]
    for bad in ("A++B:2", "A+:2", "+A:2"):
        with pytest.raises(ConfigError, match="empty class"):
            parse_schedule(bad)


def test_a_mixed_phase_draws_classes_evenly_however_many_images_each_has():
    from dva.finetune.data import TrainingData

    data = TrainingData({"A": [Path(f"a{i}") for i in range(3)], "B": [Path(f"b{i}") for i in range(300)]}, 64)
    chosen = data.draw("A+B", 4000, np.random.default_rng(0))
    share = np.mean([path.name.startswith("a") for path in chosen])
    assert 0.47 < share < 0.53
    assert len({path for path in chosen if path.name.startswith("b")}) > 250, "images are drawn from the whole class"
    assert data.draw("B", 5, np.random.default_rng(1)) == data.draw("B", 5, np.random.default_rng(1))


def test_a_mixed_phase_prompts_each_image_with_its_own_class(catalogue, tiny_radbert_model, dataset, tmp_path, monkeypatch):
    from dva.finetune.data import TextCache

    seen: list[str] = []
    original = TextCache.__call__

    def record(self, prompts, device):
        seen.extend(prompts)
        return original(self, prompts, device)

    monkeypatch.setattr(TextCache, "__call__", record)
    out = tmp_path / "model"
    train(config(tiny_radbert_model, dataset, out, "Normal+Lung Opacity:6", batch_size=4, cache_latents=True,
                 train_text_encoder=False, class_prompts={"Normal": "healthy", "Lung Opacity": "opacity"}), catalogue)
    assert set(seen) == {"healthy", "opacity"} and len(seen) == 24
    info = json.loads((out / "dva.json").read_text())
    assert info["classes"] == ["Normal", "Lung Opacity"] and info["schedule"] == "Normal+Lung Opacity:6"
    assert info["prompts"] == {"healthy": "healthy", "classes": {"Normal": "healthy", "Lung Opacity": "opacity"}}
    assert {row["class"] for row in log_rows(out)} == {"Normal+Lung Opacity"}


def test_multi_class_schedule_trains_in_order_and_writes_a_model_dva_run_loads(
    catalogue, tiny_radbert_model, dataset, images, tmp_path
):
    from dva.core.registry import load_entries, resolve
    from dva.core.run import run

    out = tmp_path / "model"
    train(config(tiny_radbert_model, dataset, out, "Normal:4,Lung Opacity:3",
                 class_prompts={"Normal": "Normal chest scan"}), catalogue)
    rows = log_rows(out)
    assert [row["class"] for row in rows] == ["Normal"] * 4 + ["Lung Opacity"] * 3
    assert [int(row["step"]) for row in rows] == list(range(1, 8))
    info = json.loads((out / "dva.json").read_text())
    assert info["encoder"] == "radbert" and info["classes"] == ["Normal", "Lung Opacity"]
    assert info["schedule"] == "Normal:4,Lung Opacity:3" and info["steps"] == 7
    assert info["prompts"]["healthy"] == "Normal chest scan" and len(info["data"]["fingerprint"]) == 64
    before = load_file(str(tiny_radbert_model / "unet" / "diffusion_pytorch_model.safetensors"))
    after = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before), "the UNet was trained"
    recipe = resolve(load_entries(), catalogue, "default", {"model": str(out), "steps": 4})
    result = run(recipe, [str(images[0])], tmp_path / "run", catalogue)
    assert result.exit_code == 0 and result.header["prompt"] == "Normal chest scan"
    assert result.header["encoder"]["name"] == "radbert"


def test_loss_goes_down(catalogue, tiny_radbert_model, dataset, tmp_path):
    train(config(tiny_radbert_model, dataset, tmp_path / "model", "Normal:24"), catalogue)
    losses = [float(row["loss"]) for row in log_rows(tmp_path / "model")]
    assert np.mean(losses[-6:]) < 0.8 * np.mean(losses[:6]), losses


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(catalogue, tiny_radbert_model, dataset, tmp_path):
    """With prior preservation (the dataset's healthy images) and a checkpoint every 3 steps; the log holds each
    step once (the steps after the checkpoint that the interrupted run took are logged by the resumed one only)."""
    settings = dict(prior_weight=1.0, checkpoint_every=3, keep_checkpoints=1, prompt_dropout=0.2)
    train(config(tiny_radbert_model, dataset, tmp_path / "whole", "Normal:4,Lung Opacity:3", **settings), catalogue)

    def interrupt(step, total, label, loss):
        if step == 5:
            raise KeyboardInterrupt

    interrupted = config(tiny_radbert_model, dataset, tmp_path / "resumed", "Normal:4,Lung Opacity:3", **settings)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, catalogue, on_step=interrupt)
    assert [p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()] == ["step-00000003"]
    assert not (tmp_path / "resumed" / "dva.json").exists()
    interrupted.resume = "latest"
    train(interrupted, catalogue)
    assert [int(r["step"]) for r in log_rows(tmp_path / "resumed")] == [1, 2, 3, 4, 5, 6, 7]
    assert [r["loss"] for r in log_rows(tmp_path / "resumed")] == [r["loss"] for r in log_rows(tmp_path / "whole")]
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        whole, resumed = load_file(str(tmp_path / "whole" / part)), load_file(str(tmp_path / "resumed" / part))
        for key in whole:
            torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=1e-6, msg=f"{part}: {key}")


def test_a_frozen_text_encoder_stays_byte_identical(catalogue, tiny_radbert_model, dataset, tmp_path):
    train(config(tiny_radbert_model, dataset, tmp_path / "model", "Normal:2", train_text_encoder=False), catalogue)
    before = load_file(str(tiny_radbert_model / "text_encoder" / "model.safetensors"))
    after = load_file(str(tmp_path / "model" / "text_encoder" / "model.safetensors"))
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_a_class_the_dataset_lacks_is_refused_before_training(catalogue, tiny_radbert_model, dataset, tmp_path):
    with pytest.raises(ConfigError, match="Pneumonia"):
        train(config(tiny_radbert_model, dataset, tmp_path / "model", "Normal:2,Pneumonia:2"), catalogue)
    assert not (tmp_path / "model" / "train_log.csv").exists()


def test_finetune_command(tiny_radbert_model, dataset, tmp_path, capsys):
    from dva.cli import main

    out = tmp_path / "model"
    with pytest.raises(SystemExit) as done:
        main(["finetune", "--model", str(tiny_radbert_model), "--data", str(dataset), "--schedule", "Normal:2",
              "--out", str(out), "--prior-weight", "0", "--device", "cpu", "--class-prompt", "Normal=Normal chest scan"])
    assert done.value.code == 0, capsys.readouterr().err
    assert json.loads((out / "dva.json").read_text())["prompts"]["healthy"] == "Normal chest scan"
    with pytest.raises(SystemExit) as bad:
        main(["finetune", "--model", str(tiny_radbert_model), "--data", str(dataset), "--schedule", "Normal:2",
              "--out", str(out), "--batch-size", "0"])
    assert bad.value.code == 2 and "--batch-size" in capsys.readouterr().err


def test_two_processes_train_together(tiny_radbert_model, dataset, tmp_path):
    """torchrun starts two CPU processes (gloo); accelerate shards the work (PITFALLS: not `accelerate launch --cpu`)."""
    import os
    import subprocess
    import sys

    out = tmp_path / "model"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
        "-m", "dva", "finetune", "--model", str(tiny_radbert_model), "--data", str(dataset), "--schedule", "Normal:2",
        "--out", str(out), "--prior-weight", "0", "--device", "cpu", "--batch-size", "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    assert json.loads((out / "dva.json").read_text())["processes"] == 2


def test_phantoms_in_the_covid_radiography_layout_train_with_their_own_prompts(catalogue, tiny_radbert_model, tmp_path):
    from dva.datasets.phantoms import make_phantoms

    data = make_phantoms(tmp_path / "phantoms", 2, 64, seed=5)
    out = tmp_path / "model"
    train(config(tiny_radbert_model, data, out, "Normal:2,Lung Opacity:2,Cardiomegaly:1", use_sample_prompts=True),
          catalogue)
    info = json.loads((out / "dva.json").read_text())
    assert info["data"]["layout"] == "covid-radiography" and info["data"]["images"] == 6
    assert [row["class"] for row in log_rows(out)] == ["Normal"] * 2 + ["Lung Opacity"] * 2 + ["Cardiomegaly"]
