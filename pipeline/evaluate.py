"""Metrics and figures of a trained classifier on one split, and logging them to MLflow.

Two tasks:

* **arrhythmia** (MIT-BIH beats, single-label softmax over AAMI classes): per-class precision
  (positive predictivity, PPV) and recall (sensitivity, Se), F1, accuracy, macro-F1 over the scored
  classes (N, S, V, F: AAMI EC57 scores Q separately, it has 15 beats in the non-paced records), the
  confusion matrix and one-vs-rest ROC-AUC per class.
* **heart-disease** (PTB-XL superclasses, multi-label sigmoids): per-class and macro ROC-AUC
  (the PTB-XL benchmark metric, Strodthoff et al. 2021), per-class precision / recall / F1 at 0.5,
  and the AUC of the heart-disease probability ``1 - P(NORM)`` against "any non-NORM superclass".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn import metrics as skm
from torch import nn

__all__ = [
    "EvaluationResult",
    "evaluate_arrhythmia",
    "evaluate_heart_disease",
    "log_evaluation",
    "predict_proba",
]

logger = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    """Metrics of one split.

    Attributes
    ----------
    split : str
        "val" or "test".
    metrics : dict of str to float
        Flat metric names (``macro_f1``, ``S_precision``, ``MI_auc``...) without the split prefix.
    report : dict
        JSON-ready classification report (per-class dicts, confusion matrix, counts).
    figures : dict of str to matplotlib Figure
        File name -> figure (``confusion_matrix.png``, ``pr_curves.png``).
    """

    split: str
    metrics: dict[str, float]
    report: dict[str, Any]
    figures: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        """Drop the figures (they are plain ``Figure`` objects, not held by pyplot)."""
        self.figures.clear()


@torch.inference_mode()
def predict_proba(
    model: nn.Module, x: np.ndarray, *, multilabel: bool, batch_size: int = 1024
) -> np.ndarray:
    """Class probabilities of ``model`` on inputs ``x``.

    Parameters
    ----------
    model : nn.Module
        Maps float32 ``(batch, time, channels)`` to ``(batch, n_classes)`` logits.
    x : np.ndarray
        float32 ``(n, time, channels)``.
    multilabel : bool
        Sigmoid per class (True) or softmax over classes (False).

    Returns
    -------
    np.ndarray
        float32 ``(n, n_classes)``.
    """
    model.eval()
    out = []
    for start in range(0, x.shape[0], batch_size):
        logits = model(torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size])))
        out.append(torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1))
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(out).numpy().astype(np.float32, copy=False)


def _safe_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC, or NaN when ``y`` holds a single class (the AUC is undefined there)."""
    if y.min() == y.max():
        return float("nan")
    return float(skm.roc_auc_score(y, score))


def evaluate_arrhythmia(
    y_true: np.ndarray,
    proba: np.ndarray,
    classes: Sequence[str],
    *,
    split: str,
    scored: Sequence[str] = ("N", "S", "V", "F"),
    figures: bool = True,
) -> EvaluationResult:
    """Beat-classification metrics.

    Parameters
    ----------
    y_true : np.ndarray
        int64 ``(n,)`` indices into ``classes``.
    proba : np.ndarray
        float32 ``(n, n_classes)`` softmax probabilities.
    classes : sequence of str
        Class names in output order (AAMI: N, S, V, F, Q).
    split : str
        Name used in figure titles and the report.
    scored : sequence of str
        Classes averaged into ``macro_f1`` (those of ``classes`` only).
    figures : bool
        Draw the confusion matrix and precision-recall curves.
    """
    classes = list(classes)
    y_pred = proba.argmax(axis=1)
    labels = np.arange(len(classes))
    cm = skm.confusion_matrix(y_true, y_pred, labels=labels)
    scored_idx = [classes.index(c) for c in scored if c in classes]
    m: dict[str, float] = {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "macro_f1": 0.0,  # below, from the per-class F1
        "n_samples": float(y_true.shape[0]),
    }
    per_class = _single_label_per_class(y_true, y_pred, proba, classes, m)
    m["macro_f1"] = float(np.mean([per_class[classes[i]]["f1"] for i in scored_idx]))
    report = {
        "split": split,
        "task": "arrhythmia",
        "classes": classes,
        "scored_classes": [classes[i] for i in scored_idx],
        "per_class": per_class,
        "accuracy": m["accuracy"],
        "macro_f1": m["macro_f1"],
        "confusion_matrix": {"rows_true_cols_pred": cm.tolist(), "labels": classes},
        "n_samples": int(y_true.shape[0]),
    }
    figs = {}
    if figures:
        onehot = np.eye(len(classes), dtype=int)[y_true]
        figs = {
            "confusion_matrix.png": _confusion_figure(cm, classes, f"{split}: confusion matrix"),
            "pr_curves.png": _pr_figure(onehot, proba, classes, f"{split}: precision-recall"),
        }
    return EvaluationResult(split, m, report, figs)


def _single_label_per_class(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    proba: np.ndarray,
    classes: list[str],
    metrics: dict[str, float],
) -> dict[str, dict[str, float]]:
    """Per-class precision, recall, F1, support, predictions and one-vs-rest AUC; the flat
    ``<class>_<metric>`` entries are added to ``metrics``."""
    prec, rec, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=np.arange(len(classes)), zero_division=0
    )
    per_class: dict[str, dict[str, float]] = {}
    for i, name in enumerate(classes):
        auc = _safe_auc((y_true == i).astype(int), proba[:, i])
        per_class[name] = {
            "precision": float(prec[i]),
            "recall": float(rec[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
            "predicted": int((y_pred == i).sum()),
            "auc": auc,
        }
        metrics[f"{name}_precision"] = float(prec[i])
        metrics[f"{name}_recall"] = float(rec[i])
        metrics[f"{name}_f1"] = float(f1[i])
        if not np.isnan(auc):
            metrics[f"{name}_auc"] = auc
    return per_class


def evaluate_heart_disease(
    y_true: np.ndarray,
    proba: np.ndarray,
    classes: Sequence[str],
    *,
    split: str,
    threshold: float = 0.5,
    figures: bool = True,
) -> EvaluationResult:
    """Multi-label superclass metrics.

    Parameters
    ----------
    y_true : np.ndarray
        float32 or int ``(n, n_classes)`` multi-hot labels.
    proba : np.ndarray
        float32 ``(n, n_classes)`` sigmoid probabilities.
    classes : sequence of str
        Superclass names in output order; must include "NORM" for the heart-disease AUC.
    threshold : float
        Decision threshold for precision, recall and F1.
    """
    classes = list(classes)
    y = (np.asarray(y_true) > 0.5).astype(int)
    y_pred = (proba >= threshold).astype(int)
    m: dict[str, float] = {"n_samples": float(y.shape[0])}
    per_class, cms = _multi_label_per_class(y, y_pred, proba, classes, m)
    aucs = [m[f"{c}_auc"] for c in classes if f"{c}_auc" in m]
    m["macro_auc"] = float(np.mean(aucs)) if aucs else float("nan")
    m["macro_f1"] = float(np.mean([per_class[c]["f1"] for c in classes]))
    m["accuracy"] = float(np.mean((y_pred == y).all(axis=1)))  # exact-match (subset) accuracy
    report: dict[str, Any] = {
        "split": split,
        "task": "heart-disease",
        "classes": classes,
        "threshold": threshold,
        "per_class": per_class,
        "macro_auc": m["macro_auc"],
        "macro_f1": m["macro_f1"],
        "subset_accuracy": m["accuracy"],
        "confusion_matrices": {
            c: {"rows_true_cols_pred": cm.tolist(), "labels": [0, 1]}
            for c, cm in zip(classes, cms, strict=True)
        },
        "n_samples": int(y.shape[0]),
    }
    if "NORM" in classes:
        # Heart disease = any abnormal superclass; the score is 1 - P(NORM).
        k = classes.index("NORM")
        disease = np.delete(y, k, axis=1).any(axis=1).astype(int)
        auc = _safe_auc(disease, 1.0 - proba[:, k])
        report["heart_disease"] = {"auc": auc, "positives": int(disease.sum())}
        if not np.isnan(auc):
            m["heart_disease_auc"] = auc
    figs = {}
    if figures:
        figs = {
            "confusion_matrix.png": _multilabel_confusion_figure(
                cms, classes, f"{split}: per-class confusion (threshold {threshold})"
            ),
            "pr_curves.png": _pr_figure(y, proba, classes, f"{split}: precision-recall"),
        }
    return EvaluationResult(split, m, report, figs)


def _multi_label_per_class(
    y: np.ndarray,
    y_pred: np.ndarray,
    proba: np.ndarray,
    classes: list[str],
    metrics: dict[str, float],
) -> tuple[dict[str, dict[str, float]], list[np.ndarray]]:
    """Per-class AUC, precision, recall, F1, support and 2x2 confusion matrices; the flat
    ``<class>_<metric>`` entries are added to ``metrics`` (``<class>_auc`` only when defined)."""
    per_class: dict[str, dict[str, float]] = {}
    cms = []
    for i, name in enumerate(classes):
        auc = _safe_auc(y[:, i], proba[:, i])
        p, r, f, _ = skm.precision_recall_fscore_support(
            y[:, i], y_pred[:, i], average="binary", zero_division=0
        )
        per_class[name] = {
            "auc": auc,
            "precision": float(p),
            "recall": float(r),
            "f1": float(f),
            "support": int(y[:, i].sum()),
            "predicted": int(y_pred[:, i].sum()),
        }
        cms.append(skm.confusion_matrix(y[:, i], y_pred[:, i], labels=[0, 1]))
        metrics[f"{name}_precision"] = float(p)
        metrics[f"{name}_recall"] = float(r)
        metrics[f"{name}_f1"] = float(f)
        if not np.isnan(auc):
            metrics[f"{name}_auc"] = auc
    return per_class, cms


def log_evaluation(result: EvaluationResult, prefix: str | None = None) -> None:
    """Log ``result`` into the active MLflow run.

    Metrics become ``<prefix>_<name>`` (prefix defaults to the split: ``test_S_recall``); the
    report goes to ``<split>/classification_report.json`` and each figure to ``<split>/<file>``.
    """
    import mlflow

    prefix = prefix or result.split
    mlflow.log_metrics({f"{prefix}_{k}": v for k, v in result.metrics.items() if np.isfinite(v)})
    mlflow.log_dict(result.report, f"{result.split}/classification_report.json")
    for fname, fig in result.figures.items():
        mlflow.log_figure(fig, f"{result.split}/{fname}")


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)  # headless: never needs a display
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _confusion_figure(cm: np.ndarray, classes: list[str], title: str) -> Any:
    fig = _figure(5.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    # Row-normalised colours (recall per true class), raw counts as text.
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, label="fraction of true class")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j, i, str(cm[i, j]), ha="center", va="center",
                color="white" if norm[i, j] > 0.5 else "black", fontsize=8,
            )  # fmt: skip
    fig.tight_layout()
    return fig


def _multilabel_confusion_figure(cms: list[np.ndarray], classes: list[str], title: str) -> Any:
    fig = _figure(2.4 * len(classes), 2.8)
    for k, (cm, name) in enumerate(zip(cms, classes, strict=True)):
        ax = fig.add_subplot(1, len(classes), k + 1)
        ax.imshow(cm, cmap="Blues")
        ax.set_xticks([0, 1], ["no", "yes"])
        ax.set_yticks([0, 1], ["no", "yes"])
        ax.set_title(name)
        ax.set_xlabel("predicted")
        if k == 0:
            ax.set_ylabel("true")
        for i in range(2):
            for j in range(2):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _pr_figure(onehot: np.ndarray, proba: np.ndarray, classes: list[str], title: str) -> Any:
    fig = _figure(5.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    for i, name in enumerate(classes):
        if onehot[:, i].sum() == 0:
            continue  # no positives: the curve is undefined
        p, r, _ = skm.precision_recall_curve(onehot[:, i], proba[:, i])
        ap = skm.average_precision_score(onehot[:, i], proba[:, i])
        ax.plot(r, p, label=f"{name} (AP {ap:.2f}, n={int(onehot[:, i].sum())})")
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision (PPV)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig
