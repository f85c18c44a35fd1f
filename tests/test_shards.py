"""dva run over several processes: inputs shared out, outputs identical to one process, one merged manifest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

from dva.core.shards import Shard
from tests.conftest import chest_like


def test_a_shard_takes_every_nth_input():
    assert Shard(0, 2).take(list("abcde")) == ["a", "c", "e"]
    assert Shard(1, 2).take(list("abcde")) == ["b", "d"]
    assert Shard().take(list("ab")) == ["a", "b"] and Shard().is_main


@pytest.fixture
def five_inputs(tmp_path) -> list[Path]:
    folder = tmp_path / "inputs"
    folder.mkdir()
    for index in range(5):
        Image.fromarray(chest_like(64, seed=index)).save(folder / f"scan-{index}.png")
    return sorted(folder.glob("*.png"))


def test_two_processes_give_the_outputs_and_manifest_of_one(tiny_radbert_model, five_inputs, tmp_path, capsys):
    from dva.cli import main

    common = ["--model", str(tiny_radbert_model), "--steps", "4", "--batch-size", "1", "--device", "cpu"]
    with pytest.raises(SystemExit) as done:
        main(["run", *map(str, five_inputs), *common, "--out", str(tmp_path / "one")])
    assert done.value.code == 0, capsys.readouterr().err
    # torchrun under the hood (PITFALLS: `accelerate launch --cpu` would start one process here)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    finished = subprocess.run(
        [sys.executable, "-m", "dva", "run", *map(str, five_inputs), *common, "--num-processes", "2",
         "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=600,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]

    one, two = (json.loads((tmp_path / name / "manifest.json").read_text()) for name in ("one", "two"))
    assert two["processes"] == 2 and two["images_per_process"] == [3, 2], "both processes made images"
    assert one["processes"] == 1
    assert [(i["output"], i["status"], i["sha256"]) for i in two["images"]] == [
        (i["output"], i["status"], i["sha256"]) for i in one["images"]]
    for image in one["images"]:
        a = load_file(str(tmp_path / "one" / image["output"] / "attribution.safetensors"))
        b = load_file(str(tmp_path / "two" / image["output"] / "attribution.safetensors"))
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_allclose(a[key], b[key], atol=1e-6, err_msg=f"{image['output']}: {key}")
    assert (tmp_path / "two" / "report.html").is_file()
