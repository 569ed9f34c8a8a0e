"""The recurrent classifier and its config: shapes, patching, static channels, validation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models.recurrent import RecurrentArch, RecurrentClassifier, RecurrentClassifierConfig


def _config(**changes: object) -> RecurrentClassifierConfig:
    base = RecurrentArch(hidden_size=8, patch_size=1)
    return RecurrentClassifierConfig.build(
        dataclasses.replace(base, **changes), n_inputs=3, n_classes=5, n_static=2
    )


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_output_is_one_row_of_logits_per_input(cell: str, bidirectional: bool) -> None:
    torch.manual_seed(0)
    model = RecurrentClassifier(_config(cell=cell, bidirectional=bidirectional, patch_size=3))
    x = torch.randn(4, 87, 3)  # 87 samples: a MIT-BIH beat window at 125 Hz, 2 RR channels
    out = model(x)
    assert out.shape == (4, 5) and torch.isfinite(out).all()
    rnn_cls = torch.nn.GRU if cell == "gru" else torch.nn.LSTM
    assert isinstance(model.rnn, rnn_cls)
    assert model.rnn.input_size == 1 * 3  # one sequence channel times the patch
    assert model.rnn.bidirectional is bidirectional


def test_static_channels_are_read_from_the_first_step_only() -> None:
    """n_static channels join the summary before the head: changing them after step 0 is a
    no-op, changing them at step 0 is not."""
    torch.manual_seed(0)
    model = RecurrentClassifier(_config()).eval()
    x = torch.randn(2, 20, 3)
    later = x.clone()
    later[:, 1:, 1:] = 99.0
    first = x.clone()
    first[:, 0, 1:] += 1.0
    with torch.inference_mode():
        assert torch.equal(model(x), model(later))
        assert not torch.allclose(model(x), model(first))


def test_patching_drops_an_incomplete_last_patch() -> None:
    torch.manual_seed(0)
    model = RecurrentClassifier(_config(patch_size=4)).eval()
    x = torch.randn(1, 10, 3)  # 2 patches of 4 steps; steps 8-9 are dropped
    changed = x.clone()
    changed[:, 8:, 0] = 50.0
    with torch.inference_mode():
        assert torch.equal(model(x), model(changed))


def test_config_round_trips_through_its_dict_and_keeps_the_chosen_part() -> None:
    cfg = _config(cell="lstm", num_layers=2, dropout=0.1, patch_size=5)
    d = cfg.to_dict()
    assert d["cell"] == "lstm" and d["n_inputs"] == 3 and d["n_static"] == 2
    assert RecurrentClassifierConfig.from_dict({**d, "unknown_key": 1}) == cfg
    assert cfg.arch == RecurrentArch(
        cell="lstm", hidden_size=8, num_layers=2, dropout=0.1, patch_size=5
    )


def test_parameter_count_of_the_bi_gru_64_matches_the_readme() -> None:
    """The README's bi-GRU 64 (MIT-BIH: waveform + 2 RR channels through the recurrence,
    patches of 3) has 45,573 parameters; the bi-LSTM 64, 55,173."""
    for cell, expected in (("gru", 45_573), ("lstm", 55_173)):
        arch = RecurrentArch(cell=cell, hidden_size=64, patch_size=3)  # type: ignore[arg-type]
        cfg = RecurrentClassifierConfig.build(arch, n_inputs=3, n_classes=5)
        assert RecurrentClassifier(cfg).n_parameters() == expected


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cell": "transformer"}, "unknown cell 'transformer'"),
        ({"hidden_size": 0}, "hidden_size must be >= 1"),
        ({"num_layers": 0}, "num_layers must be >= 1"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"patch_size": -1}, "patch_size must be >= 0"),
    ],
)
def test_bad_architectures_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RecurrentArch(**changes)  # type: ignore[arg-type]


def test_the_model_config_needs_a_patch_and_a_sequence_channel() -> None:
    with pytest.raises(ValueError, match="patch_size must be >= 1"):
        RecurrentClassifierConfig(n_inputs=3, n_classes=5)  # patch 0: only training resolves it
    with pytest.raises(ValueError, match="n_static=3 must be in"):
        RecurrentClassifierConfig(n_inputs=3, n_classes=5, n_static=3, patch_size=1)
