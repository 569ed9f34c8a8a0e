"""The record predictor on a real PTB-XL record: any lead subset, optional age / sex, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.labels import PTBXL_SUPERCLASSES
from models.record_model import PTBXL_LEADS, RecordModel, RecordModelConfig
from models.record_predictor import RecordModelCard, RecordPredictor, SubsetCalibration
from models.tasks import dataset_spec
from pipeline.records import read_record


@pytest.fixture(scope="module")
def predictor() -> RecordPredictor:
    torch.manual_seed(0)
    arch = RecordModelConfig(hidden_size=16, conv_channels=(8, 8, 8))
    card = RecordModelCard(
        classes=tuple(PTBXL_SUPERCLASSES),
        leads=PTBXL_LEADS,
        preprocess=dataset_spec("ptb-xl").preprocess,
        architecture=arch,
        input_shape=(1000, 12),
        calibration={
            "12-lead": SubsetCalibration(1.0, 0.5),
            "limb-6/no-demographics": SubsetCalibration(2.0, 0.4),
            "lead-I": SubsetCalibration(1.5, 0.6),
        },
    )
    return RecordPredictor(RecordModel(arch), card)


@pytest.fixture(scope="module")
def record(ptbxl_dir: Path) -> tuple[np.ndarray, float, list[str]]:
    rec = read_record(str(ptbxl_dir / "records100" / "00000" / "00001_lr"))
    return rec.signal, rec.fs, list(rec.leads)


def test_card_round_trip(predictor: RecordPredictor) -> None:
    card = predictor.card
    assert RecordModelCard.from_metadata(card.to_metadata()) == card
    with pytest.raises(ValueError, match="kind"):
        RecordModelCard.from_metadata({"task": "heart-disease"})
    assert card.subset_for(["I"]) == "lead-I"
    assert card.subset_for(["aVL", "I", "II", "III", "aVR", "aVF"]) == "limb-6"
    assert card.subset_for(["II", "III"]) == "limb-6"  # smallest named subset holding them
    assert card.subset_for(["V1", "V2"]) == "12-lead"


def test_inputs_reorder_and_zero_absent_leads(
    predictor: RecordPredictor, record: tuple[np.ndarray, float, list[str]]
) -> None:
    signal, fs, leads = record
    full, mask, used = predictor.record_inputs(signal, fs, leads)
    assert full.shape == (1000, 12) and mask.sum() == 12 and used == PTBXL_LEADS
    # Three leads, given in another order and case: same columns, the rest zero.
    cols = [leads.index(x) for x in ("V2", "I", "AVF")]
    part, mask3, used3 = predictor.record_inputs(signal[:, cols], fs, ["v2", "i", "avf"])
    assert used3 == ("I", "AVF", "V2")
    for name in used3:
        k = PTBXL_LEADS.index(name)
        np.testing.assert_allclose(part[:, k], full[:, k], atol=1e-5)
    assert np.all(part[:, mask3 == 0] == 0)


def test_predictions_for_12_6_and_1_lead(
    predictor: RecordPredictor, record: tuple[np.ndarray, float, list[str]]
) -> None:
    signal, fs, leads = record
    p12 = predictor.predict(signal, fs, leads, age=56, sex=1)
    assert set(p12.probabilities) == set(PTBXL_SUPERCLASSES)
    assert p12.calibration_subset == "12-lead" and p12.demographics_used
    assert not p12.reduced_leads
    assert p12.heart_disease_probability == pytest.approx(1 - p12.probabilities["NORM"])
    p6 = predictor.predict(signal[:, :6], fs, leads[:6])
    assert p6.reduced_leads and p6.calibration_subset == "limb-6/no-demographics"
    assert p6.threshold == 0.4
    assert p6.heart_disease == (p6.heart_disease_probability >= 0.4)
    p1 = predictor.predict(signal[:, 0], fs, ["I"], age=56)  # sex missing: no demographics
    assert p1.leads_used == ("I",) and not p1.demographics_used
    # No calibration stored for this key: temperature 1, threshold 0.5.
    assert p1.calibration_subset == "lead-I/no-demographics" and p1.threshold == 0.5


def test_bad_records_are_clear_errors(
    predictor: RecordPredictor, record: tuple[np.ndarray, float, list[str]]
) -> None:
    signal, fs, leads = record
    with pytest.raises(ValueError, match="unknown leads"):
        predictor.predict(signal[:, :2], fs, ["I", "V9"])
    with pytest.raises(ValueError, match="must be"):
        predictor.predict(signal[:, :3], fs, ["I", "II"])
    with pytest.raises(ValueError, match="repeated"):
        predictor.predict(signal[:, :2], fs, ["I", "i"])
    with pytest.raises(ValueError, match="sex"):
        predictor.predict(signal, fs, leads, age=50, sex=3)
