"""R-peak (QRS) detection: a Pan-Tompkins detector with search-back and P/T-wave rejection.

The detector the service, the beat datasets and the benchmarks share
(:func:`models.preprocessing.detect_rpeaks` calls :func:`detect_qrs`). Steps, all at
:data:`DETECTION_FS` whatever the input rate (100-1000 Hz):

1. band-pass 5-15 Hz (Butterworth, zero phase), derivative, squaring and a 150-ms centred moving
   window integration (MWI), as Pan & Tompkins (1985);
2. candidates: MWI peaks at least the refractory period (200 ms) apart;
3. adaptive threshold ``NPK + 0.25 (SPK - NPK)`` over running signal (SPK) and noise (NPK) peak
   levels, initialised from the first 8 s;
4. search-back (Pan & Tompkins): when no beat follows the last one within 1.66 times the mean of
   the last 8 RR intervals, the largest candidate in the gap above half the threshold is taken;
5. slope test within 360 ms of the last beat (Pan & Tompkins' T-wave test), applied both ways:
   a candidate whose steepest slope is under ``slope_ratio`` of the last beat's is a T wave;
   a beat whose steepest slope is under ``slope_ratio`` of the next candidate's was a P wave or
   artefact and is replaced by it;
6. each beat is placed at the largest absolute sample of the 1-40 Hz band-passed signal within
   80 ms of the MWI peak (the R or QS apex), then mapped back to the input rate.

Every choice (the steps and the numbers in :class:`QRSDetectorConfig`) was made on MIT-BIH DS1
and on the MIT-BIH Supraventricular Arrhythmia Database (svdb), never on DS2; `bench/detector.py`
reports DS1, DS2 and all 48 records separately.

References
----------
Pan J, Tompkins WJ. A real-time QRS detection algorithm. IEEE Trans Biomed Eng 32(3):230-236
(1985).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage
from scipy import signal as sps

from models.preprocessing import DETECTION_FS, resample
from models.signal_ops import ZeroPhaseFilter, derivative, median_along

__all__ = ["QRSDetectorConfig", "detect_qrs", "detect_xqrs"]


@dataclass(frozen=True)
class QRSDetectorConfig:
    """Numbers of :func:`detect_qrs` (times in seconds, frequencies in Hz).

    Attributes
    ----------
    band_hz : tuple of float
        Pass band of the detection filter (Pan & Tompkins: 5-15 Hz).
    mwi_s : float
        Moving-window integration length.
    refractory_s : float
        Minimum distance between two beats.
    twave_s : float
        Within this time of the last beat a candidate faces the slope test.
    slope_ratio : float
        Slope test ratio (Pan & Tompkins: 0.5; 0.6 chosen on DS1 + svdb).
    threshold_fraction : float
        Threshold position between the noise and signal peak levels.
    searchback_rr : float
        Search back when no beat came for this many mean RR intervals.
    searchback_fraction : float
        Threshold factor during search-back.
    init_s : float
        Length of the start used to initialise the peak levels.
    locate_band_hz : tuple of float
        Band of the signal the R apex is located on.
    locate_s : float
        Half-width of the window searched for the R apex around the MWI peak.
    """

    band_hz: tuple[float, float] = (5.0, 15.0)
    mwi_s: float = 0.15
    refractory_s: float = 0.2
    twave_s: float = 0.36
    slope_ratio: float = 0.6
    threshold_fraction: float = 0.25
    searchback_rr: float = 1.66
    searchback_fraction: float = 0.5
    init_s: float = 8.0
    locate_band_hz: tuple[float, float] = (1.0, 40.0)
    locate_s: float = 0.08


@lru_cache(maxsize=16)
def _bandpass(low_hz: float, high_hz: float, fs: float) -> ZeroPhaseFilter:
    """Second-order Butterworth band-pass, cached per design with its initial conditions."""
    sos = sps.butter(2, [low_hz, high_hz], btype="bandpass", fs=fs, output="sos")
    return ZeroPhaseFilter.from_sos(sos)


def _filtfilt(x: np.ndarray, band: tuple[float, float], fs: float) -> np.ndarray:
    """``sosfiltfilt`` of float64 ``x`` with a 60-sample odd pad (at most ``len(x) - 1``)."""
    return _bandpass(band[0], min(band[1], 0.45 * fs), fs)(x, padlen=min(x.shape[0] - 1, 60))


def _around(peaks: np.ndarray, half: int, n: int) -> np.ndarray:
    """int ``(n_peaks, 2 * half + 1)`` sample indices within ``half`` of each of the
    (non-empty) ``peaks``, clipped to ``[0, n - 1]``."""
    idx = peaks[:, None] + np.arange(-half, half + 1)[None, :]
    if np.minimum.reduce(peaks) - half < 0 or np.maximum.reduce(peaks) + half >= n:
        idx = np.minimum(np.maximum(idx, 0), n - 1)  # np.clip without its dispatch
    return idx


def _select_beats(
    times: list[int], amps: list[float], slopes: list[float], spk: float, npk: float,
    rr_init: float, fs: float, cfg: QRSDetectorConfig,
) -> list[int]:  # fmt: skip
    """The threshold, search-back and slope logic over the candidates (indices into them).

    Running levels (Pan & Tompkins): signal peak level ``spk`` and noise peak level ``npk``
    (starting values given), threshold ``npk + threshold_fraction * (spk - npk)``; a noise peak
    updates ``npk = 0.875 npk + 0.125 a``, a beat ``spk = 0.875 spk + 0.125 a`` (0.75 / 0.25
    when found by search-back) and appends its RR interval (samples) to the history whose last
    8 give the mean RR (``rr_init`` before the first); a P wave dropped in favour of the next
    candidate also drops its RR interval, the mean staying as it was. Plain local variables
    (this loop runs once per candidate, hundreds of times for a long strip).
    """
    refractory = cfg.refractory_s * fs
    twave = cfg.twave_s * fs
    fraction = cfg.threshold_fraction
    searchback_rr = cfg.searchback_rr
    searchback_fraction = cfg.searchback_fraction
    slope_ratio = cfg.slope_ratio
    rr: list[int] = []
    rr_mean = rr_init
    beats: list[int] = []
    last_t = -np.inf  # time of the last beat
    last_checked = -1
    for j, (t, a) in enumerate(zip(times, amps, strict=True)):
        if beats and t - last_t > searchback_rr * rr_mean:
            floor = searchback_fraction * (npk + fraction * (spk - npk))
            best, best_amp = -1, floor
            last_slope = slopes[beats[-1]]
            for q in range(last_checked + 1, j):
                tq = times[q]
                if tq - last_t <= refractory or t - tq <= refractory:
                    continue
                if tq - last_t < twave and slopes[q] < slope_ratio * last_slope:
                    continue
                if amps[q] > best_amp:
                    best, best_amp = q, amps[q]
            if best >= 0:  # accepted by search-back
                rr.append(times[best] - times[beats[-1]])
                recent = rr[-8:]
                rr_mean = sum(recent) / len(recent)
                beats.append(best)
                spk = (1.0 - 0.25) * spk + 0.25 * amps[best]
                last_t = times[best]
                last_checked = best
        if a <= npk + fraction * (spk - npk) or t - last_t <= refractory:
            npk = 0.875 * npk + 0.125 * a
            continue
        if beats and t - last_t < twave:
            if slopes[j] < slope_ratio * slopes[beats[-1]]:  # a T wave
                npk = 0.875 * npk + 0.125 * a
                continue
            if slopes[beats[-1]] < slope_ratio * slopes[j]:  # the last "beat" was a P wave
                beats.pop()
                if rr:
                    rr.pop()
                last_t = times[beats[-1]] if beats else -np.inf
        if beats:
            rr.append(t - times[beats[-1]])
            recent = rr[-8:]
            rr_mean = sum(recent) / len(recent)
        beats.append(j)
        spk = (1.0 - 0.125) * spk + 0.125 * a
        last_t = t
        last_checked = j
    return beats


def detect_qrs(signal: np.ndarray, fs: float, cfg: QRSDetectorConfig | None = None) -> np.ndarray:
    """R-peak sample indices of a single-lead ECG (see the module docstring for the method).

    Parameters
    ----------
    signal : np.ndarray
        float ``(n_samples,)`` in mV at ``fs`` Hz (raw or filtered), finite values.
    fs : float
        Sampling rate in Hz (tested from 100 to 1000 Hz).
    cfg : QRSDetectorConfig, optional
        Detector numbers; the defaults are those chosen on MIT-BIH DS1 + svdb.

    Returns
    -------
    np.ndarray
        int64 ``(n_beats,)``, sorted unique sample indices at ``fs``.
    """
    cfg = cfg or QRSDetectorConfig()
    x = np.asarray(signal, dtype=np.float32)
    if x.shape[0] < int(0.5 * fs) or float(np.ptp(x)) == 0.0:
        return np.zeros(0, dtype=np.int64)
    fsd = DETECTION_FS
    xd = resample(x, fs, fsd).astype(np.float64)
    n = xd.shape[0]
    slope = derivative(_filtfilt(xd, cfg.band_hz, fsd))
    mwi = ndimage.uniform_filter1d(
        slope * slope, size=max(1, round(cfg.mwi_s * fsd)), mode="nearest"
    )
    cand, _ = sps.find_peaks(mwi, distance=max(1, round(cfg.refractory_s * fsd)))
    if cand.size == 0:
        return np.zeros(0, dtype=np.int64)
    half = round(0.075 * fsd)  # the QRS's steepest slope lies within 75 ms of its MWI peak
    steepest = np.maximum.reduce(np.abs(slope[_around(cand, half, n)]), axis=1)

    start = mwi[: max(1, int(min(n, cfg.init_s * fsd)))]
    block = max(1, int(2.0 * fsd))
    maxima = np.maximum.reduceat(start, np.arange(0, start.shape[0], block))  # per 2-s block
    spk, npk = 0.5 * float(median_along(maxima, 0)), 0.5 * float(median_along(start, 0))
    chosen = _select_beats(
        cand.tolist(), mwi[cand].tolist(), steepest.tolist(), spk, npk, 0.8 * fsd, fsd, cfg
    )
    if not chosen:
        return np.zeros(0, dtype=np.int64)
    peaks = cand[np.asarray(chosen, dtype=np.int64)]

    located = np.abs(_filtfilt(xd, cfg.locate_band_hz, fsd))
    idx = _around(peaks, round(cfg.locate_s * fsd), n)
    apex = idx[np.arange(peaks.shape[0]), np.argmax(located[idx], axis=1)]
    out = np.round(apex * (fs / fsd)).astype(np.int64)
    return np.unique(np.clip(out, 0, x.shape[0] - 1))


def detect_xqrs(signal: np.ndarray, fs: float, rate: float = DETECTION_FS) -> np.ndarray:
    """wfdb's XQRS at ``rate`` Hz, the detector :func:`detect_qrs` replaced (for comparison).

    Parameters
    ----------
    signal : np.ndarray
        float ``(n_samples,)`` in mV at ``fs`` Hz.
    fs, rate : float
        Input rate and the rate XQRS runs at, Hz.

    Returns
    -------
    np.ndarray
        int64 ``(n_beats,)``, sorted unique sample indices at ``fs``.
    """
    from wfdb import processing  # local import: wfdb is heavy and only needed here
    from wfdb.processing import qrs

    from models.preprocessing import find_local_peaks

    x = np.asarray(signal, dtype=np.float32)
    if x.shape[0] < int(0.5 * fs) or float(np.ptp(x)) == 0.0:
        return np.zeros(0, dtype=np.int64)
    qrs.find_local_peaks = find_local_peaks  # same output as wfdb's loop, ~4x faster
    xqrs = processing.XQRS(sig=resample(x, fs, rate).astype(np.float64), fs=rate)
    xqrs.detect(verbose=False)
    found = np.asarray(xqrs.qrs_inds, dtype=np.int64)
    peaks = np.round(found * (fs / rate)).astype(np.int64)
    return np.unique(np.clip(peaks, 0, x.shape[0] - 1))
