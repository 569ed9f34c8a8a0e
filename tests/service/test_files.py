"""Recorder files in: real MIT-BIH / PTB-XL files (and copies the tests corrupt) through the API.

Every accepted file must give the answer the JSON endpoints give for the same samples; every
malformed one a 4xx whose ``detail`` names what is wrong.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import wfdb
from app_helpers import make_settings
from fastapi.testclient import TestClient

from bench.tiny_models import TinyRegistry, mitdb_strip, ptbxl_record
from models.labels import WFDB_BEAT_SYMBOLS
from pipeline.records import write_excerpt
from service.main import create_app

ARR_FILE = "/predict/arrhythmia/file"
HD_FILE = "/predict/heart-disease/file"
ARR_BIN = "/predict/arrhythmia/binary"
HD_BIN = "/predict/heart-disease/binary"


def _files(*paths: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]


def _named(**blobs: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [
        ("files", (name.replace("_", "."), data, "application/octet-stream"))
        for name, data in blobs.items()
    ]


def _record_files(directory: Path, record: str, *exts: str) -> list[Any]:
    return _files(*(directory / f"{record}.{ext}" for ext in exts))


def _same_beats(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert [x["sample"] for x in a["beats"]] == [x["sample"] for x in b["beats"]]
    assert [x["label"] for x in a["beats"]] == [x["label"] for x in b["beats"]]
    assert a["quality"] == b["quality"]
    for x, y in zip(a["beats"], b["beats"], strict=True):
        assert (x["quality"], x["quality_reasons"]) == (y["quality"], y["quality_reasons"])
        for c, p in (x["probabilities"] or {}).items():
            assert p == pytest.approx(y["probabilities"][c], abs=1e-5)


# --------------------------------------------------------------------------- WFDB
def test_full_mitdb_record_with_annotations_keeps_every_beat(
    client: TestClient, mitdb_dir: Path
) -> None:
    """A whole 30-min record (longer than one segment) with its .atr: every annotated beat once."""
    r = client.post(ARR_FILE, files=_record_files(mitdb_dir, "119", "hea", "dat", "atr"))
    assert r.status_code == 200, r.text
    body = r.json()
    ann = wfdb.rdann(str(mitdb_dir / "119"), "atr")
    expected = [int(s) for s, sym in zip(ann.sample, ann.symbol, strict=True)
                if sym in WFDB_BEAT_SYMBOLS]  # fmt: skip
    assert body["record"] == {
        "format": "wfdb", "name": "119", "fs": 360.0, "leads": ["MLII", "V1"],
        "n_samples": 650_000, "duration_s": pytest.approx(650_000 / 360),
        "annotated_beats": len(expected),
    }  # fmt: skip
    assert body["lead"] == "MLII" and body["r_peaks_source"] == "given"
    assert [b["sample"] for b in body["beats"]] == expected
    n_unreadable = body["quality"]["n_unreadable_beats"]
    assert body["summary"]["n_beats"] == len(expected)
    assert sum(body["summary"]["counts"].values()) + n_unreadable == len(expected)
    assert body["quality"]["verdict"] != "unreadable" and n_unreadable < 0.01 * len(expected)
    assert n_unreadable == sum(b["label"] is None for b in body["beats"])


def test_wfdb_excerpt_answers_like_the_json_endpoint(client: TestClient, tmp_path: Path) -> None:
    """Record 114 stores V5 before MLII: the file endpoint picks MLII by name."""
    excerpt = Path(__file__).resolve().parents[1] / "fixtures" / "mitdb_excerpt" / "mitdb" / "1.0.0"
    r = client.post(
        ARR_FILE,
        files=_record_files(excerpt, "114", "hea", "dat"),
        params={"include_signal": "true"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["record"]["leads"] == ["V5", "MLII"] and body["lead"] == "MLII"
    rec = wfdb.rdrecord(str(excerpt / "114"))
    mlii = rec.p_signal[:, 1]
    assert body["signal"] == pytest.approx(mlii.tolist(), abs=1e-4)
    assert body["r_peaks_source"] == "detected" and body["summary"]["n_beats"] > 5
    ref = client.post("/predict/arrhythmia", json={"fs": 360, "signal": mlii.tolist()})
    assert ref.status_code == 200
    _same_beats(body, ref.json())


def test_record_without_mlii_falls_back_and_says_so(
    client: TestClient, mitdb_dir: Path, tmp_path: Path
) -> None:
    """Record 102 (paced) has V5 and V2 only: the first lead is read, with a warning naming it."""
    write_excerpt(mitdb_dir, "102", 0, 3600, tmp_path)
    files = _record_files(tmp_path, "102", "hea", "dat", "atr")
    r = client.post(ARR_FILE, files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["lead"] == "V5"
    assert any("no MLII lead" in w and "'V5'" in w for w in body["warnings"])
    r2 = client.post(ARR_FILE, files=files, params={"lead": "v2"})
    assert r2.status_code == 200 and r2.json()["lead"] == "V2"
    r3 = client.post(ARR_FILE, files=files, params={"lead": "V9"})
    assert r3.status_code == 422 and "missing lead" in r3.json()["detail"]
    assert "'V9'" in r3.json()["detail"]


def test_ptbxl_record_heart_disease_and_beats(client: TestClient, ptbxl_dir: Path) -> None:
    folder = ptbxl_dir / "records100" / "00000"
    files = _record_files(folder, "00008_lr", "hea", "dat")
    r = client.post(HD_FILE, files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    signal, fs, leads = ptbxl_record(ptbxl_dir, 8)
    ref = client.post(
        "/predict/heart-disease", json={"fs": fs, "leads": leads, "signal": signal.tolist()}
    ).json()
    for c, p in ref["probabilities"].items():
        assert body["probabilities"][c] == pytest.approx(p, abs=1e-5)
    assert len(body["windows"]) == 1 and body["windows"][0]["end_s"] == pytest.approx(10.0)
    assert body["record"]["leads"] == leads and body["record"]["fs"] == 100.0
    # The beat model reads lead II of a 12-lead record (no MLII), and says so.
    beats = client.post(ARR_FILE, files=files)
    assert beats.status_code == 200, beats.text
    assert beats.json()["lead"] == "II"
    assert any("no MLII lead" in w for w in beats.json()["warnings"])


def test_long_12_lead_record_gets_one_answer_per_window(
    client: TestClient, ptbxl_dir: Path
) -> None:
    """Three real PTB-XL records end to end as one 30-s binary record: three windows."""
    parts = [ptbxl_record(ptbxl_dir, i) for i in (1, 2, 8)]
    signal = np.concatenate([p[0] for p in parts]).astype("<f4")
    r = client.post(
        HD_BIN,
        content=signal.tobytes(),
        params={"fs": 100, "leads": ",".join(parts[0][2])},
        headers={"content-type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [(w["start_s"], w["end_s"]) for w in body["windows"]] == [(0, 10), (10, 20), (20, 30)]
    one = client.post(
        "/predict/heart-disease",
        json={"fs": 100, "leads": parts[2][2], "signal": parts[2][0].tolist()},
    ).json()
    for c, p in one["probabilities"].items():
        assert body["windows"][2]["probabilities"][c] == pytest.approx(p, abs=1e-4)


# --------------------------------------------------------------------------- EDF, CSV, binary
def _edf_bytes(signal: np.ndarray, fs: float, labels: list[str], unit: str = "mV") -> bytes:
    import edfio

    edf = edfio.Edf(
        [
            edfio.EdfSignal(
                signal[:, i].astype(np.float64),
                sampling_frequency=fs,
                label=label,
                physical_dimension=unit,
            )
            for i, label in enumerate(labels)
        ]
    )
    out = io.BytesIO()
    edf.write(out)
    return out.getvalue()


def test_edf_file(client: TestClient, mitdb_dir: Path) -> None:
    """10 s of record 119 (both leads) as EDF in microvolts: read, scaled to mV, MLII found."""
    rec = wfdb.rdrecord(str(mitdb_dir / "119"), sampfrom=68_400, sampto=72_000)
    data = _edf_bytes(rec.p_signal[:, ::-1] * 1000.0, 360.0, ["EKG V1", "ECG MLII"], unit="uV")
    r = client.post(ARR_FILE, files=_named(rec119_edf=data), params={"include_signal": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["record"]["format"] == "edf" and body["lead"] == "ECG MLII"
    assert body["signal"] == pytest.approx(rec.p_signal[:, 0].tolist(), abs=2e-3)
    ref = client.post("/predict/arrhythmia", json={"fs": 360, "signal": body["signal"]}).json()
    _same_beats(body, ref)
    ann = [s for s, sym in zip(*_ann(mitdb_dir, "119", 68_400, 3_600), strict=True)]
    assert abs(body["summary"]["n_beats"] - len(ann)) <= 1
    truncated = client.post(ARR_FILE, files=_named(rec119_edf=data[:-100]))
    assert truncated.status_code == 422 and "truncated EDF" in truncated.json()["detail"]


def _ann(mitdb_dir: Path, record: str, start: int, length: int) -> tuple[list[int], list[str]]:
    ann = wfdb.rdann(str(mitdb_dir / record), "atr", sampfrom=start, sampto=start + length - 1)
    keep = [i for i, s in enumerate(ann.symbol) if s in WFDB_BEAT_SYMBOLS]
    return [int(ann.sample[i]) - start for i in keep], [ann.symbol[i] for i in keep]


def test_csv_file(client: TestClient, mitdb_dir: Path) -> None:
    signal, fs, _, _ = mitdb_strip(mitdb_dir, "100", 0.0, 10.0)
    t = np.arange(len(signal)) / fs
    with_time = "time,MLII\n" + "".join(
        f"{a:.6f},{b:.4f}\n" for a, b in zip(t, signal, strict=True)
    )
    r = client.post(ARR_FILE, files=_named(strip_csv=with_time.encode()))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["record"]["fs"] == 360.0 and body["record"]["leads"] == ["MLII"]
    ref = client.post("/predict/arrhythmia", json={"fs": 360, "signal": signal.tolist()}).json()
    assert [b["sample"] for b in body["beats"]] == [b["sample"] for b in ref["beats"]]
    # Semicolons, quotes and a units row in uV; the rate as a parameter.
    rows = "".join(f"{v * 1000:.1f}\n" for v in signal)
    semi = f"'MLII'\n'uV'\n{rows}".encode()
    r2 = client.post(ARR_FILE, files=_named(strip_csv=semi), params={"fs": 360})
    assert r2.status_code == 200, r2.text
    assert [b["sample"] for b in r2.json()["beats"]] == [b["sample"] for b in ref["beats"]]
    no_fs = client.post(ARR_FILE, files=_named(strip_csv=semi))
    assert no_fs.status_code == 422 and "sampling rate is missing" in no_fs.json()["detail"]
    wrong_fs = client.post(ARR_FILE, files=_named(strip_csv=semi), params={"fs": 2000})
    assert wrong_fs.status_code == 422 and "wrong fs" in wrong_fs.json()["detail"]
    nan = client.post(
        ARR_FILE, files=_named(strip_csv=b"MLII\n0.1\nnan\n" + rows.encode()), params={"fs": 360}
    )
    assert nan.status_code == 422 and "non-finite" in nan.json()["detail"]
    text = client.post(ARR_FILE, files=_named(strip_csv=b"MLII\n0.1\nabc\n"), params={"fs": 360})
    assert text.status_code == 422 and "must be numbers" in text.json()["detail"]


def test_binary_bodies(client: TestClient, mitdb_dir: Path) -> None:
    signal, fs, _, _ = mitdb_strip(mitdb_dir, "119", 0.0, 10.0)
    ref = client.post("/predict/arrhythmia", json={"fs": fs, "signal": signal.tolist()}).json()
    octet = {"content-type": "application/octet-stream"}
    f32 = client.post(
        ARR_BIN, content=signal.astype("<f4").tobytes(), params={"fs": fs}, headers=octet
    )
    assert f32.status_code == 200, f32.text
    _same_beats(f32.json(), ref)
    # int16 at 200 units per mV, two leads: the second column is MLII.
    two = np.stack([np.zeros_like(signal), signal], axis=1)
    i16 = np.round(two * 200).astype("<i2")
    r = client.post(
        ARR_BIN,
        content=i16.tobytes(),
        params={"fs": fs, "leads": "V1,MLII", "dtype": "int16", "gain": 200},
        headers=octet,
    )
    assert r.status_code == 200, r.text
    assert r.json()["lead"] == "MLII" and r.json()["summary"] == ref["summary"]
    cut = client.post(
        ARR_BIN,
        content=i16.tobytes()[:-2],
        params={"fs": fs, "leads": "V1,MLII", "dtype": "int16"},
        headers=octet,
    )
    assert cut.status_code == 422 and "not a whole number" in cut.json()["detail"]
    json_type = client.post(ARR_BIN, content=b"\0\0\0\0", params={"fs": fs})
    assert json_type.status_code == 415


# --------------------------------------------------------------------------- malformed files
@pytest.fixture(scope="module")
def rec100(mitdb_dir: Path) -> dict[str, bytes]:
    return {ext: (mitdb_dir / f"100.{ext}").read_bytes() for ext in ("hea", "dat", "atr")}


@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("truncated_dat", 422, "truncated .dat"),
        ("other_dat", 422, "header/data mismatch"),
        ("missing_dat", 422, "was not uploaded"),
        ("dat_only", 415, "needs its .hea header"),
        ("unknown", 415, "unknown format"),
        ("garbage_header", 422, "not a valid WFDB header"),
        ("wrong_fs", 422, "wrong fs"),
        ("other_atr", 422, "past the record's"),
        ("bad_atr", 422, "annotation file"),
        ("too_long", 422, "too long"),
        ("two_edf", 422, "one file"),
    ],
)
def test_malformed_files_get_a_named_4xx(
    client: TestClient,
    rec100: dict[str, bytes],
    mitdb_dir: Path,
    case: str,
    status: int,
    message: str,
) -> None:
    hea, dat, atr = rec100["hea"], rec100["dat"], rec100["atr"]
    short_hea = hea.replace(b"650000", b"3600")
    short_dat = dat[: 3600 * 3]
    files = {
        "truncated_dat": _named(r_hea=hea, r_dat=dat[:-3001]),
        "other_dat": _named(r_hea=short_hea, r_dat=dat[: 7200 * 3]),
        "missing_dat": _named(r_hea=hea, r_dat=b"", x_dat=b""),
        "dat_only": _named(r_dat=dat),
        "unknown": _named(r_bin=b"\x89PNG\r\n\x1a\n" + bytes(100)),
        "garbage_header": _named(r_hea=b"100 two 360 x\n", r_dat=short_dat),
        "wrong_fs": _named(r_hea=short_hea.replace(b" 360 ", b" 50 "), r_dat=short_dat),
        "other_atr": _named(r_hea=short_hea, r_dat=short_dat, r_atr=atr),
        "bad_atr": _named(r_hea=short_hea, r_dat=short_dat, r_atr=b"\xff" * 7),
        "too_long": _named(r_hea=hea, r_dat=dat, a_hea=b"", a_dat=b""),
        "two_edf": _named(a_edf=b"0       " + bytes(300), b_edf=b"0       " + bytes(300)),
    }[case]
    if case == "too_long":  # an hour and a bit of real samples: record 100 repeated
        long_hea = hea.replace(b"650000", b"1300000")
        files = _named(r_hea=long_hea.replace(b"100.dat", b"r.dat"), r_dat=dat + dat)
    r = client.post(ARR_FILE, files=files)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def test_heart_disease_needs_its_leads(client: TestClient, rec100: dict[str, bytes]) -> None:
    short = _named(r_hea=rec100["hea"].replace(b"650000", b"3600"), r_dat=rec100["dat"][:10800])
    r = client.post(HD_FILE, files=short)
    assert r.status_code == 422 and "missing leads" in r.json()["detail"]


def test_no_files_and_unknown_format_parameter(client: TestClient) -> None:
    assert client.post(ARR_FILE).status_code == 422
    r = client.post(ARR_FILE, files=_named(a_csv=b"MLII\n1\n"), params={"format": "mp3"})
    assert r.status_code == 422 and "format" in r.json()["detail"]


@pytest.fixture(scope="module")
def small_limit_client(tiny_registry: TinyRegistry) -> Iterator[TestClient]:
    settings = make_settings(tiny_registry, max_body_bytes=64 * 1024)
    with TestClient(create_app(settings)) as c:
        yield c


def test_uploads_respect_the_body_limit(
    small_limit_client: TestClient, rec100: dict[str, bytes]
) -> None:
    r = small_limit_client.post(ARR_FILE, files=_named(r_hea=rec100["hea"], r_dat=rec100["dat"]))
    assert r.status_code == 413 and "ECG_SERVICE_MAX_BODY_BYTES" in r.json()["detail"]
    big = small_limit_client.post(
        ARR_BIN,
        content=bytes(200_000),
        params={"fs": 360},
        headers={"content-type": "application/octet-stream"},
    )
    assert big.status_code == 413


def test_page_and_its_files_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script src="/static/app.js"' in page.text
    script = client.get("/static/app.js")
    assert "javascript" in script.headers["content-type"]
    assert "/predict/${task}/file" in script.text  # the same endpoints a program calls
    assert client.get("/static/examples/mitdb119.hea").content.startswith(b"mitdb119 2 360")
    assert client.get("/static/../main.py").status_code == 404
    assert client.get("/static/%2e%2e/main.py").status_code == 404
    assert client.get("/static/examples/make_examples.py").status_code == 404


#: A fuzzed copy of an .atr (two time-resolution notes, a flipped byte) on which wfdb.rdann
#: 4.3 loops forever; the service's own reader must answer it.
_LOOPING_ATR = (
    b"\x00X\x17\xfc## time resolut\xd4on: 360\x00X\x17\xfc## time resolution: 365\x00\x00\x000"
    b"\x00\xec\xff\xff\xff\xff\x01\x007\x14\xcc\x05\xcc\x14\xd0\x05\xcc\x14\xcf\x05\xe4\x14\xc5"
    b"\x05\xbf\x14\xdc\x05\xc9\x14\x00\x00"
)


@pytest.mark.timeout(120)
def test_an_annotation_file_that_hangs_wfdb_gets_an_answer(client: TestClient) -> None:
    examples = Path(__file__).resolve().parents[2] / "service" / "static" / "examples"
    files = _record_files(examples, "mitdb119", "hea", "dat")
    files.append(("files", ("mitdb119.atr", _LOOPING_ATR, "application/octet-stream")))
    r = client.post(ARR_FILE, files=files)
    assert r.status_code == 422 and "past the record's 3600 samples" in r.json()["detail"]
    good = client.post(ARR_FILE, files=_record_files(examples, "mitdb119", "hea", "dat", "atr"))
    assert good.status_code == 200 and good.json()["record"]["annotated_beats"] == 11
    assert [b["sample"] for b in good.json()["beats"]] == [
        int(s) for s in wfdb.rdann(str(examples / "mitdb119"), "atr").sample
    ]
