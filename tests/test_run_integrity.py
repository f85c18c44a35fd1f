"""Specification: every file ``dva run`` writes is what the user asked for, or one clear sentence.

- Outputs are tied to the weights that made them (content hashes), to whole files (checksums), and to
  the settings of the run that wrote them; anything else is made again, never kept as "complete".
- Output folders are safe names inside ``--out``; one run at a time holds a folder.
- An image that cannot be done exactly (non-finite result, empty mask, too large to fit in memory)
  fails with a sentence and the rest go on; what was assumed (no mask found, a bit depth) is said.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import chest_like

STEPS = 4


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    from dva.testing.tiny import make_tiny_sd

    return make_tiny_sd(tmp_path_factory.mktemp("integrity") / "model")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test hashes weights into its own cache."""
    monkeypatch.setenv("DVA_CACHE", str(tmp_path / "cache"))


def dva(capsys, *args) -> tuple[int, str]:
    """``dva ARGS`` in-process; returns (exit status, stderr)."""
    from dva.cli import main

    with pytest.raises(SystemExit) as exited:
        main([str(arg) for arg in args])
    return exited.value.code or 0, capsys.readouterr().err


def run(capsys, model: Path, out: Path, *inputs, more: tuple = ()) -> tuple[int, str]:
    return dva(capsys, "run", "--model", model, "--steps", STEPS, "--device", "cpu", "--out", out, *more, *inputs)


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def statuses(out: Path) -> dict[str, str]:
    return {image["output"]: image["status"] for image in manifest(out)["images"]}


def write_scan(path: Path, seed: int = 0, size: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(chest_like(size, seed)).save(path, format="PNG")
    return path


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and "Traceback" not in err, err
    return lines[0]


# -- weights -------------------------------------------------------------------------------------------


def test_a_model_retrained_in_place_is_not_resumed_from_its_old_outputs(model, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    retrained = tmp_path / "model"
    shutil.copytree(model, retrained)
    scan = write_scan(tmp_path / "in" / "scan.png")
    out = tmp_path / "out"
    assert run(capsys, retrained, out, scan)[0] == 0
    first = manifest(out)
    unet_file = next((retrained / "unet").glob("*.safetensors"))
    assert first["weights"]["model"]["files"][f"unet/{unet_file.name}"] == __import__("hashlib").sha256(
        unet_file.read_bytes()).hexdigest()

    weights = load_file(unet_file)
    save_file({name: tensor * 1.01 for name, tensor in weights.items()}, unet_file)  # "retrained", same path
    assert run(capsys, retrained, out, scan)[0] == 0
    assert statuses(out) == {"scan": "done"}, "outputs of the old weights are made again, not kept"
    assert manifest(out)["fingerprint"] != first["fingerprint"]
    assert run(capsys, retrained, out, scan)[0] == 0
    assert statuses(out) == {"scan": "skipped"}, "the same weights resume"


def test_weight_files_are_hashed_once_and_again_only_when_they_change(model, tmp_path, monkeypatch):
    from dva.core import weights

    calls: list[Path] = []
    real = weights.file_sha256
    monkeypatch.setattr(weights, "file_sha256", lambda path: calls.append(path) or real(path))
    first = weights.identify(str(model), ("unet", "vae"))
    assert calls and all(file.suffix in (".json", ".safetensors") for file in calls)
    calls.clear()
    assert weights.identify(str(model), ("unet", "vae")) == first and calls == [], "the cache answers"
    changed = tmp_path / "copy"
    shutil.copytree(model, changed)
    (changed / "vae" / "config.json").write_text((changed / "vae" / "config.json").read_text() + " ")
    moved = weights.identify(str(changed), ("unet", "vae"))
    assert moved["files"]["unet/config.json"] == first["files"]["unet/config.json"]
    assert moved["files"]["vae/config.json"] != first["files"]["vae/config.json"]
    assert weights.digest(moved) != weights.digest(first)
    assert weights.digest({**first, "location": "/elsewhere"}) == weights.digest(first), "a moved model is the same"


def test_a_hub_model_is_identified_by_its_cached_commit(tmp_path, monkeypatch):
    from dva.core import weights

    commit = "a" * 40
    snapshot = tmp_path / "snapshots" / commit
    (snapshot / "unet").mkdir(parents=True)
    (snapshot / "unet" / "config.json").write_text("{}")
    seen = {}

    def cached(repo_id, revision=None, local_files_only=False):
        seen.update(repo_id=repo_id, revision=revision, local_files_only=local_files_only)
        return str(snapshot)

    monkeypatch.setattr("huggingface_hub.snapshot_download", cached)
    found = weights.identify("CompVis/stable-diffusion-v1-4", ("unet",), revision="v1")
    assert seen == {"repo_id": "CompVis/stable-diffusion-v1-4", "revision": "v1", "local_files_only": True}
    assert found["revision"] == commit and found["resolved"] and "unet/config.json" in found["files"]


# -- whole files, stale outputs --------------------------------------------------------------------------


def test_a_damaged_output_of_a_finished_image_is_made_again(model, tmp_path, capsys):
    scans = [write_scan(tmp_path / "in" / f"scan{i}.png", i) for i in range(2)]
    out = tmp_path / "out"
    assert run(capsys, model, out, *scans)[0] == 0
    counterfactual = out / "scan0" / "counterfactual.png"
    good = counterfactual.read_bytes()
    record = json.loads((out / "scan0" / "record.json").read_text())
    assert record["checksums"]["counterfactual.png"]["bytes"] == len(good)
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0xFF  # same size, other bytes
    counterfactual.write_bytes(bytes(damaged))

    assert run(capsys, model, out, *scans)[0] == 0
    assert statuses(out) == {"scan0": "done", "scan1": "skipped"}
    assert counterfactual.read_bytes() == good


def test_evaluating_a_damaged_output_names_the_file(model, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(capsys, model, out, write_scan(tmp_path / "in" / "scan.png"))[0] == 0
    (out / "scan" / "counterfactual.png").write_bytes(b"not a png")
    code, err = dva(capsys, "evaluate", "--generated", out, "--out", tmp_path / "evaluation")
    line = one_line_error(err)
    assert code == 2 and str(out / "scan" / "counterfactual.png") in line and "rerun the dva run" in line


def test_a_rerun_with_other_settings_leaves_no_output_of_the_old_ones(model, tmp_path, capsys):
    scan = write_scan(tmp_path / "in" / "scan.png")
    out = tmp_path / "out"
    assert run(capsys, model, out, scan, more=("--reference", "reconstruction", "--samples", "2"))[0] == 0
    assert (out / "scan" / "reconstruction.png").is_file() and (out / "scan" / "uncertainty.png").is_file()

    assert run(capsys, model, out, scan)[0] == 0
    left = {p.relative_to(out / "scan").as_posix() for p in (out / "scan").rglob("*") if p.is_file()}
    record = json.loads((out / "scan" / "record.json").read_text())
    assert left == {*record["files"], "record.json"}
    assert not any("reconstruction" in name or "uncertainty" in name for name in left)
    assert "reconstruction" not in (out / "report.html").read_text().split("<h2>Settings")[0].replace(
        "reconstruction &minus;", "")


# -- output names and the folder ------------------------------------------------------------------------


def test_input_names_cannot_escape_out_nor_take_the_run_files(model, tmp_path, capsys):
    inputs = tmp_path / "in"
    names = ["...png", "report.html.png", "manifest.json.png", "record.json.png"]
    for index, name in enumerate(names):
        write_scan(inputs / name, index)
    parent = tmp_path / "parent"
    out = parent / "out"
    bystander = parent / ".keep.tmp"
    parent.mkdir()
    bystander.write_text("not dva's")

    code, err = run(capsys, model, out, *(inputs / name for name in names))
    assert code == 0, err
    assert sorted(p.name for p in parent.iterdir()) == [".keep.tmp", "out"], "nothing written beside --out"
    assert bystander.read_text() == "not dva's"
    keys = [image["output"] for image in manifest(out)["images"]]
    assert len(set(keys)) == 4 and all("/" not in key and not key.startswith(".") for key in keys)
    assert not {"report.html", "manifest.json", "record.json"} & set(keys)
    assert (out / "report.html").is_file() and (out / "manifest.json").is_file()


def test_same_named_inputs_of_two_runs_into_one_folder_keep_both_outputs(model, tmp_path, capsys):
    first, second = write_scan(tmp_path / "a" / "scan.png", 1), write_scan(tmp_path / "b" / "scan.png", 2)
    out = tmp_path / "out"
    assert run(capsys, model, out, first)[0] == 0
    kept = (out / "scan" / "counterfactual.png").read_bytes()
    code, err = run(capsys, model, out, second)
    assert code == 0
    (image,) = manifest(out)["images"]
    assert image["output"] != "scan" and "another input of the same name" in image["warnings"][0]
    assert (out / "scan" / "counterfactual.png").read_bytes() == kept
    assert json.loads((out / "scan" / "record.json").read_text())["input"] == str(first.resolve())
    assert "another input of the same name" in err


def test_a_folder_held_by_another_run_is_refused(model, tmp_path, capsys):
    from filelock import FileLock

    out = tmp_path / "out"
    out.mkdir()
    with FileLock(str(out / ".dva.lock")):
        code, err = run(capsys, model, out, write_scan(tmp_path / "in" / "scan.png"))
    assert code == 2 and "Another dva run is writing into" in one_line_error(err)
    assert not (out / "scan").exists()


def test_out_under_a_file_is_one_sentence(model, tmp_path, capsys):
    blocker = tmp_path / "results"
    blocker.write_text("a file")
    code, err = run(capsys, model, blocker / "run", write_scan(tmp_path / "in" / "scan.png"))
    assert code == 2 and "is a file" in one_line_error(err)


# -- images that fail alone, and what is said ---------------------------------------------------------------


def test_masks_missing_for_an_input_are_said_and_empty_masks_fail_that_image(model, tmp_path, capsys):
    scans = [write_scan(tmp_path / "in" / f"scan{i}.png", i) for i in range(3)]
    masks = tmp_path / "masks"
    masks.mkdir()
    lungs = np.zeros((64, 64), np.uint8)
    lungs[10:54, 8:56] = 255
    Image.fromarray(lungs).save(masks / "scan0.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(masks / "scan1.png")  # empty; scan2 has none

    code, err = run(capsys, model, tmp_path / "out", *scans, more=("--mask", masks))
    assert code == 1
    images = {image["output"]: image for image in manifest(tmp_path / "out")["images"]}
    assert images["scan0"]["status"] == "done" and "warnings" not in images["scan0"]
    assert images["scan1"]["status"] == "failed" and "empty (all zero)" in images["scan1"]["error"]
    assert images["scan2"]["status"] == "done" and "no mask named like this input" in images["scan2"]["warnings"][0]
    record = json.loads((tmp_path / "out" / "scan2" / "record.json").read_text())
    assert "no mask named like this input" in record["warnings"][0]
    assert "no mask named like this input" in (tmp_path / "out" / "report.html").read_text()
    assert "scan1.png" in err and "no mask named like this input" in err


def test_twelve_bit_data_in_a_sixteen_bit_png_is_detected_and_said(model, tmp_path, capsys):
    twelve = (chest_like(64, 3).astype(np.uint16) * 16)  # values up to 4080: a 12-bit detector's range
    path = tmp_path / "in" / "deep.png"
    path.parent.mkdir()
    Image.fromarray(twelve).save(path)
    code, err = run(capsys, model, tmp_path / "out", path)
    assert code == 0
    (image,) = manifest(tmp_path / "out")["images"]
    assert "12-bit" in image["warnings"][0] and "12-bit" in err
    model_input = np.asarray(Image.open(tmp_path / "out" / "deep" / "input.png"), dtype=np.float32) / 255
    assert model_input.max() > 0.7, "not read as near-black (it would be 0.05 as 16-bit data)"

    code, _ = run(capsys, model, tmp_path / "out16", path, more=("--bit-depth", "16"))
    assert code == 0 and "warnings" not in manifest(tmp_path / "out16")["images"][0]


def test_a_model_that_gives_nan_fails_each_image_with_a_sentence(model, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "nan-model"
    shutil.copytree(model, broken)
    unet_file = next((broken / "unet").glob("*.safetensors"))
    save_file({name: tensor.fill_(float("nan")) for name, tensor in load_file(unet_file).items()}, unet_file)
    code, err = run(capsys, broken, tmp_path / "out", write_scan(tmp_path / "in" / "scan.png"))
    assert code == 1
    (image,) = manifest(tmp_path / "out")["images"]
    assert image["status"] == "failed" and "non-finite" in image["error"]
    assert not (tmp_path / "out" / "scan" / "counterfactual.png").exists()
    json.loads((tmp_path / "out" / "manifest.json").read_text())  # valid JSON


@pytest.mark.parametrize("flag", ["--guidance-scale", "--strength"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_option_values_are_refused(model, tmp_path, capsys, flag, value):
    code, err = run(capsys, model, tmp_path / "out", write_scan(tmp_path / "in" / "scan.png"), more=(flag, value))
    assert code == 2 and "finite" in one_line_error(err)
    assert not (tmp_path / "out").exists()


def test_an_image_too_large_for_memory_is_skipped_and_the_rest_go_on(model, tmp_path, capsys, monkeypatch):
    from dva.core import io

    monkeypatch.setattr(io, "free_memory", lambda: 8 * 2**30)
    long = tmp_path / "in" / "long.png"
    long.parent.mkdir()
    Image.fromarray(np.full((16, 20000), 128, np.uint8)).save(long)  # 320 kpixels, a 20000-pixel square padded
    good = write_scan(tmp_path / "in" / "scan.png")
    code, err = run(capsys, model, tmp_path / "out", long, good)
    assert code == 1
    assert statuses(tmp_path / "out") == {"long": "failed", "scan": "done"}
    assert "long.png" in err and "GiB" in err and "crop or downscale" in err
    assert (tmp_path / "out" / "report.html").is_file()


def test_a_model_with_an_absurd_sample_size_is_refused_before_loading(model, tmp_path, capsys):
    absurd = tmp_path / "absurd"
    shutil.copytree(model, absurd)
    config = json.loads((absurd / "unet" / "config.json").read_text())
    (absurd / "unet" / "config.json").write_text(json.dumps({**config, "sample_size": 100_000}))
    code, err = run(capsys, absurd, tmp_path / "out", write_scan(tmp_path / "in" / "scan.png"))
    assert code == 2 and "sample_size" in one_line_error(err)


# -- interruptions ---------------------------------------------------------------------------------------


def test_a_full_disk_is_one_sentence_and_keeps_a_manifest(model, tmp_path, capsys, monkeypatch):
    from dva.core import io

    scans = [write_scan(tmp_path / "in" / f"scan{i}.png", i) for i in range(3)]
    real = io.atomic_write_bytes
    full: list[bool] = []

    def fills_up(path, data):
        if full:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        if Path(path).name == "counterfactual.png":
            full.append(True)  # the disk is full from the next write on
        return real(path, data)

    monkeypatch.setattr(io, "atomic_write_bytes", fills_up)
    code, err = run(capsys, model, tmp_path / "out", *scans)
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err
    assert "disk is full" in errors[0] and str(tmp_path / "out" / "scan0") in errors[0]
    json.loads((tmp_path / "out" / "manifest.json").read_text())  # the last manifest written stays


def test_a_revision_for_a_local_folder_is_refused(model, tmp_path, capsys):
    code, err = run(capsys, model, tmp_path / "out", write_scan(tmp_path / "in" / "scan.png"), more=("--revision", "v2"))
    assert code == 2 and "--revision v2" in one_line_error(err)
