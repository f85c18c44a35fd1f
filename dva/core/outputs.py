"""The output folder of a run: created with a clear error, held by one run at a time, and written only
under names that stay inside it.

Output folder names come from input file names, which are the user's data and may be anything
(``...png``, ``report.html.png``, a name with a path separator in a DICOM export). They are made safe
here, so no input can write outside ``--out`` or over the run's own files.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from dva.core.errors import ConfigError

LOCK_FILE = ".dva.lock"
# The run's own files at the top of --out, and the names inside an image folder an image key must not take.
RUN_FILES = ("manifest.json", "report.html", "record.json", "fullsize", LOCK_FILE)
# Every file write_outputs may write into an image folder: what a rerun with other settings removes.
IMAGE_OUTPUTS = (
    "input.png", "counterfactual.png", "attribution.png", "overlay.png", "reconstruction.png", "condition.png",
    "uncertainty.png", "fullsize/counterfactual.png", "fullsize/attribution.png", "fullsize/overlay.png",
    "fullsize/reconstruction.png", "fullsize/uncertainty.png", "calibrated.png", "fullsize/calibrated.png",
    "attribution.safetensors", "signed.png", "fullsize/signed.png", "fullsize/counterfactual-16bit.png",
    "dicom/counterfactual.dcm", "dicom/map.dcm", "dicom/overlay.dcm",  # dva.core.dicom_outputs' files
)
UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]")
MAX_NAME_BYTES = 200  # file systems allow 255; room is left for the suffix and temporary-file names
TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")  # dva.core.io.atomic_write_bytes's temporaries


def path_tag(path: Path) -> str:
    """A short, stable tag of an input's path, to tell apart inputs whose names give the same key."""
    return hashlib.sha1(str(path).encode()).hexdigest()[:8]


def safe_key(stem: str, path: Path) -> str:
    """``stem`` as an output folder name that cannot leave ``--out`` nor take a run file's name.

    Separators and control characters become ``_``, leading dots go; a name that had to change in
    another way than that (empty, ``..``, ``report.html``) or is too long gets the input's path tag.
    """
    cleaned = UNSAFE.sub("_", stem).strip().lstrip(".").strip()
    taken = cleaned.lower() in RUN_FILES or not cleaned
    if taken or cleaned != stem or len(cleaned.encode()) > MAX_NAME_BYTES:
        shortened = cleaned.encode()[:MAX_NAME_BYTES].decode(errors="ignore") or "input"
        return f"{shortened}-{path_tag(path)}"
    return cleaned


def inside(folder: Path, root: Path) -> bool:
    """Whether ``folder`` is ``root`` or lies under it (after resolving links and ``..``)."""
    folder, root = folder.resolve(), root.resolve()
    return folder == root or root in folder.parents


def refuse_inputs_in_outputs(inputs: Iterable[Path], out: Path, written: Iterable[str], flag: str = "--out") -> None:
    """Refuse, before anything runs, an input that lies where a command writes: ``written`` are the names
    directly under ``out`` that it writes (image folders, or files), and an input that is one of them or lies
    inside one would be overwritten or removed by its own outputs (``--out`` pointed at the scans' folder).

    Names are compared case-folded, as on the case-insensitive file systems of macOS and Windows.
    """
    root = out.resolve()
    names = {name.casefold() for name in written}
    for path in inputs:
        resolved = Path(path).resolve()
        if root in resolved.parents and resolved.relative_to(root).parts[0].casefold() in names:
            place = root / resolved.relative_to(root).parts[0]
            raise ConfigError(f"The input {path} lies where dva writes its outputs ({place}), so they would "
                              f"overwrite or remove it; choose another {flag}.")


def ensure_output_folder(out: Path, flag: str = "--out") -> None:
    """Create ``out`` (and its parents) or raise one sentence saying why it cannot be."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{flag} {out}: is a file, not a folder; choose a folder path.") from None
    except NotADirectoryError:
        blocking = next((parent for parent in [out, *out.parents] if parent.is_file()), out)
        raise ConfigError(f"{flag} {out}: {blocking} is a file, so no folder can be made there; choose another path.") from None
    except PermissionError:
        raise ConfigError(f"{flag} {out}: no permission to create this folder; choose a folder you can write to.") from None
    except OSError as error:
        raise ConfigError(f"{flag} {out}: cannot be created ({_reason(error)}); choose another folder.") from None


def _reason(error: OSError) -> str:
    if error.errno == errno.EROFS:
        return "the file system is read-only"
    if error.errno == errno.ENOSPC:
        return "the disk is full"
    return error.strerror or str(error)


@contextlib.contextmanager
def claimed(out: Path, flag: str = "--out") -> Iterator[None]:
    """Hold ``out`` for this run: one run at a time writes into a folder (its outputs and temporaries)."""
    from filelock import FileLock, Timeout

    ensure_output_folder(out, flag)
    lock = FileLock(str(out / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigError(
            f"Another dva run is writing into {out}; wait for it to finish, or choose another {flag}."
        ) from None
    except OSError as error:
        raise ConfigError(f"{flag} {out}: cannot be written ({_reason(error)}); choose another folder.") from None
    try:
        yield
    finally:
        lock.release()


def remove_stale_temporaries(folder: Path, root: Path) -> None:
    """Delete the temporaries dva's atomic writes left in ``folder`` and below when killed mid-way.

    Only files named like dva's own temporaries, and only inside ``root`` (the output folder).
    """
    if not folder.is_dir() or not inside(folder, root):
        return
    for stale in folder.rglob(".*.tmp"):
        if TEMPORARY.match(stale.name) and stale.is_file() and inside(stale.parent, root):
            stale.unlink(missing_ok=True)


def remove_stale_outputs(folder: Path, written: set[str], previous: list[str]) -> None:
    """Delete outputs of an earlier run with other settings that this run did not write again.

    Only dva's own output names and the files the earlier record listed, and only inside ``folder``.
    """
    for name in {*IMAGE_OUTPUTS, *previous} - written:
        stale = folder / name
        if inside(stale.parent, folder) and stale.is_file():
            stale.unlink(missing_ok=True)
