"""Signal maths shared by dataset building and serving: one copy, so training and serving agree.

Every function is a pure function of ``(signal, fs, config)``. Signals are float32 arrays of shape
``(n_samples,)`` or ``(n_samples, n_leads)`` in millivolts; ``fs`` is the sampling rate in Hz.

The default chain (:func:`preprocess_signal`) is

1. optional powerline notch at the input rate (IIR notch, zero phase),
2. resampling to ``cfg.fs_target`` with :func:`scipy.signal.resample_poly` (polyphase FIR with an
   anti-aliasing filter),
3. baseline-wander removal with two median filters of 200 ms and 600 ms (de Chazal et al. 2004),
4. zero-phase Butterworth band-pass (``sosfiltfilt``; 0.5-40 Hz as in de Chazal et al. 2004 and the
   PTB-XL benchmark of Strodthoff et al. 2021),
5. optional normalisation.

References
----------
de Chazal P, O'Dwyer M, Reilly RB. Automatic classification of heartbeats using ECG morphology and
heartbeat interval features. IEEE Trans Biomed Eng 51(7):1196-1206 (2004).
Strodthoff N et al. Deep learning for ECG analysis: benchmarks and insights from PTB-XL. IEEE J
Biomed Health Inform 25(5):1519-1528 (2021).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from scipy import ndimage
from scipy import signal as sps

from models.signal_ops import ZeroPhaseFilter, median_along

# SciPy's compiled kernels, the ones its public wrappers call after validating their arguments: on
# a 10-s strip the wrappers cost more than the work. The fast paths below repeat the wrappers'
# steps exactly, so the output is the same bit for bit (tests/models/test_preprocessing_kernels.py
# compares them with the public functions); a SciPy that moved a kernel gets the public function.
# The band-pass is models.signal_ops.ZeroPhaseFilter (sosfiltfilt with cached initial conditions).
try:
    from scipy.signal._upfirdn import _output_len, _UpFIRDn
except ImportError:  # pragma: no cover
    _UpFIRDn = None
try:
    from scipy.ndimage._ni_support import _extend_mode_to_code
    from scipy.ndimage._rank_filter_1d import rank_filter as _rank_filter_1d

    _NEAREST = _extend_mode_to_code("nearest", is_filter=True)
except ImportError:  # pragma: no cover
    _rank_filter_1d = None

__all__ = [
    "DETECTION_FS",
    "RR_FEATURE_NAMES",
    "PreprocessConfig",
    "assemble_beat_inputs",
    "bandpass",
    "beat_inputs",
    "beat_windows",
    "detect_rpeaks",
    "find_local_peaks",
    "normalise",
    "normalise_beats",
    "notch",
    "preprocess_signal",
    "remove_baseline",
    "resample",
    "rr_features",
]

#: Every RR-interval feature :func:`rr_features` can compute, in seconds or as ratios.
RR_FEATURE_NAMES: tuple[str, ...] = (
    "pre_rr",  # seconds from the previous R peak
    "post_rr",  # seconds to the next R peak
    "local_rr",  # mean of up to 10 RR intervals ending at this beat, seconds
    "pre_rr_local",  # pre_rr / local_rr
    "post_rr_local",  # post_rr / local_rr
)

_FALLBACK_RR_S = 0.8  # used only when a signal holds a single beat and no interval is known


@dataclass(frozen=True)
class PreprocessConfig:
    """How raw ECG becomes model input; logged with every model so serving repeats it exactly.

    Attributes
    ----------
    fs_target : float
        Rate in Hz that every signal is resampled to before filtering.
    highpass_hz, lowpass_hz : float
        Band-pass corner frequencies in Hz (Butterworth, applied forwards and backwards).
    filter_order : int
        Butterworth order per pass (the zero-phase response has twice this order).
    baseline : {"median", "none"}
        "median": subtract the output of 200 ms then 600 ms median filters (de Chazal 2004).
    notch_hz : float or None
        Powerline frequency to notch out at the input rate (50 or 60 Hz), or None.
    normalise : {"none", "zscore"}
        Per-lead z-scoring of the whole filtered signal.
    beat_before_s, beat_after_s : float
        Beat window around each R peak, seconds before and after.
    beat_normalise : {"none", "zscore", "median"}
        Per-beat amplitude handling: "median" subtracts the window's median only.
    rr_features : tuple of str
        Which of :data:`RR_FEATURE_NAMES` become extra model inputs, in this order.
    rr_local_beats : int
        How many preceding RR intervals define ``local_rr``.
    """

    fs_target: float = 125.0
    highpass_hz: float = 0.5
    lowpass_hz: float = 40.0
    filter_order: int = 2
    baseline: Literal["median", "none"] = "median"
    notch_hz: float | None = None
    normalise: Literal["none", "zscore"] = "none"
    beat_before_s: float = 0.25
    beat_after_s: float = 0.45
    beat_normalise: Literal["none", "zscore", "median"] = "median"
    rr_features: tuple[str, ...] = field(
        default=("pre_rr_local", "post_rr_local", "pre_rr", "post_rr")
    )
    rr_local_beats: int = 10

    def __post_init__(self) -> None:
        if self.fs_target <= 0:
            raise ValueError(f"fs_target must be > 0 Hz, got {self.fs_target}")
        if not 0 < self.highpass_hz < self.lowpass_hz < self.fs_target / 2:
            raise ValueError(
                f"band-pass {self.highpass_hz}-{self.lowpass_hz} Hz must satisfy "
                f"0 < highpass < lowpass < fs_target/2 = {self.fs_target / 2} Hz"
            )
        unknown = set(self.rr_features) - set(RR_FEATURE_NAMES)
        if unknown:
            raise ValueError(
                f"unknown RR features {sorted(unknown)}; choose from {RR_FEATURE_NAMES}"
            )
        # JSON round-trips give lists; keep the dataclass hashable.
        object.__setattr__(self, "rr_features", tuple(self.rr_features))

    @property
    def beat_window_samples(self) -> int:
        """Samples per beat window at ``fs_target``."""
        return _beat_offsets(self)[0] + _beat_offsets(self)[1]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["rr_features"] = list(self.rr_features)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        """Rebuild from :meth:`to_dict` output, ignoring keys this version does not know."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _check_signal(signal: np.ndarray, fs: float) -> np.ndarray:
    if not fs > 0:
        raise ValueError(f"sampling frequency must be > 0 Hz, got {fs}")
    x = np.asarray(signal, dtype=np.float32)
    if x.ndim not in (1, 2):
        raise ValueError(
            f"signal must be (n_samples,) or (n_samples, n_leads), got shape {x.shape}"
        )
    if x.shape[0] == 0:
        raise ValueError("signal is empty")
    if not np.all(np.isfinite(x)):
        raise ValueError("signal contains NaN or infinite values")
    return x


def _rate_fraction(fs: float) -> Fraction:
    return Fraction(fs).limit_denominator(1000)


@lru_cache(maxsize=256)
def _resample_factors(fs: float, fs_target: float) -> tuple[int, int]:
    """Coprime ``(up, down)`` with ``up / down = fs_target / fs`` (rates as fractions of
    denominator <= 1000); ``(1, 1)`` when the rates are equal."""
    ratio = _rate_fraction(fs_target) / _rate_fraction(fs)
    return ratio.numerator, ratio.denominator


def resample(signal: np.ndarray, fs: float, fs_target: float) -> np.ndarray:
    """Resample along the time axis with a polyphase filter.

    Parameters
    ----------
    signal : np.ndarray
        ``(n_samples,)`` or ``(n_samples, n_leads)`` at ``fs`` Hz.
    fs, fs_target : float
        Input and output rates in Hz (any rational ratio: 257 -> 125 Hz works).

    Returns
    -------
    np.ndarray
        float32, ``(round(n_samples * fs_target / fs), ...)``.
    """
    x = _check_signal(signal, fs)
    up, down = _resample_factors(float(fs), float(fs_target))
    if up == down:
        return x
    if _UpFIRDn is None:  # pragma: no cover - a SciPy without the private helper
        y = sps.resample_poly(x, up, down, axis=0, window=_resample_filter(up, down))
    else:
        y = _resample_poly(x, up, down)
    return y.astype(np.float32, copy=False)


def _resample_poly(x: np.ndarray, up: int, down: int) -> np.ndarray:
    """``resample_poly(x, up, down, axis=0, window=_resample_filter(up, down))`` for float32 ``x``
    (coprime ``up``, ``down``), with the polyphase filter prepared once per length class.

    The steps of SciPy's ``resample_poly`` with its default ``padtype="constant"``: the taps
    times ``up``, zero-padded so the output is centred, filtered by ``upfirdn``, ends trimmed.
    """
    half_len = 10 * max(up, down)  # (taps - 1) // 2 of _resample_filter
    n_in = x.shape[0]
    n_out = n_in * up
    n_out = n_out // down + bool(n_out % down)
    n_pre_pad = down - half_len % down
    n_post_pad = 0
    n_pre_remove = (half_len + n_pre_pad) // down
    while _output_len(2 * half_len + 1 + n_pre_pad + n_post_pad, n_in, up, down) < (
        n_out + n_pre_remove
    ):
        n_post_pad += 1
    y = _upfirdn_plan(up, down, n_post_pad).apply_filter(x, 0, "constant", 0)
    return y[n_pre_remove : n_pre_remove + n_out]


@lru_cache(maxsize=64)
def _upfirdn_plan(up: int, down: int, n_post_pad: int) -> Any:
    """SciPy's prepared polyphase filter for float32 signals, as ``resample_poly`` builds it."""
    h = np.array(_resample_filter(up, down))  # float32 copy
    h *= up
    half_len = (h.shape[0] - 1) // 2
    n_pre_pad = down - half_len % down
    h = np.concatenate((np.zeros(n_pre_pad, dtype=h.dtype), h, np.zeros(n_post_pad, dtype=h.dtype)))
    return _UpFIRDn(h, np.dtype(np.float32), up, down)


@lru_cache(maxsize=64)
def _resample_filter(up: int, down: int) -> np.ndarray:
    """The anti-aliasing FIR that ``resample_poly(x, up, down)`` designs by default, cached.

    Same design as SciPy's default (Kaiser window, beta 5, cut-off at the lower Nyquist rate,
    ``20 * max(up, down) + 1`` taps), so results are identical; designing it anew on every call
    was ~11% of a served request.
    """
    max_rate = max(up, down)
    taps = sps.firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))
    taps = taps.astype(np.float32)  # SciPy casts its own design to the signal's dtype (float32)
    taps.setflags(write=False)
    return taps


@lru_cache(maxsize=64)
def _butter_bandpass(order: int, low_hz: float, high_hz: float, fs: float) -> np.ndarray:
    """Second-order sections of a Butterworth band-pass, cached per design (callers must not
    modify it: SciPy's ``sosfilt`` needs a writable buffer, so it is not frozen)."""
    return sps.butter(order, [low_hz, high_hz], btype="bandpass", fs=fs, output="sos")


@lru_cache(maxsize=64)
def _bandpass_filter(order: int, low_hz: float, high_hz: float, fs: float) -> ZeroPhaseFilter:
    """:func:`_butter_bandpass`'s design with its initial conditions, cached."""
    return ZeroPhaseFilter.from_sos(_butter_bandpass(order, low_hz, high_hz, fs))


def _odd(n: float) -> int:
    k = max(1, round(n))
    return k if k % 2 == 1 else k + 1


def remove_baseline(signal: np.ndarray, fs: float, cfg: PreprocessConfig) -> np.ndarray:
    """Subtract baseline wander estimated by 200 ms then 600 ms median filters (de Chazal 2004).

    Parameters
    ----------
    signal : np.ndarray
        ``(n_samples,)`` or ``(n_samples, n_leads)`` in mV at ``fs`` Hz.
    """
    x = _check_signal(signal, fs)
    if cfg.baseline == "none":
        return x
    base = _median_filter(x, _odd(0.2 * fs))
    base = _median_filter(base, _odd(0.6 * fs))
    return (x - base).astype(np.float32, copy=False)


def _median_filter(x: np.ndarray, size: int) -> np.ndarray:
    """``ndimage.median_filter(x, size, mode="nearest")`` along axis 0 of float32 ``(n,)`` or
    ``(n, n_leads)`` ``x``; for one lead SciPy's 1-D kernel is called directly, where SciPy
    itself would call it (odd ``size`` >= 3, ``n >= (size - 1) // 2``)."""
    if (
        _rank_filter_1d is None
        or x.ndim != 1
        or x.dtype != np.float32
        or size < 3
        or x.shape[0] < (size - 1) // 2
    ):
        return ndimage.median_filter(x, size=(size, 1) if x.ndim == 2 else size, mode="nearest")
    out = np.zeros(x.shape, dtype=x.dtype)
    _rank_filter_1d(x, size // 2, size, out, _NEAREST, x.dtype.type(0.0), 0)
    return out


def bandpass(signal: np.ndarray, fs: float, cfg: PreprocessConfig) -> np.ndarray:
    """Zero-phase Butterworth band-pass ``cfg.highpass_hz``-``cfg.lowpass_hz`` (``sosfiltfilt``).

    Short signals are padded by reflection as far as they allow, so a single beat still filters.
    """
    x = _check_signal(signal, fs)
    high = min(cfg.lowpass_hz, 0.45 * fs)
    zero_phase = _bandpass_filter(cfg.filter_order, cfg.highpass_hz, high, fs)
    padlen = min(x.shape[0] - 1, 3 * (2 * len(zero_phase.sos) + 1) * 10)
    y = zero_phase(x, max(padlen, 0))
    return y.astype(np.float32, copy=False)


def notch(signal: np.ndarray, fs: float, cfg: PreprocessConfig) -> np.ndarray:
    """Remove powerline interference at ``cfg.notch_hz`` (quality factor 30), zero phase.

    A no-op when ``cfg.notch_hz`` is None or not below the Nyquist rate ``fs / 2``.
    """
    x = _check_signal(signal, fs)
    if cfg.notch_hz is None or cfg.notch_hz >= fs / 2:
        return x
    b, a = sps.iirnotch(cfg.notch_hz, Q=30.0, fs=fs)
    padlen = min(x.shape[0] - 1, 3 * max(len(a), len(b)))
    return sps.filtfilt(b, a, x, axis=0, padlen=padlen).astype(np.float32, copy=False)


def normalise(signal: np.ndarray, method: str) -> np.ndarray:
    """Per-lead normalisation over the time axis: "none" or "zscore" (epsilon-guarded)."""
    x = np.asarray(signal, dtype=np.float32)
    if method == "none":
        return x
    if method == "zscore":
        mu = x.mean(axis=0, keepdims=True)
        sd = x.std(axis=0, keepdims=True)
        return ((x - mu) / np.maximum(sd, 1e-6)).astype(np.float32, copy=False)
    raise ValueError(f"unknown normalisation {method!r}; expected 'none' or 'zscore'")


def preprocess_signal(signal: np.ndarray, fs: float, cfg: PreprocessConfig) -> np.ndarray:
    """The full chain: notch (input rate) -> resample -> baseline -> band-pass -> normalise.

    Parameters
    ----------
    signal : np.ndarray
        ``(n_samples,)`` or ``(n_samples, n_leads)`` in mV at ``fs`` Hz.
    fs : float
        Input rate in Hz (anything from ~100 to 1000 Hz).
    cfg : PreprocessConfig

    Returns
    -------
    np.ndarray
        float32 at ``cfg.fs_target`` Hz, same number of leads.
    """
    x = notch(signal, fs, cfg)
    x = resample(x, fs, cfg.fs_target)
    x = remove_baseline(x, cfg.fs_target, cfg)
    x = bandpass(x, cfg.fs_target, cfg)
    return normalise(x, cfg.normalise)


#: The R-peak detector runs at this rate whatever the input rate (models/rpeaks.py). For the former
#: XQRS detector, measured on the 46 MIT-BIH records with MLII (bench/detector.py, 150 ms
#: tolerance): XQRS at 125 Hz mistakes T waves for beats (+P 98.7 %; record 113: 82.7 %), at
#: 360 Hz it reaches Se 99.18 / +P 99.29; at 250 Hz, Se 99.47 / +P 99.47.
DETECTION_FS = 250.0


def detect_rpeaks(signal: np.ndarray, fs: float) -> np.ndarray:
    """R-peak sample indices of a single-lead ECG: :func:`models.rpeaks.detect_qrs`.

    A Pan & Tompkins (1985) detector with search-back and P/T-wave rejection by slope, run at
    :data:`DETECTION_FS` whatever the input rate; it replaced wfdb's XQRS (MIT-BIH, 150 ms
    tolerance: fewer missed wide ventricular and aberrated beats; ``python -m bench.detector``).
    Peaks are placed on the largest absolute 1-40 Hz band-passed sample within 80 ms of the QRS.

    Parameters
    ----------
    signal : np.ndarray
        ``(n_samples,)`` in mV at ``fs`` Hz (raw or filtered).
    fs : float
        Sampling rate in Hz.

    Returns
    -------
    np.ndarray
        int64 ``(n_beats,)``, sorted unique sample indices at ``fs``.
    """
    from models.rpeaks import detect_qrs  # models.rpeaks imports this module

    x = _check_signal(signal, fs)
    if x.ndim != 1:
        raise ValueError(f"detect_rpeaks takes one lead (n_samples,), got shape {x.shape}")
    return detect_qrs(x, fs)


def find_local_peaks(sig: np.ndarray, radius: int) -> np.ndarray:
    """Vectorised twin of ``wfdb.processing.find_local_peaks``, with identical output.

    A sample is a peak when it equals the maximum of ``sig[i - radius : i + radius]``; after a
    peak the next ``radius - 1`` samples are skipped, exactly as wfdb's per-sample Python loop
    does (that loop is ~70% of XQRS's time on a 10-s strip).

    Parameters
    ----------
    sig : np.ndarray
        ``(n_samples,)`` signal.
    radius : int
        Half-width of the search window, samples.

    Returns
    -------
    np.ndarray
        int64 ``(n_peaks,)`` sorted indices.
    """
    x = np.asarray(sig, dtype=np.float64)
    radius = int(radius)
    if x.size == 0 or np.min(x) == np.max(x):
        return np.empty(0, dtype=np.int64)
    if radius < 1:
        raise ValueError(f"radius must be >= 1 sample, got {radius}")
    padded = np.concatenate([np.full(radius, -np.inf), x, np.full(radius, -np.inf)])
    window_max = ndimage.maximum_filter1d(padded, size=2 * radius, origin=-1 if radius else 0)
    # maximum_filter1d with an even size and origin -1 covers padded[k - r + 1 : k + r + 1];
    # shifting by one gives padded[k : k + 2r] = sig[i - r : i + r] for i = k.
    local_max = window_max[radius - 1 : radius - 1 + x.size]
    candidates = np.flatnonzero(x == local_max)
    peaks: list[int] = []
    next_allowed = 0
    for i in candidates.tolist():
        if i >= next_allowed:
            peaks.append(i)
            next_allowed = i + radius
    return np.asarray(peaks, dtype=np.int64)


def _beat_offsets(cfg: PreprocessConfig) -> tuple[int, int]:
    return round(cfg.beat_before_s * cfg.fs_target), round(cfg.beat_after_s * cfg.fs_target)


def beat_windows(signal: np.ndarray, r_peaks: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Cut one window per R peak out of a preprocessed single-lead signal at ``cfg.fs_target``.

    Windows that run past either end are padded with the edge value, so every beat is kept.

    Parameters
    ----------
    signal : np.ndarray
        ``(n_samples,)`` at ``cfg.fs_target`` Hz, already preprocessed.
    r_peaks : np.ndarray
        ``(n_beats,)`` sample indices at ``cfg.fs_target``.

    Returns
    -------
    np.ndarray
        float32 ``(n_beats, cfg.beat_window_samples)``, normalised per ``cfg.beat_normalise``.
    """
    x = np.asarray(signal, dtype=np.float32)
    before, after = _beat_offsets(cfg)
    width = before + after
    peaks = np.asarray(r_peaks, dtype=np.int64)
    if x.ndim != 1 or x.shape[0] == 0 or peaks.ndim != 1 or width == 0:
        # the general form (and its errors)
        padded = np.pad(x, (before, after), mode="edge")
        idx = peaks[:, None] + np.arange(width)[None, :]
        w = padded[np.clip(idx, 0, padded.shape[0] - 1)]
        return normalise_beats(w, cfg.beat_normalise)
    # Edge-padded far enough that no window runs off (the same samples as clipping the indices
    # into a pad of ``before``/``after``), then one strided view, one row per peak.
    lo = int(peaks.min()) if peaks.size else 0
    hi = int(peaks.max()) if peaks.size else 0
    extra_lo = max(0, -lo)
    extra_hi = max(0, hi - (x.shape[0] - 1))
    padded = np.concatenate(
        (
            np.full(before + extra_lo, x[0], dtype=np.float32),
            x,
            np.full(after + extra_hi, x[-1], dtype=np.float32),
        )
    )
    w = padded[(peaks + extra_lo)[:, None] + np.arange(width)]
    return normalise_beats(w, cfg.beat_normalise)


def normalise_beats(waves: np.ndarray, method: str) -> np.ndarray:
    """Per-beat amplitude handling of ``(n_beats, w)`` windows: "none", "median" or "zscore".

    "median" subtracts each window's median; "zscore" also divides by its standard deviation
    (epsilon-guarded), which makes it insensitive to a prior median subtraction.
    """
    w = np.asarray(waves, dtype=np.float32)
    if method == "median":
        w = w - median_along(w, 1)[:, None] if w.ndim == 2 else w - np.median(w, 1, keepdims=True)
    elif method == "zscore":
        w = (w - w.mean(axis=1, keepdims=True)) / np.maximum(w.std(axis=1, keepdims=True), 1e-6)
    elif method != "none":
        raise ValueError(f"unknown beat normalisation {method!r}; expected none, median or zscore")
    return w.astype(np.float32, copy=False)


def rr_features(r_peaks: np.ndarray, fs: float, cfg: PreprocessConfig) -> np.ndarray:
    """RR-interval context of each beat, the features that matter most for S beats.

    ``local_rr`` is the mean of up to ``cfg.rr_local_beats`` RR intervals ending at the beat (its
    own pre-RR included): local context generalises across patients better than record-level
    averages (Lin & Yang 2014; Mondejar-Guerra et al. 2019). The first beat borrows its post-RR as
    pre-RR, the last its pre-RR as post-RR; a lone beat gets 0.8 s.

    Parameters
    ----------
    r_peaks : np.ndarray
        ``(n_beats,)`` sorted R-peak sample indices at ``fs``.
    fs : float
        Rate of the indices, Hz.

    Returns
    -------
    np.ndarray
        float32 ``(n_beats, len(cfg.rr_features))`` in the order of ``cfg.rr_features``.
    """
    r = np.asarray(r_peaks, dtype=np.float64)
    n = r.shape[0]
    if n == 0:
        return np.zeros((0, len(cfg.rr_features)), dtype=np.float32)
    if n == 1:
        pre = post = np.full(1, _FALLBACK_RR_S)
    else:
        rr = np.diff(r) / fs
        pre = np.concatenate([[rr[0]], rr])
        post = np.concatenate([rr, [rr[-1]]])
    k = max(1, cfg.rr_local_beats)
    csum = np.concatenate([[0.0], np.cumsum(pre)])
    start = np.maximum(np.arange(n) + 1 - k, 0)
    local = (csum[np.arange(n) + 1] - csum[start]) / (np.arange(n) + 1 - start)
    all_feats = {
        "pre_rr": pre,
        "post_rr": post,
        "local_rr": local,
        "pre_rr_local": pre / local,
        "post_rr_local": post / local,
    }
    return np.stack([all_feats[name] for name in cfg.rr_features], axis=1).astype(np.float32)


def beat_inputs(
    signal: np.ndarray, fs: float, r_peaks: np.ndarray, cfg: PreprocessConfig
) -> np.ndarray:
    """Model input for every beat of a raw single-lead ECG: the one function both sides call.

    Parameters
    ----------
    signal : np.ndarray
        Raw ``(n_samples,)`` ECG in mV at ``fs`` Hz.
    fs : float
        Input rate in Hz.
    r_peaks : np.ndarray
        ``(n_beats,)`` R-peak sample indices at ``fs`` (annotated or detected).
    cfg : PreprocessConfig

    Returns
    -------
    np.ndarray
        float32 ``(n_beats, cfg.beat_window_samples, 1 + len(cfg.rr_features))``: channel 0 is the
        beat waveform at ``cfg.fs_target``; the other channels hold the beat's RR features,
        repeated along time (the model reads them once, from the first step).
    """
    x = preprocess_signal(signal, fs, cfg)
    if x.ndim != 1:
        raise ValueError(f"beat_inputs takes one lead (n_samples,), got shape {x.shape}")
    peaks = np.asarray(r_peaks, dtype=np.int64)
    peaks_target = np.round(peaks * (cfg.fs_target / fs)).astype(np.int64)
    waves = beat_windows(x, peaks_target, cfg)
    rr = rr_features(peaks, fs, cfg)
    return assemble_beat_inputs(waves, rr)


def assemble_beat_inputs(waves: np.ndarray, rr: np.ndarray) -> np.ndarray:
    """Stack ``(n, w)`` waveforms and ``(n, f)`` RR features into ``(n, w, 1 + f)`` model input."""
    n, w = waves.shape
    rr_rep = np.broadcast_to(rr[:, None, :], (n, w, rr.shape[1]))
    return np.concatenate([waves[:, :, None], rr_rep], axis=2).astype(np.float32, copy=False)
