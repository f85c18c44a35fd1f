"""Built-in dataset layouts: COVID-19 Radiography folders, class folders and CSV (CheXpert included).

Only specs here: the layouts themselves live in :mod:`dva.datasets.layouts`, imported when a
dataset is opened, so ``dva plugins`` stays light.
"""

from __future__ import annotations

from dva.core.hookspecs import RegisterDataset, hookimpl
from dva.core.specs import DatasetSpec, Option

LAYOUTS = "dva.datasets.layouts"

BUILTIN_DATASETS = (
    DatasetSpec(
        name="covid-radiography",
        implementation=f"{LAYOUTS}:open_covid_radiography",
        detect=f"{LAYOUTS}:looks_like_covid_radiography",
        description="COVID-19 Radiography Database: <Class>/images/*.png, optional masks/ and lesions/, "
        "prompts from metadata.csv (what dva phantoms writes)",
    ),
    DatasetSpec(
        name="class-folders",
        implementation=f"{LAYOUTS}:open_class_folders",
        detect=f"{LAYOUTS}:looks_like_class_folders",
        description="One folder per class: <class>/**/*.png|jpg|dcm, optional <class>/masks/ by stem",
    ),
    DatasetSpec(
        name="csv",
        implementation=f"{LAYOUTS}:open_csv",
        detect=f"{LAYOUTS}:looks_like_csv",
        description="A CSV of path,label[,mask,lesion,prompt], or CheXpert's CSV with label_column",
        options={
            "root": Option(str, None, "folder the CSV's paths are relative to (default: the CSV's folder)"),
            "label_column": Option(
                str, None, "CheXpert-style CSV: 1.0 in this column gives its label, 1.0 in 'No Finding' gives 'No Finding'"
            ),
            "frontal_only": Option(bool, False, "keep only rows whose 'Frontal/Lateral' column says Frontal"),
        },
    ),
)


@hookimpl
def register_datasets(register: RegisterDataset) -> None:
    for spec in BUILTIN_DATASETS:
        register(spec)
