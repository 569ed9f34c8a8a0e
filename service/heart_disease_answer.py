"""Answers of the record model (any lead subset, optional age and sex) for the service.

The JSON and file endpoints of ``/predict/heart-disease`` call :func:`record_answer` when the
champion is a :class:`models.record_predictor.RecordPredictor` (the card's kind
``record-model``); older 12-lead heart-disease models keep their own path in the routes.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Final, Literal

import numpy as np

from models.record_predictor import RecordPredictor

__all__ = ["MIN_RECORD_FRACTION", "Sex", "encode_sex", "record_answer"]

#: A record must cover at least this share of the model's window (10 s for PTB-XL).
MIN_RECORD_FRACTION: Final = 0.9

Sex = Literal["male", "female"]


def encode_sex(sex: Sex | None) -> int | None:
    """PTB-XL's coding: 0 male, 1 female (None: not given)."""
    return None if sex is None else int(sex == "female")


def record_answer(
    predictor: RecordPredictor,
    signal: np.ndarray,
    fs: float,
    leads: Sequence[str],
    gate: threading.BoundedSemaphore | Any,
    *,
    age: float | None = None,
    sex: Sex | None = None,
) -> dict[str, Any]:
    """The fields of a :class:`service.schemas.HeartDiseaseResult` for one record.

    Parameters
    ----------
    signal : np.ndarray
        ``(n_samples, len(leads))`` in mV at ``fs`` Hz, about the model's window (10 s).
    leads : sequence of str
        Column names: any subset of the model's 12 leads (case-insensitive).
    gate : threading.BoundedSemaphore
        Held around the forward pass.
    age, sex : optional
        Used only when both are given.

    Raises
    ------
    ValueError
        Unknown or repeated lead names, a record shorter than :data:`MIN_RECORD_FRACTION` of the
        window, or non-finite outputs (the routes answer 422).
    """
    card = predictor.card
    window_s = card.input_shape[0] / card.preprocess.fs_target
    duration_s = signal.shape[0] / fs
    if duration_s < MIN_RECORD_FRACTION * window_s - 1e-9:
        raise ValueError(
            f"record too short: {duration_s:.2f} s; this model reads {window_s:g} s "
            f"(at least {MIN_RECORD_FRACTION * window_s:g} s)"
        )
    with gate:
        pred = predictor.predict(signal, fs, leads, age=age, sex=encode_sex(sex))
    probs = np.array(list(pred.probabilities.values()))
    if not np.all(np.isfinite(probs)) or not np.isfinite(pred.heart_disease_probability):
        raise ValueError("the model produced non-finite outputs for this record")
    warnings = []
    if pred.reduced_leads:
        warnings.append(
            f"reduced lead set: {len(pred.leads_used)} of the model's {len(card.leads)} leads "
            f"({', '.join(pred.leads_used)}); the answer is less certain than with all "
            f"{len(card.leads)} (calibration and threshold of '{pred.calibration_subset}')"
        )
    if (age is None) != (sex is None):
        warnings.append("age and sex are used only together: both were ignored")
    if duration_s > window_s + 1e-9:
        warnings.append(f"the model reads the first {window_s:g} s; the rest was ignored")
    elif duration_s < window_s - 1e-9:
        warnings.append(f"record shorter than {window_s:g} s: padded with its last value")
    return {
        "probabilities": pred.probabilities,
        "heart_disease_probability": pred.heart_disease_probability,
        "heart_disease": pred.heart_disease,
        "threshold": pred.threshold,
        "labels": [c for c, v in pred.probabilities.items() if v >= 0.5],
        "leads_used": list(pred.leads_used),
        "reduced_leads": pred.reduced_leads,
        "demographics_used": pred.demographics_used,
        "warnings": warnings,
    }
