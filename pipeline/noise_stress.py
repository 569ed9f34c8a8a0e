"""Noise stress test records: nstdb noise added to a clean ECG at a given SNR, as ``nst`` does.

PhysioNet's ``nst`` (WFDB Applications Guide; Moody, Muldrow & Mark 1984) defines the SNR of a
noise stress test record on the QRS amplitude rather than on mean signal power:

- **signal** ``S``: the peak-to-peak amplitude of each of the first 300 normal QRS complexes is
  measured within 50 ms before to 50 ms after its reference annotation (``sigamp``); the largest
  and smallest 5% are discarded, the mean of the rest is the QRS amplitude ``A``, and
  ``S = A**2 / 8`` (the power of a sinusoid of peak-to-peak amplitude ``A``);
- **noise** ``N``: the first 300 s of the noise record are cut into 1-s chunks; in each, the RMS
  difference between the noise and the chunk's mean is measured; the largest and smallest 5% are
  discarded and ``N`` is the square of the mean of the rest;
- the noise gain ``a`` solves ``SNR = 10 log10(S / (N a**2))``.

``nst``'s standard protocol leaves the first five minutes clean (a "learning period"), then
alternates two minutes of noise with two minutes without, until the end of the clean record; the
offset ``b`` is recomputed at every gain change so that the output has no step. The noise record
is resampled when its rate differs from the clean record's by 10% or more and is rewound when it
is shorter than the clean record. Signal ``i`` of the clean record is paired with noise signal
``i % n_noise_signals``.

References
----------
Moody GB, Muldrow WK, Mark RG. A noise stress test for arrhythmia detectors. Computers in Cardiology
11:381-384 (1984). ``nst(1)`` and ``sigamp(1)``, WFDB Applications Guide (PhysioNet).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.preprocessing import resample
from pipeline.errors import UserError
from pipeline.records import read_record

__all__ = [
    "NOISE_TYPES",
    "STANDARD_SNRS_DB",
    "NoisyRecord",
    "add_noise",
    "noise_gain",
    "noise_power",
    "qrs_power",
    "read_noise",
    "standard_protocol",
]

logger = logging.getLogger(__name__)

#: nstdb's noise recordings: baseline wander, electrode motion, muscle artifact.
NOISE_TYPES: tuple[str, ...] = ("bw", "em", "ma")
#: The SNRs of the EC57 noise stress test (and of nstdb's 118e24 ... 118e_6), dB.
STANDARD_SNRS_DB: tuple[float, ...] = (24.0, 18.0, 12.0, 6.0, 0.0, -6.0)

_LEARNING_S = 300.0
_PERIOD_S = 120.0


def _trimmed_mean(values: np.ndarray, share: float = 0.05) -> float:
    """Mean after discarding the largest and smallest ``share`` of the values (sigamp's rule)."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    k = int(share * v.size)
    kept = v[k : v.size - k] if v.size - 2 * k > 0 else v
    return float(np.mean(kept))


def qrs_power(signal: np.ndarray, fs: float, normal_peaks: np.ndarray, n_beats: int = 300) -> float:
    """``nst``'s signal power ``S = A**2 / 8`` from the QRS peak-to-peak amplitude ``A``.

    Parameters
    ----------
    signal : np.ndarray
        ``(n_samples,)`` clean ECG in mV at ``fs`` Hz.
    fs : float
        Sampling rate, Hz.
    normal_peaks : np.ndarray
        Sample indices of the reference annotations of normal beats (the first ``n_beats`` are
        used).
    n_beats : int
        How many normal beats ``sigamp`` measures (300).

    Returns
    -------
    float
        ``S`` in mV^2.
    """
    x = np.asarray(signal, dtype=np.float64)
    peaks = np.asarray(normal_peaks, dtype=np.int64)[:n_beats]
    half = round(0.05 * fs)
    peaks = peaks[(peaks - half >= 0) & (peaks + half < x.shape[0])]
    if peaks.size == 0:
        raise UserError("no normal beats to measure the QRS amplitude on")
    idx = peaks[:, None] + np.arange(-half, half + 1)[None, :]
    amplitude = _trimmed_mean(np.ptp(x[idx], axis=1))
    return amplitude**2 / 8.0


def noise_power(noise: np.ndarray, fs: float, seconds: float = 300.0) -> float:
    """``nst``'s noise power ``N``: trimmed mean RMS deviation of 1-s chunks, squared.

    Parameters
    ----------
    noise : np.ndarray
        ``(n_samples,)`` one noise signal in mV at ``fs`` Hz.
    fs : float
        Sampling rate, Hz.
    seconds : float
        How much of the start of the noise is measured (300 s).

    Returns
    -------
    float
        ``N`` in mV^2.
    """
    x = np.asarray(noise, dtype=np.float64)
    chunk = max(1, round(fs))
    n_chunks = min(int(seconds), x.shape[0] // chunk)
    if n_chunks == 0:
        raise UserError("the noise signal is shorter than one second")
    chunks = x[: n_chunks * chunk].reshape(n_chunks, chunk)
    rms = np.sqrt(np.mean((chunks - chunks.mean(axis=1, keepdims=True)) ** 2, axis=1))
    return _trimmed_mean(rms) ** 2


def noise_gain(signal_power: float, noise_pow: float, snr_db: float) -> float:
    """The gain ``a`` with ``snr_db = 10 log10(S / (N a**2))``."""
    if noise_pow <= 0:
        raise UserError("the noise signal has no power")
    return float(np.sqrt(signal_power / (noise_pow * 10.0 ** (snr_db / 10.0))))


def standard_protocol(n_samples: int, fs: float) -> np.ndarray:
    """``nst``'s standard protocol: bool ``(n_samples,)``, True where noise is added.

    Five clean minutes, then two minutes with noise and two without, alternately.
    """
    t = np.arange(n_samples) / fs
    after = t - _LEARNING_S
    return (after >= 0) & ((after // _PERIOD_S) % 2 == 0)


def read_noise(nstdb_dir: Path | str, kind: str) -> tuple[np.ndarray, float]:
    """One nstdb noise record: float32 ``(n_samples, 2)`` in mV and its rate (360 Hz).

    Raises
    ------
    UserError
        Unknown noise type, or the record is not downloaded (``ecg download nstdb``).
    """
    if kind not in NOISE_TYPES:
        raise UserError(f"unknown noise type {kind!r}; choose from {', '.join(NOISE_TYPES)}")
    record = read_record(Path(nstdb_dir) / kind)
    return record.signal, record.fs


@dataclass(frozen=True)
class NoisyRecord:
    """A clean signal with noise added (one lead).

    Attributes
    ----------
    signal : np.ndarray
        float32 ``(n_samples,)`` clean + gain * noise + offset, mV.
    noisy : np.ndarray
        bool ``(n_samples,)``: where noise was added.
    gain : float
        The noise gain ``a``.
    snr_db : float
        The SNR asked for.
    """

    signal: np.ndarray
    noisy: np.ndarray
    gain: float
    snr_db: float


def add_noise(
    clean: np.ndarray,
    fs: float,
    normal_peaks: np.ndarray,
    noise: np.ndarray,
    noise_fs: float,
    snr_db: float,
    *,
    protocol: np.ndarray | None = None,
) -> NoisyRecord:
    """Add noise to one clean ECG lead at ``snr_db`` as ``nst`` does.

    Parameters
    ----------
    clean : np.ndarray
        ``(n_samples,)`` clean ECG in mV at ``fs`` Hz.
    fs : float
        Its sampling rate, Hz.
    normal_peaks : np.ndarray
        Reference sample indices of its normal beats (for ``S``).
    noise : np.ndarray
        ``(n_noise,)`` one noise signal in mV at ``noise_fs`` Hz (``read_noise(...)[0][:, 0]``).
    noise_fs : float
        Its rate; resampled to ``fs`` when they differ by 10% or more.
    snr_db : float
        SNR in dB during the noisy periods.
    protocol : np.ndarray, optional
        bool ``(n_samples,)``, where to add noise; default :func:`standard_protocol`.

    Returns
    -------
    NoisyRecord
    """
    x = np.asarray(clean, dtype=np.float64)
    n = x.shape[0]
    w = np.asarray(noise, dtype=np.float64)
    if abs(noise_fs - fs) >= 0.1 * fs:
        w = resample(w.astype(np.float32), noise_fs, fs).astype(np.float64)
    gain = noise_gain(qrs_power(x, fs, normal_peaks), noise_power(w, fs), snr_db)
    if w.shape[0] < n:  # nst rewinds the noise record
        w = np.tile(w, int(np.ceil(n / w.shape[0])))
    w = w[:n]
    mask = standard_protocol(n, fs) if protocol is None else np.asarray(protocol, dtype=bool)
    if mask.shape != (n,):
        raise UserError(f"protocol must be ({n},), got {mask.shape}")
    gains = np.where(mask, gain, 0.0)
    # offsets b recomputed at each gain change so that the output has no step there:
    # b_new = b_old + (a_old - a_new) * noise[t]
    changes = np.flatnonzero(np.diff(gains)) + 1
    offsets = np.zeros(n)
    b = 0.0
    for k, start in enumerate(changes):
        b += (gains[start - 1] - gains[start]) * w[start]
        stop = changes[k + 1] if k + 1 < changes.size else n
        offsets[start:stop] = b
    out = x + gains * w + offsets
    return NoisyRecord(signal=out.astype(np.float32), noisy=mask, gain=gain, snr_db=float(snr_db))
