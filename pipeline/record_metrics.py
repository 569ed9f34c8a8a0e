"""Decision-quality figures for record-level heart-disease probabilities.

Bootstrap confidence intervals of ROC-AUCs (resampling patients, since a patient may have several
records), temperature scaling (Guo et al. 2017), expected calibration error, an operating point
by Youden's J and the yes/no decision's accuracy, precision, recall and specificity.

References
----------
Guo C, Pleiss G, Sun Y, Weinberger KQ. On calibration of modern neural networks. ICML 2017.
Youden WJ. Index for rating diagnostic tests. Cancer 3(1):32-35 (1950).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = [
    "bootstrap_ci",
    "decision_metrics",
    "expected_calibration_error",
    "fit_temperature",
    "sigmoid",
    "youden_threshold",
]


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Element-wise logistic function (float64)."""
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def bootstrap_ci(
    stat: Callable[[np.ndarray], float],
    groups: np.ndarray,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Point estimate and percentile ``1 - alpha`` interval of ``stat`` under a cluster bootstrap.

    Parameters
    ----------
    stat : callable
        ``stat(idx)`` -> float for item indices ``idx`` (with repeats); NaN results (e.g. a
        resample without positives) are dropped.
    groups : np.ndarray
        ``(n,)`` cluster of each item (the patient): whole clusters are resampled.
    n_boot : int
    alpha : float
    seed : int

    Returns
    -------
    (estimate, low, high) : tuple of float
    """
    rng = np.random.default_rng(seed)
    uniq, inverse = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(uniq.shape[0])]
    estimate = float(stat(np.arange(inverse.shape[0])))
    values = []
    for _ in range(n_boot):
        pick = np.asarray(rng.integers(0, len(members), size=(len(members),)))
        v = stat(np.concatenate([members[int(g)] for g in pick]))
        if np.isfinite(v):
            values.append(v)
    if not values:
        return estimate, float("nan"), float("nan")
    q = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return estimate, float(q[0]), float(q[1])


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """One temperature ``T`` minimising the binary cross-entropy of ``sigmoid(logits / T)``.

    Parameters
    ----------
    logits : np.ndarray
        ``(n, K)`` (or ``(n,)``) validation logits.
    y : np.ndarray
        Same shape, 0/1 targets.

    Returns
    -------
    float
        ``T`` in [0.05, 20], found by a bounded scalar search on log T.
    """
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64).ravel()
    t = np.asarray(y, dtype=np.float64).ravel()

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        # log(1 + exp(-|s|)) form: stable BCE with logits
        return float(np.mean(np.maximum(s, 0) - s * t + np.log1p(np.exp(-np.abs(s)))))

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error of binary probabilities (equal-width bins).

    ``sum_b (n_b / n) * |mean(y in b) - mean(p in b)|``; for ``(n, K)`` inputs the mean over the
    K columns (each a binary problem).
    """
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if y.ndim == 2:
        return float(np.mean([expected_calibration_error(y[:, k], p[:, k], n_bins)
                              for k in range(y.shape[1])]))  # fmt: skip
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(y[m].mean() - p[m].mean())
    return float(ece)


def youden_threshold(y: np.ndarray, score: np.ndarray) -> float:
    """Threshold maximising sensitivity + specificity - 1 (decide "yes" when ``score >= t``)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(np.asarray(y), np.asarray(score))
    j = tpr - fpr
    finite = np.isfinite(thr)
    i = int(np.argmax(np.where(finite, j, -np.inf)))
    return float(thr[i])


def decision_metrics(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, precision, recall (sensitivity) and specificity of ``score >= threshold``."""
    y = np.asarray(y).astype(bool)
    yes = np.asarray(score) >= threshold
    tp, fp = int((yes & y).sum()), int((yes & ~y).sum())
    tn, fn = int((~yes & ~y).sum()), int((~yes & y).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return {
        "accuracy": ratio(tp + tn, y.shape[0]),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }
