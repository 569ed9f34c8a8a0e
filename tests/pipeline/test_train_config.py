"""TrainConfig: the recommended configurations, flat architecture overrides, validation."""

from __future__ import annotations

import dataclasses

import pytest

from models.recurrent import RecurrentArch
from pipeline.errors import UserError
from pipeline.train_config import ARCH_FIELDS, RECOMMENDED, TrainConfig


def test_recommended_configs_are_the_readme_ones() -> None:
    """What `ecg train --dataset mitdb|ptb-xl` starts from (the figures in the README)."""
    m = TrainConfig.recommended("mitdb")
    assert m.arch == RecurrentArch(cell="gru", hidden_size=64, patch_size=3)
    assert (m.epochs, m.patience, m.batch_size, m.lr) == (25, 6, 256, 2e-3)
    assert m.val_records == ("124", "220", "223") and m.rr_in_sequence
    assert m.rr_features == ("pre_rr_local", "post_rr_local") and m.beat_normalise == "zscore"
    p = TrainConfig.recommended("ptb-xl", cell="lstm")
    assert p.arch == RecurrentArch(cell="lstm", hidden_size=64, patch_size=5)
    assert (p.epochs, p.batch_size, p.class_weight_cap) == (30, 64, 10.0)
    assert p.task.name == "heart-disease" and p.task.selection_metric == "val_macro_auc"


def test_architecture_fields_are_given_flat_and_land_in_arch() -> None:
    cfg = TrainConfig().updated(cell="lstm", hidden_size=8, num_layers=2, epochs=3)
    assert cfg.arch.cell == "lstm" and cfg.arch.hidden_size == 8 and cfg.arch.num_layers == 2
    assert cfg.epochs == 3
    assert set(ARCH_FIELDS) == {f.name for f in dataclasses.fields(RecurrentArch)}
    # The original is unchanged (frozen dataclasses).
    assert TrainConfig().arch == RecurrentArch()


def test_patch_size_zero_takes_the_catalogue_default() -> None:
    assert TrainConfig(dataset="mitdb").resolved_arch().patch_size == 3
    assert TrainConfig(dataset="ptb-xl").resolved_arch().patch_size == 5
    assert TrainConfig().updated(patch_size=7).resolved_arch().patch_size == 7


def test_to_dict_is_flat_with_the_cell() -> None:
    d = TrainConfig.recommended("mitdb", cell="lstm").to_dict()
    assert "arch" not in d and "model" not in d
    assert d["cell"] == "lstm" and d["hidden_size"] == 64 and d["dataset"] == "mitdb"
    assert d["val_records"] == ["124", "220", "223"]  # lists: JSON-friendly


def test_input_options_follow_the_config() -> None:
    opts = TrainConfig.recommended("mitdb").input_options
    assert opts.rr_features == RECOMMENDED["mitdb"]["rr_features"]
    assert opts.beat_normalise == "zscore"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: TrainConfig(dataset="nope"), "unknown dataset 'nope'"),
        (lambda: TrainConfig.recommended("nope"), "unknown dataset 'nope'"),
        (lambda: TrainConfig().updated(cell="cnn"), "unknown cell 'cnn'"),
        (lambda: TrainConfig().updated(model="gru"), r"unknown training options \['model'\]"),
        (lambda: TrainConfig().updated(hidden_size=0), "hidden_size must be >= 1"),
        (lambda: TrainConfig(epochs=0), "epochs must be >= 1"),
        (lambda: TrainConfig(lr=0.0), "lr must be > 0"),
        (lambda: TrainConfig(class_weight_cap=0.5), "class_weight_cap must be >= 1"),
        (lambda: TrainConfig(signal_dropout=1.0), "signal_dropout"),
        (lambda: TrainConfig(dataset="ptb-xl", rr_features=("pre_rr",)), "beat datasets"),
        (lambda: TrainConfig(dataset="ptb-xl", beat_normalise="zscore"), "beat datasets"),
    ],
)
def test_bad_configurations_are_user_errors(build: object, message: str) -> None:
    with pytest.raises(UserError, match=message):
        build()  # type: ignore[operator]
