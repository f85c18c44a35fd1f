"""What weights a run used: content hashes of the weight files, or the hub commit they came from.

A run's resume fingerprint and its manifest name the weights themselves, not the folder they live in:
a model retrained in place gets new hashes, so its old outputs are no longer "already complete".
Hashing a multi-gigabyte model takes seconds, so each file's hash is cached on disk, keyed by its
path, size, modification time and inode; a file is read again only when one of those changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dva.core.io import atomic_write_text, file_sha256

CACHE_FILE = "weight-hashes.json"
COMMIT = re.compile(r"^[0-9a-f]{40}$")


def cache_folder() -> Path:
    """dva's cache root (weight hashes here, FID features): ``$DVA_CACHE``, else ``~/.cache/dva``."""
    return Path(os.environ.get("DVA_CACHE") or Path.home() / ".cache" / "dva")


@dataclass
class HashCache:
    """sha256 of files, remembered across runs for files whose size, mtime, ctime and inode are unchanged."""

    path: Path = field(default_factory=lambda: cache_folder() / CACHE_FILE)
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    changed: bool = False

    @classmethod
    def open(cls) -> HashCache:
        cache = cls()
        try:
            loaded = json.loads(cache.path.read_text())
            if isinstance(loaded, dict):
                cache.entries = loaded
        except (OSError, ValueError):
            pass  # no cache yet, or a damaged one: hash again
        return cache

    def sha256(self, file: Path) -> str:
        status = file.stat()
        stamp = [status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino]
        key = str(file.resolve())
        known = self.entries.get(key)
        if isinstance(known, dict) and known.get("stamp") == stamp and isinstance(known.get("sha256"), str):
            return known["sha256"]
        digest = file_sha256(file)
        self.entries[key] = {"stamp": stamp, "sha256": digest}
        self.changed = True
        return digest

    def save(self) -> None:
        """Keep what was hashed; a cache that cannot be written only costs hashing again next time."""
        if not self.changed:
            return
        try:
            atomic_write_text(self.path, json.dumps(self.entries, sort_keys=True))
            self.changed = False
        except OSError:
            pass


def folder_files(folder: Path) -> list[Path]:
    """The regular files of ``folder`` and below, hidden ones left out, in a stable order."""
    return sorted(
        path for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def hub_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The local snapshot folder of a hub model at ``revision`` (default: main), if the hub cache holds it."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:  # not cached (or no hub library): the identity then says the revision is unknown
        return None


def identify(location: str, parts: tuple[str, ...] = (), revision: str | None = None,
             cache: HashCache | None = None) -> dict[str, Any]:
    """The identity of the weights at ``location`` (a folder or a hub id), restricted to ``parts`` (subfolders).

    A local folder gives ``{"location", "files": {relative path: sha256}}``; a hub id gives its commit
    (from the local hub cache) and the hashes of the cached files when the snapshot is there.
    """
    if cache is None:
        cache = HashCache.open()
        try:
            return identify(location, parts, revision, cache)
        finally:
            cache.save()
    path = Path(location).expanduser()
    found: dict[str, Any]
    if path.exists():
        found, root = {"location": str(path.resolve())}, path
    else:
        snapshot = hub_snapshot(location, revision)
        commit = snapshot.name if snapshot is not None and COMMIT.match(snapshot.name) else None
        found = {"hub_id": location, "revision": commit or revision, "resolved": commit is not None}
        if snapshot is None:
            return found
        root = snapshot
    if root.is_file():
        found["files"] = {root.name: cache.sha256(root)}
        return found
    folders = [root / part for part in parts if (root / part).exists()] if parts else [root]
    files = [file for folder in folders for file in ([folder] if folder.is_file() else folder_files(folder))]
    found["files"] = {file.relative_to(root).as_posix(): cache.sha256(file) for file in files}
    return found


def digest(identities: dict[str, Any]) -> str:
    """One short hash of identities (what the resume fingerprint takes); where a folder lies is left out,
    so a model moved or copied elsewhere is the same model."""

    def without_location(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: without_location(item) for key, item in value.items() if key != "location"}
        return value

    text = json.dumps(without_location(identities), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
