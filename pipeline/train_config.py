"""What ``ecg train`` trains: :class:`TrainConfig` and the recommended per-dataset values.

The configuration is logged with every run (MLflow params ``train.*`` and ``config.json``);
:data:`RECOMMENDED` holds the values behind the reported figures, which ``ecg train`` starts from.
The architecture is a :class:`models.recurrent.RecurrentArch` (``cfg.arch``); what a dataset is
(task, input kind, default patch size) comes from the catalogue, :mod:`models.tasks`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from models.recurrent import RecurrentArch
from models.tasks import DATASETS, DatasetSpec, TaskSpec, UnknownNameError, dataset_spec
from pipeline.dataset_store import InputOptions
from pipeline.errors import UserError

__all__ = ["ARCH_FIELDS", "RECOMMENDED", "TrainConfig"]

#: Names of the architecture fields (``cfg.arch.<name>``), accepted flat by
#: :meth:`TrainConfig.recommended` and :meth:`TrainConfig.updated`.
ARCH_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RecurrentArch))


def _opt(default: Any, help: str, **extra: Any) -> Any:
    """A config field with its command-line help (``ecg train`` builds its options from these)."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class TrainConfig:
    """Every hyperparameter of one training run; logged whole as run parameters.

    Attributes
    ----------
    dataset : str
        A dataset of the catalogue (:data:`models.tasks.DATASETS`): "mitdb" or "ptb-xl".
    arch : RecurrentArch
        Cell, units, layers, direction, dropout and patch size (0: the dataset's default,
        :attr:`models.tasks.DatasetSpec.patch_size`).
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
        Beat datasets: the subset (and order) of the dataset's RR features to feed the model; the
        model card's preprocessing config lists only these, so serving computes the same.
        None keeps all.
    val_records : tuple of str, optional
        Beat datasets: training records to validate on instead of the dataset's (the others
        train).
    beat_normalise : {"dataset", "zscore"}
        Beat datasets: keep the dataset's beat windows, or z-score each window (removes amplitude
        differences between patients and leads). The model card records the choice, so serving
        z-scores too (z-scoring a median-subtracted window equals z-scoring the raw window).
    augment_scale : float
        Training only: multiply each item's signal channels by a random factor in
        ``[1 - a, 1 + a]`` (amplitude varies with electrodes and patients; 0 = off).
    rr_in_sequence : bool
        Beat datasets: feed the RR channels through the recurrence at every step
        (``n_static=0``) instead of joining them once before the head.
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

    dataset: str = "mitdb"
    arch: RecurrentArch = field(default_factory=RecurrentArch)
    epochs: int = _opt(20, "Most epochs.")
    batch_size: int = _opt(256, "Items per batch.")
    lr: float = _opt(2e-3, "AdamW learning rate.")
    weight_decay: float = _opt(1e-4, "AdamW weight decay.")
    seed: int = _opt(0, "Seed of torch, numpy, random and the shuffling.")
    patience: int = _opt(5, "Epochs without validation gain before stopping.")
    class_per_epoch: int = _opt(8000, "Single-label: most items per class per epoch (0: all).")
    class_weight_power: float = _opt(0.5, "Loss weight (n_max / n_c) ** power.")
    class_weight_cap: float = _opt(30.0, "Largest loss weight.")
    rr_features: tuple[str, ...] | None = _opt(
        None, "Beats: comma-separated subset of the dataset's RR features."
    )
    val_records: tuple[str, ...] | None = _opt(
        None, "Beats: comma-separated training records to validate on."
    )
    beat_normalise: Literal["dataset", "zscore"] = _opt(
        "dataset", "Beats: 'dataset' or 'zscore' each beat window."
    )
    augment_scale: float = _opt(0.0, "Train-time amplitude scaling in [1 - a, 1 + a].")
    rr_in_sequence: bool = _opt(False, "Beats: RR channels through the recurrence.")
    signal_dropout: float = _opt(0.0, "Train-time waveform dropout.")
    evaluate_test: bool = _opt(True, "Evaluate the test split at the end.", cli=False)
    max_grad_norm: float = _opt(1.0, "Gradient clipping (0: off).")
    num_threads: int = _opt(0, "torch threads (0: all cores; 1: best on a busy CPU).")

    def __post_init__(self) -> None:
        try:
            spec = dataset_spec(self.dataset)
        except UnknownNameError as err:
            raise UserError(str(err)) from None
        if self.class_per_epoch < 0:
            raise UserError(f"class_per_epoch must be >= 0, got {self.class_per_epoch}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise UserError(f"lr must be > 0, got {self.lr}")
        if self.patience < 1:
            raise UserError(f"patience must be >= 1, got {self.patience}")
        if self.class_weight_cap < 1:
            raise UserError(f"class_weight_cap must be >= 1, got {self.class_weight_cap}")
        if not spec.is_beats and (
            self.val_records or self.rr_features or self.beat_normalise != "dataset"
        ):
            raise UserError(
                "--val-records, --rr-features and --beat-normalise apply to beat datasets "
                f"({', '.join(n for n, d in DATASETS.items() if d.is_beats)}) only"
            )
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
        """The dataset's :data:`RECOMMENDED` configuration with ``overrides`` applied.

        Architecture fields (``cell``, ``hidden_size``, ...) may be given flat.
        """
        if dataset not in RECOMMENDED:
            raise UserError(f"unknown dataset {dataset!r}; expected one of {sorted(RECOMMENDED)}")
        return cls(dataset=dataset).updated(**{**RECOMMENDED[dataset], **overrides})

    def updated(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes``; architecture fields may be given flat (``cell="lstm"``).

        Raises
        ------
        UserError
            Unknown option names or invalid values.
        """
        names = {f.name for f in dataclasses.fields(self)} | set(ARCH_FIELDS)
        unknown = sorted(set(changes) - names)
        if unknown:
            raise UserError(f"unknown training options {unknown}")
        arch_changes = {k: changes.pop(k) for k in ARCH_FIELDS if k in changes}
        try:
            arch = dataclasses.replace(changes.pop("arch", self.arch), **arch_changes)
        except ValueError as err:
            raise UserError(str(err)) from None
        return dataclasses.replace(self, arch=arch, **changes)

    @property
    def spec(self) -> DatasetSpec:
        """The dataset's catalogue entry."""
        return dataset_spec(self.dataset)

    @property
    def task(self) -> TaskSpec:
        return self.spec.task

    @property
    def input_options(self) -> InputOptions:
        """How the model inputs are cut from the dataset's arrays."""
        return InputOptions(rr_features=self.rr_features, beat_normalise=self.beat_normalise)

    def resolved_arch(self) -> RecurrentArch:
        """:attr:`arch` with the dataset's default patch size where it is 0."""
        if self.arch.patch_size > 0:
            return self.arch
        return dataclasses.replace(self.arch, patch_size=self.spec.patch_size)

    def to_dict(self) -> dict[str, Any]:
        """Flat: the architecture fields beside the others (the run's ``train.*`` params)."""
        d = {**dataclasses.asdict(self.arch), **dataclasses.asdict(self)}
        del d["arch"]
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
