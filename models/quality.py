"""Signal quality of a single-lead ECG strip, per strip and per beat, before classification.

:func:`assess_strip` judges a strip from the strip alone (no reference, as at serve time). The
strip is cut into analysis windows of :attr:`QualityThresholds.window_s` seconds (10 s, the window
of Li et al. 2008 and Orphanidou et al. 2015; a shorter strip is one window). Each window gets
signal quality indices (SQIs) from published methods:

``flat``        share of samples on a flat line (moving range < ``flat_mv`` over ``flat_s``):
                a disconnected lead or a dead channel.
``clipped``     share of samples on plateaus at the window's extreme values: amplifier or ADC
                saturation (the "saturation" check of the PhysioNet/CinC Challenge 2011 entries,
                e.g. Clifford et al. 2012).
``qrs_amp_mv``  median peak-to-peak amplitude within 50 ms of the R peaks after band-pass (the QRS
                amplitude that PhysioNet's ``sigamp``/``nst`` measure): a strip out of the
                physiological range is not an ECG in mV (or its units are wrong).
``hum``         share of the raw signal's power within 1 Hz of 50 or 60 Hz: powerline
                interference that swamps the ECG.
``ksqi``        kurtosis of the band-passed window (kSQI, Li, Mark & Clifford 2008; a clean ECG
                is peaky, kurtosis > 5; Gaussian noise has 3, sinusoids and sawtooths < 2).
``psqi``        power in 5-15 Hz over power in 5-40 Hz (pSQI, Li et al. 2008): the QRS band's share.
``bassqi``      1 - power in 0-1 Hz over power in 0-40 Hz of the raw window (basSQI, Zhao &
                Zhang 2018): baseline wander.
``bsqi``        agreement of two independent QRS detectors (bSQI, Li et al. 2008): matched beats /
                (beats of A + beats of B - matched) within 150 ms, with A the service's detector
                (:func:`models.preprocessing.detect_rpeaks`, XQRS) or the given R peaks, and B the
                Pan & Tompkins (1985) front end with a simple adaptive threshold
                (:func:`detect_rpeaks_pantompkins`).
``tcorr``       mean correlation of the window's beats with their median template (Orphanidou
                et al. 2015).
``hr_bpm``, ``max_rr_s``   heart rate and longest RR interval (Orphanidou et al. 2015's
                plausibility rules, with wider limits so that real bradycardia and pauses pass).

Decision (a rule-based fusion in the spirit of Zhao & Zhang 2018, who combine pSQI, kSQI, basSQI
and a detector-agreement index into "excellent / barely acceptable / unacceptable"):

- a window is ``"unreadable"`` when a hard check fails (flat line, clipping, QRS amplitude out of
  range, powerline hum, kurtosis below that of Gaussian noise, heart rate implausible, no beat
  found) or when at least
  ``soft_fail_unreadable`` of the soft indices (kSQI, pSQI, basSQI, bSQI, template correlation,
  longest RR) fail; ``"noisy"`` when one soft index fails; ``"good"`` otherwise;
- a beat inherits its window's verdict and reasons, and is also ``"unreadable"`` on its own when it
  lies on a flat or clipped stretch, when its QRS amplitude is an outlier against the window's
  median (``beat_amp_ratio``), or when its local noise (high-frequency residual around the beat
  against its QRS amplitude) is too high; its correlation with the median template is reported
  (``beat_tcorr``) and makes a beat unreadable only together with high local noise, because
  ectopic beats (V) legitimately differ from the dominant template (making template outliers
  unreadable in noisy windows was tried: +250 lost clean DS1 beats for no PPV gain under ``em``);
- the strip is ``"unreadable"`` when it has no beat or more than half of its beats are unreadable,
  ``"noisy"`` when any window or beat is not good, ``"good"`` otherwise.

The thresholds (:class:`QualityThresholds`) were chosen on MIT-BIH DS1 records only, never on
DS2: from the distribution of each index over the 3,960 clean 10-s MLII strips of DS1 and over
the same records with nstdb ``em``, ``ma`` and ``bw`` noise at 12, 0 and -6 dB, each soft limit
sits near the 1st-5th percentile of the clean strips (kSQI 5.1 / 6.4, pSQI 0.49 / 0.53, basSQI
0.32 / 0.62, bSQI 0.49 / 0.81, template correlation 0.33 / 0.58 at the 1st / 5th percentiles),
and two failing soft indices make a window unreadable, which kept the clean loss of DS1 under
0.5% of beats (``python -m bench.noise_stress clean --records ds1``); the noise stress figures
are in :mod:`bench.noise_stress`.

References
----------
Li Q, Mark RG, Clifford GD. Robust heart rate estimation from multiple asynchronous noisy sources
using signal quality indices and a Kalman filter. Physiol Meas 29(1):15-32 (2008).
Orphanidou C, Bonnici T, Charlton P, Clifton D, Vallance D, Tarassenko L. Signal-quality indices for
the electrocardiogram and photoplethysmogram: derivation and applications to wireless monitoring.
IEEE J Biomed Health Inform 19(3):832-838 (2015).
Zhao Z, Zhang Y. SQI quality evaluation mechanism of single-lead ECG signal based on simple
heuristic fusion and fuzzy comprehensive evaluation. Front Physiol 9:727 (2018).
Pan J, Tompkins WJ. A real-time QRS detection algorithm. IEEE Trans Biomed Eng 32(3):230-236
(1985).
Clifford GD, Behar J, Li Q, Rezek I. Signal quality indices and data fusion for determining clinical
acceptability of electrocardiograms. Physiol Meas 33(9):1419-1433 (2012).
Moody GB, Muldrow WK, Mark RG. A noise stress test for arrhythmia detectors. Computers in
Cardiology 11:381-384 (1984).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Literal

import numpy as np
from scipy import ndimage
from scipy import signal as sps

from models.preprocessing import detect_rpeaks
from models.signal_ops import ZeroPhaseFilter, derivative, median_along

__all__ = [
    "GOOD",
    "NOISY",
    "UNREADABLE",
    "QualityThresholds",
    "StripQuality",
    "assess_strip",
    "detect_rpeaks_pantompkins",
]

Verdict = Literal["good", "noisy", "unreadable"]
GOOD: Verdict = "good"
NOISY: Verdict = "noisy"
UNREADABLE: Verdict = "unreadable"

_QRS_HALF_S = 0.05  # +-50 ms around R: the QRS amplitude window of sigamp / nst
_MATCH_S = 0.15  # bSQI matching tolerance (Li et al. 2008)
_BEAT_BEFORE_S = 0.2  # template window around R (Orphanidou et al. 2015 use ~ the median RR)
_BEAT_AFTER_S = 0.4
_BEAT_REASONS = ("flat", "clipped", "beat_amplitude", "local_noise")


@dataclass(frozen=True)
class QualityThresholds:
    """Limits of the quality checks (chosen on MIT-BIH DS1 + nstdb noise, never on DS2).

    Attributes
    ----------
    window_s : float
        Analysis window, seconds; a strip shorter than 1.5 windows is one window.
    flat_mv, flat_s : float
        A sample is on a flat line when the signal's range over the ``flat_s`` seconds around it
        is below ``flat_mv`` mV.
    flat_max : float
        Largest share of flat samples in a window (and in a beat's neighbourhood).
    clip_run_s : float
        Shortest plateau at the window's extreme value that counts as clipping, seconds.
    clip_max : float
        Largest share of clipped samples in a window.
    amp_min_mv, amp_max_mv : float
        Plausible median QRS peak-to-peak amplitude after band-pass, mV.
    hum_max : float
        Largest share of raw power within 1 Hz of 50 or 60 Hz.
    hr_min_bpm, hr_max_bpm : float
        Plausible mean heart rate of a window.
    ksqi_hard_min : float
        Kurtosis below which a window is unreadable outright: a sub-Gaussian signal (sinusoid
        1.5, sawtooth or uniform noise 1.8) has no QRS spikes at all.
    ksqi_min : float
        Smallest kurtosis (soft).
    psqi_min, psqi_max : float
        Plausible pSQI range (soft).
    bassqi_min : float
        Smallest basSQI (soft).
    bsqi_min : float
        Smallest detector agreement (soft).
    tcorr_min : float
        Smallest mean template correlation (soft).
    max_rr_s : float
        Longest plausible RR interval (soft), seconds.
    soft_fail_unreadable : int
        Failing soft indices that make a window unreadable (one makes it noisy).
    beat_amp_ratio : float
        A beat whose QRS amplitude is more than this many times, or less than its inverse, the
        window's median is unreadable.
    beat_noise_max : float
        Largest local noise of a beat: RMS of the high-frequency residual (band-passed signal minus
        its 40-ms moving average) within its RR neighbourhood outside the QRS, over its QRS
        amplitude.
    beat_noise_tcorr : float
        A beat whose template correlation is below ``beat_tcorr_min`` is unreadable when its local
        noise exceeds this share of ``beat_noise_max``.
    beat_tcorr_min : float
        See ``beat_noise_tcorr``.
    max_unreadable_share : float
        A strip with more unreadable beats than this share is unreadable as a whole.
    """

    window_s: float = 10.0
    flat_mv: float = 0.02
    flat_s: float = 0.5
    flat_max: float = 0.5
    clip_run_s: float = 0.012
    clip_max: float = 0.01
    amp_min_mv: float = 0.05
    amp_max_mv: float = 10.0
    hum_max: float = 0.5
    hr_min_bpm: float = 24.0
    hr_max_bpm: float = 300.0
    ksqi_hard_min: float = 2.5
    ksqi_min: float = 4.0
    psqi_min: float = 0.45
    psqi_max: float = 1.0
    bassqi_min: float = 0.1
    bsqi_min: float = 0.6
    tcorr_min: float = 0.3
    max_rr_s: float = 3.0
    soft_fail_unreadable: int = 2
    beat_amp_ratio: float = 5.0
    beat_noise_max: float = 0.25
    beat_noise_tcorr: float = 0.5
    beat_tcorr_min: float = 0.3
    max_unreadable_share: float = 0.5


DEFAULT_THRESHOLDS = QualityThresholds()


@dataclass(frozen=True)
class StripQuality:
    """The quality of one strip and of each of its beats.

    Attributes
    ----------
    verdict : {"good", "noisy", "unreadable"}
        The strip's verdict. "noisy": readable, but some windows or beats are doubtful.
    reasons : tuple of str
        Why the strip (or part of it) is not good, most frequent first, e.g. ``("ksqi",
        "bsqi")``; empty when good. Names are those of the SQIs in the module docstring, plus
        ``"no_beats"``, ``"beat_amplitude"`` and ``"local_noise"``.
    sqi : Mapping[str, float]
        The window SQIs (median over windows for a long strip), ``n_windows``, ``n_beats`` and
        ``unreadable_share`` (share of unreadable beats).
    r_peaks : np.ndarray
        int64 ``(n_beats,)`` R-peak sample indices at the input rate the verdicts refer to: the
        given peaks, or those :func:`models.preprocessing.detect_rpeaks` found.
    beat_verdicts : tuple of str
        ``(n_beats,)`` verdict of each beat.
    beat_reasons : tuple of tuple of str
        ``(n_beats,)`` reasons of each beat (empty when good).
    beat_sqi : Mapping[str, np.ndarray]
        Per-beat indices, each float ``(n_beats,)``: ``beat_tcorr``, ``beat_amp_ratio``,
        ``beat_noise``.
    """

    verdict: Verdict
    reasons: tuple[str, ...]
    sqi: Mapping[str, float]
    r_peaks: np.ndarray = field(compare=False)
    beat_verdicts: tuple[Verdict, ...]
    beat_reasons: tuple[tuple[str, ...], ...]
    beat_sqi: Mapping[str, np.ndarray] = field(compare=False)

    @property
    def readable(self) -> np.ndarray:
        """bool ``(n_beats,)``: the beats a classifier may label (not unreadable)."""
        return np.array([v != UNREADABLE for v in self.beat_verdicts], dtype=bool)


# --------------------------------------------------------------------------- filters
@lru_cache(maxsize=64)
def _sos(fs: float, low: float | None, high: float | None, order: int = 2) -> np.ndarray:
    nyq = fs / 2.0
    if low is not None and high is not None:
        return sps.butter(order, [low / nyq, min(high, 0.9 * nyq) / nyq], "bandpass", output="sos")
    if low is not None:
        return sps.butter(order, low / nyq, "highpass", output="sos")
    return sps.butter(order, min(high or 0.45 * fs, 0.9 * nyq) / nyq, "lowpass", output="sos")


@lru_cache(maxsize=64)
def _zero_phase(fs: float, low: float | None, high: float | None) -> ZeroPhaseFilter:
    return ZeroPhaseFilter.from_sos(_sos(fs, low, high))


def _filt(x: np.ndarray, fs: float, low: float | None, high: float | None) -> np.ndarray:
    """Zero-phase Butterworth filter of float64 ``x`` (``sosfiltfilt``'s output, design and
    initial conditions cached); a signal too short to pad only loses its mean."""
    zero_phase = _zero_phase(float(fs), low, high)
    padlen = 3 * (2 * len(zero_phase.sos) + 1)
    if x.shape[0] <= padlen:
        return x - float(np.mean(x))
    return np.ascontiguousarray(zero_phase(x))  # a reversed view otherwise


def _check(signal: np.ndarray, fs: float) -> np.ndarray:
    if not np.isfinite(fs) or fs <= 0:
        raise ValueError(f"sampling frequency must be > 0 Hz, got {fs}")
    x = np.asarray(signal, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"assess_strip takes one lead (n_samples,), got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError("signal is empty")
    if not np.all(np.isfinite(x)):
        raise ValueError("signal contains NaN or infinite values")
    return x


# --------------------------------------------------------------------------- second detector
def detect_rpeaks_pantompkins(signal: np.ndarray, fs: float) -> np.ndarray:
    """R peaks from the Pan & Tompkins (1985) front end with a simple adaptive threshold.

    The second, independent detector of bSQI (Li et al. 2008): band-pass 5-15 Hz, derivative,
    squaring, 150-ms moving-window integration (centred, so no delay), then peaks of the
    integrated signal at least 250 ms apart that exceed 30% of the local reference level (the
    median of the 2-s moving maximum over 8 s); each peak is placed at the largest absolute
    band-passed (5-15 Hz) sample within 100 ms. Vectorised; unlike Pan & Tompkins it has no
    search-back and no T-wave discrimination, which bSQI does not need (it only has to be an
    independent opinion).

    Parameters
    ----------
    signal : np.ndarray
        ``(n_samples,)`` in mV at ``fs`` Hz.
    fs : float
        Sampling rate, Hz (>= 50).

    Returns
    -------
    np.ndarray
        int64 ``(n_beats,)`` sorted sample indices at ``fs``.
    """
    x = np.asarray(signal, dtype=np.float64)
    if x.shape[0] < int(0.5 * fs) or float(np.ptp(x)) == 0.0:
        return np.zeros(0, dtype=np.int64)
    band = _filt(x, fs, 5.0, 15.0)
    energy = derivative(band) ** 2
    mwi = ndimage.uniform_filter1d(energy, size=max(1, round(0.15 * fs)), mode="nearest")
    local_max = ndimage.maximum_filter1d(mwi, size=max(1, round(2.0 * fs)), mode="nearest")
    step = max(1, round(fs / 10))
    reference = ndimage.median_filter(local_max[::step], size=81, mode="nearest")  # 8 s at 10 Hz
    candidates, _ = sps.find_peaks(mwi, distance=max(1, round(0.25 * fs)))
    # the reference level interpolated linearly between its 10-Hz samples, at the candidates only
    level = np.interp(candidates, np.arange(reference.shape[0]) * step, reference)
    keep = candidates[mwi[candidates] > 0.3 * level]
    if keep.size == 0:
        return np.zeros(0, dtype=np.int64)
    half = max(1, round(0.1 * fs))
    idx = _around(keep, half, half + 1, x.shape[0])
    peaks = idx[np.arange(idx.shape[0]), np.argmax(np.abs(band[idx]), axis=1)]
    return np.unique(peaks.astype(np.int64))


def _agreement(a: np.ndarray, b: np.ndarray, tolerance: int) -> float:
    """bSQI: matched / (|a| + |b| - matched), greedy one-to-one matching within ``tolerance``."""
    if a.size == 0 and b.size == 0:
        return 1.0
    if a.size == 0 or b.size == 0:
        return 0.0
    j = np.searchsorted(b, a)
    left = np.maximum(j - 1, 0)  # np.clip(j - 1, 0, b.size - 1): j <= b.size
    right = np.minimum(j, b.size - 1)  # j >= 0
    nearest = np.where(np.abs(b[left] - a) <= np.abs(b[right] - a), left, right)
    close = np.abs(b[nearest] - a) <= tolerance
    matched = len(set(nearest[close].tolist()))
    return matched / (a.size + b.size - matched)


# --------------------------------------------------------------------------- helpers
def _mean(x: np.ndarray) -> float:
    """``float(np.mean(x))`` of a non-empty 1-D float64 or bool array: the same float64 sum over
    the same count, without ``np.mean``'s dispatch (dozens of calls per strip)."""
    return float(np.add.reduce(x, axis=None, dtype=np.float64) / x.size)


def _flat_mask(x: np.ndarray, fs: float, th: QualityThresholds) -> np.ndarray:
    """Samples whose range over the ``flat_s`` around them (``scipy.ndimage`` windows, edges
    reflected) is under ``flat_mv``.

    Shortcut with the same answer: every such window of ``size`` samples holds a whole block of
    ``b = (size + 1) // 2`` samples (an aligned one, or the last ``b`` samples at the end), so
    when no block's range is under ``flat_mv`` no window's is, and no sample is flat."""
    size = max(2, round(th.flat_s * fs))
    n = x.shape[0]
    b = (size + 1) // 2
    if n >= size:
        blocks = np.concatenate((x[: n - n % b], x[n - b :])).reshape(-1, b)
        ranges = np.maximum.reduce(blocks, axis=1) - np.minimum.reduce(blocks, axis=1)
        if np.minimum.reduce(ranges) >= th.flat_mv:
            return np.zeros(n, dtype=bool)
    rng = ndimage.maximum_filter1d(x, size) - ndimage.minimum_filter1d(x, size)
    return rng < th.flat_mv


def _clip_mask(x: np.ndarray, fs: float, th: QualityThresholds) -> np.ndarray:
    """Samples on plateaus (runs of at least ``clip_run_s`` samples within 0.1% of the span of
    the window's max or min)."""
    lo, hi = float(np.minimum.reduce(x)), float(np.maximum.reduce(x))
    span = hi - lo
    if span <= 0:
        return np.zeros(x.shape, dtype=bool)
    tol = 1e-3 * span
    extreme = (x >= hi - tol) | (x <= lo + tol)
    run = max(3, round(th.clip_run_s * fs))
    pos = np.flatnonzero(extreme)  # few samples: runs found from their positions
    breaks = np.flatnonzero(np.diff(pos) != 1) + 1
    lengths = np.diff(np.concatenate(([0], breaks, [pos.size])))
    long_runs = lengths >= run
    out = np.zeros(x.shape, dtype=bool)
    if long_runs.any():
        out[pos[np.repeat(long_runs, lengths)]] = True
    return out


@lru_cache(maxsize=64)
def _hann(n: int) -> np.ndarray:
    return sps.get_window("hann", n)


def _band_powers(*signals: np.ndarray, fs: float) -> tuple[int, list[np.ndarray]]:
    """Welch power spectra (4-s Hann segments, 50% overlap, mean removed per segment), up to
    a constant factor (only ratios of band powers are used); numpy's FFT over all segments of
    all the (equally long) signals at once, ~5x faster than ``scipy.signal.welch``.

    Returns the segment length (the spectrum's bins are ``np.fft.rfftfreq(nperseg, 1 / fs)``)
    and each signal's power per bin, float64 ``(nperseg // 2 + 1,)``."""
    n = signals[0].shape[0]
    nperseg = int(min(n, round(4 * fs)))
    step = max(1, nperseg // 2)
    n_segs = (n - nperseg) // step + 1  # sliding_window_view(x, nperseg)[::step]
    segs = np.concatenate(
        [
            np.lib.stride_tricks.as_strided(
                x, shape=(n_segs, nperseg), strides=(step * x.strides[0], x.strides[0])
            )
            for x in signals
        ]
    )
    segs -= np.add.reduce(segs, axis=1, keepdims=True) / nperseg
    spectrum = np.fft.rfft(segs * _hann(nperseg), axis=1)
    power = spectrum.real**2 + spectrum.imag**2
    return nperseg, [
        np.add.reduce(power[k * n_segs : (k + 1) * n_segs], axis=0) / n_segs
        for k in range(len(signals))
    ]


@lru_cache(maxsize=512)
def _bins(nperseg: int, fs: float, lo: float, hi: float) -> slice:
    """The spectrum bins with ``lo <= f <= hi`` (contiguous: the frequencies increase)."""
    f = np.fft.rfftfreq(nperseg, 1.0 / fs)
    return slice(int(np.searchsorted(f, lo, "left")), int(np.searchsorted(f, hi, "right")))


def _power(p: np.ndarray, nperseg: int, fs: float, lo: float, hi: float) -> float:
    """Power of the bins from ``lo`` to ``hi`` Hz of :func:`_band_powers`' spectrum."""
    return float(np.add.reduce(p[_bins(nperseg, fs, lo, hi)]))


def _around(peaks: np.ndarray, before: int, after: int, n: int) -> np.ndarray:
    """int ``(n_peaks, before + after)`` sample indices from ``before`` samples before each of
    the sorted ``peaks`` to ``after - 1`` after it, clipped to ``[0, n - 1]``."""
    idx = peaks[:, None] + np.arange(-before, after)[None, :]
    if peaks[0] - before < 0 or peaks[-1] + after > n:
        idx = np.minimum(np.maximum(idx, 0), n - 1)  # np.clip without its dispatch
    return idx


def _beat_matrix(x: np.ndarray, peaks: np.ndarray, before: int, after: int) -> np.ndarray:
    """``(n_peaks, before + after)`` samples around sorted ``peaks`` (edges repeated)."""
    return x[_around(peaks, before, after, x.shape[0])]


def _corr_rows(beats: np.ndarray, template: np.ndarray) -> np.ndarray:
    b = beats - np.add.reduce(beats, axis=1, keepdims=True) / beats.shape[1]
    t = template - np.add.reduce(template) / template.shape[0]
    # np.linalg.norm's own steps (row norms: sqrt of the summed squares; vector norm: sqrt(t.t))
    denom = np.sqrt(np.add.reduce(b * b, axis=1)) * np.sqrt(t.dot(t))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (b @ t) / denom
    if np.isfinite(r).all():  # the usual case; np.nan_to_num costs more than the rest
        return r
    return np.nan_to_num(r, nan=0.0)


# --------------------------------------------------------------------------- one window
@dataclass
class _Window:
    start: int
    stop: int
    verdict: Verdict
    reasons: list[str]
    sqi: dict[str, float]


def _assess_window(
    raw: np.ndarray,
    band: np.ndarray,
    fs: float,
    peaks: np.ndarray,
    second: np.ndarray,
    flat: np.ndarray,
    th: QualityThresholds,
) -> tuple[list[str], list[str], dict[str, float], np.ndarray, np.ndarray, np.ndarray]:
    """SQIs of one window: hard and soft failures, SQIs, per-beat QRS amplitudes, clip mask
    and per-beat template correlations."""
    n = raw.shape[0]
    sqi: dict[str, float] = {}
    hard: list[str] = []
    soft: list[str] = []

    sqi["flat"] = _mean(flat)
    if sqi["flat"] > th.flat_max:
        hard.append("flat")
    clipped = _clip_mask(raw, fs, th)
    sqi["clipped"] = _mean(clipped)
    if sqi["clipped"] > th.clip_max:
        hard.append("clipped")

    half = max(1, round(_QRS_HALF_S * fs))
    if peaks.size:
        seg = _beat_matrix(band, peaks, half, half + 1)
        amps = np.maximum.reduce(seg, axis=1) - np.minimum.reduce(seg, axis=1)  # np.ptp
        sqi["qrs_amp_mv"] = float(median_along(amps, 0))
    else:
        amps = np.zeros(0)
        sqi["qrs_amp_mv"] = float(np.maximum.reduce(band) - np.minimum.reduce(band))
    if not th.amp_min_mv <= sqi["qrs_amp_mv"] <= th.amp_max_mv:
        hard.append("qrs_amp_mv")

    nperseg, (p, pb) = _band_powers(raw - _mean(raw), band, fs=fs)
    total = _power(p, nperseg, fs, 0.5, fs / 2.0)
    hum = max(
        (
            _power(p, nperseg, fs, line - 1.0, line + 1.0)
            for line in (50.0, 60.0)
            if line + 1.0 < fs / 2.0
        ),
        default=0.0,
    )
    sqi["hum"] = hum / total if total > 0 else 0.0
    if sqi["hum"] > th.hum_max:
        hard.append("hum")
    low = _power(p, nperseg, fs, 0.0, 1.0)
    sqi["bassqi"] = 1.0 - low / max(_power(p, nperseg, fs, 0.0, 40.0), 1e-20)
    qrs_band = _power(pb, nperseg, fs, 5.0, 15.0)
    sqi["psqi"] = qrs_band / max(_power(pb, nperseg, fs, 5.0, 40.0), 1e-20)
    centred = band - _mean(band)
    squared = centred * centred
    var = _mean(squared)
    # (c**2)**2, not c**4: numpy's float64 power is ~50x slower than a product (0.2 ms per 10-s
    # strip); the kurtosis moves by float64 rounding only (relative ~1e-16)
    sqi["ksqi"] = float(_mean(squared * squared) / var**2) if var > 0 else 0.0
    sqi["bsqi"] = _agreement(peaks, second, max(1, round(_MATCH_S * fs)))

    duration = n / fs
    if peaks.size >= 2:
        rr = np.diff(peaks) / fs
        sqi["hr_bpm"] = 60.0 / _mean(rr)
        sqi["max_rr_s"] = float(np.maximum.reduce(rr))
    else:
        sqi["hr_bpm"] = 60.0 * peaks.size / duration
        sqi["max_rr_s"] = duration
    if peaks.size == 0:
        hard.append("no_beats")
    elif duration >= 4.0 and not th.hr_min_bpm <= sqi["hr_bpm"] <= th.hr_max_bpm:
        hard.append("hr_bpm")

    before, after = round(_BEAT_BEFORE_S * fs), round(_BEAT_AFTER_S * fs)
    if peaks.size >= 2:
        beats = _beat_matrix(band, peaks, before, after)
        tcorr = _corr_rows(beats, median_along(beats, 0))
        sqi["tcorr"] = _mean(tcorr)
    else:
        tcorr = np.ones(peaks.size)
        sqi["tcorr"] = 0.0 if peaks.size == 0 else 1.0

    if sqi["ksqi"] < th.ksqi_hard_min:
        hard.append("ksqi")
    elif sqi["ksqi"] < th.ksqi_min:
        soft.append("ksqi")
    if not th.psqi_min <= sqi["psqi"] <= th.psqi_max:
        soft.append("psqi")
    if sqi["bassqi"] < th.bassqi_min:
        soft.append("bassqi")
    if sqi["bsqi"] < th.bsqi_min:
        soft.append("bsqi")
    if sqi["tcorr"] < th.tcorr_min:
        soft.append("tcorr")
    if duration >= 2 * th.max_rr_s and sqi["max_rr_s"] > th.max_rr_s:
        soft.append("max_rr_s")
    return hard, soft, sqi, amps, clipped, tcorr


def _windows(n: int, fs: float, window_s: float) -> list[tuple[int, int]]:
    size = max(1, round(window_s * fs))
    if n < 1.5 * size:
        return [(0, n)]
    bounds = list(range(0, n, size))
    if n - bounds[-1] < size // 2:  # a short tail joins the window before it
        bounds.pop()
    stops = [*bounds[1:], n]
    return list(zip(bounds, stops, strict=True))


# --------------------------------------------------------------------------- entry point
def assess_strip(
    signal: np.ndarray,
    fs: float,
    r_peaks: np.ndarray | None = None,
    *,
    thresholds: QualityThresholds = DEFAULT_THRESHOLDS,
) -> StripQuality:
    """Judge a single-lead ECG strip and each of its beats: good, noisy or unreadable, and why.

    Parameters
    ----------
    signal : np.ndarray
        ``(n_samples,)`` raw single-lead ECG in mV at ``fs`` Hz (not band-passed: the flat-line,
        clipping, hum and baseline checks need the raw samples).
    fs : float
        Sampling rate, Hz (the service accepts 100-1000 Hz).
    r_peaks : np.ndarray, optional
        ``(n_beats,)`` R-peak sample indices at ``fs`` (e.g. the client's); None: found with
        :func:`models.preprocessing.detect_rpeaks`, as the service does. Either way they are
        the first detector of bSQI.
    thresholds : QualityThresholds
        The limits; the defaults were chosen on MIT-BIH DS1 with nstdb noise.

    Returns
    -------
    StripQuality
        Strip verdict and reasons, SQIs, and one verdict and reason tuple per R peak (in the order
        of the sorted, de-duplicated ``r_peaks``).

    Raises
    ------
    ValueError
        ``fs`` not positive; signal empty, not 1-D, or holding NaN / inf; R peaks outside the
        signal.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> assess_strip(rng.normal(0, 0.3, 3600), 360.0).verdict
    'unreadable'
    """
    x = _check(signal, fs)
    fs = float(fs)
    th = thresholds
    if r_peaks is None:
        peaks = detect_rpeaks(x.astype(np.float32), fs)
    else:
        peaks = np.unique(np.asarray(r_peaks, dtype=np.int64).reshape(-1))
        if peaks.size and (peaks[0] < 0 or peaks[-1] >= x.shape[0]):
            raise ValueError(f"r_peaks must lie within the signal's {x.shape[0]} samples")
    band = _filt(x, fs, 0.5, 40.0)
    second = detect_rpeaks_pantompkins(x, fs)
    flat = _flat_mask(x, fs, th)

    n_beats = peaks.size
    beat_verdicts: list[Verdict] = [GOOD] * n_beats
    beat_reasons: list[list[str]] = [[] for _ in range(n_beats)]
    beat_amp = np.ones(n_beats)
    beat_noise = np.zeros(n_beats)
    beat_tcorr = np.ones(n_beats)
    windows: list[_Window] = []

    for start, stop in _windows(x.shape[0], fs, th.window_s):
        in_win = (peaks >= start) & (peaks < stop)
        idx = np.flatnonzero(in_win)
        wp = peaks[idx] - start
        sp = second[(second >= start) & (second < stop)] - start
        hard, soft, sqi, amps, clipped, tcorr = _assess_window(
            x[start:stop], band[start:stop], fs, wp, sp, flat[start:stop], th
        )
        if hard or len(soft) >= th.soft_fail_unreadable:
            verdict: Verdict = UNREADABLE
        elif soft:
            verdict = NOISY
        else:
            verdict = GOOD
        windows.append(_Window(start, stop, verdict, hard + soft, sqi))
        if idx.size == 0:
            continue
        _judge_beats(
            band[start:stop], fs, wp, amps, sqi["qrs_amp_mv"], clipped, tcorr, flat[start:stop],
            th, idx,
            verdict, hard + soft, beat_verdicts, beat_reasons, beat_amp, beat_noise, beat_tcorr,
        )  # fmt: skip

    return _summarise(
        windows, peaks, beat_verdicts, beat_reasons, beat_amp, beat_noise, beat_tcorr, th
    )


def _judge_beats(
    band: np.ndarray,
    fs: float,
    wp: np.ndarray,
    amps: np.ndarray,
    median_amp: float,
    clipped: np.ndarray,
    tcorr: np.ndarray,
    flat: np.ndarray,
    th: QualityThresholds,
    idx: np.ndarray,
    window_verdict: Verdict,
    window_reasons: list[str],
    beat_verdicts: list[Verdict],
    beat_reasons: list[list[str]],
    beat_amp: np.ndarray,
    beat_noise: np.ndarray,
    beat_tcorr: np.ndarray,
) -> None:
    """Per-beat checks of one window's beats (``wp``: their sorted peaks relative to the window;
    ``median_amp``: the median of ``amps``, the window's ``qrs_amp_mv``)."""
    n = band.shape[0]
    ratio = amps / median_amp if median_amp > 0 else np.ones_like(amps)
    # local noise: high-frequency residual of the band-passed signal (minus its 40-ms moving
    # average) over the beat's RR neighbourhood, QRS (+-60 ms) excluded, against the QRS amplitude
    resid = band - ndimage.uniform_filter1d(band, size=max(1, round(0.04 * fs)), mode="nearest")
    resid_sq = resid**2
    q = max(1, round(0.06 * fs))
    qrs_mask = np.zeros(n, dtype=bool)
    for p in wp.tolist():
        qrs_mask[max(0, p - q) : p + q + 1] = True
    resid_sq[qrs_mask] = 0.0  # outside the QRS only
    cum_sq = np.zeros(n + 1)
    np.cumsum(resid_sq, out=cum_sq[1:])
    cum_n = np.zeros(n + 1, dtype=np.int64)  # samples outside the QRS (exact counts)
    np.cumsum(~qrs_mask, out=cum_n[1:])
    mids = np.concatenate([[0], (wp[:-1] + wp[1:]) // 2, [n]])
    lo = np.maximum(mids[:-1], wp - round(0.6 * fs))
    hi = np.minimum(mids[1:], wp + round(0.6 * fs))
    hi = np.maximum(hi, lo + 1)
    rms = np.sqrt((cum_sq[hi] - cum_sq[lo]) / np.maximum(cum_n[hi] - cum_n[lo], 1.0))
    noise = np.where(amps > 0, rms / np.maximum(amps, 1e-9), np.inf)

    if flat.any():
        near = max(1, round(0.3 * fs))
        cum_flat = np.concatenate([[0], np.cumsum(flat)])
        f_lo, f_hi = np.maximum(wp - near, 0), np.minimum(wp + near + 1, n)
        flat_share = (cum_flat[f_hi] - cum_flat[f_lo]) / np.maximum(f_hi - f_lo, 1)
    else:  # the usual case: no flat sample, no share to count
        flat_share = np.zeros(wp.shape[0])
    if clipped.any():
        cum_clip = np.concatenate([[0], np.cumsum(clipped)])
        c_lo, c_hi = np.maximum(wp - q, 0), np.minimum(wp + q + 1, n)
        on_clip = (cum_clip[c_hi] - cum_clip[c_lo]) > 0
    else:
        on_clip = np.zeros(wp.shape[0], dtype=bool)
    own_flat = flat_share > th.flat_max
    own_amp = ~((1.0 / th.beat_amp_ratio <= ratio) & (ratio <= th.beat_amp_ratio))
    own_noise = (noise > th.beat_noise_max) | (
        (tcorr < th.beat_tcorr_min) & (noise > th.beat_noise_tcorr * th.beat_noise_max)
    )
    own_any = own_flat | on_clip | own_amp | own_noise
    for k in np.flatnonzero(~own_any).tolist():
        beat_verdicts[idx[k]] = window_verdict
        beat_reasons[idx[k]] = list(window_reasons)
    for k in np.flatnonzero(own_any).tolist():
        own = [
            name
            for name, failed in zip(
                _BEAT_REASONS, (own_flat[k], on_clip[k], own_amp[k], own_noise[k]), strict=True
            )
            if failed
        ]
        beat_verdicts[idx[k]] = UNREADABLE
        beat_reasons[idx[k]] = own + [r for r in window_reasons if r not in own]
    beat_amp[idx] = ratio
    beat_noise[idx] = noise
    beat_tcorr[idx] = tcorr


def _summarise(
    windows: list[_Window],
    peaks: np.ndarray,
    beat_verdicts: list[Verdict],
    beat_reasons: list[list[str]],
    beat_amp: np.ndarray,
    beat_noise: np.ndarray,
    beat_tcorr: np.ndarray,
    th: QualityThresholds,
) -> StripQuality:
    n_beats = peaks.size
    n_unreadable = sum(v == UNREADABLE for v in beat_verdicts)
    share = n_unreadable / n_beats if n_beats else 1.0
    counts: Counter[str] = Counter()
    for w in windows:
        counts.update(w.reasons)
    for own in beat_reasons:
        counts.update(r for r in own if r in _BEAT_REASONS)
    reasons = tuple(name for name, _ in counts.most_common())
    if (
        n_beats == 0
        or share > th.max_unreadable_share
        or all(w.verdict == UNREADABLE for w in windows)
    ):
        verdict: Verdict = UNREADABLE
        if n_beats == 0 and "no_beats" not in reasons:
            reasons = ("no_beats", *reasons)
    elif n_unreadable or any(w.verdict != GOOD for w in windows):
        verdict = NOISY
    else:
        verdict = GOOD
    names = list(windows[0].sqi)
    if len(windows) == 1:  # the median of one value is that value
        sqi = {name: float(windows[0].sqi[name]) for name in names}
    else:  # each column's median, as np.median of that column alone
        table = np.array([[w.sqi[name] for name in names] for w in windows], dtype=np.float64)
        sqi = dict(zip(names, np.median(table, axis=0).tolist(), strict=True))
    sqi.update(n_windows=float(len(windows)), n_beats=float(n_beats), unreadable_share=float(share))
    return StripQuality(
        verdict=verdict,
        reasons=reasons if verdict != GOOD else (),
        sqi=MappingProxyType(sqi),
        r_peaks=peaks,
        beat_verdicts=tuple(beat_verdicts),
        beat_reasons=tuple(tuple(r) for r in beat_reasons),
        beat_sqi=MappingProxyType(
            {"beat_tcorr": beat_tcorr, "beat_amp_ratio": beat_amp, "beat_noise": beat_noise}
        ),
    )
