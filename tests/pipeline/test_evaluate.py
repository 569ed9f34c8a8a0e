"""Metrics checked against hand-counted confusion matrices; logging into a real sqlite store."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from models.labels import AAMI_CLASSES, PTBXL_SUPERCLASSES
from pipeline.evaluate import evaluate_arrhythmia, evaluate_heart_disease, log_evaluation


def _onehot_proba(pred: list[int], k: int) -> np.ndarray:
    p = np.full((len(pred), k), 0.01, dtype=np.float32)
    p[np.arange(len(pred)), pred] = 0.96
    return p


def test_arrhythmia_metrics_by_hand() -> None:
    # true:  N N N N S S V V F
    # pred:  N N N S S N V N F
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2, 3])
    pred = [0, 0, 0, 1, 1, 0, 2, 0, 3]
    res = evaluate_arrhythmia(y, _onehot_proba(pred, 5), AAMI_CLASSES, split="test")
    m = res.metrics
    assert m["N_recall"] == pytest.approx(3 / 4) and m["N_precision"] == pytest.approx(3 / 5)
    assert m["S_recall"] == pytest.approx(1 / 2) and m["S_precision"] == pytest.approx(1 / 2)
    assert m["V_recall"] == pytest.approx(1 / 2) and m["V_precision"] == pytest.approx(1.0)
    assert m["F_recall"] == 1.0 and m["F_precision"] == 1.0
    assert m["accuracy"] == pytest.approx(6 / 9)
    f1 = {"N": 2 * 0.6 * 0.75 / 1.35, "S": 0.5, "V": 2 * 0.5 / 1.5, "F": 1.0}
    # Q (no support, never predicted) is not part of the AAMI macro average.
    assert m["macro_f1"] == pytest.approx(np.mean(list(f1.values())))
    cm = res.report["confusion_matrix"]["rows_true_cols_pred"]
    assert cm[0] == [3, 1, 0, 0, 0] and cm[2] == [1, 0, 1, 0, 0]
    assert res.report["per_class"]["Q"]["support"] == 0 and "Q_auc" not in m
    assert set(res.figures) == {"confusion_matrix.png", "pr_curves.png"}


def test_heart_disease_metrics_by_hand() -> None:
    classes = list(PTBXL_SUPERCLASSES)  # NORM MI STTC CD HYP
    y = np.array(
        [
            [1, 0, 0, 0, 0],
            [1, 0, 0, 0, 0],
            [0, 1, 0, 0, 0],
            [0, 1, 1, 0, 0],
            [0, 0, 0, 1, 1],
            [0, 0, 1, 0, 0],
        ],
        dtype=np.float32,
    )
    p = np.full_like(y, 0.2)
    p[:, 0] = [0.9, 0.8, 0.3, 0.1, 0.2, 0.85]  # NORM: the last (STTC) record ranks above one NORM
    p[:, 1] = [0.1, 0.2, 0.9, 0.7, 0.3, 0.4]  # MI: perfectly ranked
    res = evaluate_heart_disease(y, p, classes, split="val")
    m = res.metrics
    assert m["MI_auc"] == 1.0
    # NORM: positives {0.9, 0.8} vs negatives {0.3, 0.1, 0.2, 0.85}: 7 of 8 pairs ordered.
    assert m["NORM_auc"] == pytest.approx(7 / 8)
    # Heart disease = any non-NORM class; score 1 - P(NORM): the same ranking as NORM reversed.
    assert m["heart_disease_auc"] == pytest.approx(7 / 8)
    assert m["NORM_precision"] == pytest.approx(2 / 3) and m["NORM_recall"] == 1.0
    assert m["MI_precision"] == 1.0 and m["MI_recall"] == 1.0
    # STTC, CD, HYP have a constant score 0.2: AUC 0.5 each.
    assert m["macro_auc"] == pytest.approx(np.mean([7 / 8, 1.0, 0.5, 0.5, 0.5]))


def test_undefined_auc_is_left_out() -> None:
    y = np.zeros((4, 5), dtype=np.float32)
    y[:, 0] = 1  # only NORM: every other AUC is undefined
    res = evaluate_heart_disease(y, np.full((4, 5), 0.5, np.float32), PTBXL_SUPERCLASSES,
                                 split="val", figures=False)  # fmt: skip
    assert "MI_auc" not in res.metrics and np.isnan(res.report["per_class"]["MI"]["auc"])
    assert "heart_disease_auc" not in res.metrics


def test_log_evaluation_writes_metrics_report_and_pngs(
    tmp_path: Path,
) -> None:
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    y = np.array([0, 0, 1, 2, 3, 0])
    res = evaluate_arrhythmia(y, _onehot_proba([0, 1, 1, 2, 0, 0], 5), AAMI_CLASSES, split="test")
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=exp) as run:
        log_evaluation(res)
    data = client.get_run(run.info.run_id).data
    assert data.metrics["test_S_recall"] == 1.0 and data.metrics["test_S_precision"] == 0.5
    arts = {f.path for f in client.list_artifacts(run.info.run_id, "test")}
    assert arts == {
        "test/classification_report.json",
        "test/confusion_matrix.png",
        "test/pr_curves.png",
    }
    local = client.download_artifacts(run.info.run_id, "test/classification_report.json", tmp_path)
    rep = json.loads(Path(local).read_text())
    assert rep["per_class"]["F"] == pytest.approx(
        {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1, "predicted": 0,
         "auc": rep["per_class"]["F"]["auc"]}
    )  # fmt: skip
    png = client.download_artifacts(run.info.run_id, "test/pr_curves.png", tmp_path)
    assert Path(png).read_bytes()[:4] == b"\x89PNG"
