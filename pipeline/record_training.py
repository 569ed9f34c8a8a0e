"""Train a :class:`models.record_model.RecordModel` on prepared PTB-XL records.

The pieces are small and shared by the research benchmark (``bench/ptbxl_research.py``) and the
multi-process path (:mod:`pipeline.distributed`):

* :func:`load_record_data` joins the prepared dataset (``ecg prepare ptb-xl``) with age and sex
  from ``ptbxl_database.csv``;
* :func:`train_one_epoch` runs one pass over given indices with random lead-subset masking and
  random dropping of the demographics (any ``nn.Module`` with the record model's ``forward``
  signature, a ``DistributedDataParallel`` wrapper included);
* :func:`predict_logits` scores records for a fixed lead subset, with or without demographics;
* :func:`fit` trains with early stopping on the validation macro-AUC (12 leads) and keeps the
  best epoch's weights.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from models.labels import PTBXL_SUPERCLASSES
from models.record_model import (
    LEAD_SUBSETS,
    PTBXL_LEADS,
    encode_demographics,
    lead_mask,
    sample_lead_masks,
)
from models.record_predictor import SubsetCalibration, calibration_key
from pipeline.errors import UserError

__all__ = [
    "FitResult",
    "RecordData",
    "RecordTrainConfig",
    "calibrate",
    "final_test_metrics",
    "fit",
    "heart_disease_labels",
    "load_record_data",
    "macro_auc",
    "pos_weights",
    "predict_logits",
    "train_one_epoch",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordTrainConfig:
    """Optimisation and augmentation of one record-model training (logged whole).

    Attributes
    ----------
    epochs, batch_size, lr, weight_decay :
        AdamW; ``lr`` is the peak of the schedule.
    schedule : {"constant", "onecycle"}
        Learning-rate schedule over ``epochs`` (one-cycle: warm-up then cosine decay, as the
        PTB-XL benchmark trains).
    patience : int
        Epochs without a better validation macro-AUC before stopping.
    pos_weight_power, pos_weight_cap : float
        BCE ``pos_weight_c = min((n_neg / n_pos) ** power, cap)`` per class.
    lead_masking : bool
        Train on random lead subsets (:func:`models.record_model.sample_lead_masks`).
    p_all_leads : float
        With lead masking: probability of all 12 leads for a training item.
    demographics_dropout : float
        Probability of hiding an item's age and sex (flag 0) in training.
    max_grad_norm : float
        Gradient clipping (0 = off).
    seed : int
    """

    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    schedule: Literal["constant", "onecycle"] = "onecycle"
    patience: int = 5
    pos_weight_power: float = 0.5
    pos_weight_cap: float = 10.0
    lead_masking: bool = True
    p_all_leads: float = 0.3
    demographics_dropout: float = 0.3
    max_grad_norm: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise UserError(f"lr must be > 0, got {self.lr}")
        if self.schedule not in ("constant", "onecycle"):
            raise UserError(f"schedule must be 'constant' or 'onecycle', got {self.schedule!r}")
        for name in ("p_all_leads", "demographics_dropout"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class RecordData:
    """Records of one split in memory.

    Attributes
    ----------
    x : np.ndarray
        float32 ``(n, 1000, 12)``: 10 s at 100 Hz, z-scored per lead, :data:`PTBXL_LEADS` order.
    y : np.ndarray
        float32 ``(n, 5)`` multi-hot superclasses.
    demographics : np.ndarray
        float32 ``(n, 3)`` (:func:`models.record_model.encode_demographics`).
    record, patient : np.ndarray
        str ``(n,)``: ecg_id and patient id.
    """

    x: np.ndarray
    y: np.ndarray
    demographics: np.ndarray
    record: np.ndarray
    patient: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, idx: np.ndarray | Sequence[int]) -> RecordData:
        """The items at ``idx``."""
        i = np.asarray(idx)
        return RecordData(
            self.x[i], self.y[i], self.demographics[i], self.record[i], self.patient[i]
        )


def load_record_data(
    dataset_dir: Path | str, table_csv: Path | str, splits: Sequence[str] = ("train", "val")
) -> dict[str, RecordData]:
    """The prepared PTB-XL dataset's splits, each joined with age and sex.

    Parameters
    ----------
    dataset_dir : Path or str
        ``<processed>/ptb-xl`` (``ecg prepare ptb-xl``).
    table_csv : Path or str
        PTB-XL's ``ptbxl_database.csv`` (columns ``ecg_id``, ``age``, ``sex``).
    splits : sequence of {"train", "val", "test"}
        Which splits to load (leave "test" out until the final evaluation).

    Raises
    ------
    UserError
        Not a PTB-XL dataset, leads in another order, or the table lacks age / sex.
    """
    import pandas as pd

    from pipeline.dataset_store import load_dataset

    ds = load_dataset(Path(dataset_dir))
    if ds.name != "ptb-xl":
        raise UserError(f"{ds.path} holds a {ds.name!r} dataset, not 'ptb-xl'")
    leads = tuple(lead.upper() for lead in ds.manifest["leads"])
    if leads != PTBXL_LEADS:
        raise UserError(f"{ds.path}: leads {list(leads)}, expected {list(PTBXL_LEADS)}")
    try:
        table = pd.read_csv(table_csv, index_col="ecg_id", usecols=["ecg_id", "age", "sex"])
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read age and sex from {table_csv}: {err}") from None
    a = ds.arrays
    ids = a["record"].astype(np.int64)
    age = table["age"].reindex(ids).to_numpy(dtype=np.float64)
    sex = table["sex"].reindex(ids).to_numpy(dtype=np.float64)
    demo = encode_demographics(age, sex)
    out = {}
    for s in splits:
        m = ds.mask(s)
        if not m.any():
            raise UserError(f"dataset {ds.path} has no {s} records; re-run `ecg prepare ptb-xl`")
        out[s] = RecordData(
            np.ascontiguousarray(a["signals"][m], dtype=np.float32),
            a["labels"][m].astype(np.float32),
            demo[m],
            a["record"][m],
            a["patient"][m],
        )
    return out


# --------------------------------------------------------------------------- training
def pos_weights(y: np.ndarray, power: float, cap: float) -> torch.Tensor:
    """BCE ``pos_weight (K,)``: ``min((n_neg / n_pos) ** power, cap)`` per class of ``y (n, K)``."""
    pos = y.sum(axis=0).astype(np.float64)
    neg = y.shape[0] - pos
    ratio = np.divide(neg, pos, out=np.full(y.shape[1], np.inf), where=pos > 0)
    return torch.from_numpy(np.minimum(np.power(ratio, power), cap).astype(np.float32))


def train_one_epoch(
    model: nn.Module,
    data: RecordData,
    order: torch.Tensor,
    cfg: RecordTrainConfig,
    opt: torch.optim.Optimizer,
    loss_fn: nn.Module,
    gen: torch.Generator,
    *,
    scheduler: Any = None,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> float:
    """One pass over ``data`` in ``order``; returns the mean training loss.

    Each batch gets random lead masks (when ``cfg.lead_masking``) and has its demographics hidden
    with probability ``cfg.demographics_dropout``; both draw from ``gen``.
    """
    model.train()
    x_all, y_all = torch.from_numpy(data.x), torch.from_numpy(data.y)
    d_all = torch.from_numpy(data.demographics)
    total, n = 0.0, int(order.shape[0])
    n_leads = data.x.shape[2]
    for b, start in enumerate(range(0, n, cfg.batch_size)):
        idx = order[start : start + cfg.batch_size]
        xb, yb, db = x_all[idx], y_all[idx], d_all[idx].clone()  # (B,T,12) (B,5) (B,3)
        k = xb.shape[0]
        if cfg.lead_masking:
            mb = sample_lead_masks(k, gen, p_all=cfg.p_all_leads, n_leads=n_leads)
        else:
            mb = torch.ones(k, n_leads)
        if cfg.demographics_dropout > 0:
            db[torch.rand(k, generator=gen) < cfg.demographics_dropout] = 0.0
        xb, yb, mb, db = (t.to(device) for t in (xb, yb, mb, db))
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb, mb, db), yb)
        loss.backward()
        if cfg.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        if scheduler is not None:
            scheduler.step()
        total += float(loss.detach()) * k
        if on_batch is not None:
            on_batch(b)
    return total / max(n, 1)


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    data: RecordData,
    leads: Sequence[str] = PTBXL_LEADS,
    *,
    demographics: bool = True,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Logits ``(n, n_classes)`` of every record, reading only ``leads``.

    Parameters
    ----------
    leads : sequence of str
        The lead subset the records are scored with (the others are zeroed and masked).
    demographics : bool
        Give the model age and sex (False: hidden, flag 0).
    """
    model.eval()
    mask = torch.from_numpy(lead_mask(leads, PTBXL_LEADS))  # (1, 12)
    out = []
    for s in range(0, len(data), batch_size):
        xb = torch.from_numpy(data.x[s : s + batch_size])
        db = torch.from_numpy(data.demographics[s : s + batch_size])
        if not demographics:
            db = torch.zeros_like(db)
        mb = mask.expand(xb.shape[0], -1)
        out.append(model(xb.to(device), mb.to(device), db.to(device)).float().cpu().numpy())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out)


def macro_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Mean ROC-AUC over the classes of multi-hot ``y (n, K)`` that have both outcomes."""
    from sklearn.metrics import roc_auc_score

    aucs = [
        roc_auc_score(y[:, k], score[:, k]) for k in range(y.shape[1]) if 0 < y[:, k].sum() < len(y)
    ]
    return float(np.mean(aucs)) if aucs else float("nan")


@dataclass
class FitResult:
    """What :func:`fit` produced (the model holds the best epoch's weights afterwards).

    Attributes
    ----------
    best_epoch : int
    best_val_macro_auc : float
        12-lead validation macro-AUC (with demographics when the model reads them).
    epoch_seconds : list of float
        Training + validation time of each epoch.
    history : list of dict
        Per-epoch metrics (train_loss, val_macro_auc, ...).
    """

    best_epoch: int
    best_val_macro_auc: float
    epoch_seconds: list[float] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)


def fit(
    model: nn.Module,
    train: RecordData,
    val: RecordData,
    cfg: RecordTrainConfig,
    *,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    val_subsets: dict[str, Sequence[str]] | None = None,
) -> FitResult:
    """Train with early stopping on the 12-lead validation macro-AUC; restore the best weights.

    Parameters
    ----------
    on_epoch : callable, optional
        ``f(epoch, metrics)`` after each epoch (e.g. ``mlflow.log_metrics``).
    val_subsets : dict of str to leads, optional
        Extra lead subsets whose validation macro-AUC is computed each epoch (logged only; the
        selection stays on 12 leads).
    """
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    loss_fn = nn.BCEWithLogitsLoss(
        pos_weight=pos_weights(train.y, cfg.pos_weight_power, cfg.pos_weight_cap)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * -(-len(train) // cfg.batch_size)
    scheduler = (
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
        if cfg.schedule == "onecycle"
        else None
    )
    uses_demo = bool(getattr(getattr(model, "config", None), "demographics", False))
    best, best_epoch, stale = -np.inf, 0, 0
    best_state = copy.deepcopy(model.state_dict())
    result = FitResult(0, float("nan"))
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        order = torch.randperm(len(train), generator=gen)
        train_loss = train_one_epoch(
            model, train, order, cfg, opt, loss_fn, gen, scheduler=scheduler
        )
        t_train = time.perf_counter() - t0
        metrics = {"train_loss": train_loss, "train_time_s": t_train}
        score = macro_auc(val.y, predict_logits(model, val, demographics=uses_demo))
        metrics["val_macro_auc"] = score
        for name, leads in (val_subsets or {}).items():
            metrics[f"val_macro_auc_{name}"] = macro_auc(
                val.y, predict_logits(model, val, leads, demographics=uses_demo)
            )
        seconds = time.perf_counter() - t0
        metrics["epoch_time_s"] = seconds
        result.epoch_seconds.append(seconds)
        result.history.append(metrics)
        improved = score > best
        if improved:
            best, best_epoch, stale = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        logger.info(
            "epoch %d: train loss %.4f, val macro-AUC %.4f%s (%.1f s)",
            epoch, train_loss, score, " *" if improved else "", seconds,
        )  # fmt: skip
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if stale >= cfg.patience:
            logger.info("early stop: no val macro-AUC improvement for %d epochs", stale)
            break
    if best_epoch == 0:
        raise UserError("validation macro-AUC was undefined in every epoch")
    model.load_state_dict(best_state)
    result.best_epoch, result.best_val_macro_auc = best_epoch, float(best)
    return result


# --------------------------------------------------------------------------- calibration
def heart_disease_labels(y: np.ndarray) -> np.ndarray:
    """Heart disease = any non-NORM superclass: bool ``(n,)`` from multi-hot ``y (n, 5)``."""
    norm = PTBXL_SUPERCLASSES.index("NORM")
    others = [k for k in range(y.shape[1]) if k != norm]
    return np.asarray(y[:, others].max(axis=1) > 0)


def calibrate(model: nn.Module, val: RecordData) -> dict[str, SubsetCalibration]:
    """Temperature and heart-disease threshold per lead subset, fitted on validation records.

    For every :data:`models.record_model.LEAD_SUBSETS` entry, and with / without demographics
    when the model reads them: one temperature minimising the validation BCE, then the threshold
    on the calibrated ``1 - P(NORM)`` that maximises Youden's J. Keys: :func:`calibration_key`.
    """
    from pipeline.record_metrics import fit_temperature, sigmoid, youden_threshold

    norm = PTBXL_SUPERCLASSES.index("NORM")
    uses_demo = bool(getattr(getattr(model, "config", None), "demographics", False))
    disease = heart_disease_labels(val.y)
    out = {}
    for name, leads in LEAD_SUBSETS.items():
        for demo in (True, False) if uses_demo else (False,):
            z = predict_logits(model, val, leads, demographics=demo)
            t = fit_temperature(z, val.y)
            thr = youden_threshold(disease, 1.0 - sigmoid(z[:, norm] / t))
            out[calibration_key(name, demo)] = SubsetCalibration(t, thr)
    return out


def final_test_metrics(
    model: nn.Module, test: RecordData, calibration: dict[str, SubsetCalibration]
) -> dict[str, float]:
    """Test-split figures of a calibrated model, per lead subset (flat, for ``mlflow``).

    For every :data:`models.record_model.LEAD_SUBSETS` entry (with demographics when the model
    reads them, and without, keyed ``<subset>_no-demographics``): ``test_macro_auc_<key>``,
    ``test_heart_disease_auc_<key>`` (``1 - P(NORM)``), the yes/no decision's
    ``test_hd_{accuracy,precision,recall,specificity}_<key>`` at the calibration's threshold
    (chosen on the validation split) and ``test_ece_<key>`` (calibrated probabilities). Read the
    test split once, at the end of a run; bootstrap intervals are ``bench/ptbxl_final.py``'s.
    """
    from sklearn.metrics import roc_auc_score

    from pipeline.record_metrics import decision_metrics, expected_calibration_error, sigmoid

    norm = PTBXL_SUPERCLASSES.index("NORM")
    uses_demo = bool(getattr(getattr(model, "config", None), "demographics", False))
    disease = heart_disease_labels(test.y)
    out: dict[str, float] = {}
    for name, leads in LEAD_SUBSETS.items():
        for demo in (True, False) if uses_demo else (False,):
            key = calibration_key(name, demo)
            cal = calibration.get(key, SubsetCalibration())
            z = predict_logits(model, test, leads, demographics=demo)
            p = sigmoid(z / cal.temperature)
            hd = 1.0 - p[:, norm]
            k = key.replace("/", "_")
            out[f"test_macro_auc_{k}"] = macro_auc(test.y, z)
            out[f"test_heart_disease_auc_{k}"] = (
                float(roc_auc_score(disease, hd)) if 0 < disease.sum() < len(disease) else np.nan
            )
            decision = decision_metrics(disease, hd, cal.threshold)
            for m in ("accuracy", "precision", "recall", "specificity"):
                out[f"test_hd_{m}_{k}"] = float(decision[m])
            out[f"test_ece_{k}"] = expected_calibration_error(test.y, p)
    return out


def key_metrics(demographics: bool) -> list[str]:
    """The runs table's key-figure columns of a record-model run (what :func:`final_test_metrics`
    logs): the selection metric, then test macro-AUC and heart-disease AUC at 12, 6 and 1 leads
    (with demographics when the model reads them, as the card's default)."""
    cols = ["best_val_macro_auc"]
    for name in LEAD_SUBSETS:
        k = calibration_key(name, demographics).replace("/", "_")
        cols += [f"test_macro_auc_{k}", f"test_heart_disease_auc_{k}"]
    return cols
