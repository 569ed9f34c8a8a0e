"""Signal quality in the arrhythmia answers: what is not an ECG gets no classes, and says why.

Real HTTP requests through the app (TestClient) against the tiny champion trained on real
records; the signals that are not ECG are the ones issue 10 reports (Gaussian noise classified as
32 beats, a 2 Hz sawtooth as 19 V beats at 0.99) plus a flat line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bench.tiny_models import mitdb_strip

FS = 360.0


def _not_ecg(kind: str) -> list[float]:
    t = np.arange(int(10 * FS)) / FS
    if kind == "white noise":
        x = np.random.default_rng(0).normal(0.0, 0.3, t.size)
    elif kind == "2 Hz sawtooth":
        x = 2.0 * ((2.0 * t) % 1.0) - 1.0
    else:
        x = np.zeros(t.size)
    return [round(float(v), 4) for v in x]


def _assert_unclassified(result: dict[str, Any]) -> None:
    quality = result["quality"]
    assert quality["verdict"] == "unreadable"
    assert quality["reasons"], "an unreadable strip must say why"
    assert quality["n_unreadable_beats"] == len(result["beats"])
    assert result["summary"]["counts"] == {c: 0 for c in result["summary"]["counts"]}
    assert result["summary"]["abnormal_fraction"] is None
    assert result["warnings"]
    for beat in result["beats"]:
        assert beat["quality"] == "unreadable"
        assert beat["label"] is None and beat["probabilities"] is None
        assert beat["quality_reasons"]


@pytest.mark.parametrize("kind", ["white noise", "2 Hz sawtooth", "flat line"])
def test_not_an_ecg_is_unreadable_with_reasons(client: TestClient, kind: str) -> None:
    r = client.post("/predict/arrhythmia", json={"fs": FS, "signal": _not_ecg(kind)})
    assert r.status_code == 200, r.text
    _assert_unclassified(r.json())


def test_reasons_name_the_failed_checks(client: TestClient) -> None:
    flat = client.post("/predict/arrhythmia", json={"fs": FS, "signal": _not_ecg("flat line")})
    assert {"no_beats", "flat"} <= set(flat.json()["quality"]["reasons"])
    saw = client.post("/predict/arrhythmia", json={"fs": FS, "signal": _not_ecg("2 Hz sawtooth")})
    assert "ksqi" in saw.json()["quality"]["reasons"]


def test_clean_strip_is_readable_and_classified(client: TestClient, mitdb_dir: Path) -> None:
    signal, fs, peaks, _ = mitdb_strip(mitdb_dir, "100", start_s=60.0, seconds=10.0)
    r = client.post("/predict/arrhythmia", json={"fs": fs, "signal": signal.tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["quality"]["verdict"] in {"good", "noisy"}
    assert body["quality"]["n_unreadable_beats"] == 0
    assert abs(body["summary"]["n_beats"] - len(peaks)) <= 1
    for beat in body["beats"]:
        assert beat["quality"] in {"good", "noisy"} and beat["label"] is not None
        assert sum(beat["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert sum(body["summary"]["counts"].values()) == body["summary"]["n_beats"]


def test_batch_judges_each_segment(client: TestClient, mitdb_dir: Path) -> None:
    signal, fs, _, _ = mitdb_strip(mitdb_dir, "100", start_s=60.0, seconds=10.0)
    r = client.post(
        "/predict/arrhythmia/batch",
        json={"segments": [
            {"fs": FS, "signal": _not_ecg("white noise")},
            {"fs": fs, "signal": signal.tolist()},
        ]},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    noise, clean = r.json()["results"]
    _assert_unclassified(noise)
    assert clean["quality"]["verdict"] != "unreadable" and clean["beats"][0]["label"] is not None


def test_openapi_documents_nullable_classes(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    beat = schemas["BeatOut"]["properties"]
    assert {"type": "null"} in beat["label"]["anyOf"]
    assert {"type": "null"} in beat["probabilities"]["anyOf"]
    assert beat["quality"]["enum"] == ["good", "noisy", "unreadable"]
    assert "unreadable" in beat["quality"]["description"]
    assert "SegmentQuality" in schemas
