"""Exact, cheaper equivalents of the SciPy / numpy steps the R-peak detectors and the quality
check run on every strip (each gives the same numbers as the call it replaces; checked by
``tests/models/test_signal_ops.py`` and ``python -m bench.quality_speed``).

:class:`ZeroPhaseFilter`: :func:`scipy.signal.sosfiltfilt` recomputes
:func:`scipy.signal.sosfilt_zi` (a linear solve per section) and validates its arguments on every
call, which on a 10-s strip costs more than the filtering itself. It keeps the sections, their
initial conditions and the default pad length of one design and runs the same steps as
``sosfiltfilt(sos, x)`` with ``padtype="odd"``: odd extension at both ends, forward pass started
at ``zi * ext[0]``, backward pass started at ``zi * y[-1]``, pad removed, so the output equals
SciPy's bit for bit.

:func:`derivative` is ``np.gradient`` of a 1-D signal with unit spacing and :func:`median0`
``np.median(a, axis=0)``, the same arithmetic without the argument handling (which costs more
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

__all__ = ["ZeroPhaseFilter", "derivative", "median0"]


@dataclass(frozen=True, eq=False)
class ZeroPhaseFilter:
    """One filter design for forward-backward filtering of float64 1-D signals.

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

    def _pass(self, x: np.ndarray, start: float) -> np.ndarray:
        """One causal pass over float64 ``(n,)`` ``x`` from the state ``zi * start``."""
        zi = self.zi * start
        if _kernel is None:
            return np.asarray(sps.sosfilt(self.sos, x, zi=zi)[0])
        y = np.array(x, dtype=np.float64, order="C").reshape(1, -1)  # filtered in place
        _kernel(self.sos, y, np.ascontiguousarray(zi.reshape(1, -1, 2)))
        return y.reshape(-1)

    def __call__(self, x: np.ndarray, padlen: int | None = None) -> np.ndarray:
        """``scipy.signal.sosfiltfilt(sos, x, padlen=padlen)`` (odd padding).

        Parameters
        ----------
        x : np.ndarray
            ``(n_samples,)`` at the design's rate, ``n_samples > padlen``; converted to float64
            first (equal to SciPy's output for float64 input).
        padlen : int, optional
            Samples of odd extension at each end; None: :attr:`default_padlen`.

        Returns
        -------
        np.ndarray
            float64 ``(n_samples,)`` zero-phase filtered signal.

        Raises
        ------
        ValueError
            ``x`` not longer than the pad (as SciPy).
        """
        x = np.asarray(x, dtype=np.float64)
        edge = self.default_padlen if padlen is None else int(padlen)
        if x.ndim != 1 or x.shape[0] <= edge:
            raise ValueError(
                f"need a 1-D signal longer than the pad of {edge} samples, got shape {x.shape}"
            )
        if edge > 0:
            ext = np.concatenate(
                (2 * x[:1] - x[edge:0:-1], x, 2 * x[-1:] - x[-2 : -(edge + 2) : -1])
            )
        else:
            ext = x
        y = self._pass(ext, ext[0])
        y = self._pass(y[::-1], y[-1])[::-1]
        return y[edge:-edge] if edge > 0 else y


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


def median0(a: np.ndarray) -> np.ndarray:
    """``np.median(a, axis=0)`` of a 1-D or 2-D float array of finite values, non-empty along
    axis 0: the same order statistics (the middle one, or the mean of the middle two, as
    ``(lower + upper) / 2``).

    Parameters
    ----------
    a : np.ndarray
        float ``(n,)`` or ``(n, m)``.

    Returns
    -------
    np.ndarray
        0-d (for 1-D ``a``) or ``(m,)``.
    """
    n = a.shape[0]
    k = n // 2
    if n % 2:
        return np.asarray(np.partition(a, k, axis=0)[k])
    part = np.partition(a, (k - 1, k), axis=0)
    return np.asarray((part[k - 1] + part[k]) / 2)
