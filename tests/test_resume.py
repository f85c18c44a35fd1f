"""A dva run killed part-way (SIGKILL, no clean-up) resumes to the outputs of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.numpy import load_file

from tests.conftest import chest_like


def dva_run(inputs: Path, model: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "dva", "run", str(inputs), "--model", str(model), "--steps", "4",
                             "--batch-size", "1", "--device", "cpu", "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_a_killed_run_resumes_to_the_outputs_of_an_uninterrupted_one(tiny_radbert_model, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for index in range(10):
        Image.fromarray(chest_like(64, seed=index)).save(inputs / f"scan-{index:02d}.png")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert dva_run(inputs, tiny_radbert_model, whole).wait(timeout=600) == 0

    process = dva_run(inputs, tiny_radbert_model, killed)
    deadline = time.monotonic() + 300
    while len(list(killed.glob("*/record.json"))) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    finished_before = len(list(killed.glob("*/record.json")))
    assert 3 <= finished_before < 10, "killed part-way"

    rerun = dva_run(inputs, tiny_radbert_model, killed)
    assert rerun.wait(timeout=600) == 0, rerun.stderr.read()[-2000:]
    assert not list(killed.rglob(".*.tmp")), "what the kill left half-written is cleaned up"
    first, second = (json.loads((folder / "manifest.json").read_text()) for folder in (whole, killed))
    assert [(i["output"], i["sha256"]) for i in second["images"]] == [(i["output"], i["sha256"]) for i in first["images"]]
    statuses = [i["status"] for i in second["images"]]
    assert statuses.count("skipped") >= finished_before - 1 and set(statuses) == {"skipped", "done"}
    assert second["recipe"] == first["recipe"]
    for image in first["images"]:
        a = load_file(str(whole / image["output"] / "attribution.safetensors"))
        b = load_file(str(killed / image["output"] / "attribution.safetensors"))
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{image['output']}: {key}")
        for name in ("counterfactual.png", "attribution.png", "overlay.png"):
            assert (whole / image["output"] / name).read_bytes() == (killed / image["output"] / name).read_bytes()
