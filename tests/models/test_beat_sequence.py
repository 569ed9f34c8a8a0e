"""Beat-sequence model: shapes, padding, calibration, a real tiny training, save and load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.beat_classifier import BeatClassifier
from models.beat_context import CONTEXT_FEATURE_NAMES, RELATIVE_FEATURE_NAMES
from models.beat_sequence import (
    BeatSequenceConfig,
    BeatSequenceModel,
    model_inputs,
    predict_strip,
    predict_strips,
)
from pipeline.beat_sequences import build_sequences, record_beats
from pipeline.beat_train import (
    BeatTrainConfig,
    expected_calibration_error,
    fit_temperature,
    per_class_scores,
    predict_logits,
    train_beat_model,
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("wave_mode", ["relative", "zscore", "none"])
def test_forward_shapes(cell: str, wave_mode: str) -> None:
    cfg = BeatSequenceConfig(cell=cell, wave_mode=wave_mode, feature_names=RELATIVE_FEATURE_NAMES)  # type: ignore[arg-type]
    model = BeatSequenceModel(cfg)
    waves = torch.randn(3, 7, cfg.wave_channels, cfg.wave_len)
    feats = torch.randn(3, 7, cfg.n_features)
    out = model(waves, feats, torch.tensor([7, 4, 1]))
    assert out.shape == (3, 7, 3)
    assert BeatSequenceConfig.from_dict(cfg.to_dict()) == cfg


def test_padding_does_not_change_a_sequence() -> None:
    torch.manual_seed(0)
    cfg = BeatSequenceConfig(feature_names=RELATIVE_FEATURE_NAMES)
    model = BeatSequenceModel(cfg).eval()
    waves = torch.randn(2, 9, 2, cfg.wave_len)
    feats = torch.randn(2, 9, cfg.n_features)
    with torch.no_grad():
        both = model(waves, feats, torch.tensor([9, 5]))
        alone = model(waves[1:, :5], feats[1:, :5], torch.tensor([5]))
    torch.testing.assert_close(both[1, :5], alone[0], rtol=1e-5, atol=1e-5)


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="cell"):
        BeatSequenceConfig(cell="rnn", feature_names=("template_corr",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="waveform channels or context features"):
        BeatSequenceConfig(wave_mode="none")
    with pytest.raises(ValueError, match="temperature"):
        BeatSequenceConfig(feature_names=("template_corr",), temperature=0.0)


def test_predict_strip_chunks_and_temperature() -> None:
    torch.manual_seed(0)
    cfg = BeatSequenceConfig(feature_names=RELATIVE_FEATURE_NAMES)
    model = BeatSequenceModel(cfg)
    rng = np.random.default_rng(0)
    waves = rng.normal(size=(150, 2, cfg.wave_len)).astype(np.float32)
    feats = rng.normal(size=(150, cfg.n_features)).astype(np.float32)
    p = predict_strip(model, waves, feats, max_beats=64)
    assert p.shape == (150, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    hot = BeatSequenceModel(
        BeatSequenceConfig(feature_names=RELATIVE_FEATURE_NAMES, temperature=3.0)
    )
    hot.load_state_dict(model.state_dict())
    q = predict_strip(hot, waves, feats, max_beats=64)
    assert (q.argmax(1) == p.argmax(1)).all()
    assert q.max(axis=1).mean() < p.max(axis=1).mean()  # softer, same decisions


def test_predict_strips_answers_each_strip_as_alone() -> None:
    """Strips of different lengths (0, short, chunked) in one pass: each as predict_strip."""
    torch.manual_seed(0)
    cfg = BeatSequenceConfig(feature_names=RELATIVE_FEATURE_NAMES)
    model = BeatSequenceModel(cfg)
    rng = np.random.default_rng(2)
    strips = [
        (
            rng.normal(size=(n, 2, cfg.wave_len)).astype(np.float32),
            rng.normal(size=(n, cfg.n_features)).astype(np.float32),
        )
        for n in (12, 0, 150, 1)
    ]
    together = predict_strips(model, strips, max_beats=64)
    assert [p.shape for p in together] == [(12, 3), (0, 3), (150, 3), (1, 3)]
    for (waves, feats), p in zip(strips, together, strict=True):
        np.testing.assert_allclose(p, predict_strip(model, waves, feats, 64), rtol=1e-5, atol=1e-6)
    assert predict_strips(model, []) == []


def test_temperature_fit_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(1)
    true_logits = rng.normal(scale=2.0, size=(4000, 3))
    p = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    t = fit_temperature(true_logits * 2.5, y)  # logits made 2.5x too confident
    assert t == pytest.approx(2.5, rel=0.15)
    over = expected_calibration_error(
        np.exp(true_logits * 2.5) / np.exp(true_logits * 2.5).sum(1, keepdims=True), y
    )
    fixed = expected_calibration_error(
        np.exp(true_logits * 2.5 / t) / np.exp(true_logits * 2.5 / t).sum(1, keepdims=True), y
    )
    assert (fixed < over).all()


def test_tiny_real_training_finds_v_beats_of_an_unseen_patient(
    mitdb_dir: Path, tmp_path: Path
) -> None:
    """Train two epochs on three V-rich records (106, 208, 203),
    test on record 119 (never seen): V beats found, normal beats kept."""
    train = build_sequences(mitdb_dir, "mitdb", ["106", "208", "203"], "mixed")
    test = build_sequences(mitdb_dir, "mitdb", ["119"], "10")
    cfg = BeatSequenceConfig(feature_names=RELATIVE_FEATURE_NAMES, hidden_size=16)
    model = train_beat_model(cfg, BeatTrainConfig(epochs=2, batch_size=8, seed=0), train)
    s = per_class_scores(test.label, predict_logits(model, test).argmax(1), cfg.classes)
    assert s["V_se"] > 0.8 and s["V_ppv"] > 0.8
    assert s["N_se"] > 0.9

    # save / load round trip: the classifier answers a raw strip the same way
    clf = BeatClassifier(model=model, decision_offsets={"S": 0.5})
    clf.save(tmp_path / "m")
    back = BeatClassifier.load(tmp_path / "m")
    rb = record_beats(mitdb_dir, "mitdb", "119")
    n = int(10 * rb.fs)
    peaks = rb.sample[rb.sample < n]
    p1 = clf.predict_proba(rb.lead[:n], rb.fs, peaks)
    p2 = back.predict_proba(rb.lead[:n], rb.fs, peaks)
    np.testing.assert_allclose(p1, p2, rtol=1e-5, atol=1e-6)
    assert back.decision_offsets == {"S": 0.5}
    assert (back.decide(p2) == clf.decide(p1)).all()


def test_model_inputs_pick_columns() -> None:
    cfg = BeatSequenceConfig(wave_mode="zscore", feature_names=("pre_rr_s", "template_corr"))
    rng = np.random.default_rng(0)
    waves = rng.normal(size=(4, 2, 87)).astype(np.float32) * 3 + 1
    feats = rng.normal(size=(4, len(CONTEXT_FEATURE_NAMES))).astype(np.float32)
    w, f = model_inputs(waves, feats, CONTEXT_FEATURE_NAMES, cfg)
    assert w.shape == (4, 1, 87) and f.shape == (4, 2)
    np.testing.assert_allclose(w.mean(axis=2), 0.0, atol=1e-5)
    np.testing.assert_allclose(f[:, 1], feats[:, CONTEXT_FEATURE_NAMES.index("template_corr")])
