"""Exact, cheaper equivalents of the SciPy / numpy steps the R-peak detectors, the quality
check and the beat preprocessing run on every strip (each gives the same numbers as the call it
replaces; checked by ``tests/models/test_signal_ops.py``, ``python -m bench.quality_speed`` and
``python -m bench.context_speed``).

:class:`ZeroPhaseFilter`: :func:`scipy.signal.sosfiltfilt` recomputes
:func:`scipy.signal.sosfilt_zi` (a linear solve per section) and validates its arguments on every
call, which on a 10-s strip costs more than the filtering itself. It keeps the sections, their
initial conditions and the default pad length of one design and runs the same steps as
``sosfiltfilt(sos, x)`` with ``padtype="odd"``: odd extension at both ends, forward pass started
at ``zi * ext[0]``, backward pass started at ``zi * y[-1]``, pad removed, so the output equals
SciPy's bit for bit.

:func:`derivative` is ``np.gradient`` of a 1-D signal with unit spacing and :func:`median_along`
``np.median(a, axis=axis)``, the same arithmetic without the argument handling (which costs more
than the arithmetic on arrays of a few thousand samples).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal as sps

try:  # SciPy's compiled kernel, the one sps.sosfilt calls after validating its arguments
    from scipy.signal._sosfilt import _sosfilt as _kernel
except ImportError:  # pragma: no cover - a SciPy that moved it: the public path, same numbers
    _kernel = None

__all__ = ["ZeroPhaseFilter", "derivative", "median_along"]


@dataclass(frozen=True, eq=False)
class ZeroPhaseFilter:
    """One filter design for forward-backward filtering along axis 0 (one or several leads).

    Attributes
    ----------
    sos : np.ndarray
        float64 ``(n_sections, 6)`` second-order sections (not to be modified).
    zi : np.ndarray
        float64 ``(n_sections, 2)``: :func:`scipy.signal.sosfilt_zi` of ``sos``.
    default_padlen : int
        The pad length ``sosfiltfilt`` uses when given none (3 times its tap count).
    """

    sos: np.ndarray
    zi: np.ndarray
    default_padlen: int

    @classmethod
    def from_sos(cls, sos: np.ndarray) -> ZeroPhaseFilter:
        """Design holder for ``sos`` (float64 ``(n_sections, 6)``)."""
        sos = np.ascontiguousarray(sos, dtype=np.float64)
        ntaps = 2 * sos.shape[0] + 1
        ntaps -= min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum()))
        return cls(sos=sos, zi=sps.sosfilt_zi(sos), default_padlen=3 * ntaps)

    def _pass(self, x: np.ndarray, start: np.ndarray) -> np.ndarray:
        """One causal pass over ``(n_leads, n)`` ``x`` from the states ``zi * start``.

        ``start`` is ``(n_leads, 1)``; returns float64 ``(n_leads, n)``.
        """
        state = np.ascontiguousarray(self.zi[None, :, :] * start[:, :, None].astype(np.float64))
        if _kernel is None:
            return np.asarray(sps.sosfilt(self.sos, x, axis=1, zi=state.transpose(1, 0, 2))[0])
        y = np.array(x, dtype=np.float64, order="C")  # filtered in place, as sosfilt does
        _kernel(self.sos, y, state)
        return y

    def __call__(self, x: np.ndarray, padlen: int | None = None) -> np.ndarray:
        """``scipy.signal.sosfiltfilt(sos, x, axis=0, padlen=padlen)`` (odd padding).

        Parameters
        ----------
        x : np.ndarray
            float ``(n_samples,)`` or ``(n_samples, n_leads)`` at the design's rate,
            ``n_samples > padlen``. As in SciPy, the pad is computed in ``x``'s dtype and the
            passes in float64, so the output equals SciPy's for float32 and float64 input.
        padlen : int, optional
            Samples of odd extension at each end; None: :attr:`default_padlen`.

        Returns
        -------
        np.ndarray
            float64, ``x``'s shape: the zero-phase filtered signal.

        Raises
        ------
        ValueError
            ``x`` not 1-D or 2-D, or not longer than the pad (as SciPy).
        """
        x = np.asarray(x)
        if x.dtype.kind != "f":
            x = x.astype(np.float64)
        edge = self.default_padlen if padlen is None else int(padlen)
        if x.ndim not in (1, 2) or x.shape[0] <= edge:
            raise ValueError(
                f"need a signal (n_samples,) or (n_samples, n_leads) longer than the pad of "
                f"{edge} samples, got shape {x.shape}"
            )
        xt = x.reshape(x.shape[0], -1).T  # (n_leads, n)
        if edge > 0:
            xt = np.concatenate(
                (
                    2 * xt[:, :1] - xt[:, edge:0:-1],
                    xt,
                    2 * xt[:, -1:] - xt[:, -2 : -(edge + 2) : -1],
                ),
                axis=1,
            )
        y = self._pass(xt, xt[:, :1])
        y = self._pass(y[:, ::-1], y[:, -1:])[:, ::-1]
        if edge > 0:
            y = y[:, edge:-edge]
        return y.T.reshape(x.shape)  # SciPy's memory layout too (later sums depend on it)


def derivative(x: np.ndarray) -> np.ndarray:
    """``np.gradient(x)`` of a float64 1-D signal: central differences inside, one-sided at the
    two ends, per sample (same arithmetic, so the same numbers).

    Parameters
    ----------
    x : np.ndarray
        float64 ``(n_samples,)``, ``n_samples >= 2`` (shorter: ``np.gradient``'s error).

    Returns
    -------
    np.ndarray
        float64 ``(n_samples,)``, per sample.
    """
    if x.ndim != 1 or x.shape[0] < 2 or x.dtype != np.float64:
        return np.asarray(np.gradient(x))
    out = np.empty_like(x)
    out[1:-1] = (x[2:] - x[:-2]) / 2.0
    out[0] = (x[1] - x[0]) / 1.0
    out[-1] = (x[-1] - x[-2]) / 1.0
    return out


def median_along(a: np.ndarray, axis: int) -> np.ndarray:
    """``np.median(a, axis=axis)`` of a float array, bit for bit, with less overhead.

    NumPy partitions at the middle element(s) and at the last one (a NaN check) in one call,
    which is several times slower than partitioning at one element (measured: 19 vs 5 ms for the
    30-beat running templates of a 300-s strip); here a copy is partitioned at ``mid = n // 2``
    alone. The result is what NumPy's ``mean`` of the
    middle one or two order statistics gives, in the array's dtype: ``0 + a[mid]``, or for an
    even count ``(0 + a[mid - 1] + a[mid]) / 2``, where ``a[mid - 1]`` is the largest element
    left of ``mid`` (the sum starting at +0 makes the sign of a zero irrelevant: a median of -0 is
    +0, as in NumPy); NaN wherever the data hold a NaN (NaN sorts last, so right of ``mid``).

    Parameters
    ----------
    a : np.ndarray
        float32 or float64 array (others, and an empty ``axis``, fall back to NumPy).
    axis : int

    Returns
    -------
    np.ndarray
        ``a``'s shape without ``axis``, ``a``'s dtype.
    """
    sz = a.shape[axis]
    if sz == 0 or a.dtype not in (np.float32, np.float64):
        return np.asarray(np.median(a, axis=axis))
    mid = sz // 2
    ax = axis % a.ndim

    def along(index: int | slice) -> tuple[int | slice, ...]:
        return (slice(None),) * ax + (index,)

    part = np.array(a, order="C")  # partitioned in place: a copy, never ``a`` itself
    part.partition(mid, axis=ax)
    zero = a.dtype.type(0.0)
    if sz % 2:
        out = part[along(mid)] + zero
    else:
        out = np.maximum.reduce(part[along(slice(None, mid))], axis=ax)
        out += zero
        out += part[along(mid)]
        out /= a.dtype.type(2.0)
    upper = np.isnan(part[along(slice(mid, None))])
    if upper.any():
        out[upper.any(axis=ax)] = np.nan
    return out
