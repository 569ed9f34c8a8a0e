"""Tests of models.quality on real signals: MIT-BIH records, nstdb noise, and signals that are not
ECGs at all (white noise, sawtooth, flat line, powerline hum, clipping)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.noise_stress import clean_record, stress_record
from models.labels import WFDB_BEAT_SYMBOLS
from models.quality import (
    GOOD,
    UNREADABLE,
    QualityThresholds,
    StripQuality,
    assess_strip,
    detect_rpeaks_pantompkins,
)
from pipeline.records import read_annotations, read_record

FS = 360.0
N10 = 3600  # 10 s at 360 Hz


@pytest.fixture(scope="module")
def mlii_100(mitdb_dir: Path) -> np.ndarray:
    """MIT-BIH record 100, MLII, the first 5 minutes, mV at 360 Hz."""
    return read_record(mitdb_dir / "100").lead("MLII")[: 300 * 360].astype(np.float64)


@pytest.fixture(scope="module")
def nstdb_dir(shared_physionet: Path) -> Path:
    path = shared_physionet / "nstdb" / "1.0.0"
    if not (path / "ma.hea").is_file():
        pytest.skip(f"nstdb noise records not at {path}")
    return path


def _unreadable(q: StripQuality, reason: str) -> None:
    assert q.verdict == UNREADABLE, (q.verdict, q.reasons, dict(q.sqi))
    assert reason in q.reasons, (reason, q.reasons)
    assert all(v == UNREADABLE for v in q.beat_verdicts)
    assert not q.readable.any()


# --------------------------------------------------------------------------- not an ECG
def test_white_noise_is_unreadable() -> None:
    """The issue's case: 0.3 mV Gaussian noise came back as 32 confident beats."""
    x = np.random.default_rng(0).normal(0.0, 0.3, N10)
    q = assess_strip(x, FS)
    _unreadable(q, "ksqi")
    assert q.sqi["ksqi"] == pytest.approx(3.0, abs=0.3)  # Gaussian kurtosis
    assert q.sqi["bsqi"] < 0.8  # the two detectors disagree on noise


def test_two_hertz_sawtooth_is_unreadable() -> None:
    """The issue's other case: a 2 Hz sawtooth came back as 19 V beats at 0.99."""
    t = np.arange(N10) / FS
    x = 0.5 * (2.0 * ((2.0 * t) % 1.0) - 1.0)
    q = assess_strip(x, FS)
    _unreadable(q, "ksqi")
    assert q.sqi["ksqi"] < 2.0  # sawtooth: 1.8


def test_flat_line_is_unreadable() -> None:
    q = assess_strip(np.full(N10, 0.25), FS)
    _unreadable(q, "flat")
    assert "no_beats" in q.reasons and q.r_peaks.size == 0


def test_flat_half_of_a_real_strip(mlii_100: np.ndarray) -> None:
    """A lead that comes off mid-recording: the beats before stay readable, the rest has none."""
    x = mlii_100[: 4 * N10].copy()
    x[2 * N10 :] = x[2 * N10]
    q = assess_strip(x, FS)
    early = q.r_peaks < 2 * N10 - 360
    assert q.readable[early].all()
    assert q.verdict != GOOD and "flat" in q.reasons


@pytest.mark.parametrize("line_hz", [50.0, 60.0])
def test_powerline_hum_is_unreadable(line_hz: float, mlii_100: np.ndarray) -> None:
    t = np.arange(N10) / FS
    hum = 0.5 * np.sin(2 * np.pi * line_hz * t)
    _unreadable(assess_strip(hum, FS), "hum")
    # an ECG drowned in 1 mV of hum, too
    _unreadable(assess_strip(mlii_100[:N10] + 2 * hum, FS), "hum")
    # a little hum on a real ECG is fine (the band-pass removes it)
    assert assess_strip(mlii_100[:N10] + 0.05 * hum / 0.5, FS).verdict == GOOD


def test_muscle_noise_from_nstdb_is_unreadable(nstdb_dir: Path) -> None:
    """nstdb's `ma` recording (electrodes placed so that no ECG is visible): muscle noise alone."""
    ma = read_record(nstdb_dir / "ma").signal[:, 0].astype(np.float64)
    verdicts = [assess_strip(ma[s : s + N10], FS) for s in range(0, 6 * N10, N10)]
    assert all(q.verdict == UNREADABLE for q in verdicts), [q.reasons for q in verdicts]
    assert all({"local_noise", "bsqi", "tcorr"} & set(q.reasons) for q in verdicts)


def test_muscle_burst_in_a_real_strip(mlii_100: np.ndarray, nstdb_dir: Path) -> None:
    """Three seconds of strong `ma` noise in a 30-s strip: those beats go, the others stay."""
    ma = read_record(nstdb_dir / "ma").signal[:, 0].astype(np.float64)
    x = mlii_100[: 3 * N10].copy()
    burst = slice(N10 + 1080, N10 + 2160)  # 13 s to 16 s
    x[burst] += 4.0 * ma[burst] / np.std(ma[burst])
    q = assess_strip(x, FS)
    inside = (q.r_peaks >= burst.start) & (q.r_peaks < burst.stop)
    outside_windows = (q.r_peaks < N10) | (q.r_peaks >= 2 * N10)
    assert inside.any() and not q.readable[inside].any()
    assert q.readable[outside_windows].all()
    assert q.verdict == "noisy"


def test_clipped_signal_is_unreadable(mlii_100: np.ndarray) -> None:
    """An amplifier that saturates at half the R-wave height."""
    x = mlii_100[:N10]
    level = float(np.median(x)) + 0.5 * float(np.ptp(x))
    q = assess_strip(np.minimum(x, level), FS)
    _unreadable(q, "clipped")


def test_amplitude_out_of_range(mlii_100: np.ndarray) -> None:
    """The same strip in microvolts (units sent wrong) is not an ECG in mV."""
    _unreadable(assess_strip(mlii_100[:N10] * 1000.0, FS), "qrs_amp_mv")


# --------------------------------------------------------------------------- real ECG
def test_clean_strips_are_good(mlii_100: np.ndarray) -> None:
    for start in range(0, mlii_100.size - N10 + 1, N10):
        q = assess_strip(mlii_100[start : start + N10], FS)
        assert q.verdict == GOOD, (start, q.reasons, dict(q.sqi))
        assert q.reasons == () and len(q.beat_verdicts) == q.r_peaks.size >= 10
        assert all(r == () for r in q.beat_reasons)


def test_given_r_peaks_are_used_and_checked(mlii_100: np.ndarray, mitdb_dir: Path) -> None:
    ann = read_annotations(mitdb_dir / "100").select(WFDB_BEAT_SYMBOLS)
    ref = ann.sample[ann.sample < N10]
    q = assess_strip(mlii_100[:N10], FS, ref)
    np.testing.assert_array_equal(q.r_peaks, ref)
    assert len(q.beat_verdicts) == ref.size and q.verdict == GOOD
    assert q.beat_sqi["beat_tcorr"].shape == (ref.size,)
    with pytest.raises(ValueError, match="within the signal"):
        assess_strip(mlii_100[:N10], FS, np.array([10, N10 + 5]))


@pytest.mark.parametrize(
    ("signal", "fs", "match"),
    [
        (np.zeros((100, 2)), 360.0, "one lead"),
        (np.array([]), 360.0, "empty"),
        (np.array([0.0, np.nan, 1.0]), 360.0, "NaN"),
        (np.zeros(100), 0.0, "> 0 Hz"),
    ],
)
def test_bad_input_is_a_clear_error(signal: np.ndarray, fs: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        assess_strip(signal, fs)


@pytest.mark.parametrize("fs_out", [128.0, 250.0, 500.0])
def test_other_rates(mlii_100: np.ndarray, fs_out: float) -> None:
    """The service accepts 100-1000 Hz: a clean strip stays good at other rates."""
    from models.preprocessing import resample

    x = resample(mlii_100[: 2 * N10].astype(np.float32), FS, fs_out)
    assert assess_strip(x, fs_out).verdict == GOOD


def test_second_detector_finds_the_real_beats(mlii_100: np.ndarray, mitdb_dir: Path) -> None:
    """The Pan-Tompkins front end behind bSQI: Se and +P > 99% on 5 min of record 100."""
    from wfdb import processing

    ann = read_annotations(mitdb_dir / "100").select(WFDB_BEAT_SYMBOLS)
    ref = ann.sample[ann.sample < mlii_100.size]
    found = detect_rpeaks_pantompkins(mlii_100, FS)
    cmp = processing.compare_annotations(ref, found, round(0.15 * FS))
    assert cmp.tp / ref.size > 0.99 and cmp.tp / found.size > 0.99


@pytest.mark.parametrize("record", ["101", "119", "209"])
def test_clean_records_lose_under_one_percent(mitdb_dir: Path, record: str) -> None:
    """Whole clean records (10-s strips, detected peaks): < 1% of beats unreadable. All 48
    records: `python -m bench.noise_stress clean` (and the slow test below)."""
    r = clean_record(mitdb_dir / record)
    assert r["matched"] > 1500
    assert r["lost"] / r["matched"] < 0.01, r


@pytest.mark.slow
def test_all_48_records_lose_under_one_percent(mitdb_dir: Path) -> None:
    rows = [clean_record(mitdb_dir / n) for n in (mitdb_dir / "RECORDS").read_text().split()]
    lost, matched = sum(r["lost"] for r in rows), sum(r["matched"] for r in rows)
    assert len(rows) == 48 and lost / matched < 0.01, (lost, matched)


# --------------------------------------------------------------------------- noise stress
def test_noise_stress_at_two_snrs(mitdb_dir: Path, nstdb_dir: Path) -> None:
    """Record 118 with nstdb `ma` (as nst adds it) at 24 and -6 dB: nearly everything is read at
    24 dB, most of it is refused at -6 dB, and what is read there is detected far better than
    without the quality gate."""
    rows = {r["snr_db"]: r for r in stress_record(mitdb_dir / "118", nstdb_dir, "ma", [24, -6])}
    clean, noisy = rows[24.0], rows[-6.0]
    assert clean["ref"] == noisy["ref"] > 900  # the noisy periods (12.5 of 30 min)
    assert clean["tp"] / clean["ref"] > 0.97
    assert noisy["tp"] / noisy["ref"] < 0.5
    assert noisy["strips_unreadable"] > noisy["strips"] // 2
    ppv_gated = noisy["tp"] / (noisy["tp"] + noisy["fp"])
    ppv_all = noisy["tp_all"] / (noisy["tp_all"] + noisy["fp_all"])
    assert ppv_gated > ppv_all + 0.2, (ppv_gated, ppv_all)


def test_thresholds_are_a_frozen_dataclass() -> None:
    th = QualityThresholds()
    with pytest.raises(AttributeError):
        th.ksqi_min = 1.0  # type: ignore[misc]
    strict = QualityThresholds(ksqi_min=100.0, soft_fail_unreadable=1)
    x = np.random.default_rng(1).normal(0.0, 0.01, N10)
    assert assess_strip(x, FS, thresholds=strict).verdict == UNREADABLE
