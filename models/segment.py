"""One piece of raw ECG as every predictor takes it, checked once when it is built.

A :class:`Segment` replaces the anonymous ``(signal, fs, r_peaks)`` / ``(signal, fs, leads)``
tuples: whoever builds one (the service from a request, a test from a WFDB record) gets every
model-independent check here, once: array shape, finite samples, rate, lead names, R peaks. What a
particular model needs on top (its leads, its window) is checked by the predictor
(:mod:`models.predictor`), also once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Segment", "SegmentError"]


class SegmentError(ValueError):
    """A segment cannot be used; the message says what is wrong and what to do.

    Attributes
    ----------
    index : int or None
        Position of the offending segment in a batch, when the error is about one of several.
    """

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class Segment:
    """Raw ECG in millivolts: ``signal`` float32 ``(n_samples, n_leads)`` at ``fs`` Hz.

    Attributes
    ----------
    signal : np.ndarray
        float32 ``(n_samples, n_leads)`` in mV (a 1-D ``(n_samples,)`` input becomes one column).
    fs : float
        Sampling rate in Hz, > 0.
    leads : tuple of str
        One name per column; unique when compared case-insensitively (surrounding blanks ignored).
    r_peaks : np.ndarray or None
        int64 ``(n_beats,)`` known R-peak sample indices at ``fs``, strictly increasing and inside
        the signal; None: the arrhythmia predictor detects them.

    Raises
    ------
    SegmentError
        On construction, when any of the above does not hold.
    """

    signal: np.ndarray
    fs: float
    leads: tuple[str, ...]
    r_peaks: np.ndarray | None = None

    def __post_init__(self) -> None:
        x = np.asarray(self.signal, dtype=np.float32)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise SegmentError(
                f"signal must be (n_samples, n_leads) with at least one sample, got {x.shape}"
            )
        if not np.all(np.isfinite(x)):
            raise SegmentError("signal contains NaN or infinite values")
        if not (math.isfinite(self.fs) and self.fs > 0):
            raise SegmentError(f"sampling frequency must be > 0 Hz, got {self.fs}")
        leads = tuple(name.strip() for name in self.leads)
        if len(leads) != x.shape[1]:
            raise SegmentError(
                f"signal must be (n_samples, {len(leads)}) for leads {list(leads)}, got {x.shape}"
            )
        lowered = [name.lower() for name in leads]
        dupes = sorted({name for name, low in zip(leads, lowered, strict=True)
                        if lowered.count(low) > 1})  # fmt: skip
        if dupes:
            raise SegmentError(f"duplicate lead names {dupes}; each lead must appear once")
        object.__setattr__(self, "signal", np.ascontiguousarray(x))
        object.__setattr__(self, "fs", float(self.fs))
        object.__setattr__(self, "leads", leads)
        if self.r_peaks is not None:
            object.__setattr__(self, "r_peaks", _checked_peaks(self.r_peaks, x.shape[0]))

    @classmethod
    def single_lead(
        cls,
        signal: np.ndarray | Sequence[float],
        fs: float,
        lead: str = "MLII",
        r_peaks: np.ndarray | Sequence[int] | None = None,
    ) -> Segment:
        """A one-lead segment from a raw ``(n_samples,)`` signal in mV at ``fs`` Hz."""
        peaks = None if r_peaks is None else np.asarray(r_peaks)
        return cls(np.asarray(signal, dtype=np.float32).reshape(-1, 1), fs, (lead,), peaks)

    @property
    def n_samples(self) -> int:
        return int(self.signal.shape[0])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs

    def select(self, names: Sequence[str]) -> np.ndarray:
        """Columns ``names`` (case-insensitive) in that order: float32 ``(n_samples, len(names))``.

        Raises
        ------
        SegmentError
            Naming the missing leads, what was wanted and what the segment has.
        """
        have = [name.lower() for name in self.leads]
        missing = [name for name in names if name.lower() not in have]
        if missing:
            raise SegmentError(
                f"missing leads {missing}: this model reads {list(names)} (names are matched "
                f"case-insensitively), the signal has {list(self.leads)}"
            )
        return self.signal[:, [have.index(name.lower()) for name in names]]

    def unused_leads(self, names: Sequence[str]) -> list[str]:
        """The segment's leads that are not among ``names`` (case-insensitive)."""
        wanted = {name.lower() for name in names}
        return [name for name in self.leads if name.lower() not in wanted]


def _checked_peaks(r_peaks: np.ndarray, n_samples: int) -> np.ndarray:
    try:
        peaks = np.asarray(r_peaks)
        if peaks.dtype == object:  # Python ints beyond int64
            peaks = peaks.astype(np.int64)
    except (OverflowError, TypeError, ValueError) as err:
        raise SegmentError(
            f"r_peaks must be sample indices inside the signal (< {n_samples}): {err}"
        ) from err
    if peaks.ndim != 1 or (peaks.size and not np.issubdtype(peaks.dtype, np.integer)):
        raise SegmentError(f"r_peaks must be a 1-D list of sample indices, got {peaks.dtype}")
    peaks = peaks.astype(np.int64)
    outside = peaks[(peaks < 0) | (peaks >= n_samples)]
    if outside.size:
        raise SegmentError(
            f"r_peaks {outside[:5].tolist()} are outside the signal "
            f"(indices must be >= 0 and < {n_samples} samples)"
        )
    steps = np.flatnonzero(np.diff(peaks) <= 0)
    if steps.size:
        i = int(steps[0]) + 1
        raise SegmentError(
            f"r_peaks must be strictly increasing; r_peaks[{i}]={peaks[i]} follows {peaks[i - 1]}"
        )
    return peaks
