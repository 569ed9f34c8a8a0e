"""models.signal_ops gives the numbers of the SciPy / numpy calls it replaces, on real ECG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import signal as sps

from models.signal_ops import ZeroPhaseFilter, derivative, median_along
from pipeline.records import read_record


@pytest.fixture(scope="module")
def mlii(shared_physionet: Path) -> np.ndarray:
    """float64 (7200,) MLII of mitdb 208 (20 s at 360 Hz, mV)."""
    rec = read_record(shared_physionet / "mitdb" / "1.0.0" / "208")
    return np.asarray(rec.lead("MLII")[:7200], dtype=np.float64)


@pytest.mark.parametrize("fs", [100.0, 250.0, 360.0, 1000.0])
@pytest.mark.parametrize("band", [(0.5, 40.0), (5.0, 15.0), (1.0, 40.0)])
def test_equals_sosfiltfilt_on_real_ecg(mlii: np.ndarray, fs: float, band: tuple) -> None:
    sos = sps.butter(2, [band[0], band[1]], "bandpass", fs=fs, output="sos")
    zero_phase = ZeroPhaseFilter.from_sos(sos)
    for n in (zero_phase.default_padlen + 1, 200, mlii.shape[0]):
        x = mlii[:n]
        assert np.array_equal(zero_phase(x), sps.sosfiltfilt(sos, x))
        for padlen in (0, 1, min(n - 1, 60)):
            assert np.array_equal(zero_phase(x, padlen), sps.sosfiltfilt(sos, x, padlen=padlen))


def test_odd_orders_and_one_sided_designs(mlii: np.ndarray) -> None:
    for sos in (
        sps.butter(3, 0.1, "highpass", output="sos"),  # a first-order section: fewer taps
        sps.butter(2, 0.2, output="sos"),
        sps.butter(5, [0.05, 0.3], "bandpass", output="sos"),
    ):
        zero_phase = ZeroPhaseFilter.from_sos(sos)
        assert np.array_equal(zero_phase(mlii), sps.sosfiltfilt(sos, mlii))


def test_too_short_signal_is_refused(mlii: np.ndarray) -> None:
    zero_phase = ZeroPhaseFilter.from_sos(sps.butter(2, [0.1, 0.3], "bandpass", output="sos"))
    with pytest.raises(ValueError, match="longer than the pad"):
        zero_phase(mlii[: zero_phase.default_padlen])
    with pytest.raises(ValueError, match="n_leads"):
        zero_phase(np.zeros((100, 2, 2)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_several_leads_and_float32_equal_sosfiltfilt(mlii: np.ndarray, dtype: type) -> None:
    """Along axis 0, pad in the input's dtype: SciPy's numbers for (n,) and (n, n_leads)."""
    sos = sps.butter(2, [0.5 / 180, 40 / 180], "bandpass", output="sos")
    zero_phase = ZeroPhaseFilter.from_sos(sos)
    leads = np.stack([mlii, mlii[::-1] * 0.5], axis=1).astype(dtype)
    for x in (leads, leads[:, 0]):
        for padlen in (None, 0, 60):
            kwargs = {} if padlen is None else {"padlen": padlen}
            np.testing.assert_array_equal(
                zero_phase(x, padlen), sps.sosfiltfilt(sos, x, axis=0, **kwargs)
            )


def test_derivative_equals_np_gradient(mlii: np.ndarray) -> None:
    for x in (mlii, mlii[:2], mlii[:3], np.diff(mlii)):
        assert np.array_equal(derivative(x), np.gradient(x))
    with pytest.raises(ValueError):
        derivative(mlii[:1])  # np.gradient's own error


@pytest.mark.parametrize("n", [1, 2, 3, 12, 13, 180])
def test_median_along_axis0_equals_np_median(mlii: np.ndarray, n: int) -> None:
    assert median_along(mlii[: n * 10], 0) == np.median(mlii[: n * 10])
    beats = mlii[: n * 40].reshape(n, 40)  # n "beats" of 40 samples: per-column medians
    assert np.array_equal(median_along(beats, 0), np.median(beats, axis=0))


def test_public_sosfilt_fallback_gives_the_same_output(
    mlii: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where SciPy's private kernel cannot be imported, the public sosfilt path is used."""
    import models.signal_ops as ops

    sos = sps.butter(2, [0.5, 40.0], "bandpass", fs=360.0, output="sos")
    monkeypatch.setattr(ops, "_kernel", None)
    assert np.array_equal(ZeroPhaseFilter.from_sos(sos)(mlii), sps.sosfiltfilt(sos, mlii))
