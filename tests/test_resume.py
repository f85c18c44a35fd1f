"""A dva run killed part-way (SIGKILL, no clean-up) resumes to the outputs of an uninterrupted run, and is
evaluated to the same tables; SIGTERM stops it like Ctrl-C, with its manifest saved."""

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


def dva_process(inputs: Path, model: Path, out: Path) -> subprocess.Popen:
    """``dva run`` in its own process, so a test can kill it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "dva", "run", str(inputs), "--model", str(model), "--steps", "4",
                             "--batch-size", "1", "--device", "cpu", "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_a_killed_run_resumes_to_the_outputs_of_an_uninterrupted_one(tiny_radbert_model, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for index in range(6):
        Image.fromarray(chest_like(64, seed=index)).save(inputs / f"scan-{index:02d}.png")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert dva_process(inputs, tiny_radbert_model, whole).wait(timeout=600) == 0

    process = dva_process(inputs, tiny_radbert_model, killed)
    deadline = time.monotonic() + 300
    while len(list(killed.glob("*/record.json"))) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    finished_before = len(list(killed.glob("*/record.json")))
    assert 2 <= finished_before < 6, "killed part-way"

    rerun = dva_process(inputs, tiny_radbert_model, killed)
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
        for name in ("counterfactual.png", "attribution.png", "overlay.png", "attribution.safetensors"):
            assert (whole / image["output"] / name).read_bytes() == (killed / image["output"] / name).read_bytes()

    # dva evaluate scores every completed image of the resumed run, not only the last invocation's.
    evaluated = [evaluation(folder) for folder in (whole, killed)]
    assert len(evaluated[0].per_image) == 6
    assert [t.as_dict() for t in evaluated[1].tables] == [t.as_dict() for t in evaluated[0].tables]
    without_folder = [[{k: v for k, v in row.items() if k != "output"} for row in e.per_image] for e in evaluated]
    assert without_folder[1] == without_folder[0]


def evaluation(run: Path):
    from dva.core.plugins import load_catalogue
    from dva.evaluate.evaluation import Settings, evaluate
    from dva.evaluate.runs import read_run

    return evaluate(None, [read_run(run)], Settings(metrics=["ssim"]), load_catalogue(entry_points=False))


def test_sigterm_stops_a_run_like_an_interrupt_and_saves_its_manifest(tiny_radbert_model, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for index in range(5):
        Image.fromarray(chest_like(64, seed=index)).save(inputs / f"scan-{index:02d}.png")
    out = tmp_path / "out"
    process = dva_process(inputs, tiny_radbert_model, out)
    deadline = time.monotonic() + 300
    while len(list(out.glob("*/record.json"))) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 130
    err = process.stderr.read()
    assert "Interrupted" in err and "Traceback" not in err
    saved = json.loads((out / "manifest.json").read_text())
    done = {i["output"] for i in saved["images"] if i["status"] == "done"}
    assert done and done == {p.parent.name for p in out.glob("*/record.json")}
