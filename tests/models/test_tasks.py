"""The catalogue of tasks and datasets (models/tasks.py)."""

from __future__ import annotations

import pytest

from models.labels import AAMI_CLASSES, PTBXL_SUPERCLASSES
from models.tasks import (
    DATASETS,
    TASKS,
    UnknownNameError,
    best_metric_of,
    dataset_spec,
    task_spec,
)


def test_every_dataset_names_a_known_task_and_a_valid_default() -> None:
    for name, spec in DATASETS.items():
        assert spec.name == name
        assert TASKS[spec.task.name] is spec.task
        assert spec.input_kind in ("beats", "record") and spec.patch_size >= 1
        assert spec.database == spec.databases[0]
        assert spec.leads


def test_the_mlflow_contract_is_spelled_once() -> None:
    arr = task_spec("arrhythmia")
    assert arr.selection_metric == "val_macro_f1"
    assert arr.best_metric == best_metric_of(arr.selection_metric) == "best_val_macro_f1"
    assert arr.classes == AAMI_CLASSES and not arr.multilabel
    hd = dataset_spec("ptb-xl").task
    assert hd.best_metric == "best_val_macro_auc" and hd.multilabel
    assert hd.classes == PTBXL_SUPERCLASSES
    assert {t.model_name for t in TASKS.values()} == {"ecg-arrhythmia", "ecg-heart-disease"}


def test_dataset_defaults() -> None:
    mitdb, ptbxl = dataset_spec("mitdb"), dataset_spec("ptb-xl")
    assert mitdb.is_beats and mitdb.leads == ("MLII",) and mitdb.preprocess.fs_target == 125.0
    assert not ptbxl.is_beats and len(ptbxl.leads) == 12
    assert ptbxl.preprocess.fs_target == 100.0 and ptbxl.preprocess.normalise == "zscore"


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown dataset 'svdbx'.*mitdb"):
        dataset_spec("svdbx")
    with pytest.raises(UnknownNameError, match=r"unknown task 'x'.*arrhythmia"):
        task_spec("x")
