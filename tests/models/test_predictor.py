"""The heart-disease predictor reads exactly the model's duration of a longer record."""

from __future__ import annotations

import numpy as np
import torch

from models.labels import PTBXL_SUPERCLASSES
from models.predictor import HeartDiseasePredictor, ModelCard
from models.preprocessing import PreprocessConfig
from models.recurrent import RecurrentClassifier, RecurrentClassifierConfig
from models.segment import Segment

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
