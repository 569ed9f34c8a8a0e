"""models.preprocessing: rates, filters, bad input, RR features and the R-peak detector.

Synthetic signals check the filters' responses; the shipped MIT-BIH excerpt (and the full records,
when the mirror is there) check resampling and detection on real ECG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.labels import WFDB_BEAT_SYMBOLS
from models.preprocessing import (
    PreprocessConfig,
    assemble_beat_inputs,
    bandpass,
    beat_inputs,
    beat_windows,
    detect_rpeaks,
    normalise,
    notch,
    preprocess_signal,
    remove_baseline,
    resample,
    rr_features,
)
from pipeline.records import read_annotations, read_record

RATES = [128, 250, 257, 360, 500, 1000]
FIXTURE_DB = Path(__file__).resolve().parents[1] / "fixtures" / "mitdb_excerpt" / "mitdb" / "1.0.0"
CFG = PreprocessConfig()


def _amplitude(x: np.ndarray, fs: float, hz: float) -> float:
    """Amplitude of the ``hz`` sinusoid in ``x`` (least squares over the middle half)."""
    n = x.shape[0]
    t = np.arange(n) / fs
    sl = slice(n // 4, 3 * n // 4)
    basis = np.stack([np.sin(2 * np.pi * hz * t[sl]), np.cos(2 * np.pi * hz * t[sl])], axis=1)
    coef, *_ = np.linalg.lstsq(basis, x[sl].astype(np.float64), rcond=None)
    return float(np.hypot(*coef))


def _tones(fs: float, seconds: float, parts: dict[float, float]) -> np.ndarray:
    t = np.arange(round(seconds * fs)) / fs
    return sum(a * np.sin(2 * np.pi * f * t) for f, a in parts.items()).astype(np.float32)


def _se_pp(reference: np.ndarray, detected: np.ndarray, fs: float) -> tuple[float, float]:
    from wfdb import processing

    cmp = processing.compare_annotations(reference, detected, round(0.150 * fs))
    return cmp.tp / (cmp.tp + cmp.fn), cmp.tp / (cmp.tp + cmp.fp)


# --------------------------------------------------------------------------- rates and filters
@pytest.mark.parametrize("fs", RATES)
def test_output_rate_and_length_for_every_input_rate(fs: int) -> None:
    x = _tones(fs, 10.3, {1.2: 1.0, 8.0: 0.3})
    y = preprocess_signal(x, fs, CFG)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(y.shape[0] - x.shape[0] * CFG.fs_target / fs) < 1.0
    two = preprocess_signal(np.stack([x, 2 * x], axis=1), fs, CFG)
    assert two.shape == (y.shape[0], 2)
    np.testing.assert_allclose(two[:, 0], y, atol=1e-5)
    np.testing.assert_allclose(two[:, 1], 2 * y, atol=1e-4)


@pytest.mark.parametrize("fs", RATES)
def test_bandpass_removes_drift_and_passes_qrs_band(fs: int) -> None:
    x = _tones(fs, 30.0, {0.1: 2.0, 5.0: 0.5, 10.0: 0.5, 15.0: 0.5})
    y = bandpass(x, fs, CFG)
    assert _amplitude(y, fs, 0.1) < 0.05 * 2.0
    for hz in (5.0, 10.0, 15.0):
        assert _amplitude(y, fs, hz) == pytest.approx(0.5, rel=0.06)


@pytest.mark.parametrize("fs", RATES)
def test_full_chain_removes_drift_and_hum_keeps_5_to_15_hz(fs: int) -> None:
    cfg = PreprocessConfig(notch_hz=60.0)
    x = _tones(fs, 30.0, {0.1: 2.0, 10.0: 0.5, 60.0: 0.3})
    y = preprocess_signal(x, fs, cfg)
    out_fs = cfg.fs_target
    assert _amplitude(y, out_fs, 0.1) < 0.05 * 2.0
    assert _amplitude(y, out_fs, 60.0) < 0.02 * 0.3
    assert _amplitude(y, out_fs, 10.0) == pytest.approx(0.5, rel=0.1)


@pytest.mark.parametrize("fs", [f for f in RATES if f > 120])
def test_notch_removes_60_hz_and_leaves_10_hz(fs: int) -> None:
    x = _tones(fs, 20.0, {10.0: 1.0, 60.0: 0.5})
    y = notch(x, fs, PreprocessConfig(notch_hz=60.0))
    assert _amplitude(y, fs, 60.0) < 0.01
    assert _amplitude(y, fs, 10.0) == pytest.approx(1.0, rel=0.01)
    # No notch configured, or the hum above Nyquist: a no-op.
    np.testing.assert_array_equal(notch(x, fs, CFG), x)
    np.testing.assert_array_equal(notch(x, fs, PreprocessConfig(notch_hz=fs / 2 + 1)), x)


def test_median_baseline_removes_a_step_and_keeps_qrs_like_spikes() -> None:
    fs = 360.0
    x = np.zeros(3600, dtype=np.float32)
    x[1800:] += 1.0  # baseline step
    x[900:905] += 2.0  # 14-ms spike, narrower than the 200 ms median window
    y = remove_baseline(x, fs, CFG)
    assert abs(float(np.median(y[2500:3500]))) < 1e-6
    assert y[902] == pytest.approx(2.0, abs=1e-6)


def test_resampling_a_real_record_keeps_the_ecg() -> None:
    raw = read_record(FIXTURE_DB / "100").lead("MLII")  # 10 s at 360 Hz
    at125 = resample(raw, 360, 125)
    assert at125.shape == (1250,) and at125.dtype == np.float32
    back = resample(at125, 125, 360)
    assert back.shape == raw.shape
    # Below the 40 Hz band edge, 360 -> 125 -> 360 Hz loses nothing that matters.
    a, b = bandpass(raw, 360, CFG), bandpass(back, 360, CFG)
    assert np.corrcoef(a[360:-360], b[360:-360])[0, 1] > 0.999
    # R peaks keep their height (within 3 %) at the annotated beats.
    beats = read_annotations(FIXTURE_DB / "100").select(WFDB_BEAT_SYMBOLS).sample
    beats = beats[(beats > 360) & (beats < raw.size - 360)]  # away from the filter edges
    np.testing.assert_allclose(b[beats], a[beats], rtol=0.03, atol=0.02)
    assert np.array_equal(resample(raw, 360, 360), raw)


@pytest.mark.parametrize("fs2", [250, 500, 720, 1000])
def test_beat_inputs_agree_across_input_rates(fs2: int) -> None:
    """The same ECG sent at another rate than 360 Hz gives the same model input."""
    raw = read_record(FIXTURE_DB / "100").lead("MLII")
    beats = read_annotations(FIXTURE_DB / "100").select(WFDB_BEAT_SYMBOLS).sample
    beats2 = np.round(beats * fs2 / 360).astype(np.int64)
    x360 = beat_inputs(raw, 360, beats, CFG)
    x2 = beat_inputs(resample(raw, 360, fs2), fs2, beats2, CFG)
    assert x360.shape == x2.shape == (beats.size, CFG.beat_window_samples, 5)
    np.testing.assert_allclose(x2[:, :, 1:], x360[:, :, 1:], rtol=0.01)
    # Rounding twice (360 -> fs2 -> 125 Hz) can move a window by one 8-ms sample, which changes
    # it a lot (QRS complexes are sharp): compare the beats that land on the same sample.
    same = np.round(beats * 125 / 360) == np.round(beats2 * 125 / fs2)
    inner = (beats > 180) & (beats < raw.size - 180)  # away from the resampling edges
    assert same.mean() >= 0.75
    for i in np.flatnonzero(same & inner):
        assert np.corrcoef(x360[i, :, 0], x2[i, :, 0])[0, 1] > 0.995
        np.testing.assert_allclose(x2[i, :, 0], x360[i, :, 0], atol=0.05)


def test_normalise_and_config() -> None:
    x = np.stack([np.arange(10.0), 5 * np.arange(10.0)], axis=1)
    z = normalise(x, "zscore")
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=1e-5)
    assert np.all(np.isfinite(normalise(np.ones((5, 2)), "zscore")))
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalise(x, "minmax")
    assert PreprocessConfig.from_dict(CFG.to_dict()) == CFG
    assert PreprocessConfig.from_dict({**CFG.to_dict(), "future_key": 1}) == CFG
    with pytest.raises(ValueError, match="band-pass"):
        PreprocessConfig(fs_target=100.0, lowpass_hz=60.0)
    with pytest.raises(ValueError, match="fs_target must be > 0"):
        PreprocessConfig(fs_target=0.0)
    with pytest.raises(ValueError, match="unknown RR features"):
        PreprocessConfig(rr_features=("qt",))


# --------------------------------------------------------------------------- bad input
BAD_SIGNALS = [
    (np.array([0.0, np.nan, 1.0] * 100), 360.0, "NaN"),
    (np.array([0.0, np.inf, 1.0] * 100), 360.0, "infinite"),
    (np.zeros(0), 360.0, "empty"),
    (np.zeros((10, 2, 2)), 360.0, "shape"),
    (np.zeros(1000), 0.0, "sampling frequency must be > 0"),
    (np.zeros(1000), -360.0, "sampling frequency must be > 0"),
    (np.zeros(1000), float("nan"), "sampling frequency must be > 0"),
]


@pytest.mark.parametrize(("signal", "fs", "message"), BAD_SIGNALS)
@pytest.mark.parametrize(
    "fn",
    [
        lambda x, fs: preprocess_signal(x, fs, CFG),
        lambda x, fs: resample(x, fs, 125.0),
        lambda x, fs: bandpass(x, fs, CFG),
        lambda x, fs: remove_baseline(x, fs, CFG),
        lambda x, fs: notch(x, fs, PreprocessConfig(notch_hz=50.0)),
        detect_rpeaks,
    ],
    ids=["preprocess", "resample", "bandpass", "baseline", "notch", "detect"],
)
def test_bad_input_raises_value_error_saying_why(fn, signal, fs, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        fn(signal, fs)


def test_detector_rejects_two_leads_and_handles_flat_or_short_signals() -> None:
    with pytest.raises(ValueError, match="one lead"):
        detect_rpeaks(np.zeros((1000, 2)), 360)
    assert detect_rpeaks(np.zeros(3600), 360).shape == (0,)
    assert detect_rpeaks(np.ones(100), 360).dtype == np.int64


# --------------------------------------------------------------------------- beats and RR
def test_rr_features_regular_premature_and_edges() -> None:
    fs = 360.0
    cfg = PreprocessConfig(rr_features=("pre_rr", "post_rr", "local_rr", "pre_rr_local"))
    peaks = np.arange(12) * 360  # 1 s apart
    f = rr_features(peaks, fs, cfg)
    assert f.shape == (12, 4) and f.dtype == np.float32
    np.testing.assert_allclose(f, np.tile([1.0, 1.0, 1.0, 1.0], (12, 1)), rtol=1e-6)
    early = peaks.copy()
    early[6] -= 144  # premature by 0.4 s
    g = rr_features(early, fs, cfg)
    assert g[6, 0] == pytest.approx(0.6) and g[6, 1] == pytest.approx(1.4)
    assert g[6, 3] < 0.7  # pre_rr relative to local rhythm
    assert g[0, 0] == pytest.approx(g[0, 1])  # first beat borrows its post-RR
    assert g[-1, 1] == pytest.approx(g[-1, 0])  # last beat borrows its pre-RR
    # local_rr averages at most rr_local_beats intervals ending at the beat
    slow_then_fast = np.concatenate([np.arange(5) * 720, 2880 + np.arange(1, 31) * 180])
    h = rr_features(slow_then_fast, fs, cfg)
    assert h[-1, 2] == pytest.approx(0.5)
    assert rr_features(np.array([100]), fs, cfg)[0, 0] == pytest.approx(0.8)
    assert rr_features(np.zeros(0, dtype=np.int64), fs, cfg).shape == (0, 4)
    # the default config's order
    d = rr_features(peaks, fs, CFG)
    assert d.shape == (12, len(CFG.rr_features))


def test_beat_windows_pad_at_the_edges() -> None:
    x = np.arange(1000, dtype=np.float32)
    w = beat_windows(x, np.array([0, 500, 999]), PreprocessConfig(beat_normalise="none"))
    before = round(CFG.beat_before_s * CFG.fs_target)
    assert w.shape == (3, CFG.beat_window_samples)
    assert w[0, before] == 0.0 and np.all(w[0, :before] == 0.0)
    assert w[1, before] == 500.0
    assert w[2, before] == 999.0 and np.all(w[2, before:] == 999.0)
    med = beat_windows(x, np.array([500]), CFG)
    assert np.median(med) == pytest.approx(0.0)
    z = assemble_beat_inputs(w, np.ones((3, 2), dtype=np.float32))
    assert z.shape == (3, CFG.beat_window_samples, 3) and np.all(z[:, :, 1:] == 1.0)


# --------------------------------------------------------------------------- R-peak detector
@pytest.mark.parametrize("record", ["100", "114", "118"])
@pytest.mark.parametrize("fs_in", [360.0, 125.0, 500.0])
def test_detector_on_the_shipped_excerpts(record: str, fs_in: float) -> None:
    raw = read_record(FIXTURE_DB / record).lead("MLII")
    ref = read_annotations(FIXTURE_DB / record).select(WFDB_BEAT_SYMBOLS).sample
    x = resample(raw, 360.0, fs_in)
    peaks = detect_rpeaks(x, fs_in)
    assert peaks.dtype == np.int64 and np.all(np.diff(peaks) > 0)
    det = np.round(peaks * 360.0 / fs_in).astype(np.int64)
    se, pp = _se_pp(ref, det, 360.0)
    # 10-s strips of 9-13 beats: allow one beat missed at the very start (XQRS learns there).
    assert se >= 1 - 1.5 / ref.size and pp == 1.0, (se, pp)
    # Peaks sit on the reference R peaks: within 2 samples at 360 Hz (about 6 ms) for most.
    cmp_offsets = np.abs(det[:, None] - ref[None, :]).min(axis=1)
    assert np.median(cmp_offsets) <= max(2, 360 / fs_in)


@pytest.mark.parametrize("record", ["100", "219"])
@pytest.mark.parametrize("fs_in", [360.0, 125.0])
def test_detector_se_and_pp_on_full_records(mitdb_dir: Path, record: str, fs_in: float) -> None:
    raw = read_record(mitdb_dir / record).lead("MLII")
    ref = read_annotations(mitdb_dir / record).select(WFDB_BEAT_SYMBOLS).sample
    x = raw if fs_in == 360.0 else resample(raw, 360.0, fs_in)
    det = np.round(detect_rpeaks(x, fs_in) * 360.0 / fs_in).astype(np.int64)
    se, pp = _se_pp(ref, det, 360.0)
    assert se >= 0.99 and pp >= 0.99, (se, pp)


@pytest.mark.parametrize("radius", [1, 2, 5, 25, 90])
def test_vectorised_local_peaks_equal_wfdb_loop(radius: int) -> None:
    from wfdb.processing.peaks import find_local_peaks as wfdb_find_local_peaks

    from models.preprocessing import find_local_peaks

    rng = np.random.default_rng(radius)
    excerpt = read_record(FIXTURE_DB / "100").signal[:, 0].astype(np.float64)
    signals = [excerpt, np.round(excerpt, 1), rng.normal(size=3000).round(1), np.zeros(50)]
    for sig in signals:
        expected = np.asarray(wfdb_find_local_peaks(sig, radius), dtype=np.int64)
        np.testing.assert_array_equal(find_local_peaks(sig, radius), expected)


@pytest.mark.parametrize("fs", [*RATES, 999.5])
def test_resample_with_the_cached_filter_equals_scipys_own_design(fs: float) -> None:
    from fractions import Fraction

    from scipy import signal as sps

    x = np.random.default_rng(int(fs)).normal(size=(round(4 * fs), 2)).astype(np.float32)
    ratio = Fraction(125) / Fraction(fs).limit_denominator(1000)
    expected = sps.resample_poly(x, ratio.numerator, ratio.denominator, axis=0)
    np.testing.assert_array_equal(resample(x, fs, 125.0), expected.astype(np.float32))
