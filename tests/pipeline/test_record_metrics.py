"""Decision-quality metrics: bootstrap intervals, temperature, ECE, operating point."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.record_metrics import (
    bootstrap_ci,
    decision_metrics,
    expected_calibration_error,
    fit_temperature,
    sigmoid,
    youden_threshold,
)


def _synthetic(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(z): z are calibrated logits."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, n)
    y = (rng.random(n) < sigmoid(z)).astype(float)
    return z, y


def test_temperature_recovers_an_overconfident_scale() -> None:
    z, y = _synthetic()
    assert fit_temperature(3.0 * z, y) == pytest.approx(3.0, rel=0.15)
    assert fit_temperature(z, y) == pytest.approx(1.0, rel=0.15)


def test_ece_small_when_calibrated_large_when_not() -> None:
    z, y = _synthetic()
    assert expected_calibration_error(y, sigmoid(z)) < 0.03
    assert expected_calibration_error(y, sigmoid(4.0 * z)) > 0.08
    two = np.stack([y, y], axis=1)
    assert expected_calibration_error(two, np.stack([sigmoid(z)] * 2, axis=1)) < 0.03


def test_youden_threshold_and_decision_counts() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.6, 0.5, 0.8, 0.9])
    t = youden_threshold(y, s)
    assert t in (0.5, 0.8)  # both reach J = 2/3
    d = decision_metrics(y, s, 0.5)
    assert (d["tp"], d["fp"], d["tn"], d["fn"]) == (3, 1, 2, 0)
    assert d["accuracy"] == pytest.approx(5 / 6)
    assert d["precision"] == pytest.approx(3 / 4)
    assert d["recall"] == 1.0
    assert d["specificity"] == pytest.approx(2 / 3)


def test_patient_bootstrap_interval() -> None:
    z, y = _synthetic(600, seed=1)
    patients = np.repeat(np.arange(200), 3)  # three records per patient
    est, lo, hi = bootstrap_ci(lambda i: roc_auc_score(y[i], z[i]), patients, n_boot=200)
    assert est == pytest.approx(roc_auc_score(y, z))
    assert lo < est < hi and hi - lo < 0.15
    # A statistic that is never defined (e.g. no positives) gives no interval, not an error.
    _, lo2, hi2 = bootstrap_ci(lambda i: float("nan"), patients, n_boot=10)
    assert np.isnan(lo2) and np.isnan(hi2)
