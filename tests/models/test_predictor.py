"""The predictors and their Segment: one place checks a segment, the model its window."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from models.labels import PTBXL_SUPERCLASSES
from models.predictor import HeartDiseasePredictor, ModelCard
from models.preprocessing import PreprocessConfig
from models.recurrent import RecurrentClassifier, RecurrentClassifierConfig
from models.segment import Segment, SegmentError

LEADS = ("I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")


def _predictor() -> HeartDiseasePredictor:
    torch.manual_seed(0)
    arch = RecurrentClassifierConfig(n_inputs=12, n_classes=5, hidden_size=8, patch_size=5)
    cfg = PreprocessConfig(fs_target=100.0, baseline="none", normalise="zscore")
    card = ModelCard("heart-disease", PTBXL_SUPERCLASSES, LEADS, cfg, arch, (1000, 12))
    return HeartDiseasePredictor(RecurrentClassifier(arch), card)


def test_a_longer_record_is_cut_before_filtering_and_scaling() -> None:
    predictor = _predictor()
    rng = np.random.default_rng(0)
    t = np.arange(20 * 500) / 500
    record = (np.sin(2 * np.pi * 1.2 * t)[:, None] * rng.uniform(0.5, 2, 12)).astype(np.float32)
    record[5000:] *= 5.0  # a louder second half must not rescale the first 10 s
    first_10s = predictor.record_inputs(Segment(record[:5000], 500.0, LEADS))
    np.testing.assert_allclose(predictor.record_inputs(Segment(record, 500.0, LEADS)), first_10s)
    assert first_10s.shape == (1000, 12)
    # Leads are matched by name, in any order and case.
    shuffled = tuple(name.lower() for name in reversed(LEADS))
    np.testing.assert_allclose(
        predictor.record_inputs(Segment(record[:5000, ::-1], 500.0, shuffled)), first_10s, atol=1e-6
    )


def test_a_segment_checks_itself_once_when_built() -> None:
    one = Segment.single_lead([0.1, 0.2, 0.3], 360.0)
    assert one.signal.shape == (3, 1) and one.signal.dtype == np.float32
    assert one.leads == ("MLII",) and one.duration_s == 3 / 360
    bad: list[tuple[dict[str, object], str]] = [
        ({"signal": np.array([0.1, np.nan])}, "NaN or infinite"),
        ({"fs": 0.0}, "must be > 0 Hz"),
        ({"leads": ("I", "i")}, "duplicate lead names"),
        ({"leads": ("I",)}, "signal must be (n_samples, 1)"),
        ({"r_peaks": np.array([1, 1])}, "strictly increasing"),
        ({"r_peaks": np.array([0, 9])}, "outside the signal"),
        ({"r_peaks": np.array([0.5])}, "sample indices"),
    ]
    base: dict[str, object] = {
        "signal": np.zeros((4, 2), np.float32), "fs": 100.0, "leads": ("I", "II"),
    }  # fmt: skip
    for change, message in bad:
        with pytest.raises(SegmentError, match=re.escape(message)):
            Segment(**{**base, **change})  # type: ignore[arg-type]


def test_missing_leads_are_named_once_by_the_segment() -> None:
    predictor = _predictor()
    record = Segment(np.zeros((1000, 11), np.float32), 100.0, LEADS[:11])
    full = Segment(np.zeros((1000, 12), np.float32), 100.0, LEADS)
    with pytest.raises(SegmentError, match=re.escape("missing leads ['V6']")) as info:
        predictor.predict_many([full, record])
    assert info.value.index == 1  # which record of the batch
    assert predictor.card.window_s == 10.0
