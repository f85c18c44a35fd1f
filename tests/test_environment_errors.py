"""Specification: a problem in the user's files or machine is one sentence and exit status 2, never an
"Unexpected error" (exit 3), and never advice to load a file unsafely.

- A registry file that is not UTF-8 names the file and says to save it as UTF-8.
- A weights file that is a pickle carrying code (torch refuses it) is refused for safety by name; dva
  never suggests ``weights_only=False`` and never passes it, nor ``trust_remote_code=True``.
- An output folder dva cannot create or write (under a file, read-only, disk full) says so.
"""

from __future__ import annotations

import ast
import errno
import os
import shutil
import sys
import types
from pathlib import Path

import pytest

from dva import hookimpl

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def dva(capsys, *args) -> tuple[int, str, str]:
    """Run the console entry point in-process; returns (exit status, stdout, stderr)."""
    from dva.cli import main

    with pytest.raises(SystemExit) as exited:
        main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def one_sentence(err: str) -> str:
    """The error line of stderr; fails when there is a traceback or an unexpected error."""
    assert "Traceback" not in err and "Unexpected error" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, err
    return lines[0]


# -- registry files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("given_by", ["--registry", "DVA_REGISTRY"])
def test_a_registry_file_that_is_not_utf8_names_the_file_and_exits_2(given_by, tmp_path, monkeypatch, capsys):
    registry = tmp_path / "lab.toml"
    registry.write_bytes('[entries.lab]\nprior = "sdedit"\n# Réglages du labo\n'.encode("latin-1"))
    if given_by == "DVA_REGISTRY":
        monkeypatch.setenv("DVA_REGISTRY", str(registry))
        code, _, err = dva(capsys, "registry", "show")
    else:
        code, _, err = dva(capsys, "registry", "validate", "--registry", registry)
    assert code == 2
    assert str(registry) in one_sentence(err) and "UTF-8" in err


# -- pickled weights files --------------------------------------------------------------------------


class RunsCode:
    """Pickles as a call of os.system, as a booby-trapped ``pytorch_model.bin`` does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def booby_trapped(path: Path, state: dict, marker: Path) -> Path:
    """Save ``state`` plus an entry that runs code when unpickled, as ``torch.save`` would."""
    import torch

    torch.save({**state, "extra": RunsCode(marker)}, path)
    return path


def assert_refused_for_safety(code: int, err: str, path: Path, marker: Path) -> None:
    calls = f"{os.system.__module__}.system"  # posix.system on Linux and macOS
    assert code == 2
    assert f"'{path}' is not a plain weights file: it is a pickle that calls {calls}" in one_sentence(err)
    assert "refused it for safety" in err and "safetensors" in err
    assert "weights_only" not in err and not marker.exists()


@pytest.fixture
def trapped_encoder(tmp_path) -> tuple[Path, Path]:
    """A RadBERT folder (tiny weights, tokenizer) whose only weights file is a pickle that runs code; and its marker."""
    from safetensors.torch import load_file

    from dva.core.plugins import load_catalogue

    folder, marker = tmp_path / "RadBERT", tmp_path / "code-ran"
    radbert = load_catalogue(entry_points=False).get("encoder", "radbert").create()
    radbert.model.save_pretrained(folder)
    radbert.tokenizer.save_pretrained(folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    booby_trapped(folder / "pytorch_model.bin", state, marker)
    return folder, marker


@pytest.mark.parametrize("debug", [[], ["--debug"]], ids=["plain", "--debug"])
def test_an_encoder_whose_weights_are_a_pickle_that_runs_code_is_refused_by_name(
    debug, trapped_encoder, tiny_sd, images, tmp_path, capsys
):
    folder, marker = trapped_encoder
    code, _, err = dva(capsys, *debug, "run", images[0], "--model", tiny_sd, "--encoder", "radbert",
                       "--encoder-path", folder, "--steps", 2, "--out", tmp_path / "out")
    assert_refused_for_safety(code, err, folder / "pytorch_model.bin", marker)


def test_a_model_folder_whose_unet_is_a_pickle_that_runs_code_is_refused_by_name(tiny_sd, images, tmp_path, capsys):
    from safetensors.torch import load_file

    model, marker = tmp_path / "model", tmp_path / "code-ran"
    shutil.copytree(tiny_sd, model)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    weights.unlink()
    trapped = booby_trapped(model / "unet" / "diffusion_pytorch_model.bin", state, marker)
    code, _, err = dva(capsys, "run", images[0], "--model", model, "--steps", 2, "--out", tmp_path / "out")
    assert_refused_for_safety(code, err, trapped, marker)


def test_any_other_refused_pickle_is_the_same_sentence_and_a_damaged_file_is_named(dva_plugins, tmp_path, capsys):
    """Wherever torch refuses a pickle (a fine-tuning checkpoint's optimizer.bin, a plugin's weights),
    dva's command line says which file and why, never torch's advice."""
    import click
    import torch

    marker = tmp_path / "code-ran"
    trapped = booby_trapped(tmp_path / "optimizer.bin", {}, marker)
    damaged = tmp_path / "damaged.pt"
    damaged.write_text("<html>404 Not Found</html>\n")  # a download that went wrong

    def register_commands(cli):
        @cli.command(name="load-weights")
        @click.argument("path")
        def load_weights(path):
            torch.load(path, weights_only=True)

    loader = types.ModuleType("loader")
    loader.register_commands = hookimpl(register_commands)
    dva_plugins(loader)
    code, _, err = dva(capsys, "load-weights", trapped)
    assert_refused_for_safety(code, err, trapped, marker)
    code, _, err = dva(capsys, "load-weights", damaged)
    assert code == 2
    assert f"'{damaged}' is not a plain PyTorch weights file (damaged, or another format)" in one_sentence(err)
    assert "weights_only" not in err


def test_xrv_fid_weights_that_run_code_are_refused(tmp_path):
    from dva.core.errors import ConfigError
    from dva.metrics.xrv import load_state_dict

    marker = tmp_path / "code-ran"
    trapped = booby_trapped(tmp_path / "densenet.pt", {}, marker)
    with pytest.raises(ConfigError, match="refused it for safety") as refused:
        load_state_dict(trapped)
    assert str(trapped) in str(refused.value) and "weights_only" not in str(refused.value) and not marker.exists()


def test_dva_never_loads_a_pickle_unsafely_nor_runs_a_model_repository_code():
    """No ``weights_only=False`` (torch would unpickle anything) and no ``trust_remote_code=True`` (transformers
    would run a hub repository's Python) anywhere in dva; and dva requires a torch whose default is safe."""
    root = Path(__file__).resolve().parents[1]
    unsafe = {("weights_only", False), ("trust_remote_code", True)}
    offenders = [
        f"{path.relative_to(root)}:{node.lineno}"
        for folder in ("dva", "examples", "benchmarks")
        for path in sorted((root / folder).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.keyword) and isinstance(node.value, ast.Constant)
        and (node.arg, node.value.value) in unsafe
    ]
    assert offenders == []
    dependencies = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    assert "torch>=2.6" in [dependency.split(";")[0].strip() for dependency in dependencies]


# -- the user's machine: permissions, read-only or full disks, files in the way ---------------------


OUT_PROBLEMS = {
    "under a file": None,
    "read-only": errno.EROFS,
    "disk full": errno.ENOSPC,
    "no permission": errno.EACCES,
}
SAYS = {"under a file": "is a file", "read-only": "read-only", "disk full": "full", "no permission": "permission"}


def unwritable(case: str, out: Path, monkeypatch) -> Path:
    """Make ``out`` impossible to create, as ``case`` says; returns the folder to pass as --out."""
    if OUT_PROBLEMS[case] is None:
        out.parent.mkdir(parents=True, exist_ok=True)
        (out.parent / "notes.txt").write_text("not a folder\n")
        return out.parent / "notes.txt" / out.name

    def refuse(path, *args, **kwargs):
        raise OSError(OUT_PROBLEMS[case], os.strerror(OUT_PROBLEMS[case]), str(path))

    monkeypatch.setattr(Path, "mkdir", refuse)
    return out


@pytest.mark.parametrize("case", OUT_PROBLEMS)
def test_dva_phantoms_into_a_folder_it_cannot_make_is_one_sentence(case, tmp_path, capsys, monkeypatch):
    out = unwritable(case, tmp_path / "phantoms", monkeypatch)
    code, _, err = dva(capsys, "phantoms", "--out", out, "--n", 1, "--size", 32)
    line = one_sentence(err)
    assert code == 2 and str(out) in line and SAYS[case] in line


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """The output folder of a finished one-image dva run on a tiny model."""
    from PIL import Image

    from dva.cli import main
    from dva.testing.tiny import make_tiny_sd
    from tests.conftest import chest_like

    root = tmp_path_factory.mktemp("finished-run")
    Image.fromarray(chest_like(64, 0)).save(root / "scan.png")
    with pytest.raises(SystemExit) as done:
        main(["run", str(root / "scan.png"), "--model", str(make_tiny_sd(root / "model")), "--steps", "2",
              "--out", str(root / "out")])
    assert done.value.code == 0
    return root / "out"


@pytest.mark.parametrize("case", ["under a file", "read-only"])
def test_dva_evaluate_refuses_an_out_it_cannot_make_before_evaluating(
    case, finished_run, tmp_path, capsys, monkeypatch
):
    import dva.evaluate.evaluation as evaluation

    monkeypatch.setattr(evaluation, "evaluate", lambda *args, **kwargs: pytest.fail("evaluated first"))
    out = unwritable(case, tmp_path / "tables", monkeypatch)
    code, _, err = dva(capsys, "evaluate", "--generated", finished_run, "--out", out)
    line = one_sentence(err)
    assert code == 2 and f"--out {out}" in line and SAYS[case] in line


@pytest.mark.parametrize(
    "error, code",
    [
        (PermissionError(errno.EACCES, "Permission denied", "/srv/scans/scan.png"), 2),
        (OSError(errno.EROFS, "Read-only file system", "/mnt/archive/out/report.html"), 2),
        (OSError(errno.ENOSPC, "No space left on device", "/scratch/out/scan/overlay.png"), 2),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/data/notes.txt/out"), 2),
        (OSError(errno.ENOSPC, "No space left on device"), 3),  # names no file: could be anything
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/tmp/dva-internal"), 3),  # may be dva's bug
    ],
    ids=["permission", "read-only", "disk full", "file in the way", "no file named", "missing file"],
)
def test_only_environment_errors_that_name_their_file_become_sentences(error, code, dva_plugins, capsys):
    def register_commands(cli):
        @cli.command(name="fail")
        def fail():
            raise error

    failing = types.ModuleType("failing")
    failing.register_commands = hookimpl(register_commands)
    dva_plugins(failing)
    status, _, err = dva(capsys, "fail")
    assert status == code and "Traceback" not in err
    if code == 2:
        assert error.filename in one_sentence(err)
    else:
        assert "Unexpected error" in err
