"""What ``ecg train`` trains: :class:`TrainConfig` and the recommended per-dataset values.

The configuration is logged with every run (MLflow params and ``config.json``);
:data:`RECOMMENDED` holds the values behind the reported figures, which ``ecg train`` starts from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from models.predictor import TASK_ARRHYTHMIA, TASK_HEART_DISEASE
from pipeline.errors import UserError

__all__ = ["RECOMMENDED", "SELECTION_METRICS", "TASKS", "TrainConfig"]

#: Dataset -> task of the model trained on it.
TASKS: dict[str, str] = {"mitdb": TASK_ARRHYTHMIA, "ptb-xl": TASK_HEART_DISEASE}
#: Task -> validation metric that selects epochs and decides promotion (higher is better).
SELECTION_METRICS: dict[str, str] = {
    TASK_ARRHYTHMIA: "macro_f1",
    TASK_HEART_DISEASE: "macro_auc",
}


@dataclass(frozen=True)
class TrainConfig:
    """Every hyperparameter of one training run; logged whole as run parameters.

    Attributes
    ----------
    dataset : {"mitdb", "ptb-xl"}
    model : {"gru", "lstm"}
        Recurrent cell.
    hidden_size, num_layers, bidirectional, dropout :
        Architecture (:class:`models.recurrent.RecurrentClassifierConfig`).
    patch_size : int
        Time steps flattened into one recurrent step; 0 picks the dataset default (3 for the
        87-sample MIT-BIH beats at 125 Hz, giving 29 steps of 24 ms; 5 for the 1,000-sample
        PTB-XL records, giving 200 steps of 50 ms).
    epochs, batch_size, lr, weight_decay :
        AdamW optimisation.
    seed : int
        Seeds torch, numpy, random and the shuffling generator.
    patience : int
        Epochs without validation improvement before stopping.
    class_per_epoch : int
        Single-label only: at most this many items of each class per epoch, drawn afresh every
        epoch with the seeded generator (random undersampling of the majority class N; 0 = all).
        It shortens epochs on a CPU and, with the weights below, counters the imbalance.
    class_weight_power, class_weight_cap : float
        Loss weight of class c is ``(n_max / n_c) ** power`` over the per-epoch counts, capped at
        ``cap`` (MIT-BIH: Q has 8 training beats, uncapped its weight would be ~1,000). PTB-XL:
        the BCE ``pos_weight`` is ``(n_neg / n_pos) ** power``, capped the same way.
    rr_features : tuple of str, optional
        MIT-BIH: the subset (and order) of the dataset's RR features to feed the model; the
        model card's preprocessing config lists only these, so serving computes the same.
        None keeps all.
    val_records : tuple of str, optional
        MIT-BIH: DS1 records to validate on instead of the dataset's (the others train).
    beat_normalise : {"dataset", "zscore"}
        MIT-BIH: keep the dataset's beat windows, or z-score each window (removes amplitude
        differences between patients and leads). The model card records the choice, so serving
        z-scores too (z-scoring a median-subtracted window equals z-scoring the raw window).
    augment_scale : float
        Training only: multiply each item's signal channels by a random factor in
        ``[1 - a, 1 + a]`` (amplitude varies with electrodes and patients; 0 = off).
    rr_in_sequence : bool
        MIT-BIH: feed the RR channels through the recurrence at every step (``n_static=0``)
        instead of joining them once before the head.
    signal_dropout : float
        Training only: probability of zeroing an item's whole signal (waveform) channels, so the
        model must also classify from the RR features alone (premature S beats often look
        normal; morphology alone overfits the few training patients). 0 = off.
    evaluate_test : bool
        Evaluate the test split at the end. Off for model-selection runs, which must not see it.
    max_grad_norm : float
        Gradient clipping (recurrent nets; 0 disables).
    num_threads : int
        torch intra-op threads; 0 uses every core.
    """

    dataset: Literal["mitdb", "ptb-xl"] = "mitdb"
    model: Literal["gru", "lstm"] = "gru"
    hidden_size: int = 32
    num_layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.2
    patch_size: int = 0
    epochs: int = 20
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    patience: int = 5
    class_per_epoch: int = 8000
    class_weight_power: float = 0.5
    class_weight_cap: float = 30.0
    rr_features: tuple[str, ...] | None = None
    val_records: tuple[str, ...] | None = None
    beat_normalise: Literal["dataset", "zscore"] = "dataset"
    augment_scale: float = 0.0
    rr_in_sequence: bool = False
    signal_dropout: float = 0.0
    evaluate_test: bool = True
    max_grad_norm: float = 1.0
    num_threads: int = 0

    def __post_init__(self) -> None:
        if self.dataset not in TASKS:
            raise UserError(f"unknown dataset {self.dataset!r}; expected one of {sorted(TASKS)}")
        if self.model not in ("gru", "lstm"):
            raise UserError(f"unknown model {self.model!r}; expected 'gru' or 'lstm'")
        if self.class_per_epoch < 0:
            raise UserError(f"class_per_epoch must be >= 0, got {self.class_per_epoch}")
        for name in ("hidden_size", "num_layers", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0:
            raise UserError(f"lr must be > 0, got {self.lr}")
        if self.patience < 1:
            raise UserError(f"patience must be >= 1, got {self.patience}")
        if self.class_weight_cap < 1:
            raise UserError(f"class_weight_cap must be >= 1, got {self.class_weight_cap}")
        if self.dataset != "mitdb" and (
            self.val_records or self.rr_features or self.beat_normalise != "dataset"
        ):
            raise UserError("--val-records, --rr-features and --beat-normalise apply to mitdb only")
        if self.beat_normalise not in ("dataset", "zscore"):
            raise UserError(
                f"beat_normalise must be 'dataset' or 'zscore', got {self.beat_normalise!r}"
            )
        if not 0 <= self.signal_dropout < 1:
            raise UserError(f"signal_dropout must be in [0, 1), got {self.signal_dropout}")
        if not 0 <= self.augment_scale < 1:
            raise UserError(f"augment_scale must be in [0, 1), got {self.augment_scale}")

    @classmethod
    def recommended(cls, dataset: str, **overrides: Any) -> TrainConfig:
        """The dataset's :data:`RECOMMENDED` configuration with ``overrides`` applied."""
        if dataset not in RECOMMENDED:
            raise UserError(f"unknown dataset {dataset!r}; expected one of {sorted(RECOMMENDED)}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise UserError(f"unknown training options {unknown}")
        return cls(**{**RECOMMENDED[dataset], **overrides, "dataset": dataset})

    @property
    def task(self) -> str:
        return TASKS[self.dataset]

    def resolved_patch_size(self) -> int:
        if self.patch_size > 0:
            return self.patch_size
        return 3 if self.dataset == "mitdb" else 5

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("rr_features", "val_records"):
            d[k] = None if d[k] is None else list(d[k])
        return d


#: Per-dataset configurations behind the reported figures (``bench/train_full.py``); ``ecg train``
#: starts from these. MIT-BIH: chosen by 3-fold patient-grouped cross-validation within DS1
#: (``python -m bench.train_full --select ...``), DS2 never consulted. Mean validation macro-F1
#: over the folds: dataset beat windows 0.388 -> z-scored beats 0.443 -> RR channels fed
#: through the recurrence 0.518 -> 64 units 0.545 (all four RR features 0.540; amplitude
#: augmentation, waveform dropout, stronger class weights and 16 units did not help).
#: The final models validate on DS1 records 124 (RBBB), 220 and 223 while 118, the other RBBB
#: patient of DS1, trains. PTB-XL: fixed beforehand (patches of 5 samples -> 200 steps of 50 ms).
RECOMMENDED: dict[str, dict[str, Any]] = {
    "mitdb": {
        "hidden_size": 64,
        "patch_size": 3,
        "epochs": 25,
        "patience": 6,
        "batch_size": 256,
        "lr": 2e-3,
        "class_per_epoch": 8000,
        "class_weight_power": 0.5,
        "class_weight_cap": 30.0,
        "rr_features": ("pre_rr_local", "post_rr_local"),
        "val_records": ("124", "220", "223"),
        "beat_normalise": "zscore",
        "rr_in_sequence": True,
    },
    "ptb-xl": {
        "hidden_size": 64,
        "patch_size": 5,
        "epochs": 30,
        "patience": 6,
        "batch_size": 64,
        "lr": 2e-3,
        "class_weight_power": 0.5,
        "class_weight_cap": 10.0,
    },
}
