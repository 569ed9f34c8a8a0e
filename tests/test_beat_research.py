"""bench.beat_research helpers: folds, scoring from counts, the as-served record loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.beat_research import (
    bootstrap_scores,
    choose_decision_rule,
    ds2_counts,
    make_folds,
    scores_from_counts,
)
from models.beat_classifier import BeatClassifier
from models.beat_context import RELATIVE_FEATURE_NAMES
from models.beat_sequence import BeatSequenceConfig, BeatSequenceModel
from models.labels import AAMI_CLASSES
from pipeline.beat_sequences import BeatSequences, record_beats


def _fake(records: dict[str, tuple[int, int, int]]) -> BeatSequences:
    labels, recs = [], []
    for r, (n, s, v) in records.items():
        labels += [0] * n + [1] * s + [2] * v
        recs += [r] * (n + s + v)
    k = len(labels)
    return BeatSequences(
        waves=np.zeros((k, 2, 4), np.float16),
        features=np.zeros((k, 3), np.float32),
        label=np.array(labels),
        aami=np.array(labels),
        record=np.array(recs),
        strip=np.zeros(k, np.int64),
        sample=np.arange(k),
    )


def test_folds_group_by_record_and_spread_s_patients() -> None:
    recs = {f"r{i}": (100, 50 + i if i < 10 else 0, 30 if 10 <= i < 15 else 0) for i in range(25)}
    folds = make_folds(_fake(recs), n_folds=5)
    assert set(folds) == set(recs)
    s_patients = np.bincount([folds[f"r{i}"] for i in range(10)], minlength=5)
    assert (s_patients == 2).all()
    assert (np.bincount(list(folds.values()), minlength=5) == 5).all()


def test_scores_from_counts() -> None:
    c = np.zeros((5, 4), dtype=np.int64)
    c[0] = [90, 5, 3, 2]  # N: 90 right, 2 missed by the detector
    c[1] = [10, 30, 0, 0]
    c[2] = [1, 0, 40, 1]
    c[3] = [2, 0, 6, 0]  # F: 6 called V
    c[4] = [0, 0, 4, 0]  # 4 false detections called V
    s = scores_from_counts(c)
    assert s["N_se"] == pytest.approx(90 / 100)
    assert s["N_ppv"] == pytest.approx(90 / 103)
    assert s["S_se"] == pytest.approx(30 / 40) and s["S_ppv"] == pytest.approx(30 / 35)
    assert s["V_se"] == pytest.approx(46 / 50) and s["V_ppv"] == pytest.approx(46 / 53)
    assert s["V_noF_se"] == pytest.approx(40 / 42) and s["V_noF_ppv"] == pytest.approx(40 / 53)
    boot = bootstrap_scores({"a": c, "b": c}, n_boot=50)
    assert boot["N_se"][0] == pytest.approx(0.9) and boot["N_se"][1] <= 0.9 <= boot["N_se"][2]


def test_decision_rule_moves_toward_a_rare_class() -> None:
    rng = np.random.default_rng(0)
    y = np.array([0] * 900 + [1] * 100)
    p = np.full((1000, 3), 0.05)
    p[:, 0] = 0.6
    p[:, 1] = np.where(y == 1, 0.35, 0.2) + rng.normal(0, 0.02, 1000)  # S never wins the argmax
    p /= p.sum(1, keepdims=True)
    bs, _ = choose_decision_rule(p, y)
    assert bs > 0


def test_as_served_loop_accounts_for_every_beat(mitdb_dir: Path) -> None:
    """On a DS1 record (not DS2): matched + missed reference beats = annotated N/S/V/F beats."""
    torch.manual_seed(0)
    clf = BeatClassifier(
        model=BeatSequenceModel(BeatSequenceConfig(feature_names=RELATIVE_FEATURE_NAMES))
    )
    rb = record_beats(mitdb_dir, "mitdb", "119")
    n_ref = np.isin(rb.aami, [AAMI_CLASSES.index(c) for c in "NSVF"])
    for peaks in ("annotated", "detected"):
        counts = ds2_counts(clf, mitdb_dir.parents[1], ["119"], 300.0, peaks)["119"]
        assert counts[:4].sum() == int(n_ref.sum())
        if peaks == "annotated":
            assert counts[:, 3].sum() == 0 and counts[4].sum() == 0
        else:
            assert counts[:4, 3].sum() < 0.01 * n_ref.sum()  # XQRS misses under 1% here
