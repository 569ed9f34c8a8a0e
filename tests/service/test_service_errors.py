"""Bad input never gives a 500: every case answers 4xx with a message saying what is wrong."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from app_helpers import make_settings
from fastapi.testclient import TestClient

from bench.tiny_models import PTBXL_LEADS, TinyRegistry
from service.main import create_app

STRIP = np.sin(np.linspace(0, 20 * np.pi, 3600)).round(3).tolist()  # 10 s at 360 Hz
LEADS = list(PTBXL_LEADS)
RECORD = [[0.01 * i] * 12 for i in range(1000)]  # (1000, 12): 10 s at 100 Hz


def _arr(**kw: Any) -> dict[str, Any]:
    return {"fs": 360, "signal": STRIP, **kw}


def _hd(**kw: Any) -> dict[str, Any]:
    return {"fs": 100, "leads": LEADS, "signal": RECORD, **kw}


ARRHYTHMIA_CASES: list[tuple[str, Any, int, str]] = [
    ("empty signal", _arr(signal=[]), 422, "signal"),
    ("too short", _arr(signal=STRIP[:100]), 422, "at least 0.70 s"),
    ("string samples", _arr(signal=["a", "b"]), 422, "signal[0]"),
    ("nested signal", _arr(signal=[[1.0, 2.0]] * 400), 422, "signal[0]"),
    ("fs too low", _arr(fs=50), 422, "fs"),
    ("fs too high", _arr(fs=5000), 422, "fs"),
    ("fs not a multiple of 0.5", _arr(fs=360.3), 422, "fs"),
    ("fs missing", {"signal": STRIP}, 422, "fs: Field required"),
    ("signal missing", {"fs": 360}, 422, "signal: Field required"),
    ("unknown field", _arr(rpeaks=[1, 2]), 422, "rpeaks"),
    ("huge amplitude (microvolts?)", _arr(signal=[1500.0] * 3600), 422, "signal[0]"),
    ("r_peaks outside", _arr(r_peaks=[10, 5000]), 422, "outside the signal"),
    ("r_peaks unsorted", _arr(r_peaks=[300, 200]), 422, "strictly increasing"),
    ("r_peaks duplicated", _arr(r_peaks=[300, 300]), 422, "strictly increasing"),
    ("r_peaks negative", _arr(r_peaks=[-3, 200]), 422, "r_peaks[0]"),
    ("r_peaks empty", _arr(r_peaks=[]), 422, "r_peaks"),
    ("r_peaks floats", _arr(r_peaks=[1.5]), 422, "r_peaks[0]"),
    ("too long", _arr(fs=100, signal=[0.0] * 60_001), 422, "at most 600 s"),
    ("body is a list", [1, 2, 3], 422, "body"),
]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [c[1:] for c in ARRHYTHMIA_CASES],
    ids=[c[0] for c in ARRHYTHMIA_CASES],
)
def test_bad_arrhythmia_requests(client: TestClient, body: Any, status: int, needle: str) -> None:
    r = client.post("/predict/arrhythmia", json=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


HEART_CASES: list[tuple[str, Any, int, str]] = [
    ("rows of the wrong width", _hd(signal=[[0.0] * 11] * 1000), 422, "row 0 has 11 values"),
    ("one bad row", _hd(signal=[*RECORD[:5], [0.0] * 3, *RECORD[6:]]), 422, "row 5 has 3"),
    ("flat signal list", _hd(signal=[0.0] * 1000), 422, "signal[0]"),
    ("missing lead", _hd(leads=[*LEADS[:11], "X"]), 422, "missing leads ['V6']"),
    ("duplicate lead", _hd(leads=[*LEADS[:11], "v5"]), 422, "duplicate lead names"),
    ("empty lead name", _hd(leads=[*LEADS[:11], ""]), 422, "leads[11]"),
    ("leads missing", {"fs": 100, "signal": RECORD}, 422, "leads: Field required"),
    ("record too short", _hd(signal=RECORD[:300]), 422, "at least 9.00 s"),
    ("fs too low", _hd(fs=10), 422, "fs"),
]


@pytest.mark.parametrize(
    ("body", "status", "needle"), [c[1:] for c in HEART_CASES], ids=[c[0] for c in HEART_CASES]
)
def test_bad_heart_disease_requests(
    client: TestClient, body: Any, status: int, needle: str
) -> None:
    r = client.post("/predict/heart-disease", json=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


def test_nan_and_infinity_literals(client: TestClient) -> None:
    # Python's json (which FastAPI uses) accepts these non-standard literals: they must not pass.
    for literal in ("NaN", "Infinity", "-Infinity", "1e999"):
        raw = '{"fs": 360, "signal": [0.1, %s, 0.2]}' % literal  # noqa: UP031
        r = client.post(
            "/predict/arrhythmia", content=raw, headers={"content-type": "application/json"}
        )
        assert r.status_code == 422, (literal, r.text)
        assert "signal[1]" in r.json()["detail"]
    r = client.post(
        "/predict/arrhythmia",
        content='{"fs": NaN, "signal": [0.1]}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422 and "fs" in r.json()["detail"]


@pytest.mark.parametrize(
    ("content", "headers", "status", "needle"),
    [
        (b'{"fs": 360, "signal": [', {"content-type": "application/json"}, 422, "not valid JSON"),
        (b"fs=360", {"content-type": "application/x-www-form-urlencoded"}, 415, "application/json"),
        (b"0.1,0.2,0.3", {"content-type": "text/csv"}, 415, "text/csv"),
        (b'{"fs": 360}', {}, 415, "Content-Type"),
        (b"", {"content-type": "application/json"}, 422, "Field required"),
    ],
    ids=["truncated json", "form", "csv", "no content type", "empty body"],
)
def test_non_json_bodies(
    client: TestClient, content: bytes, headers: dict[str, str], status: int, needle: str
) -> None:
    r = client.post("/predict/arrhythmia", content=content, headers=headers)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


def test_batch_errors_name_the_segment(client: TestClient) -> None:
    r = client.post(
        "/predict/arrhythmia/batch", json={"segments": [_arr(), _arr(signal=STRIP[:50])]}
    )
    assert r.status_code == 422
    assert r.json()["detail"].startswith("segments[1]: signal is")
    assert client.post("/predict/arrhythmia/batch", json={"segments": []}).status_code == 422
    r = client.post(
        "/predict/heart-disease/batch",
        json={"records": [_hd(), _hd(leads=LEADS[:3], signal=[[0.0] * 3] * 1000)]},
    )
    assert r.status_code == 422 and r.json()["detail"].startswith("records[1]: missing leads")


@pytest.fixture
def small_limit_client(tiny_registry: TinyRegistry) -> Iterator[TestClient]:
    app = create_app(make_settings(tiny_registry, max_body_bytes=50_000, max_batch_items=2))
    with TestClient(app) as c:
        yield c


def test_oversized_bodies(small_limit_client: TestClient) -> None:
    body = json.dumps(_arr(signal=STRIP * 5)).encode()  # ~90 kB
    declared = small_limit_client.post(
        "/predict/arrhythmia", content=body, headers={"content-type": "application/json"}
    )
    assert declared.status_code == 413
    assert "limit is 50000 bytes" in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
        for i in range(0, len(body), 8192):
            yield body[i : i + 8192]

    streamed = small_limit_client.post(
        "/predict/arrhythmia", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413, streamed.text
    assert "limit is 50000 bytes" in streamed.json()["detail"]
    ok = small_limit_client.post("/predict/arrhythmia", json=_arr(signal=STRIP[:1000]))
    assert ok.status_code == 200
    too_many = small_limit_client.post(
        "/predict/arrhythmia/batch", json={"segments": [_arr(signal=STRIP[:400])] * 3}
    )
    assert too_many.status_code == 422 and "at most 2" in too_many.json()["detail"]


def test_api_key(tiny_registry: TinyRegistry, client: TestClient) -> None:
    # Off by default: the module client needs no key.
    assert client.post("/predict/arrhythmia", json=_arr()).status_code == 200
    with TestClient(create_app(make_settings(tiny_registry, api_key="s3cret"))) as c:
        for path, body in [("/predict/arrhythmia", _arr()), ("/predict/heart-disease", _hd())]:
            missing = c.post(path, json=body)
            assert missing.status_code == 401 and "X-API-Key" in missing.json()["detail"]
            wrong = c.post(path, json=body, headers={"X-API-Key": "nope"})
            assert wrong.status_code == 401
            assert c.post(path, json=body, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.post("/admin/reload").status_code == 401
        assert c.post("/admin/reload", headers={"X-API-Key": "s3cret"}).status_code == 200
        # Operations endpoints stay open for probes.
        assert c.get("/health").status_code == 200
        assert c.get("/ready").status_code == 200
        assert c.get("/models").status_code == 200


def test_missing_models_start_and_answer_503(tiny_registry: TinyRegistry) -> None:
    settings = make_settings(tiny_registry, heart_disease_model="no-such-model")
    with TestClient(create_app(settings)) as c:
        ready = c.get("/ready")
        assert ready.status_code == 503
        status = {m["task"]: m for m in ready.json()["models"]}
        assert status["arrhythmia"]["loaded"] is True
        assert status["heart-disease"]["loaded"] is False
        assert "no-such-model" in status["heart-disease"]["error"]
        r = c.post("/predict/heart-disease", json=_hd())
        assert r.status_code == 503
        assert "heart-disease model is not available" in r.json()["detail"]
        assert c.post("/predict/arrhythmia", json=_arr()).status_code == 200
        assert c.get("/models").json()["unavailable"][0]["name"] == "no-such-model"
    # A switched-off model is not required for readiness.
    with TestClient(create_app(make_settings(tiny_registry, heart_disease_model=""))) as c:
        assert c.get("/ready").status_code == 200
        assert "switched off" in c.post("/predict/heart-disease", json=_hd()).json()["detail"]


def test_requests_are_logged_without_signal(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="service.main"):
        client.post("/predict/arrhythmia", json=_arr(signal=[0.123456] * 720))
    lines = [r.getMessage() for r in caplog.records if "/predict/arrhythmia" in r.getMessage()]
    assert lines and "POST /predict/arrhythmia 200" in lines[-1]
    assert "n_samples=720" in lines[-1] and " ms " in lines[-1]
    assert "0.123456" not in caplog.text
