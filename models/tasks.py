"""The catalogue: every task and every dataset the project knows, declared once.

A **task** is what a model answers (its classes, whether they are exclusive, the validation
metric that selects and promotes it, its registered-model and experiment names). A **dataset**
is what ``ecg prepare`` builds for a task: the PhysioNet database(s) it reads, the leads, the
default preprocessing, and the kind of model input it yields (one item per ``"beats"`` window
or per ``"record"``).

Adding a database or a task is one entry here plus its reader (a builder registered in
:data:`pipeline.datasets.BUILDERS`); nothing else branches on dataset names. The MLflow
contract (tag and metric names that training writes and the registry reads) is spelled here
too.

Examples
--------
>>> dataset_spec("mitdb").task.selection_metric
'val_macro_f1'
>>> dataset_spec("ptb-xl").task.model_name
'ecg-heart-disease'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from models.labels import AAMI_CLASSES, PTBXL_SUPERCLASSES
from models.preprocessing import PreprocessConfig

__all__ = [
    "ARRHYTHMIA",
    "DATASETS",
    "HEART_DISEASE",
    "TAG_BEST_EPOCH",
    "TAG_CELL",
    "TAG_DATASET",
    "TAG_DATASET_SHA256",
    "TAG_END",
    "TAG_SELECTION_METRIC",
    "TAG_SELECTION_VALUE",
    "TAG_TASK",
    "TASKS",
    "TASK_ARRHYTHMIA",
    "TASK_HEART_DISEASE",
    "DatasetSpec",
    "InputKind",
    "TaskName",
    "TaskSpec",
    "UnknownNameError",
    "dataset_spec",
    "task_spec",
]

TASK_ARRHYTHMIA: Final = "arrhythmia"
TASK_HEART_DISEASE: Final = "heart-disease"
TaskName = Literal["arrhythmia", "heart-disease"]
#: ``"beats"``: one item per beat window ``(w, 1 + n_rr)`` (waveform channel, then RR channels);
#: ``"record"``: one item per fixed-length multi-lead record ``(n_samples, n_leads)``.
InputKind = Literal["beats", "record"]

# The MLflow contract: run tags written by training, read by the registry and the service.
TAG_TASK: Final = "ecg.task"
TAG_DATASET: Final = "ecg.dataset"
TAG_DATASET_SHA256: Final = "ecg.dataset_sha256"
TAG_CELL: Final = "ecg.model"  # the recurrent cell ("gru" | "lstm"); name kept for old runs
TAG_SELECTION_METRIC: Final = "ecg.selection_metric"
TAG_SELECTION_VALUE: Final = "ecg.selection_value"
TAG_BEST_EPOCH: Final = "ecg.best_epoch"
TAG_END: Final = "ecg.end"


class UnknownNameError(ValueError):
    """A task or dataset name the catalogue does not hold (the message lists the known ones)."""


@dataclass(frozen=True)
class TaskSpec:
    """What a model of this task answers and how its runs are judged.

    Attributes
    ----------
    name : {"arrhythmia", "heart-disease"}
    classes : tuple of str
        Output order of the logits.
    multilabel : bool
        Independent sigmoids (BCE) instead of one softmax (cross-entropy).
    metric : str
        Validation metric (higher is better) that picks the best epoch and decides promotion,
        e.g. ``"macro_f1"``; logged per epoch as ``val_<metric>`` and at the end as
        ``best_val_<metric>``.
    model_name : str
        Registered-model name.
    experiment : str
        Default MLflow experiment.
    """

    name: TaskName
    classes: tuple[str, ...]
    multilabel: bool
    metric: str
    model_name: str
    experiment: str

    @property
    def selection_metric(self) -> str:
        """Per-epoch metric key, e.g. ``val_macro_f1`` (the ``ecg.selection_metric`` tag)."""
        return f"val_{self.metric}"

    @property
    def best_metric(self) -> str:
        """Run metric holding the best epoch's value, e.g. ``best_val_macro_f1``."""
        return best_metric_of(self.selection_metric)


def best_metric_of(selection_metric: str) -> str:
    """Run metric that holds the best epoch's value of ``selection_metric`` (``best_<it>``)."""
    return f"best_{selection_metric}"


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset ``ecg prepare <name>`` builds and ``ecg train --dataset <name>`` trains on.

    Attributes
    ----------
    name : str
        Directory name under ``<data_dir>/processed/``.
    task : TaskSpec
    databases : tuple of str
        PhysioNet databases read (``<raw_root>/<db>/<version>/``); the first is the main one.
    leads : tuple of str
        Input leads, in channel order.
    input_kind : {"beats", "record"}
    preprocess : PreprocessConfig
        Default preprocessing (stored in the manifest and in every model card).
    patch_size : int
        Default time steps per recurrent step (MIT-BIH: 3 of the 87 beat samples at 125 Hz,
        29 steps of 24 ms; PTB-XL: 5 of 1,000 samples at 100 Hz, 200 steps of 50 ms).
    """

    name: str
    task: TaskSpec
    databases: tuple[str, ...]
    leads: tuple[str, ...]
    input_kind: InputKind
    preprocess: PreprocessConfig
    patch_size: int

    @property
    def database(self) -> str:
        """The main PhysioNet database."""
        return self.databases[0]

    @property
    def is_beats(self) -> bool:
        return self.input_kind == "beats"


ARRHYTHMIA = TaskSpec(
    name=TASK_ARRHYTHMIA,
    classes=AAMI_CLASSES,
    multilabel=False,
    metric="macro_f1",  # over N, S, V, F (never accuracy: 90% of beats are N)
    model_name="ecg-arrhythmia",
    experiment="ecg-arrhythmia",
)
HEART_DISEASE = TaskSpec(
    name=TASK_HEART_DISEASE,
    classes=PTBXL_SUPERCLASSES,
    multilabel=True,
    metric="macro_auc",
    model_name="ecg-heart-disease",
    experiment="ecg-heart-disease",
)
TASKS: dict[str, TaskSpec] = {t.name: t for t in (ARRHYTHMIA, HEART_DISEASE)}

DATASETS: dict[str, DatasetSpec] = {
    d.name: d
    for d in (
        # MIT-BIH beats: MLII at 125 Hz, median baseline removal and 0.5-40 Hz band-pass
        # (de Chazal 2004), no normalisation of the record (each beat window has its median
        # subtracted).
        DatasetSpec(
            name="mitdb",
            task=ARRHYTHMIA,
            databases=("mitdb",),
            leads=("MLII",),
            input_kind="beats",
            preprocess=PreprocessConfig(),
            patch_size=3,
        ),
        # PTB-XL 10-s, 12-lead records at their 100 Hz rate: no resampling; zero-phase
        # 0.5-40 Hz band-pass only (the median baseline filter would flatten the ST-segment
        # shifts MI and STTC are read from; a zero-phase 0.5 Hz high-pass keeps them, Kligfield
        # et al. 2007); each lead z-scored over the record (Strodthoff et al. 2021).
        DatasetSpec(
            name="ptb-xl",
            task=HEART_DISEASE,
            databases=("ptb-xl",),
            leads=("I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"),
            input_kind="record",
            preprocess=PreprocessConfig(
                fs_target=100.0, baseline="none", normalise="zscore", beat_normalise="none"
            ),
            patch_size=5,
        ),
    )
}


def task_spec(name: str) -> TaskSpec:
    """The catalogue entry of task ``name``.

    Raises
    ------
    UnknownNameError
        For a name not in :data:`TASKS`.
    """
    if name not in TASKS:
        raise UnknownNameError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
    return TASKS[name]


def dataset_spec(name: str) -> DatasetSpec:
    """The catalogue entry of dataset ``name``.

    Raises
    ------
    UnknownNameError
        For a name not in :data:`DATASETS`.
    """
    if name not in DATASETS:
        raise UnknownNameError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[name]
