"""Specification: a problem in the user's files or machine is one sentence and exit status 2, never an
"Unexpected error" (exit 3), and never advice to load a file unsafely.

- A registry file that is not UTF-8 names the file and says to save it as UTF-8.
- A weights file that is a pickle carrying code (torch refuses it) is refused for safety by name; dva
  never suggests ``weights_only=False`` and never passes it, nor ``trust_remote_code=True``.
- An output folder dva cannot create or write (under a file, read-only, disk full) says so.
"""

from __future__ import annotations

import pytest


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
