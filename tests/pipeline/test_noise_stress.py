"""Tests of pipeline.noise_stress (nst's SNR definition and protocol) and of the noise stress
bench's per-class path (bench.noise_stress), on real mitdb and nstdb records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.noise_stress import (
    CLEAN,
    MD_BEGIN,
    SCORED_CLASSES,
    main,
    stress_record,
    summarise_stress,
    write_markdown,
)
from models.beat_classifier import BeatClassifier
from models.beat_context import RELATIVE_FEATURE_NAMES
from models.beat_predictor import BeatSequencePredictor, card_of
from models.beat_sequence import BeatSequenceConfig, BeatSequenceModel
from models.predictor import BeatPredictions
from pipeline.errors import UserError
from pipeline.noise_stress import (
    add_noise,
    noise_gain,
    noise_power,
    qrs_power,
    read_noise,
    standard_protocol,
)
from pipeline.records import read_annotations, read_record

FS = 360.0


@pytest.fixture(scope="module")
def nstdb_dir(shared_physionet: Path) -> Path:
    path = shared_physionet / "nstdb" / "1.0.0"
    if not (path / "em.hea").is_file():
        pytest.skip(f"nstdb noise records not at {path}")
    return path


def test_qrs_power_is_sigamp_amplitude_squared_over_8() -> None:
    """Spikes of known peak-to-peak amplitude; 5% outliers each side are discarded."""
    x = np.zeros(400 * 360)
    peaks = np.arange(200, 400 * 360 - 200, 360)[:300]
    amps = np.full(peaks.size, 1.6)
    amps[:10] = 50.0  # the largest 5% (15 beats) are discarded, so these do not count
    x[peaks] = amps
    assert qrs_power(x, FS, peaks) == pytest.approx(1.6**2 / 8)


def test_noise_power_trims_chunks() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(0.0, 0.2, 300 * 360) + 3.0  # the chunk means are removed
    w[:360] *= 100.0  # one wild second is trimmed away
    assert noise_power(w, FS) == pytest.approx(0.04, rel=0.03)


def test_gain_solves_the_snr_equation() -> None:
    a = noise_gain(0.5, 0.02, 6.0)
    assert 10 * np.log10(0.5 / (0.02 * a**2)) == pytest.approx(6.0)
    with pytest.raises(UserError, match="no power"):
        noise_gain(0.5, 0.0, 6.0)


def test_standard_protocol() -> None:
    mask = standard_protocol(round(30 * 60 * FS), FS)
    minutes = mask.reshape(30, -1)
    assert not minutes[:5].any()  # the learning period
    assert minutes[5:7].all() and not minutes[7:9].any() and minutes[9:11].all()
    assert mask.mean() == pytest.approx(13 / 30, abs=0.01)  # noisy: 5-7, 9-11, ..., 29-30


def test_add_noise_to_record_118_as_nst_does(mitdb_dir: Path, nstdb_dir: Path) -> None:
    rec = read_record(mitdb_dir / "118")
    x = rec.lead("MLII").astype(np.float64)
    ann = read_annotations(mitdb_dir / "118")
    normal = ann.sample[np.isin(ann.symbol, ["N", "L", "R", "e", "j"])]
    noise, noise_fs = read_noise(nstdb_dir, "em")
    assert noise_fs == 360.0 and noise.shape == (650_000, 2)
    out = add_noise(x, FS, normal, noise[:, 0], noise_fs, 6.0)
    added = out.signal.astype(np.float64) - x
    # clean where the protocol says so, up to an offset constant over each clean period
    assert np.abs(added[: round(300 * FS)]).max() < 1e-5
    # inside noisy periods: gain * noise + a constant offset, at the SNR asked for
    sel = slice(round(301 * FS), round(419 * FS))
    np.testing.assert_allclose(
        added[sel] - added[sel].mean(), out.gain * (noise[sel, 0] - noise[sel, 0].mean()), atol=2e-4
    )
    snr = 10 * np.log10(qrs_power(x, FS, normal) / (out.gain**2 * noise_power(noise[:, 0], FS)))
    assert snr == pytest.approx(6.0)
    # offsets cancel the step at each gain change (nst's b)
    edges = np.flatnonzero(np.diff(out.noisy.astype(int))) + 1
    assert edges.size > 4
    w = noise[:, 0].astype(np.float64)
    for e in edges:  # no jump beyond the noise's own sample-to-sample change
        step = abs(float(added[e] - added[e - 1]))
        assert step <= out.gain * abs(float(w[e] - w[e - 1])) + 1e-4, e
    # without the offsets the output would jump by gain * noise at the switch
    assert max(abs(out.gain * w[e]) for e in edges) > 0.1
    # lower SNR, more noise: each 6 dB doubles the gain
    assert add_noise(x, FS, normal, noise[:, 0], noise_fs, 0.0).gain == pytest.approx(
        2 * out.gain, rel=0.01
    )


def test_noise_at_another_rate_is_resampled(nstdb_dir: Path) -> None:
    """A 128-Hz clean signal (svdb's rate) gets the 360-Hz noise resampled and rewound."""
    noise, noise_fs = read_noise(nstdb_dir, "ma")
    fs = 128.0
    n = round(40 * 60 * fs)  # longer than the 30-min noise record: rewound
    x = np.zeros(n)
    peaks = np.arange(64, n - 64, 128)
    x[peaks] = 1.0
    out = add_noise(x, fs, peaks, noise[:, 0], noise_fs, 0.0)
    assert out.signal.shape == (n,) and np.isfinite(out.signal).all()
    assert np.ptp(out.signal[out.noisy]) > 1.0


def test_unknown_noise_type(nstdb_dir: Path) -> None:
    with pytest.raises(UserError, match="unknown noise type 'xx'"):
        read_noise(nstdb_dir, "xx")


# --------------------------------------------------------------------------- per-class bench
class _Counting:
    """The service's beat-sequence predictor (tiny, untrained weights), counting its calls."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        cfg = BeatSequenceConfig(
            cell="lstm",
            feature_names=RELATIVE_FEATURE_NAMES,
            conv_channels=4,
            embed_size=8,
            hidden_size=8,
        )
        clf = BeatClassifier(model=BeatSequenceModel(cfg).eval())
        self.inner = BeatSequencePredictor(clf, card_of(clf))
        self.calls: list[tuple[int, bool]] = []

    def predict(
        self, signal: np.ndarray, fs: float, r_peaks: np.ndarray | None = None
    ) -> BeatPredictions:
        self.calls.append((signal.shape[0], r_peaks is None))
        return self.inner.predict(signal, fs, r_peaks)


def test_classified_beats_add_up_per_class(
    mitdb_dir: Path, nstdb_dir: Path, tmp_path: Path
) -> None:
    """Record 119 (V bigeminy) with `ma` at 6 dB, four strips, through the service's predictor:
    every classified beat is counted once, under its reference class or as a false beat."""
    torch.set_num_threads(1)
    predictor = _Counting()
    (row,) = stress_record(
        mitdb_dir / "119", nstdb_dir, "ma", [6.0], predictor=predictor, max_strips=4
    )
    (clean,) = stress_record(
        mitdb_dir / "119", nstdb_dir, CLEAN, [6.0], predictor=predictor, max_strips=4
    )
    assert row["strips"] == clean["strips"] == 4
    assert predictor.calls == [(3600, True)] * 8  # 10-s strips at 360 Hz, peaks detected
    assert row["ref"] == clean["ref"] > 30 and clean["snr_db"] is None
    for r in (row, clean):
        conf, by_class = r["confusion"], r["ref_by_class"]
        assert sum(by_class.values()) == r["ref"]
        assert by_class.get("V", 0) > 5  # 119's bigeminy: F would count here too
        assert set(conf) <= {*SCORED_CLASSES, "Q", "O"}
        assert {said for cells in conf.values() for said in cells} <= set(SCORED_CLASSES)
        matched = sum(sum(cells.values()) for t, cells in conf.items() if t != "O")
        assert matched == r["tp"] and sum(conf.get("O", {}).values()) == r["fp"]
        assert r["tp"] + r["excluded"] == r["tp_all"] <= r["ref"]
    assert clean["tp"] >= row["tp"] and clean["fp"] <= row["fp"]
    (summary,) = summarise_stress([row])
    conf = row["confusion"]
    n_as_n, n_all = conf.get("N", {}).get("N", 0), sum(conf.get("N", {}).values())
    assert summary["N_se"] == pytest.approx(100.0 * n_as_n / n_all)
    said_v = sum(conf.get(t, {}).get("V", 0) for t in ("N", "S", "V", "O"))
    if said_v:
        assert summary["V_ppv"] == pytest.approx(100.0 * conf.get("V", {}).get("V", 0) / said_v)
    # the markdown tables replace their own block and leave the prose alone
    md = tmp_path / "NOISE_STRESS.md"
    md.write_text("# Title\n\nprose\n")
    groups = [{"records": ["119"], "summary": summarise_stress([clean, row])}]
    write_markdown(md, groups, "first")
    write_markdown(md, groups, "second")
    text = md.read_text()
    assert text.startswith("# Title\n\nprose\n") and text.count(MD_BEGIN) == 1
    assert "second" in text and "first" not in text and "| ma | 6 |" in text


def test_cli_refuses_a_model_it_cannot_load(
    tmp_path: Path, shared_physionet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["stress", "--raw-root", str(shared_physionet), "--classify", str(tmp_path),
              "--records", "118"])  # fmt: skip
    assert exc.value.code == 2
    assert "cannot load the model" in capsys.readouterr().err
