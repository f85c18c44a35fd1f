"""Specification of ``dva run`` on bad input, end to end through ``dva.cli.main`` with a tiny model.

- A bad input file is reported by name and skipped; the good ones are still done; exit status 1.
- A usage or configuration error is one line ``Error: ...`` (no traceback unless --debug); exit status 2.
- Outputs are written atomically: an interrupted run leaves no truncated or temporary file, and a
  rerun into the same folder skips what is complete and finishes the rest.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

IMAGE_FILES = ("input.png", "counterfactual.png", "attribution.png", "signed.png", "overlay.png")
FULLSIZE_FILES = ("fullsize/counterfactual.png",)  # the other full-size images: --fullsize all
OUTPUT_FILES = (*IMAGE_FILES, *FULLSIZE_FILES, "attribution.safetensors", "record.json")
DEEP = "tall16"  # the 16-bit input of good_images, whose counterfactual is also written on its own scale
DEEP_FILES = ("fullsize/counterfactual-16bit.png",)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A diffusers Stable Diffusion folder with tiny random parts (64 px model images)."""
    from dva.testing.tiny import make_tiny_sd

    return make_tiny_sd(tmp_path_factory.mktemp("cli-bad-inputs") / "model")


def scan(size: tuple[int, int], seed: int) -> np.ndarray:
    """A smooth 8-bit grayscale image of (height, width)."""
    height, width = size
    y, x = np.mgrid[0:height, 0:width]
    phase = np.random.default_rng(seed).uniform(0, np.pi)
    image = 0.5 + 0.3 * np.sin(x / width * 3 + phase) * np.cos(y / height * 2)
    return (image * 255).astype(np.uint8)


@pytest.fixture
def good_images(tmp_path) -> list[Path]:
    """Three good inputs: a square PNG, a wide PNG and a tall 16-bit PNG."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    paths = [folder / "square.png", folder / "wide.png", folder / "tall16.png"]
    Image.fromarray(scan((64, 64), 0)).save(paths[0])
    Image.fromarray(scan((40, 64), 1)).save(paths[1])
    Image.fromarray(scan((72, 48), 2).astype(np.uint16) * 257).save(paths[2])
    return paths


def dva(capsys, *args) -> tuple[int, str, str]:
    """Run the console entry point in-process; returns (exit status, stdout, stderr)."""
    from dva.cli import main

    with pytest.raises(SystemExit) as exited:
        main([str(arg) for arg in args])
    captured = capsys.readouterr()
    code = exited.value.code
    return (0 if code is None else code), captured.out, captured.err


def run_args(model: Path, out: Path, *more) -> list:
    return ["run", "--model", model, "--steps", 4, "--out", out, *more]


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def by_name(out: Path) -> dict[str, dict]:
    return {Path(image["input"]).name: image for image in manifest(out)["images"]}


def snapshot(out: Path) -> dict[str, tuple[bytes, int]]:
    """Every per-image output file's bytes and modification time (not the run's manifest or report)."""
    return {
        str(path.relative_to(out)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(out.rglob("*"))
        if path.is_file() and path.parent != out
    }


def leftovers(out: Path) -> list[Path]:
    """Temporary or hidden files that an interrupted write could leave behind (the folder's lock file stays)."""
    return [path for path in out.rglob("*")
            if (path.name.endswith(".tmp") or path.name.startswith(".")) and path != out / ".dva.lock"]


def assert_complete(folder: Path, size: tuple[int, int]) -> None:
    expected = (*OUTPUT_FILES, *DEEP_FILES) if folder.name == DEEP else OUTPUT_FILES
    for name in expected:
        assert (folder / name).is_file(), f"{folder.name}/{name} missing"
    for name in IMAGE_FILES:
        with Image.open(folder / name) as image:
            image.load()  # a truncated PNG would fail here
            assert image.size == (64, 64)
    for name in FULLSIZE_FILES:
        with Image.open(folder / name) as image:
            image.load()
            assert image.size == (size[1], size[0])  # the original (height, width)
    from safetensors.numpy import load_file

    tensors = load_file(folder / "attribution.safetensors")
    assert tensors["attribution"].shape == (64, 64)
    assert tensors["attribution_fullsize"].shape == size
    record = json.loads((folder / "record.json").read_text())
    assert record["status"] == "done"
    assert sorted(record["files"]) == sorted(name for name in expected if name != "record.json")


def assert_one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got: {err!r}"
    assert lines[0].startswith("Error:"), err
    assert "Traceback" not in err
    return lines[0]


# -- bad files in a batch --------------------------------------------------------------------------


def test_batch_with_bad_files_does_the_good_ones_reports_the_bad_and_exits_1(
    model, good_images, make_bad_inputs, tmp_path, capsys
):
    folder = good_images[0].parent
    bad = make_bad_inputs(folder)  # in the same folder as the good ones
    out = tmp_path / "out"
    code, _, err = dva(capsys, *run_args(model, out, folder, bad["missing"]))

    assert code == 1
    sizes = {"square": (64, 64), "wide": (40, 64), "tall16": (72, 48)}
    for key, size in sizes.items():
        assert_complete(out / key, size)
    for kind, path in bad.items():
        assert path.name in err, f"{kind} input {path.name} not reported"
        assert not (out / path.stem / "record.json").exists()
    assert "Traceback" not in err

    images = by_name(out)
    assert {name: image["status"] for name, image in images.items()} == {
        **{f"{key}.png": "done" for key in sizes},
        **{path.name: "failed" for path in bad.values()},
    }
    for path in bad.values():
        error = images[path.name]["error"]
        assert error and path.name in error and "\n" not in error
    assert manifest(out)["counts"] == {"done": 3, "failed": len(bad)}
    assert leftovers(out) == []


def test_all_good_exits_0_and_a_rerun_skips_them_without_touching_a_file(model, good_images, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = dva(capsys, *run_args(model, out, *good_images))
    assert code == 0, err
    assert {image["status"] for image in manifest(out)["images"]} == {"done"}
    before = snapshot(out)
    assert len(before) == len(good_images) * len(OUTPUT_FILES) + len(DEEP_FILES)

    code, _, err = dva(capsys, *run_args(model, out, *good_images))
    assert code == 0, err
    assert {image["status"] for image in manifest(out)["images"]} == {"skipped"}
    assert manifest(out)["counts"] == {"skipped": 3}
    assert snapshot(out) == before  # same bytes, not even rewritten


def test_rerun_with_the_output_folder_inside_the_input_folder_reads_only_the_scans(model, good_images, capsys):
    folder = good_images[0].parent
    out = folder / "dva-out"
    for _ in range(2):
        code, _, err = dva(capsys, *run_args(model, out, folder))
        assert code == 0, err
    assert sorted(by_name(out)) == sorted(path.name for path in good_images)
    assert {image["status"] for image in manifest(out)["images"]} == {"skipped"}


def test_an_input_inside_the_folder_its_outputs_would_take_is_refused_and_left_untouched(model, good_images, capsys):
    out = good_images[0].parent.parent
    before = good_images[0].read_bytes()
    code, _, err = dva(capsys, *run_args(model, out, good_images[0]))  # its outputs go to OUT/square/
    assert code == 0, err
    inside = out / "square" / "square.png"
    inside.write_bytes(before)
    code, _, err = dva(capsys, *run_args(model, out, inside))
    assert code == 2
    assert "lies where dva writes its outputs" in err and "Traceback" not in err
    assert inside.read_bytes() == before


# -- usage and configuration errors ----------------------------------------------------------------


def without_unet(model: Path, tmp_path: Path) -> Path:
    broken = tmp_path / "no-unet"
    shutil.copytree(model, broken)
    shutil.rmtree(broken / "unet")
    return broken


CONFIG_ERRORS = {
    "unknown encoder": (["--encoder", "radbrt"], "Did you mean 'radbert'"),
    "strength over 1": (["--strength", "1.5"], "--strength"),
    "zero steps": (["--steps", "0"], "--steps"),
    "unknown entry": (["--entry", "no-such-entry"], "no-such-entry"),
    "missing mask": (["--mask", "{tmp}/no-such-mask.png"], "no-such-mask.png"),
    "float16 on cpu": (["--dtype", "float16", "--device", "cpu"], "float16"),
    "missing model folder": (["--model", "{tmp}/no-such-model"], "no-such-model"),
    "model without unet": (["--model", "{no_unet}"], "unet"),
}


@pytest.mark.parametrize("flags, expected", CONFIG_ERRORS.values(), ids=CONFIG_ERRORS.keys())
def test_config_errors_exit_2_with_one_error_line(model, good_images, tmp_path, capsys, flags, expected):
    no_unet = without_unet(model, tmp_path) if "{no_unet}" in flags else None
    flags = [flag.format(tmp=tmp_path, no_unet=no_unet) for flag in flags]
    out = tmp_path / "out"
    code, _, err = dva(capsys, *run_args(model, out, good_images[0]), *flags)  # later flags win
    assert code == 2
    line = assert_one_error_line(err)
    assert expected in line
    assert not (out / "square" / "record.json").exists()


def test_config_error_found_while_loading_prints_nothing_but_the_error_line(model, good_images, tmp_path, capsys):
    flags = ["--dtype", "float16", "--device", "cpu"]  # found in assemble(), inside the run
    code, out, err = dva(capsys, *run_args(model, tmp_path / "out", good_images[0], *flags))
    assert code == 2
    assert out == ""
    assert err.splitlines()[0].startswith("Error:") and len(err.splitlines()) == 1


def test_debug_shows_the_traceback_of_a_config_error(model, good_images, tmp_path, capsys):
    code, _, err = dva(capsys, "--debug", *run_args(model, tmp_path / "out", good_images[0], "--encoder", "radbrt"))
    assert code == 2
    assert "Traceback" in err
    assert "Error:" in err and "Did you mean 'radbert'" in err


# -- interrupted runs ------------------------------------------------------------------------------


def test_interrupted_generation_keeps_complete_images_and_a_rerun_finishes(
    model, good_images, tmp_path, capsys, monkeypatch
):
    from dva.components.priors import SDEditPrior

    original = SDEditPrior.generate
    calls = []

    def interrupted_on_second_image(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SDEditPrior, "generate", interrupted_on_second_image)
    out = tmp_path / "out"
    code, _, err = dva(capsys, *run_args(model, out, *good_images, "--batch-size", 1))
    assert code == 130
    assert "Interrupted" in err and "Traceback" not in err
    assert_complete(out / "square", (64, 64))
    assert not (out / "wide" / "record.json").exists()
    assert leftovers(out) == []
    assert by_name(out)["square.png"]["status"] == "done"
    done = snapshot(out)

    monkeypatch.setattr(SDEditPrior, "generate", original)
    code, _, err = dva(capsys, *run_args(model, out, *good_images, "--batch-size", 1))
    assert code == 0, err
    assert {name: image["status"] for name, image in by_name(out).items()} == {
        "square.png": "skipped", "wide.png": "done", "tall16.png": "done"
    }
    assert_complete(out / "wide", (40, 64))
    assert_complete(out / "tall16", (72, 48))
    assert {name: value for name, value in snapshot(out).items() if name.startswith("square")} == done
    assert leftovers(out) == []


def test_interrupt_in_the_middle_of_writing_leaves_no_partial_file(model, good_images, tmp_path, capsys, monkeypatch):
    """A KeyboardInterrupt while the 2nd image's 3rd file is being written (after its bytes, before the rename)."""
    import os

    import dva.core.run.write as run_module

    import threading

    original_write_outputs, original_fsync = run_module.write_outputs, os.fsync
    writing = threading.local()  # outputs are written on background threads: count only wide.png's writes

    def write_outputs(folder, job, *args, **kwargs):
        writing.countdown = 3 if job.key == "wide" else None
        return original_write_outputs(folder, job, *args, **kwargs)

    def fsync(descriptor):
        if getattr(writing, "countdown", None) is not None:
            writing.countdown -= 1
            if writing.countdown == 0:
                writing.countdown = None
                raise KeyboardInterrupt
        return original_fsync(descriptor)

    monkeypatch.setattr(run_module, "write_outputs", write_outputs)
    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "out"
    code, _, err = dva(capsys, *run_args(model, out, *good_images, "--batch-size", 1))
    assert code == 130, err
    assert_complete(out / "square", (64, 64))
    assert leftovers(out) == []
    written = sorted(str(p.relative_to(out / "wide")) for p in (out / "wide").rglob("*") if p.is_file())
    assert written == ["counterfactual.png", "input.png"]  # the two finished files, whole; no record.json
    for name in written:
        with Image.open(out / "wide" / name) as image:
            image.load()

    monkeypatch.undo()
    code, _, err = dva(capsys, *run_args(model, out, *good_images, "--batch-size", 1))
    assert code == 0, err
    statuses = {name: image["status"] for name, image in by_name(out).items()}
    assert statuses["square.png"] == "skipped" and statuses["wide.png"] == "done"
    assert statuses["tall16.png"] in ("done", "skipped")  # its write may have finished beside the interrupted one
    assert_complete(out / "wide", (40, 64))
    assert_complete(out / "tall16", (72, 48))
    assert leftovers(out) == []
