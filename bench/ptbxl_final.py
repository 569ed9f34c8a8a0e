"""The final step of ``bench.ptbxl_research``: calibrate on fold 9, read fold 10 once, report.

See :mod:`bench.ptbxl_research` for usage. Everything fitted here (temperature, heart-disease
threshold per lead subset, with and without demographics) is fitted on fold 9; fold 10 is only
scored.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.labels import PTBXL_SUPERCLASSES
from models.record_model import LEAD_SUBSETS, PTBXL_LEADS, RecordModel
from models.record_predictor import (
    RecordModelCard,
    SubsetCalibration,
    calibration_key,
    log_record_model,
)
from pipeline.record_metrics import (
    bootstrap_ci,
    decision_metrics,
    expected_calibration_error,
    sigmoid,
)
from pipeline.record_training import (
    RecordData,
    calibrate,
    heart_disease_labels,
    load_record_data,
    macro_auc,
    predict_logits,
)

logger = logging.getLogger("bench.ptbxl_final")

_NORM = PTBXL_SUPERCLASSES.index("NORM")


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")


def _ci(stat: Any, groups: np.ndarray, n_boot: int) -> dict[str, float]:
    est, lo, hi = bootstrap_ci(stat, groups, n_boot=n_boot)
    return {"auc": est, "ci_low": lo, "ci_high": hi}


def _evaluate(
    model: nn.Module,
    data: RecordData,
    calibration: dict[str, SubsetCalibration],
    uses_demo: bool,
    n_boot: int,
) -> dict[str, Any]:
    report: dict[str, Any] = {}
    disease = heart_disease_labels(data.y)
    for name, leads in LEAD_SUBSETS.items():
        for demo in (True, False) if uses_demo else (False,):
            key = calibration_key(name, demo and uses_demo)
            cal = calibration[key]
            z = predict_logits(model, data, leads, demographics=demo)
            p_raw, p = sigmoid(z), sigmoid(z / cal.temperature)
            hd = 1.0 - p[:, _NORM]
            full = name == "12-lead"  # per-class intervals for 12 leads only (time)
            entry: dict[str, Any] = {
                "macro_auc": _ci(lambda i, z=z: macro_auc(data.y[i], z[i]), data.patient, n_boot),
                "per_class_auc": {
                    c: (
                        _ci(lambda i, k=k, z=z: _auc(data.y[i, k], z[i, k]), data.patient, n_boot)
                        if full
                        else {"auc": _auc(data.y[:, k], z[:, k])}
                    )
                    for k, c in enumerate(PTBXL_SUPERCLASSES)
                },
                "heart_disease_auc": _ci(
                    lambda i, hd=hd: _auc(disease[i], hd[i]), data.patient, n_boot
                ),
                "decision": {
                    "threshold": cal.threshold,
                    **decision_metrics(disease, hd, cal.threshold),
                },
                "ece_classes": {
                    "uncalibrated": expected_calibration_error(data.y, p_raw),
                    "calibrated": expected_calibration_error(data.y, p),
                },
                "ece_heart_disease": {
                    "uncalibrated": expected_calibration_error(disease, 1.0 - p_raw[:, _NORM]),
                    "calibrated": expected_calibration_error(disease, hd),
                },
                "temperature": cal.temperature,
            }
            report[key] = entry
            logger.info(
                "%s: macro-AUC %.4f [%.4f, %.4f], heart disease AUC %.4f, acc %.3f",
                key, entry["macro_auc"]["auc"], entry["macro_auc"]["ci_low"],
                entry["macro_auc"]["ci_high"], entry["heart_disease_auc"]["auc"],
                entry["decision"]["accuracy"],
            )  # fmt: skip
    return report


def final(name: str, data_dir: Path, *, n_boot: int = 1000) -> dict[str, Any]:
    """Calibrate candidate ``name`` on fold 9, evaluate it on fold 10 once, log and save it."""
    import mlflow

    from bench.ptbxl_research import CANDIDATES, EXPERIMENT, RESULTS, TABLE, TRACKING_URI
    from models.tasks import dataset_spec

    saved = torch.load(RESULTS / "ptbxl_candidates" / f"{name}.pt", weights_only=True)
    cand = CANDIDATES[name]
    model = cand.build()
    model.load_state_dict(saved["state_dict"])
    model.eval()
    uses_demo = bool(getattr(getattr(model, "config", None), "demographics", False))
    t0 = time.perf_counter()
    data = load_record_data(data_dir / "processed" / "ptb-xl", TABLE, ("val", "test"))
    calibration = calibrate(model, data["val"])
    val_report = _evaluate(model, data["val"], calibration, uses_demo, n_boot=200)
    logger.info("fold 10, read once for %s", name)
    test_report = _evaluate(model, data["test"], calibration, uses_demo, n_boot)
    report = {
        "candidate": name,
        "calibration": {k: vars(v) for k, v in calibration.items()},
        "val": val_report,
        "test": test_report,
        "n_val": len(data["val"]),
        "n_test": len(data["test"]),
        "n_test_patients": len(set(data["test"].patient.tolist())),
        "n_boot": n_boot,
        "seconds": time.perf_counter() - t0,
    }
    out_dir = RESULTS / "ptbxl_final"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    mlflow.set_tracking_uri(TRACKING_URI)
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name=f"final-{name}") as run:
        mlflow.set_tags({"ecg.task": "heart-disease", "bench.candidate": name, "bench.final": "1"})
        flat = {}
        for key, entry in test_report.items():
            k = key.replace("/", "_")
            flat[f"test_macro_auc_{k}"] = entry["macro_auc"]["auc"]
            flat[f"test_heart_disease_auc_{k}"] = entry["heart_disease_auc"]["auc"]
            for m in ("accuracy", "precision", "recall", "specificity"):
                flat[f"test_hd_{m}_{k}"] = entry["decision"][m]
            flat[f"test_ece_{k}"] = entry["ece_classes"]["calibrated"]
        mlflow.log_metrics({k: v for k, v in flat.items() if np.isfinite(v)})
        mlflow.log_dict(report, "report.json")
        if isinstance(model, RecordModel):
            card = RecordModelCard(
                classes=tuple(PTBXL_SUPERCLASSES),
                leads=PTBXL_LEADS,
                preprocess=dataset_spec("ptb-xl").preprocess,
                architecture=model.config,
                input_shape=(int(data["val"].x.shape[1]), len(PTBXL_LEADS)),
                calibration=calibration,
            )
            info = log_record_model(model, card)
            report["model_uri"] = str(info.model_uri)
            (out_dir / "card.json").write_text(json.dumps(card.to_metadata(), indent=1))
        report["run_id"] = run.info.run_id
    torch.save(
        {
            "kind": cand.kind,
            "arch": cand.arch,
            "state_dict": model.state_dict(),
            "calibration": {k: vars(v) for k, v in calibration.items()},
        },
        out_dir / "model.pt",
    )
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    logger.info("saved %s (run %s)", out_dir, report["run_id"])
    return report
