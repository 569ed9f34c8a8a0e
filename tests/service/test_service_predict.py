"""Predictions on real MIT-BIH and PTB-XL records, and parity with the predictors used directly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bench.tiny_models import PTBXL_LEADS, TinyRegistry, mitdb_strip, ptbxl_record
from models.predictor import ArrhythmiaPredictor, HeartDiseasePredictor, load_predictor
from models.segment import Segment


@pytest.fixture(scope="module")
def heart_disease_predictor(tiny_registry: TinyRegistry) -> HeartDiseasePredictor:
    p = load_predictor(
        f"models:/{tiny_registry.heart_disease_name}@champion",
        tracking_uri=tiny_registry.tracking_uri,
    )
    assert isinstance(p, HeartDiseasePredictor)
    return p


def _probs(beats: list[dict]) -> np.ndarray:
    return np.array([list(b["probabilities"].values()) for b in beats])


def test_health_ready_models(client: TestClient, tiny_registry: TinyRegistry) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    models = {m["task"]: m for m in client.get("/models").json()["models"]}
    arr = models["arrhythmia"]
    assert (arr["name"], arr["version"], arr["alias"]) == ("ecg-arrhythmia", "1", "champion")
    assert arr["classes"] == ["N", "S", "V", "F", "Q"]
    assert arr["leads"] == ["MLII"] and arr["model_fs_hz"] == 125.0
    assert arr["run_id"]
    # The metrics logged by the training run, read back from MLflow.
    assert {"test_accuracy", "test_macro_f1", "test_recall_N"} <= set(arr["test_metrics"])
    assert all(k.startswith("test_") for k in arr["test_metrics"])
    assert models["heart-disease"]["leads"] == list(PTBXL_LEADS)


@pytest.mark.parametrize("record", ["119", "209"])
def test_arrhythmia_parity_with_annotated_peaks(
    client: TestClient, arrhythmia_predictor: ArrhythmiaPredictor, mitdb_dir: Path, record: str
) -> None:
    signal, fs, peaks, _ = mitdb_strip(mitdb_dir, record, start_s=300.0, seconds=10.0)
    r = client.post(
        "/predict/arrhythmia",
        json={"fs": fs, "signal": signal.tolist(), "r_peaks": peaks.tolist()},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    direct = arrhythmia_predictor.predict(signal, fs, peaks)
    assert [b["sample"] for b in body["beats"]] == peaks.tolist()
    assert [b["label"] for b in body["beats"]] == direct.labels
    np.testing.assert_allclose(_probs(body["beats"]), direct.probabilities, atol=1e-6)
    assert body["r_peaks_source"] == "given"
    assert body["model"] == {
        "name": "ecg-arrhythmia", "version": "1", "alias": "champion",
        "run_id": body["model"]["run_id"],
    }  # fmt: skip
    assert body["beats"][1]["time_s"] == pytest.approx(peaks[1] / fs)
    counts = body["summary"]["counts"]
    assert sum(counts.values()) == body["summary"]["n_beats"] == len(peaks)
    assert body["summary"]["abnormal_fraction"] == pytest.approx(1 - counts["N"] / len(peaks))


def test_arrhythmia_parity_with_detection(
    client: TestClient, arrhythmia_predictor: ArrhythmiaPredictor, mitdb_dir: Path
) -> None:
    signal, fs, annotated, _ = mitdb_strip(mitdb_dir, "100", start_s=60.0, seconds=20.0)
    r = client.post("/predict/arrhythmia", json={"fs": fs, "signal": signal.tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    direct = arrhythmia_predictor.predict(signal, fs)
    assert body["r_peaks_source"] == "detected"
    assert [b["sample"] for b in body["beats"]] == direct.r_peaks.tolist()
    assert [b["label"] for b in body["beats"]] == direct.labels
    np.testing.assert_allclose(_probs(body["beats"]), direct.probabilities, atol=1e-6)
    # The detector finds the annotated beats (within 150 ms) on this clean record.
    found = sum(np.min(np.abs(direct.r_peaks - a)) <= 0.15 * fs for a in annotated)
    assert found >= len(annotated) - 1


def test_arrhythmia_other_rate_and_batch(
    client: TestClient, arrhythmia_predictor: ArrhythmiaPredictor, mitdb_dir: Path
) -> None:
    from scipy.signal import resample_poly

    signal, fs, _, _ = mitdb_strip(mitdb_dir, "119", start_s=0.0, seconds=8.0)
    # The same strip at 250 Hz (as another recorder would give it) and a second, native strip.
    sig250 = resample_poly(signal, 25, 36).astype(np.float32)
    other, _, other_peaks, _ = mitdb_strip(mitdb_dir, "209", start_s=30.0, seconds=5.0)
    segments = [
        {"fs": 250.0, "signal": sig250.tolist()},
        {"fs": fs, "signal": other.tolist(), "r_peaks": other_peaks.tolist()},
    ]
    r = client.post("/predict/arrhythmia/batch", json={"segments": segments})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 2
    direct = arrhythmia_predictor.predict_many(
        [Segment.single_lead(sig250, 250.0), Segment.single_lead(other, fs, r_peaks=other_peaks)]
    )
    for res, d in zip(results, direct, strict=True):
        assert [b["label"] for b in res["beats"]] == d.labels
        np.testing.assert_allclose(_probs(res["beats"]), d.probabilities, atol=1e-6)
    # Single requests give the same answers as the batch.
    single = client.post("/predict/arrhythmia", json=segments[1]).json()
    np.testing.assert_allclose(_probs(single["beats"]), _probs(results[1]["beats"]), atol=1e-6)
    assert results[0]["r_peaks_source"] == "detected" and results[0]["summary"]["n_beats"] > 0
    assert results[1]["summary"]["n_beats"] == len(other_peaks)


def test_arrhythmia_longest_segment_at_a_high_rate(client: TestClient, mitdb_dir: Path) -> None:
    """Ten minutes (the limit) at 1000 Hz: 600,000 samples in one request."""
    from scipy.signal import resample_poly

    signal, _, peaks, _ = mitdb_strip(mitdb_dir, "100", start_s=0.0, seconds=600.0)
    sig1000 = np.round(resample_poly(signal, 25, 9), 3)  # 360 -> 1000 Hz, mV to 3 decimals
    assert sig1000.size == 600_000
    r = client.post("/predict/arrhythmia", json={"fs": 1000, "signal": sig1000.tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["duration_s"] == 600.0
    # Every annotated beat found, at the 1000-Hz position of its annotation (150 ms tolerance).
    found = np.array([b["sample"] for b in body["beats"]])
    expected = np.round(peaks * 1000 / 360)
    assert abs(found.size - expected.size) <= 0.01 * expected.size
    nearest = np.abs(found[:, None] - expected[None, :]).min(axis=0)
    assert np.mean(nearest <= 150) >= 0.99


def test_arrhythmia_shortest_and_flat(client: TestClient, mitdb_dir: Path) -> None:
    signal, fs, peaks, _ = mitdb_strip(mitdb_dir, "100", start_s=0.0, seconds=1.0)
    one = client.post(
        "/predict/arrhythmia",
        json={"fs": fs, "signal": signal[:252].tolist(), "r_peaks": [int(peaks[0])]},
    )
    assert one.status_code == 200, one.text
    assert one.json()["summary"]["n_beats"] == 1
    flat = client.post("/predict/arrhythmia", json={"fs": 360, "signal": [0.0] * 3600})
    assert flat.status_code == 200
    assert flat.json()["summary"] == {
        "n_beats": 0, "counts": {c: 0 for c in "NSVFQ"}, "abnormal_fraction": None,
    }  # fmt: skip
    assert flat.json()["warnings"]


def test_heart_disease_parity_and_batch(
    client: TestClient, heart_disease_predictor: HeartDiseasePredictor, ptbxl_dir: Path
) -> None:
    records = [ptbxl_record(ptbxl_dir, i) for i in (1500, 1501)]
    segments = [Segment(sig, rate, tuple(names)) for sig, rate, names in records]
    signal, fs, leads = records[0]
    r = client.post(
        "/predict/heart-disease", json={"fs": fs, "leads": leads, "signal": signal.tolist()}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    direct = heart_disease_predictor.predict_many(segments[:1])
    assert list(body["probabilities"]) == ["NORM", "MI", "STTC", "CD", "HYP"]
    np.testing.assert_allclose(list(body["probabilities"].values()), direct[0], atol=1e-6)
    assert body["heart_disease_probability"] == pytest.approx(1 - direct[0][0], abs=1e-6)
    assert body["model"]["name"] == "ecg-heart-disease"

    # Batch, with the second record's leads in another order and lower-case names.
    sig2, fs2, leads2 = records[1]
    order = list(reversed(range(len(leads2))))
    shuffled = {
        "fs": fs2,
        "leads": [leads2[i].lower() for i in order],
        "signal": sig2[:, order].tolist(),
    }
    batch = client.post(
        "/predict/heart-disease/batch",
        json={"records": [{"fs": fs, "leads": leads, "signal": signal.tolist()}, shuffled]},
    )
    assert batch.status_code == 200, batch.text
    both = heart_disease_predictor.predict_many(segments)
    got = np.array([list(x["probabilities"].values()) for x in batch.json()["results"]])
    np.testing.assert_allclose(got, both, atol=1e-6)
