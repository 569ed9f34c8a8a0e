"""The fast paths of models.preprocessing equal SciPy's and NumPy's public functions bit for bit.

``resample``, ``bandpass``, ``remove_baseline``, ``beat_windows`` and ``median_along`` repeat the
steps of ``resample_poly``, ``sosfiltfilt``, ``ndimage.median_filter``, edge padding and
``np.median`` with less overhead (a served strip's beat context costs half as much). Each is checked
here against the public function on real MIT-BIH ECG (the shipped excerpt) and on awkward shapes:
any difference, even in the last bit or the sign of a zero, fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy import signal as sps

from models.labels import WFDB_BEAT_SYMBOLS
from models.preprocessing import (
    PreprocessConfig,
    _butter_bandpass,
    _resample_factors,
    _resample_filter,
    bandpass,
    beat_windows,
    remove_baseline,
    resample,
)
from models.signal_ops import median_along
from pipeline.records import read_annotations, read_record

FIXTURE_DB = Path(__file__).resolve().parents[1] / "fixtures" / "mitdb_excerpt" / "mitdb" / "1.0.0"
CFG = PreprocessConfig()
LENGTHS = [1, 2, 3, 5, 12, 13, 37, 38, 151, 152, 400]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Same dtype, shape and bits (so -0.0 differs from +0.0 and NaN equals NaN)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.fixture(scope="module")
def ecg() -> dict[str, np.ndarray]:
    """10 s of MLII at 360 Hz from the three excerpt records (float32 mV)."""
    return {r: read_record(FIXTURE_DB / r).lead("MLII") for r in ("100", "114", "118")}


def _signals(ecg: dict[str, np.ndarray], fs: float) -> list[np.ndarray]:
    """Real strips at ``fs`` (via SciPy directly), short pieces of them and two-lead stacks."""
    out = []
    for x in ecg.values():
        up, down = _resample_factors(360.0, fs)
        y = x if up == down else sps.resample_poly(x, up, down).astype(np.float32)
        out.append(y)
        out += [y[:n] for n in LENGTHS]
        out.append(np.stack([y, y[::-1]], axis=1))
        out.append(np.stack([y[:13], -y[:13]], axis=1))
    return out


@pytest.mark.parametrize(("fs", "fs_target"), [(360, 125), (128, 125), (257, 125), (100, 125),
                                              (1000, 250), (500, 125), (360, 250)])  # fmt: skip
def test_resample_equals_resample_poly(ecg: dict[str, np.ndarray], fs: int, fs_target: int) -> None:
    up, down = _resample_factors(float(fs), float(fs_target))
    for x in _signals(ecg, fs):
        expected = sps.resample_poly(x, up, down, axis=0, window=_resample_filter(up, down))
        assert _same(resample(x, fs, fs_target), expected.astype(np.float32)), x.shape


@pytest.mark.parametrize("fs", [100, 125, 250, 360])
@pytest.mark.parametrize("order", [2, 3])
def test_bandpass_equals_sosfiltfilt(ecg: dict[str, np.ndarray], fs: int, order: int) -> None:
    cfg = PreprocessConfig(filter_order=order)
    high = min(cfg.lowpass_hz, 0.45 * fs)
    sos = _butter_bandpass(order, cfg.highpass_hz, high, float(fs))
    for x in _signals(ecg, fs):
        padlen = min(x.shape[0] - 1, 3 * (2 * len(sos) + 1) * 10)
        expected = sps.sosfiltfilt(sos, x, axis=0, padlen=padlen).astype(np.float32)
        assert _same(bandpass(x, fs, cfg), expected), x.shape


@pytest.mark.parametrize("fs", [10, 125, 360])
def test_remove_baseline_equals_median_filters(ecg: dict[str, np.ndarray], fs: int) -> None:
    short, long = round(0.2 * fs) | 1, round(0.6 * fs) | 1  # the odd sizes remove_baseline uses
    for x in _signals(ecg, fs):
        size = (lambda k: (k, 1)) if x.ndim == 2 else (lambda k: k)
        base = ndimage.median_filter(x, size=size(short), mode="nearest")
        base = ndimage.median_filter(base, size=size(long), mode="nearest")
        assert _same(remove_baseline(x, fs, CFG), (x - base).astype(np.float32)), x.shape


def _beat_windows_by_clipping(
    x: np.ndarray, peaks: np.ndarray, cfg: PreprocessConfig
) -> np.ndarray:
    """The plain form: edge-pad, index, clip every index into the padded signal."""
    before, after = (
        round(cfg.beat_before_s * cfg.fs_target),
        round(cfg.beat_after_s * cfg.fs_target),
    )
    padded = np.pad(x, (before, after), mode="edge")
    idx = peaks[:, None] + np.arange(before + after)[None, :]
    w = padded[np.clip(idx, 0, padded.shape[0] - 1)]
    if cfg.beat_normalise == "median":
        w = w - np.median(w, axis=1, keepdims=True)
    elif cfg.beat_normalise == "zscore":
        w = (w - w.mean(axis=1, keepdims=True)) / np.maximum(w.std(axis=1, keepdims=True), 1e-6)
    return w.astype(np.float32)


@pytest.mark.parametrize("beat_normalise", ["none", "median", "zscore"])
def test_beat_windows_equal_clipped_indexing(beat_normalise: str) -> None:
    cfg = PreprocessConfig(beat_normalise=beat_normalise)  # type: ignore[arg-type]
    raw = read_record(FIXTURE_DB / "100").lead("MLII")
    x = resample(raw, 360, cfg.fs_target)
    beats = read_annotations(FIXTURE_DB / "100").select(WFDB_BEAT_SYMBOLS).sample
    peaks = np.round(beats * cfg.fs_target / 360).astype(np.int64)
    n = x.shape[0]
    cases = [
        peaks,
        peaks[:0],
        peaks[:1],
        np.array([0, 1, n - 2, n - 1]),
        np.array([-200, -5, 3, n, n + 100]),  # past both ends: the edge values repeat
        np.array([n + 500]),
    ]
    for p in cases:
        assert _same(beat_windows(x, p, cfg), _beat_windows_by_clipping(x, p, cfg)), p
    one = x[:1]
    assert _same(
        beat_windows(one, np.array([0, 3]), cfg),
        _beat_windows_by_clipping(one, np.array([0, 3]), cfg),
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_median_along_equals_numpy_median(dtype: type) -> None:
    rng = np.random.default_rng(0)
    shapes: list[tuple[int, ...]] = [
        (17, 87),
        (30, 87),
        (16, 87),
        (1, 1),
        (2, 3),
        (4, 6),
        (3, 1),
        (1, 5),
        (6, 5, 4),
    ]
    for shape in shapes:
        for fill in ("normal", "zeros of both signs", "NaN", "mostly NaN", "ties", "-0"):
            a: np.ndarray = rng.normal(size=shape).astype(dtype)
            if fill == "zeros of both signs":
                a[rng.random(shape) < 0.5] = -0.0
                a[rng.random(shape) < 0.3] = 0.0
            elif fill == "NaN":
                a[rng.random(shape) < 0.2] = np.nan
            elif fill == "mostly NaN":
                a[rng.random(shape) < 0.7] = np.nan
            elif fill == "ties":
                a = np.round(a)
            elif fill == "-0":
                a[:] = -0.0
            before = a.copy()
            for axis in range(-1, a.ndim):
                with np.errstate(invalid="ignore"):
                    expected = np.asarray(np.median(a, axis=axis))
                assert _same(median_along(a, axis), expected), (shape, fill, axis)
            assert _same(a, before), "median_along must not reorder its input"


def test_median_along_on_a_sliding_window_view() -> None:
    """The running templates' form: windows of 30 beats over a strip of real beat windows."""
    raw = read_record(FIXTURE_DB / "118").lead("MLII")
    x = resample(raw, 360, CFG.fs_target)
    w = beat_windows(x, np.arange(40, x.shape[0] - 60, 25), CFG)  # (45, 87), overlapping
    for k in (3, 10, 30):
        view = np.lib.stride_tricks.sliding_window_view(w, k, axis=0)
        assert _same(median_along(view, 2), np.median(view, axis=2)), k
