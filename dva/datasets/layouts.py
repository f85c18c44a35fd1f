"""The built-in dataset layouts, layout detection, dataset checks and the dataset fingerprint.

Three layouts are registered as dataset plugins by :mod:`dva.plugins.datasets`:

* ``covid-radiography``: the COVID-19 Radiography Database, ``<Class>/images/*.png`` with optional
  ``<Class>/masks/`` (lung masks) and ``<Class>/lesions/`` (lesion masks) of the same file name, and
  optional per-image prompts from ``metadata.csv`` (class,file,prompt); ``dva phantoms`` writes it.
* ``class-folders``: ``<class>/**/*.png|jpg|dcm...`` with optional masks in ``<class>/masks/`` by stem.
* ``csv``: a CSV of path,label[,mask,lesion,prompt], or CheXpert's CSV with ``label_column``.

:func:`open_dataset` opens a location by layout name or by detection; :func:`check_dataset` turns
bad data into one-sentence :class:`ConfigError` s before any training starts;
:func:`dataset_fingerprint` hashes the data for a model folder's ``dva.json``.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import os
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dva.core.errors import ConfigError, InputError, PluginError
from dva.core.io import SUPPORTED_EXTENSIONS
from dva.core.specs import import_object
from dva.datasets import LabelledDataset, Sample

COVID_RADIOGRAPHY = "covid-radiography"
CLASS_FOLDERS = "class-folders"
CSV = "csv"

GENERIC_LAYOUTS = (CLASS_FOLDERS,)  # auto-detection falls back to these only when nothing more specific matches
IMAGES, MASKS, LESIONS = "images", "masks", "lesions"
METADATA = "metadata.csv"
IGNORED_FOLDERS = frozenset({"__MACOSX"})
SHOWN = 3  # how many offending files an error names

# What each layout expects, for "no classes found" and missing-mask errors.
EXPECTED = {
    COVID_RADIOGRAPHY: "expected class folders of the form <Class>/images/*.png",
    CLASS_FOLDERS: "expected class folders of the form <class>/*.png (or .jpg, .dcm, ...)",
    CSV: "the CSV has no labelled rows (with label_column, a row needs 1.0 in that column or in 'No Finding')",
}
MASK_HINT = {
    COVID_RADIOGRAPHY: "add <Class>/masks/ files with the same names as the images",
    CLASS_FOLDERS: "add <class>/masks/ files with the same stems as the images",
    CSV: "fill in the CSV's mask column",
}


@dataclass
class OpenedDataset(LabelledDataset):
    """A dataset opened by a built-in layout.

    ``class_folders`` lists every class the layout found, in class order, including empty ones (with
    the folder its images were looked for in, None for CSV classes); ``source`` is the CSV file of the
    ``csv`` layout (``root`` is then the folder image paths are resolved against).
    """

    class_folders: dict[str, Path | None] = field(default_factory=dict)
    source: Path | None = None


# -- helpers ----------------------------------------------------------------------------------------


def _absolute(location: str | os.PathLike) -> Path:
    return Path(os.path.abspath(Path(location).expanduser()))


def _visible(name: str) -> bool:
    return not name.startswith(".") and name not in IGNORED_FOLDERS


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in SUPPORTED_EXTENSIONS


def _subfolders(folder: Path) -> list[Path]:
    """Visible subfolders, sorted by name."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    return sorted((entry for entry in entries if _visible(entry.name) and entry.is_dir()), key=lambda p: p.name)


def _images_in(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    return sorted(entry for entry in entries if _is_image_name(entry.name) and entry.is_file())


def _walk_images(folder: Path, skip: Iterable[str] = ()) -> list[Path]:
    """Image files under ``folder`` (recursively, not into hidden folders or folders named in ``skip``), sorted."""
    skip = frozenset(skip)
    found = []
    for current, folders, files in os.walk(folder):
        folders[:] = [name for name in folders if _visible(name) and name not in skip]
        found.extend(Path(current, name) for name in files if _is_image_name(name))
    return sorted(found, key=lambda path: path.relative_to(folder).as_posix())


def _has_image(folder: Path, skip: Iterable[str] = ()) -> bool:
    """Whether ``folder`` holds any image file (recursively), stopping at the first one."""
    skip = frozenset(skip)
    for current, folders, files in os.walk(folder):
        folders[:] = [name for name in folders if _visible(name) and name not in skip]
        if any(_is_image_name(name) for name in files):
            return True
    return False


def _index(folder: Path) -> dict[str, Path]:
    """A mask folder's files by relative path, and (prefixed with NUL) by relative path without extension."""
    index: dict[str, Path] = {}
    if not folder.is_dir():
        return index
    for path in _walk_images(folder):
        relative = path.relative_to(folder).as_posix()
        index.setdefault(relative, path)
        index.setdefault("\0" + relative[: len(relative) - len(path.suffix)], path)
    return index


def _lookup(index: dict[str, Path], relative: str) -> Path | None:
    """The mask for an image at ``relative`` (posix, inside its class): same name, same stem, or same stem at the top."""
    if not index:
        return None
    stem = posixpath.splitext(relative)[0]
    return index.get(relative) or index.get("\0" + stem) or index.get("\0" + posixpath.basename(stem))


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as a posix string (with ``..`` where it lies outside)."""
    return Path(os.path.relpath(path, root)).as_posix()


def _normal(text: str) -> str:
    """A relative path from a CSV, normalised for matching: forward slashes, no ``./``."""
    return posixpath.normpath(text.strip().replace("\\", "/"))


def _sort(samples: list[Sample], classes: Iterable[str], root: Path) -> list[Sample]:
    """By class order (``classes``, then labels in order of appearance), then relative path."""
    order = {label: index for index, label in enumerate(dict.fromkeys([*classes, *(s.label for s in samples)]))}
    return sorted(samples, key=lambda sample: (order[sample.label], _relative(sample.path, root)))


def _folder(location: str | os.PathLike, layout: str) -> Path:
    root = _absolute(location)
    if not root.exists():
        raise ConfigError(f"Dataset location {root} does not exist; check the path.")
    if not root.is_dir():
        raise ConfigError(f"Dataset location {root} is a file, but the {layout} layout needs a folder; pass its folder.")
    return root


def _names(items: Iterable[str]) -> str:
    return ", ".join(f"'{item}'" for item in items)


def _close(name: str, choices: Iterable[str]) -> str | None:
    """The closest of ``choices`` to ``name``, ignoring case."""
    choices = list(choices)
    folded = {choice.casefold(): choice for choice in choices}
    match = difflib.get_close_matches(name.casefold(), list(folded), n=1, cutoff=0.6)
    return folded[match[0]] if match else None


# -- CSV reading ------------------------------------------------------------------------------------


def _read_table(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """A CSV's header and its rows with their line numbers; a ConfigError when it cannot be read."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path} cannot be read as a CSV file ({reason}); check that it is UTF-8 CSV.") from error
    if not header or not any(cell.strip() for cell in header):
        raise ConfigError(f"{path} is empty (no header row); it needs a header such as path,label.")
    return [cell.strip() for cell in header], rows


def _header(path: Path) -> list[str]:
    """Only the header of a CSV (for detection); empty when it cannot be read."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return [cell.strip() for cell in next(csv.reader(handle), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def _columns(header: list[str]) -> dict[str, int]:
    """Column index by case-folded name (the first column of a name wins)."""
    columns: dict[str, int] = {}
    for index, name in enumerate(header):
        columns.setdefault(name.casefold(), index)
    return columns


def _cell(row: list[str], index: int | None) -> str:
    return row[index].strip() if index is not None and index < len(row) else ""


def _csv_files(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".csv" and _visible(p.name) and p.is_file())
    except OSError:
        return []


# -- covid-radiography ------------------------------------------------------------------------------


def _read_metadata(root: Path) -> dict[str, str]:
    """Prompts by normalised relative file path from ``root/metadata.csv`` (empty when there is none)."""
    path = root / METADATA
    if not path.is_file():
        return {}
    header, rows = _read_table(path)
    columns = _columns(header)
    missing = [name for name in ("file", "prompt") if name not in columns]
    if missing:
        raise ConfigError(
            f"{path} lacks the column{'s' if len(missing) > 1 else ''} {_names(missing)} (it has: {', '.join(header)}); "
            "it needs class,file,prompt columns, or remove it to use no per-image prompts."
        )
    prompts = {}
    for _, row in rows:
        file, prompt = _cell(row, columns["file"]), _cell(row, columns["prompt"])
        if not file or not prompt:
            continue
        if os.path.isabs(file):
            file = _relative(Path(file), root)
        prompts.setdefault(_normal(file), prompt)
    return prompts


def looks_like_covid_radiography(location: str | os.PathLike) -> bool:
    """Whether ``location`` is a folder with at least one ``<Class>/images/`` folder of images."""
    root = Path(location)
    return root.is_dir() and any(
        (folder / IMAGES).is_dir() and _images_in(folder / IMAGES) for folder in _subfolders(root)
    )


def open_covid_radiography(location: str | os.PathLike) -> OpenedDataset:
    """``<Class>/images/*`` with optional ``<Class>/masks/`` and ``<Class>/lesions/``, prompts from metadata.csv.

    A class folder with images but no ``images/`` subfolder is kept as an empty class, so that
    :func:`check_dataset` can say where the images were expected.
    """
    root = _folder(location, COVID_RADIOGRAPHY)
    prompts = _read_metadata(root)
    classes: dict[str, Path | None] = {}
    samples = []
    for folder in _subfolders(root):
        images = folder / IMAGES
        if not images.is_dir() and not _has_image(folder):
            continue
        classes[folder.name] = images
        masks, lesions = _index(folder / MASKS), _index(folder / LESIONS)
        for image in _images_in(images):
            samples.append(
                Sample(
                    path=image,
                    label=folder.name,
                    mask=_lookup(masks, image.name),
                    lesion=_lookup(lesions, image.name),
                    prompt=prompts.get(_relative(image, root)),
                )
            )
    return OpenedDataset(root, COVID_RADIOGRAPHY, _sort(samples, classes, root), class_folders=classes)


# -- class-folders ----------------------------------------------------------------------------------


def looks_like_class_folders(location: str | os.PathLike) -> bool:
    """Whether ``location`` is a folder, without a CSV of its own, whose subfolders hold images."""
    root = Path(location)
    if not root.is_dir() or _csv_files(root):
        return False
    return any(_has_image(folder, skip=(MASKS, LESIONS)) for folder in _subfolders(root))


def open_class_folders(location: str | os.PathLike) -> OpenedDataset:
    """Every visible subfolder is a class; its images are found recursively, not inside ``masks``/``lesions``."""
    root = _folder(location, CLASS_FOLDERS)
    classes: dict[str, Path | None] = {}
    samples = []
    for folder in _subfolders(root):
        classes[folder.name] = folder
        masks, lesions = _index(folder / MASKS), _index(folder / LESIONS)
        for image in _walk_images(folder, skip=(MASKS, LESIONS)):
            relative = image.relative_to(folder).as_posix()
            samples.append(Sample(image, folder.name, _lookup(masks, relative), _lookup(lesions, relative)))
    return OpenedDataset(root, CLASS_FOLDERS, _sort(samples, classes, root), class_folders=classes)


# -- csv --------------------------------------------------------------------------------------------


def looks_like_csv(location: str | os.PathLike) -> bool:
    """Whether ``location`` is a CSV file, or a folder whose only CSV has path and label columns."""
    path = Path(location)
    if path.is_file():
        return path.suffix.lower() == ".csv"
    if path.is_dir():
        found = _csv_files(path)
        return len(found) == 1 and {"path", "label"} <= set(_columns(_header(found[0])))
    return False


def _csv_source(location: str | os.PathLike) -> Path:
    path = _absolute(location)
    if not path.exists():
        raise ConfigError(f"Dataset location {path} does not exist; check the path.")
    if path.is_file():
        return path
    found = _csv_files(path)
    if len(found) == 1:
        return found[0]
    if not found:
        raise ConfigError(f"Dataset folder {path} holds no CSV file; pass the CSV file of the csv layout itself.")
    raise ConfigError(
        f"Dataset folder {path} holds several CSV files ({', '.join(p.name for p in found)}); pass the one to use."
    )


def _resolver(base: Path):
    """Resolve a CSV path against ``base``, or against its parent when the path starts with ``base``'s name.

    CheXpert's CSVs sit in ``CheXpert-v1.0-small/`` but list ``CheXpert-v1.0-small/train/...``.
    """
    first_exists: dict[str, bool] = {}

    def resolve(text: str) -> Path:
        relative = Path(text.replace("\\", "/"))
        if relative.is_absolute():
            return Path(os.path.normpath(relative))
        parts = relative.parts
        if parts and parts[0] == base.name:
            if parts[0] not in first_exists:
                first_exists[parts[0]] = (base / parts[0]).exists()
            if not first_exists[parts[0]]:
                return Path(os.path.normpath(base.parent / relative))
        return Path(os.path.normpath(base / relative))

    return resolve


def _is_one(value: str) -> bool:
    try:
        return float(value) == 1.0
    except ValueError:
        return False


def open_csv(
    location: str | os.PathLike,
    root: str | None = None,
    label_column: str | None = None,
    frontal_only: bool = False,
) -> OpenedDataset:
    """A CSV of path,label[,mask,lesion,prompt]; or, with ``label_column``, a CheXpert-style CSV.

    With ``label_column`` a row gets that column's name as its label when its value there is 1.0,
    "No Finding" when its "No Finding" value is 1.0, and is skipped otherwise (0.0, -1.0 uncertain,
    blank, or both). Paths are resolved against ``root`` (default: the CSV's folder).
    """
    source = _csv_source(location)
    if root is not None:
        base = _absolute(root)
        if not base.is_dir():
            raise ConfigError(f"The image root {base} (option 'root') is not a folder; pass the folder the CSV's paths start from.")
    else:
        base = source.parent
    header, rows = _read_table(source)
    columns = _columns(header)

    def need(names: list[str], why: str) -> None:
        missing = [name for name in names if name not in columns]
        if missing:
            hint = ""
            if label_column is None and "no finding" in columns:
                hint = ", or pass label_column (e.g. 'Cardiomegaly') for a CheXpert-style CSV"
            raise ConfigError(
                f"{source} lacks the column{'s' if len(missing) > 1 else ''} {_names(missing)} "
                f"(it has: {', '.join(header)}); {why}{hint}."
            )

    if label_column is None:
        need(["path", "label"], "a dataset CSV needs path,label columns (mask, lesion and prompt are optional)")
    else:
        need(["path"], "a CheXpert-style CSV needs a path column")
        if label_column not in header:
            close = _close(label_column, header)
            hint = f" Did you mean '{close}'?" if close else ""
            raise ConfigError(
                f"{source} has no column '{label_column}' (option label_column).{hint} Columns: {', '.join(header)}."
            )
    view = columns.get("frontal/lateral")
    if frontal_only and view is None:
        raise ConfigError(f"{source} has no 'Frontal/Lateral' column, so frontal_only cannot pick frontal views; drop frontal_only.")

    resolve = _resolver(base)
    path_at, label_at = columns["path"], columns.get("label")
    mask_at, lesion_at, prompt_at = columns.get("mask"), columns.get("lesion"), columns.get("prompt")
    finding_at = header.index(label_column) if label_column is not None else None
    healthy_at = columns.get("no finding")
    if label_column is not None and label_column.casefold() == "no finding":
        healthy_at = None  # label_column="No Finding" keeps only the healthy rows
    labels: dict[Path, str] = {}
    samples = []
    for line, row in rows:
        if frontal_only and _cell(row, view).casefold() != "frontal":
            continue
        if label_column is None:
            label = _cell(row, label_at)
        else:
            positive, healthy = _is_one(_cell(row, finding_at)), _is_one(_cell(row, healthy_at))
            if positive == healthy:  # neither (0.0, -1.0 uncertain, blank) or contradictory
                continue
            label = label_column if positive else header[healthy_at]
        text = _cell(row, path_at)
        if not text:
            raise ConfigError(f"{source}, line {line}: the path is empty; fill it in or remove the row.")
        if not label:
            raise ConfigError(f"{source}, line {line}: the label of {text} is empty; fill it in or remove the row.")
        path = resolve(text)
        if path in labels:
            if labels[path] != label:
                raise ConfigError(
                    f"{source} lists {text} twice with different labels ('{labels[path]}' and '{label}'); keep one row."
                )
            continue
        labels[path] = label
        mask, lesion = _cell(row, mask_at), _cell(row, lesion_at)
        samples.append(
            Sample(
                path=path,
                label=label,
                mask=resolve(mask) if mask else None,
                lesion=resolve(lesion) if lesion else None,
                prompt=_cell(row, prompt_at) or None,
            )
        )
    classes = list(dict.fromkeys(sample.label for sample in samples))
    return OpenedDataset(
        base, CSV, _sort(samples, classes, base), class_folders={label: None for label in classes}, source=source
    )


# -- opening by name or detection -------------------------------------------------------------------


def _detect(location: Path, catalogue: Any) -> Any:
    """The dataset spec whose detector recognises ``location``; generic layouts only when nothing else does."""
    registered = catalogue.components.get("dataset", {})
    matches = []
    for item in registered.values():
        spec = item.spec
        if not spec.detect:
            continue
        try:
            found = bool(import_object(spec.detect)(location))
        except Exception:  # a broken detector only means "not this layout"
            continue
        if found:
            matches.append(spec)
    specific = [spec for spec in matches if spec.name not in GENERIC_LAYOUTS] or matches
    if len(specific) == 1:
        return specific[0]
    available = ", ".join(sorted(registered)) or "none registered"
    if specific:
        raise ConfigError(
            f"Dataset {location} fits several layouts ({', '.join(spec.name for spec in specific)}); "
            "pass the layout to use by name."
        )
    if location.is_dir() and len(_csv_files(location)) > 1:
        names = ", ".join(path.name for path in _csv_files(location))
        raise ConfigError(
            f"Dataset folder {location} holds several CSV files ({names}) and no recognised layout; "
            "pass one CSV file as the location."
        )
    what = "file" if location.is_file() else "folder"
    raise ConfigError(
        f"Dataset {what} {location} has no layout dva recognises (no <Class>/images/ folders, no class folders "
        f"of images, not a CSV of path,label); check the path or pass a layout by name ({available})."
    )


def open_dataset(location: str | os.PathLike, layout: str = "auto", catalogue: Any = None, **options: Any) -> LabelledDataset:
    """Open ``location`` with the named dataset layout, or the detected one when ``layout`` is "auto".

    ``options`` are the layout's options (checked against its spec; None values are left out, so
    CLI defaults can be passed through). ``catalogue`` defaults to the process-wide plugin catalogue.
    """
    if catalogue is None:
        from dva.core.plugins import get_catalogue

        catalogue = get_catalogue()
    path = _absolute(location)
    if not path.exists():
        raise ConfigError(f"Dataset location {path} does not exist; check the path.")
    options = {
        key: os.fspath(value) if isinstance(value, os.PathLike) else value
        for key, value in options.items()
        if value is not None
    }
    if layout in (None, "", "auto"):
        spec = _detect(path, catalogue)
        where = f"Dataset {path} (detected as layout '{spec.name}')"
    else:
        spec = catalogue.get("dataset", layout)
        where = f"Dataset {path}"
    checked = spec.check_options(options, where)
    dataset = spec.resolve()(path, **checked)
    if not isinstance(dataset, LabelledDataset):
        raise PluginError(
            f"Dataset layout '{spec.name}' returned {type(dataset).__name__}, not a LabelledDataset; "
            "fix or uninstall the plugin that provides it."
        )
    return dataset


# -- checks -----------------------------------------------------------------------------------------


def _shown(paths: list[Path], root: Path, reasons: dict[Path, str] | None = None) -> str:
    """``a, b, c and 4 more`` (with reasons in parentheses when given), paths relative to ``root``."""
    named = [
        _relative(path, root) + (f" ({reasons[path]})" if reasons and path in reasons else "") for path in paths[:SHOWN]
    ]
    text = ", ".join(named)
    return text + (f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else "")


def _reason(error: Exception, path: Path) -> str:
    """The clause of a read error after its ``path: `` prefix, up to its advice."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    prefix = f"{path}: "
    if text.startswith(prefix):
        text = text[len(prefix) :]
    return text.split("; ")[0].rstrip(".")


def _unknown_class(name: str, available: list[str], where: Path) -> ConfigError:
    close = _close(name, available)
    hint = f" Did you mean '{close}'?" if close else ""
    return ConfigError(f"Unknown class '{name}' in dataset {where}.{hint} Available: {', '.join(available)}.")


def check_dataset(
    dataset: LabelledDataset,
    classes: Iterable[str] | str | None = None,
    require_masks: bool = False,
    check_images: bool = True,
) -> None:
    """Raise a one-sentence ConfigError for data that would break training; return None when all is well.

    Checked in order: the location exists; it has classes; every class in ``classes`` (default: all)
    exists (with a did-you-mean) and has images; every listed image, mask and lesion file exists;
    with ``require_masks`` every image has a lung mask; with ``check_images`` every image, mask and
    lesion file is read with :func:`dva.core.io.read_scan` (the slow part; one file at a time).
    """
    root = Path(dataset.root)
    where = Path(getattr(dataset, "source", None) or root)
    if not where.exists():
        raise ConfigError(f"Dataset location {where} does not exist; check the path.")
    declared: dict[str, Path | None] = dict(getattr(dataset, "class_folders", None) or {})
    for label in dataset.classes():
        declared.setdefault(label, None)
    if not declared:
        expected = EXPECTED.get(dataset.layout, "it has no labelled images")
        raise ConfigError(f"No classes found in dataset {where} (layout {dataset.layout}): {expected}; check the path.")
    available = list(declared)
    if classes is None:
        wanted = available
    else:
        wanted = list(dict.fromkeys([classes] if isinstance(classes, str) else classes))
        if not wanted:
            raise ConfigError(f"The list of classes to use is empty; name classes of dataset {where} ({', '.join(available)}).")
        for name in wanted:
            if name not in declared:
                raise _unknown_class(name, available, where)

    chosen = set(wanted)
    samples = [sample for sample in dataset.samples if sample.label in chosen]
    counts = {label: 0 for label in wanted}
    for sample in samples:
        counts[sample.label] += 1
    empty = [label for label in wanted if counts[label] == 0]
    if empty:
        folders = [declared[label] for label in empty if declared[label] is not None]
        looked = f" (looked in {', '.join(str(folder) for folder in folders)})" if folders else ""
        if len(empty) == 1:
            raise ConfigError(f"Class '{empty[0]}' of dataset {where} has no images{looked}; add images or leave the class out.")
        raise ConfigError(f"Classes {_names(empty)} of dataset {where} have no images{looked}; add images or leave them out.")

    root_hint = ""
    if getattr(dataset, "source", None) is not None:
        root_hint = f" and the 'root' option (paths are resolved against {root})"
    missing = [sample.path for sample in samples if not sample.path.is_file()]
    if missing:
        raise ConfigError(
            f"{len(missing)} of {len(samples)} images of dataset {where} do not exist: {_shown(missing, root)}; "
            f"check the paths{root_hint}."
        )
    listed = [path for sample in samples for path in (sample.mask, sample.lesion) if path is not None]
    missing = [path for path in listed if not path.is_file()]
    if missing:
        raise ConfigError(
            f"{len(missing)} mask file{'s' if len(missing) > 1 else ''} of dataset {where} "
            f"{'do' if len(missing) > 1 else 'does'} not exist: {_shown(missing, root)}; "
            f"check the paths{root_hint}."
        )
    if require_masks:
        unmasked = [sample.path for sample in samples if sample.mask is None]
        if unmasked:
            hint = MASK_HINT.get(dataset.layout, "add a lung mask for each image")
            raise ConfigError(
                f"{len(unmasked)} of {len(samples)} images of dataset {where} have no lung mask: "
                f"{_shown(unmasked, root)}; {hint}, or train without masks."
            )
    if check_images:
        from dva.core.io import read_scan

        # One at a time: read_scan swaps Pillow's process-wide pixel limit, which is not thread-safe.
        files = list(dict.fromkeys([sample.path for sample in samples] + listed))
        reasons: dict[Path, str] = {}
        for path in files:
            try:
                read_scan(path)
            except InputError as error:
                reasons[path] = _reason(error, path)
        if reasons:
            bad = list(reasons)
            raise ConfigError(
                f"{len(bad)} of {len(files)} files of dataset {where} cannot be read: {_shown(bad, root, reasons)}; "
                "re-export or remove them."
            )


# -- fingerprint ------------------------------------------------------------------------------------


def dataset_fingerprint(dataset: LabelledDataset) -> str:
    """sha256 over the sorted (relative path, label, file sha256) of every sample, for ``dva.json``.

    A sample's mask, lesion mask and prompt, where it has them, are appended to its record, so that
    changing them changes the fingerprint; moving the dataset folder or reordering samples does not.
    """
    from dva.core.io import file_sha256

    root = Path(dataset.root)
    hashes: dict[Path, str] = {}

    def sha(path: Path) -> str:
        if path not in hashes:
            try:
                hashes[path] = file_sha256(path)
            except OSError as error:
                raise ConfigError(
                    f"{path} of dataset {root} cannot be read ({error.strerror or error}); run check_dataset first."
                ) from error
        return hashes[path]

    records = []
    for sample in dataset.samples:
        record = [_relative(sample.path, root), sample.label, sha(sample.path)]
        if sample.mask is not None:
            record += ["mask", _relative(sample.mask, root), sha(sample.mask)]
        if sample.lesion is not None:
            record += ["lesion", _relative(sample.lesion, root), sha(sample.lesion)]
        if sample.prompt is not None:
            record += ["prompt", sample.prompt]
        records.append(record)
    digest = hashlib.sha256()
    for record in sorted(records):
        digest.update(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
    return digest.hexdigest()
