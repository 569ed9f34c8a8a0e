"""Each beat read against its own patient: rhythm and morphology relative to the strip itself.

Everything here is computable at serve time from one strip alone, given ``(signal, fs, r_peaks)``.
What generalises across patients in the inter-patient literature is *relative* information: S beats
are premature relative to the patient's own rhythm, V beats differ from the patient's own dominant
beat (de Chazal et al. 2004; Lin & Yang 2014; Mondejar-Guerra et al. 2019; Farag 2023). Absolute
waveform samples overfit the few training patients (measured here: see the design notes).

Per beat this module computes

* **RR relative to the local rhythm.** ``pre_rr`` and ``post_rr`` (seconds) divided by the mean of
  the ``rr_short_beats`` (10) and ``rr_long_beats`` (50) RR intervals that precede the beat's own
  pre-RR interval, plus the ratio of the two means (rhythm drifting). Logarithms of the ratios are
  returned, so that 0 means "as usual".
* **The beat against the strip's dominant beat.** The template is the sample-wise median of the
  ``template_beats`` (30) beat windows before the beat. Correlation (best over a +-40 ms shift, so
  a detector's fiducial jitter does not count as a morphology change), mean absolute difference and
  QRS-region absolute difference (both divided by the template's peak-to-peak amplitude) and the
  log ratio of the beat's peak-to-peak amplitude to the template's.
* **The normalised waveform**: the beat window and its difference from the template, both divided
  by the template's peak-to-peak amplitude (so the lead and the gain do not matter).

How a strip starts (and how 10-s strips of 8-15 beats work)
-----------------------------------------------------------
Nothing before the strip is known. A beat whose history is shorter than a window uses the *first*
``k`` items of the strip instead (``k`` = the window length, or all of them when the strip has
fewer): the first 30 beats of a strip share the median of its first 30 beats as their template,
and the first 10 (50) beats' RR reference is the mean of the strip's first 10 (50) RR intervals.
For a 10-s strip this means: the template is the median beat of the whole strip and both RR
references are the strip's mean RR. The median tolerates up to half the beats being ectopic; in
ventricular bigeminy or worse the template may be an ectopic beat (a known limit). The first beat
has no known pre-RR and the last no known post-RR: their ratio is set to 1 (log 0) and the flags
``has_pre`` / ``has_post`` say so.

References
----------
de Chazal P, O'Dwyer M, Reilly RB. IEEE Trans Biomed Eng 51(7):1196-1206 (2004).
Lin CC, Yang CM. J Med Biol Eng 34(1):9-16 (2014).
Mondejar-Guerra V et al. Biomed Signal Process Control 47:41-48 (2019).
Farag MM. A tiny matched filter-based CNN for inter-patient ECG classification and arrhythmia
detection at the edge. Sensors 23(3):1365 (2023).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.preprocessing import PreprocessConfig, beat_windows, preprocess_signal
from models.signal_ops import median_along

__all__ = [
    "CONTEXT_FEATURE_NAMES",
    "RELATIVE_FEATURE_NAMES",
    "BeatContext",
    "BeatContextConfig",
    "beat_context",
    "context_from_windows",
    "rr_context",
    "running_templates",
]

#: RR features in the order :func:`rr_context` returns them.
RR_CONTEXT_NAMES: tuple[str, ...] = (
    "pre_rr_s",  # seconds since the previous beat (the reference mean when unknown)
    "post_rr_s",  # seconds to the next beat (the reference mean when unknown)
    "log_pre_short",  # log(pre_rr / mean of the previous 10 RR)
    "log_post_short",  # log(post_rr / mean of the previous 10 RR)
    "log_pre_long",  # log(pre_rr / mean of the previous 50 RR)
    "log_post_long",  # log(post_rr / mean of the previous 50 RR)
    "log_short_long",  # log(10-RR mean / 50-RR mean): is the rhythm speeding up or slowing down
    "has_pre",  # 1 when the beat has a previous beat in the strip
    "has_post",  # 1 when the beat has a next beat in the strip
)

#: Morphology features, in the order :func:`context_from_windows` appends them.
MORPH_CONTEXT_NAMES: tuple[str, ...] = (
    "template_corr",  # best Pearson correlation with the template over +-max_shift_s
    "template_mad",  # mean |beat - template| / template peak-to-peak
    "template_qrs_diff",  # the same over the QRS region only
    "log_amp_ratio",  # log(beat peak-to-peak / template peak-to-peak)
)

#: Every per-beat feature of :class:`BeatContext`, in column order.
CONTEXT_FEATURE_NAMES: tuple[str, ...] = RR_CONTEXT_NAMES + MORPH_CONTEXT_NAMES

#: The patient-relative features (everything but the absolute RR intervals).
RELATIVE_FEATURE_NAMES: tuple[str, ...] = tuple(
    n for n in CONTEXT_FEATURE_NAMES if n not in ("pre_rr_s", "post_rr_s")
)

_MIN_SCALE_MV = 0.05  # template peak-to-peak floor, mV: flat templates do not blow features up
_LOG_CLIP = 3.0  # |log ratio| cap: e^3 = 20x


@dataclass(frozen=True)
class BeatContextConfig:
    """How each beat is set against its strip; logged with the model.

    Attributes
    ----------
    rr_short_beats, rr_long_beats : int
        RR intervals averaged for the short and the longer rhythm reference.
    template_beats : int
        Beat windows whose sample-wise median is the template.
    qrs_before_s, qrs_after_s : float
        QRS region around the R peak, seconds, for ``template_qrs_diff``.
    max_shift_s : float
        Largest shift, seconds, tried when correlating a beat with the template.
    """

    rr_short_beats: int = 10
    rr_long_beats: int = 50
    template_beats: int = 30
    qrs_before_s: float = 0.06
    qrs_after_s: float = 0.08
    max_shift_s: float = 0.04

    def __post_init__(self) -> None:
        for name in ("rr_short_beats", "rr_long_beats", "template_beats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.qrs_before_s < 0 or self.qrs_after_s <= 0 or self.max_shift_s < 0:
            raise ValueError("qrs_before_s, max_shift_s must be >= 0 and qrs_after_s > 0 seconds")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BeatContextConfig:
        """Rebuild from :meth:`to_dict` output, ignoring unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class BeatContext:
    """Model inputs for the beats of one strip.

    Attributes
    ----------
    waves : np.ndarray
        float32 ``(n_beats, 2, w)`` at ``fs_target``: channel 0 the beat window, channel 1 the
        beat minus its template, both divided by the template's peak-to-peak amplitude.
    features : np.ndarray
        float32 ``(n_beats, len(CONTEXT_FEATURE_NAMES))``, columns named by :attr:`feature_names`.
    templates : np.ndarray
        float32 ``(n_beats, w)`` in mV: each beat's template (before normalisation).
    feature_names : tuple of str
    """

    waves: np.ndarray
    features: np.ndarray
    templates: np.ndarray
    feature_names: tuple[str, ...] = CONTEXT_FEATURE_NAMES

    @property
    def n_beats(self) -> int:
        return int(self.features.shape[0])

    def select(self, names: tuple[str, ...] | list[str]) -> np.ndarray:
        """The named feature columns, float32 ``(n_beats, len(names))``."""
        idx = [self.feature_names.index(n) for n in names]
        return self.features[:, idx]


def _history_means(csum: np.ndarray, k: int, offset: int, n_out: int) -> np.ndarray:
    """Mean of the ``k`` values before ``i + offset`` for each position, strip-start filled.

    ``csum`` is ``[0, cumsum(values)]``, float64 ``(n_values + 1,)``.
    """
    n = csum.shape[0] - 1
    end = np.arange(offset, n_out + offset)
    start = end - k
    short = start < 0  # not enough history: the strip's first min(k, n) values instead
    start[short] = 0
    end[short] = min(k, n)
    return (csum[end] - csum[start]) / np.maximum(end - start, 1)


def rr_context(r_peaks: np.ndarray, fs: float, cfg: BeatContextConfig) -> np.ndarray:
    """RR features of each beat relative to the strip's own rhythm.

    Parameters
    ----------
    r_peaks : np.ndarray
        ``(n_beats,)`` sorted R-peak sample indices at ``fs`` (every QRS complex of the strip,
        whatever its class: the rhythm includes ectopic beats).
    fs : float
        Rate of the indices, Hz.
    cfg : BeatContextConfig

    Returns
    -------
    np.ndarray
        float32 ``(n_beats, len(RR_CONTEXT_NAMES))`` in the order of ``RR_CONTEXT_NAMES``.

    Notes
    -----
    The reference means average the RR intervals *before* the beat's own pre-RR interval (RR
    interval ``j`` runs from beat ``j`` to ``j + 1``; beat ``i``'s pre-RR is interval ``i - 1``), so
    a premature beat does not pull its own reference. With fewer than ``k`` earlier intervals the
    strip's first ``min(k, n_intervals)`` intervals are the reference (see the module notes).
    A strip with a single beat gets ratios of 1 and ``pre_rr_s = post_rr_s = 0.8`` s.
    """
    r = np.asarray(r_peaks, dtype=np.float64)
    if r.ndim != 1:
        raise ValueError(f"r_peaks must be (n_beats,), got shape {r.shape}")
    if not fs > 0:
        raise ValueError(f"sampling frequency must be > 0 Hz, got {fs}")
    n = r.shape[0]
    out = np.zeros((n, len(RR_CONTEXT_NAMES)), dtype=np.float32)
    if n == 0:
        return out
    d = np.diff(r)
    if n > 1 and np.any(d <= 0):
        raise ValueError("r_peaks must be strictly increasing sample indices")
    if n == 1:
        out[0, :2] = 0.8
        return out
    rr = d / fs  # (n - 1,) seconds
    csum = np.empty(n)
    csum[0] = 0.0
    np.cumsum(rr, out=csum[1:])
    # Beat i's pre-RR is interval i - 1: its history is intervals [i - 1 - k, i - 1).
    short = _history_means(csum, cfg.rr_short_beats, -1, n)
    long = _history_means(csum, cfg.rr_long_beats, -1, n)
    # Numerators and denominators of the five log ratios, one row each, float64 (n,).
    num = np.empty((5, n))
    den = np.empty((5, n))
    pre, post = num[0], num[1]
    pre[0], pre[1:] = short[0], rr  # the first beat's pre-RR is unknown: the reference
    post[-1], post[:-1] = short[-1], rr  # the last beat's post-RR likewise
    num[2], num[3], num[4] = pre, post, short
    den[0], den[1], den[2:] = short, short, long
    np.maximum(num, 1e-3, out=num)
    np.maximum(den, 1e-3, out=den)
    ratio = np.log(num / den)
    np.clip(ratio, -_LOG_CLIP, _LOG_CLIP, out=ratio)
    # Columns: pre, post, the logs (pre/short, post/short, pre/long, post/long, short/long),
    # has_pre, has_post. num[0] and num[1] were floored at 1e-3 in place: take pre/post again.
    out[1:, 0] = rr
    out[0, 0] = short[0]
    out[:-1, 1] = rr
    out[-1, 1] = short[-1]
    out[:, 2:7] = ratio.T
    out[1:, 7] = 1.0
    out[:-1, 8] = 1.0
    return out


def running_templates(waves: np.ndarray, k: int) -> np.ndarray:
    """Each beat's template: the sample-wise median of the ``k`` beat windows before it.

    Parameters
    ----------
    waves : np.ndarray
        ``(n_beats, w)`` beat windows in mV.
    k : int
        History length in beats. Beats with fewer than ``k`` predecessors share the median of the
        strip's first ``min(k, n_beats)`` windows (the whole strip's median for short strips).

    Returns
    -------
    np.ndarray
        float32 ``(n_beats, w)``.
    """
    w = np.asarray(waves, dtype=np.float32)
    n = w.shape[0]
    out = np.empty_like(w)
    if n == 0:
        return out
    head = min(k, n)
    out[:head] = median_along(w[:head], 0)
    if n > k:
        # windows[j] = median of w[j : j + k] is the template of beat j + k.
        view = np.lib.stride_tricks.sliding_window_view(w[: n - 1], k, axis=0)  # (n-k, w, k)
        out[k:] = median_along(view, 2)
    return out


def _shift_best(
    beats: np.ndarray, templates: np.ndarray, max_shift: int
) -> tuple[np.ndarray, np.ndarray]:
    """Best correlation over shifts of ``+-max_shift`` samples, and that shift per beat."""
    n, w = beats.shape
    m = max_shift
    core_t = templates[:, m : w - m] if m else templates
    tc = core_t - core_t.mean(axis=1, keepdims=True)
    tn = np.sqrt((tc**2).sum(axis=1))
    # Every shift at once: segs[i, j] = beats[i, j : j + w - 2m] is shift j - m. A contiguous copy,
    # so each sum below runs along contiguous memory, as the per-shift sums did (same rounding).
    if m:
        s0, s1 = beats.strides
        segs = np.lib.stride_tricks.as_strided(beats, (n, 2 * m + 1, w - 2 * m), (s0, s1, s1))
        segs = segs.copy()  # C order (do not index a view: its copy's memory order differs)
    else:
        segs = beats[:, None, :]
    bc = segs - segs.mean(axis=2, keepdims=True)  # (n, 2m + 1, w - 2m)
    bn = np.sqrt((bc**2).sum(axis=2))
    corr = (bc * tc[:, None, :]).sum(axis=2) / np.maximum(bn * tn[:, None], 1e-9)  # (n, 2m + 1)
    # The first shift with the largest correlation, if above -1 (NaN never wins), as a running
    # "strictly better" scan from -1 would pick.
    corr = np.where(np.isnan(corr), -np.inf, corr)
    k = np.argmax(corr, axis=1)
    top = corr[np.arange(n), k].astype(np.float64)
    better = top > -1.0
    best = np.where(better, top, -1.0)
    best_shift = np.where(better, k - m, 0).astype(np.int64)
    return best, best_shift


def context_from_windows(
    waves: np.ndarray,
    r_peaks: np.ndarray,
    fs: float,
    fs_target: float,
    r_index: int,
    cfg: BeatContextConfig,
) -> BeatContext:
    """Beat context from already cut beat windows (the dataset builder's entry point).

    Parameters
    ----------
    waves : np.ndarray
        ``(n_beats, w)`` preprocessed beat windows in mV at ``fs_target``, R peak at sample
        ``round(beat_before_s * fs_target)`` (as :func:`models.preprocessing.beat_windows` cuts).
    r_peaks : np.ndarray
        ``(n_beats,)`` R-peak sample indices at ``fs`` of the same beats, sorted.
    fs : float
        Rate of ``r_peaks``, Hz.
    fs_target : float
        Rate of ``waves``, Hz.
    r_index : int
        Sample of the R peak inside each window (``round(beat_before_s * fs_target)``).
    cfg : BeatContextConfig

    Returns
    -------
    BeatContext
    """
    w = np.asarray(waves, dtype=np.float32)
    if w.ndim != 2 or w.shape[0] != np.asarray(r_peaks).shape[0]:
        raise ValueError(
            f"waves must be (n_beats, w) with one row per R peak; got {w.shape} for "
            f"{np.asarray(r_peaks).shape[0]} peaks"
        )
    rr = rr_context(r_peaks, fs, cfg)
    n, width = w.shape
    n_rr = rr.shape[1]
    feats = np.empty((n, n_rr + len(MORPH_CONTEXT_NAMES)), dtype=np.float32)
    feats[:, :n_rr] = rr
    templates = running_templates(w, cfg.template_beats)
    waves_out = np.empty((n, 2, width), dtype=np.float32)
    if n == 0:
        return BeatContext(waves=waves_out, features=feats, templates=templates)
    # peak-to-peak amplitudes as np.ptp computes them (max - min)
    scale = np.maximum(templates.max(axis=1) - templates.min(axis=1), _MIN_SCALE_MV)  # (n,) mV
    max_shift = min(round(cfg.max_shift_s * fs_target), max(0, (width - 2) // 4))
    corr, _ = _shift_best(w, templates, max_shift)
    diff = np.subtract(w, templates, out=waves_out[:, 1])
    adiff = np.abs(diff)
    r_pos = int(r_index)
    q0 = max(0, r_pos - round(cfg.qrs_before_s * fs_target))
    q1 = min(width, r_pos + round(cfg.qrs_after_s * fs_target) + 1)
    feats[:, n_rr] = corr
    feats[:, n_rr + 1] = adiff.mean(axis=1) / scale
    feats[:, n_rr + 2] = adiff[:, q0:q1].mean(axis=1) / scale
    amp = np.log(np.maximum(w.max(axis=1) - w.min(axis=1), 1e-3) / scale)
    feats[:, n_rr + 3] = np.clip(amp, -_LOG_CLIP, _LOG_CLIP)
    inv = scale[:, None]
    np.divide(w, inv, out=waves_out[:, 0])
    np.divide(diff, inv, out=diff)
    return BeatContext(waves=waves_out, features=feats, templates=templates)


def beat_context(
    signal: np.ndarray,
    fs: float,
    r_peaks: np.ndarray,
    pre_cfg: PreprocessConfig,
    cfg: BeatContextConfig,
) -> BeatContext:
    """Beat context of a raw single-lead strip: what the service computes for every request.

    Parameters
    ----------
    signal : np.ndarray
        Raw ``(n_samples,)`` ECG in mV at ``fs`` Hz (any lead; the inputs are relative).
    fs : float
        Input rate in Hz.
    r_peaks : np.ndarray
        ``(n_beats,)`` sorted R-peak sample indices at ``fs`` (annotated or detected).
    pre_cfg : PreprocessConfig
        The one preprocessing chain (filters, rate, beat window); ``beat_normalise`` is applied
        to the windows before the template is formed ("median" is the default).
    cfg : BeatContextConfig

    Returns
    -------
    BeatContext
    """
    x = preprocess_signal(signal, fs, pre_cfg)
    if x.ndim != 1:
        raise ValueError(f"beat_context takes one lead (n_samples,), got shape {x.shape}")
    peaks = np.asarray(r_peaks, dtype=np.int64)
    if peaks.ndim != 1:
        raise ValueError(f"r_peaks must be (n_beats,), got shape {peaks.shape}")
    if peaks.size and (peaks.min() < 0 or peaks.max() >= np.asarray(signal).shape[0]):
        raise ValueError(
            f"r_peaks must lie in [0, {np.asarray(signal).shape[0]}) samples; "
            f"got {peaks.min()}..{peaks.max()}"
        )
    peaks_target = np.round(peaks * (pre_cfg.fs_target / fs)).astype(np.int64)
    waves = beat_windows(x, peaks_target, pre_cfg)
    r_index = round(pre_cfg.beat_before_s * pre_cfg.fs_target)
    return context_from_windows(waves, peaks, fs, pre_cfg.fs_target, r_index, cfg)
