"""Train a GRU / LSTM classifier on a prepared dataset and track it in MLflow: ``ecg train``.

:func:`train` reads top to bottom (after nanoGPT's ``train.py``):

1. load the dataset and cut its splits once (:meth:`pipeline.dataset_store.Dataset.splits`);
   build the train and validation inputs (the test split waits for the end of the run);
2. seed everything, build :class:`models.recurrent.RecurrentClassifier` from the config, the
   class-weighted loss and AdamW;
3. open one MLflow run; per epoch: shuffle with a seeded generator, train, evaluate on
   validation under ``torch.inference_mode()``, log the epoch's metrics with ``step=epoch``, keep
   a copy of the weights only when the task's selection metric improves (:mod:`models.tasks`:
   macro-F1 over N, S, V, F for beats, macro ROC-AUC for PTB-XL; never accuracy), stop after
   ``patience`` epochs without improvement;
4. restore the best weights, evaluate validation and then, once, the test split (MIT-BIH DS2 /
   PTB-XL fold 10), log metrics, figures and the model with its
   :class:`models.predictor.ModelCard`;
5. close the run FINISHED, then optionally register it (:mod:`pipeline.registry`).

Ctrl-C ends the run as KILLED and registers nothing; any other exception ends it as FAILED.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from models.predictor import ModelCard, log_ecg_model
from models.recurrent import RecurrentClassifier, RecurrentClassifierConfig
from models.tasks import (
    TAG_BEST_EPOCH,
    TAG_CELL,
    TAG_DATASET,
    TAG_DATASET_SHA256,
    TAG_END,
    TAG_SELECTION_METRIC,
    TAG_TASK,
    TaskSpec,
)
from pipeline.dataset_store import DatasetSplits, Split, load_dataset
from pipeline.errors import UserError
from pipeline.evaluate import (
    EvaluationResult,
    evaluate_arrhythmia,
    evaluate_heart_disease,
    log_evaluation,
    predict_proba,
)
from pipeline.train_config import TrainConfig

if TYPE_CHECKING:
    from pipeline.registry import Registration

__all__ = ["BatchCallback", "TrainResult", "TrainingInterrupted", "class_weights", "train"]

logger = logging.getLogger(__name__)

#: Called after every training batch with (epoch, batch index); a test hook (e.g. to interrupt).
BatchCallback = Callable[[int, int], None]


@dataclass
class TrainResult:
    """What :func:`train` produced.

    Attributes
    ----------
    run_id : str
    model_uri : str
        ``models:/<model_id>`` of the logged model.
    best_epoch : int
    selection_metric : str
        e.g. ``val_macro_f1``.
    best_val : float
        Its value at ``best_epoch``.
    val, test : dict of str to float
        Final metrics of the restored best model (``test`` empty when it was not evaluated).
    epoch_seconds : list of float
    registration : pipeline.registry.Registration or None
    """

    run_id: str
    model_uri: str
    best_epoch: int
    selection_metric: str
    best_val: float
    val: dict[str, float]
    test: dict[str, float]
    epoch_seconds: list[float] = field(default_factory=list)
    registration: Registration | None = None


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the MLflow run ``run_id`` was ended as KILLED."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"training interrupted; MLflow run {run_id} marked KILLED")
        self.run_id = run_id


# =========================================================================== the run
def train(
    cfg: TrainConfig,
    *,
    data_dir: Path | str,
    experiment: str | None = None,
    tracking_uri: str | None = None,
    register: bool = False,
    progress: bool = True,
    callbacks: Sequence[BatchCallback] = (),
) -> TrainResult:
    """Train, evaluate and log one model; optionally register it.

    Parameters
    ----------
    cfg : TrainConfig
    data_dir : Path or str
        Holds ``processed/<cfg.dataset>/`` (``ecg prepare``'s output).
    experiment : str, optional
        MLflow experiment (default: the task's, ``ecg-arrhythmia`` / ``ecg-heart-disease``).
    tracking_uri : str, optional
        Overrides :func:`pipeline.tracking.resolve_tracking_uri`.
    register : bool
        Register the model (the task's registered-model name) and move ``champion`` per
        :mod:`pipeline.registry`'s rule: only past a champion of the same kind measured on the
        same validation set with a lower validation metric (a single-beat model never displaces
        a beat-sequence champion).
    progress : bool
        Show a tqdm bar per epoch.
    callbacks : sequence of callables
        ``f(epoch, batch)`` after each training batch.

    Raises
    ------
    UserError
        Missing, damaged or unsuitable dataset; bad configuration.
    TrainingInterrupted
        On Ctrl-C (the run is KILLED, nothing registered).
    """
    from pipeline.tracking import ensure_experiment, runs_table_view, tracking_scope

    with tracking_scope(tracking_uri) as uri:
        # 1. data: splits cut once; train and validation inputs now, the test split at the end
        splits = _load_splits(cfg, Path(data_dir))
        tr, va = splits.split("train"), splits.split("val")
        card = _model_card(cfg, splits, tr)
        # 2. model, loss and optimiser, seeded (this order is what makes runs reproducible)
        exp_id = ensure_experiment(experiment or cfg.task.experiment, uri)
        view = runs_table_view(exp_id, uri, _key_metrics(cfg, card), cfg.task.best_metric)
        logger.info("runs table with the key figures: <mlflow ui>/%s", view)
        torch.set_num_threads(cfg.num_threads or os.cpu_count() or 1)
        _seed_everything(cfg.seed)
        loop = _Loop.create(cfg, RecurrentClassifier(card.architecture), splits, (tr, va), progress)
        # 3-4. one MLflow run: set-up, epochs, final evaluation (the test split, once), model
        run_name = f"{cfg.dataset}-{cfg.arch.cell}-h{cfg.arch.hidden_size}-s{cfg.seed}"
        with _tracked_run(exp_id, run_name, uri) as run_id:
            _log_setup(cfg, splits, card, tr, va, loop.weights)
            with _ctrl_c_at_batch_ends() as stop:
                best = loop.fit((*callbacks, stop.check))
                result = _finish(loop, best, splits, card)
                stop.check()  # a Ctrl-C during the final evaluation still means "do not keep it"
        result.run_id = run_id
        # 5. the registry: champion only if better on validation
        if register:
            from pipeline.registry import register_run

            result.registration = register_run(run_id, tracking_uri=uri)
        return result


def _load_splits(cfg: TrainConfig, data_dir: Path) -> DatasetSplits:
    ds = load_dataset(data_dir / "processed" / cfg.dataset)
    if ds.name != cfg.dataset:
        raise UserError(f"{ds.path} holds a {ds.name!r} dataset, not {cfg.dataset!r}")
    return ds.splits(cfg.val_records, cfg.input_options)


def _model_card(cfg: TrainConfig, splits: DatasetSplits, tr: Split) -> ModelCard:
    """The card logged with the model: task, classes, leads, preprocessing, architecture."""
    ds, preprocess = splits.dataset, splits.preprocess
    static_rr = ds.spec.is_beats and not cfg.rr_in_sequence
    arch = RecurrentClassifierConfig.build(
        cfg.resolved_arch(),
        n_inputs=int(tr.x.shape[2]),
        n_classes=len(ds.classes),
        n_static=len(preprocess.rr_features) if static_rr else 0,
    )
    if arch.patch_size > tr.x.shape[1]:
        raise UserError(
            f"--patch-size {arch.patch_size} is longer than one input ({tr.x.shape[1]} steps); "
            f"choose at most {tr.x.shape[1]}"
        )
    return ModelCard(
        task=cfg.task.name,
        classes=ds.classes,
        leads=tuple(ds.manifest["leads"]),
        preprocess=preprocess,
        architecture=arch,
        input_shape=(int(tr.x.shape[1]), int(tr.x.shape[2])),
    )


@contextlib.contextmanager
def _tracked_run(experiment_id: str, run_name: str, uri: str) -> Iterator[str]:
    """One MLflow run: FINISHED when the block ends, KILLED on Ctrl-C, FAILED on any error."""
    import mlflow

    run_id = mlflow.start_run(experiment_id=experiment_id, run_name=run_name).info.run_id
    logger.info("MLflow run %s in %s (experiment %s)", run_id, uri, experiment_id)
    try:
        yield run_id
    except KeyboardInterrupt:
        mlflow.set_tag(TAG_END, "interrupted (KeyboardInterrupt)")
        mlflow.end_run(status="KILLED")
        logger.warning("interrupted: MLflow run %s marked KILLED; nothing registered", run_id)
        raise TrainingInterrupted(run_id) from None
    except BaseException as err:
        mlflow.set_tag(TAG_END, f"failed: {type(err).__name__}: {err}"[:5000])
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")


def _log_setup(
    cfg: TrainConfig,
    splits: DatasetSplits,
    card: ModelCard,
    tr: Split,
    va: Split,
    weights: torch.Tensor,
) -> None:
    """Tags, params, ``config.json`` and the split records (an artifact: thousands of names)."""
    import mlflow

    from pipeline.tracking import log_dataset_input

    ds = splits.dataset
    mlflow.set_tags(
        {
            TAG_TASK: cfg.task.name,
            TAG_DATASET: cfg.dataset,
            TAG_DATASET_SHA256: ds.content_sha256,
            TAG_SELECTION_METRIC: cfg.task.selection_metric,
            TAG_CELL: cfg.arch.cell,
        }
    )
    mlflow.log_params(
        {
            **_flat("train", cfg.to_dict()),
            **_flat("arch", card.architecture.to_dict()),
            **_flat("preprocess", card.preprocess.to_dict()),
            "dataset": cfg.dataset,
            "dataset_sha256": ds.content_sha256,
            "dataset_path": str(ds.path),
            "dataset_r_peaks": ds.manifest.get("r_peaks", "n/a"),
            "n_train": tr.x.shape[0],
            "n_val": va.x.shape[0],
            "class_weights": _json([round(float(w), 4) for w in weights]),
            "num_threads": torch.get_num_threads(),
        }
    )
    dataset_info = {
        "path": str(ds.path),
        "content_sha256": ds.content_sha256,
        "r_peaks": ds.manifest.get("r_peaks"),
        "detection": ds.manifest.get("detection"),
    }
    mlflow.log_dict(
        {
            "train": cfg.to_dict(),
            "architecture": card.architecture.to_dict(),
            "preprocess": card.preprocess.to_dict(),
            "model_card": card.to_metadata(),
            "dataset": dataset_info,
        },
        "config.json",
    )
    mlflow.log_dict(splits.records(), "records.json")
    log_dataset_input(ds.name, ds.path, ds.content_sha256)


def _key_metrics(cfg: TrainConfig, card: ModelCard) -> list[str]:
    """The runs table's columns: the selection metric, then test Se/PPV per class (beats) or
    test macro-AUC and per-class AUC (records)."""
    if cfg.task.multilabel:
        per_class = [f"test_{c}_auc" for c in card.classes]
        return [cfg.task.best_metric, "test_macro_auc", *per_class]
    se_ppv = [f"test_{c}_{m}" for c in card.classes for m in ("recall", "precision")]
    return [cfg.task.best_metric, "test_macro_f1", *se_ppv]


# =========================================================================== the loop
@dataclass
class _Best:
    """The best validation epoch so far and the weights it had (the only checkpoint)."""

    epoch: int
    value: float
    state: dict[str, Any]
    epoch_seconds: list[float]


@dataclass
class _Loop:
    """Model, loss, optimiser and data of one training run."""

    cfg: TrainConfig
    model: RecurrentClassifier
    loss_fn: nn.Module
    opt: torch.optim.Optimizer
    gen: torch.Generator
    weights: torch.Tensor
    classes: tuple[str, ...]
    n_signal: int  # leading input channels that carry the signal (augmentation acts on them)
    tr: Split
    va: Split
    progress: bool

    @classmethod
    def create(
        cls,
        cfg: TrainConfig,
        model: RecurrentClassifier,
        splits: DatasetSplits,
        train_val: tuple[Split, Split],
        progress: bool,
    ) -> _Loop:
        """Class-weighted loss (cross-entropy, or BCE for multi-label tasks), AdamW, generator."""
        (tr, va), task, n_classes = train_val, cfg.task, model.config.n_classes
        limit = 0 if task.multilabel else cfg.class_per_epoch
        weights = torch.from_numpy(
            class_weights(tr.y, n_classes, cfg.class_weight_power, cfg.class_weight_cap, limit)
        )
        loss_fn: nn.Module = (
            nn.BCEWithLogitsLoss(pos_weight=weights)
            if task.multilabel
            else nn.CrossEntropyLoss(weight=weights)
        )
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(cfg.seed)
        classes, n_signal = splits.dataset.classes, splits.n_signal_channels
        return cls(cfg, model, loss_fn, opt, gen, weights, classes, n_signal, tr, va, progress)

    @property
    def task(self) -> TaskSpec:
        return self.cfg.task

    def fit(self, callbacks: Sequence[BatchCallback]) -> _Best:
        """Epochs until ``cfg.epochs`` or ``cfg.patience`` epochs without improvement."""
        import mlflow

        cfg, metric = self.cfg, self.task.metric
        best = _Best(0, -np.inf, copy.deepcopy(self.model.state_dict()), [])
        stale = 0
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            train_loss = self.train_epoch(epoch, callbacks)
            val_res = self.evaluate(self.va, figures=False)
            val_loss = self.val_loss()
            seconds = time.perf_counter() - t0
            best.epoch_seconds.append(seconds)
            score = val_res.metrics[metric]
            improved = score > best.value
            if improved:  # the only checkpoint: weights of the best validation epoch so far
                best.epoch, best.value, stale = epoch, score, 0
                best.state = copy.deepcopy(self.model.state_dict())
            else:
                stale += 1
            mlflow.log_metrics(
                {
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "epoch_time_s": seconds,
                    **{f"val_{k}": v for k, v in val_res.metrics.items() if np.isfinite(v)},
                },
                step=epoch,
            )
            logger.info(
                "epoch %d: train loss %.4f, val loss %.4f, val %s %.4f%s (%.1f s)",
                epoch, train_loss, val_loss, metric, score, " *" if improved else "", seconds,
            )  # fmt: skip
            if stale >= cfg.patience:
                logger.info("early stop: no val %s improvement for %d epochs", metric, stale)
                break
        return best

    def train_epoch(self, epoch: int, callbacks: Sequence[BatchCallback]) -> float:
        """One pass over this epoch's (seeded) order of training items; the mean loss."""
        from tqdm.auto import tqdm

        cfg, model = self.cfg, self.model
        x_train, y_train = torch.from_numpy(self.tr.x), torch.from_numpy(self.tr.y)
        model.train()
        order = _epoch_order(self.tr.y, cfg, self.task, self.gen)  # the same on every run
        n, total = int(order.shape[0]), 0.0
        bar = tqdm(
            range(0, n, cfg.batch_size), desc=f"epoch {epoch}/{cfg.epochs}", unit="batch",
            leave=False, disable=not self.progress, mininterval=1.0,
        )  # fmt: skip
        for b, start in enumerate(bar):
            idx = order[start : start + cfg.batch_size]
            xb, yb = x_train[idx], y_train[idx]  # (B, T, C), (B,) or (B, K)
            if cfg.augment_scale > 0 or cfg.signal_dropout > 0:
                xb = _augment(xb, self.n_signal, cfg, self.gen)
            self.opt.zero_grad(set_to_none=True)
            loss = self.loss_fn(model(xb), yb)
            loss.backward()
            if cfg.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            self.opt.step()
            batch_loss = loss.item()
            total += batch_loss * xb.shape[0]
            if b % 20 == 0:
                bar.set_postfix(loss=f"{batch_loss:.4f}")
            for cb in callbacks:
                cb(epoch, b)
        bar.close()
        return total / n

    def evaluate(self, data: Split, *, figures: bool) -> EvaluationResult:
        """The task's metrics (and figures) of the model on ``data``."""
        classes = list(self.classes)
        proba = predict_proba(self.model, data.x, multilabel=self.task.multilabel)
        if self.task.multilabel:
            return evaluate_heart_disease(data.y, proba, classes, split=data.name, figures=figures)
        return evaluate_arrhythmia(data.y, proba, classes, split=data.name, figures=figures)

    @torch.inference_mode()
    def val_loss(self, batch_size: int = 1024) -> float:
        """Mean loss on the validation split."""
        self.model.eval()
        total, n = 0.0, self.va.x.shape[0]
        for s in range(0, n, batch_size):
            xb = torch.from_numpy(self.va.x[s : s + batch_size])
            yb = torch.from_numpy(self.va.y[s : s + batch_size])
            total += float(self.loss_fn(self.model(xb), yb)) * xb.shape[0]
        return total / max(n, 1)


def _finish(loop: _Loop, best: _Best, splits: DatasetSplits, card: ModelCard) -> TrainResult:
    """Restore the best weights; final validation, the test split once, the model."""
    import mlflow

    task, model = loop.task, loop.model
    if best.epoch == 0:  # the selection metric was never finite: nothing worth keeping
        raise UserError(
            f"validation {task.metric} was undefined in every epoch (e.g. a class without "
            "positive examples in the validation split); choose other validation records"
        )
    model.load_state_dict(best.state)
    mlflow.log_metrics(
        {
            # What promotion compares (pipeline.registry): the selection metric of the best epoch.
            task.best_metric: float(best.value),
            "best_epoch": best.epoch,
            "epochs_run": len(best.epoch_seconds),
            "mean_epoch_time_s": float(np.mean(best.epoch_seconds)),
            "model_n_parameters": model.n_parameters(),
            "model_size_bytes": _model_bytes(model),
        }
    )
    mlflow.set_tag(TAG_BEST_EPOCH, str(best.epoch))
    val_res = loop.evaluate(loop.va, figures=True)
    log_evaluation(val_res, prefix="final_val")  # "val_*" holds the per-epoch history
    val_res.close()
    test_metrics = _evaluate_test(loop, splits)
    info = log_ecg_model(model, card, loop.va.x[:5])
    return TrainResult(
        run_id="",
        model_uri=str(info.model_uri),
        best_epoch=best.epoch,
        selection_metric=task.selection_metric,
        best_val=float(best.value),
        val=dict(val_res.metrics),
        test=test_metrics,
        epoch_seconds=best.epoch_seconds,
    )


def _evaluate_test(loop: _Loop, splits: DatasetSplits) -> dict[str, float]:
    """The test split, read once, after model selection (unless ``evaluate_test`` is off)."""
    te = splits.split("test") if loop.cfg.evaluate_test else None
    if te is None or not te.x.shape[0]:
        logger.warning(
            "no test evaluation (evaluate_test=%s, dataset %s)",
            loop.cfg.evaluate_test,
            splits.dataset.path,
        )
        return {}
    test_res = loop.evaluate(te, figures=True)
    log_evaluation(test_res)
    test_res.close()
    return dict(test_res.metrics)


# =========================================================================== helpers
def class_weights(
    y: np.ndarray, n_classes: int, power: float, cap: float, per_class_limit: int = 0
) -> np.ndarray:
    """Loss weights against class imbalance.

    Parameters
    ----------
    y : np.ndarray
        int64 ``(n,)`` class indices (single-label) or ``(n, K)`` multi-hot (multi-label).
    n_classes : int
    power, cap : float
        Single-label: ``w_c = min((n_max / n_c) ** power, cap)``; classes absent from ``y``
        get ``cap``. Multi-label: ``pos_weight_c = min((n_neg / n_pos) ** power, cap)``.
    per_class_limit : int
        Single-label: counts are first capped at this (the per-epoch undersampling; 0 = none).

    Returns
    -------
    np.ndarray
        float32 ``(n_classes,)``.
    """
    if y.ndim == 1:
        counts = np.bincount(y, minlength=n_classes).astype(np.float64)
        if per_class_limit > 0:
            counts = np.minimum(counts, per_class_limit)
        ratio = np.divide(counts.max(), counts, out=np.full(n_classes, np.inf), where=counts > 0)
    else:
        pos = y.sum(axis=0).astype(np.float64)
        neg = y.shape[0] - pos
        ratio = np.divide(neg, pos, out=np.full(n_classes, np.inf), where=pos > 0)
    return np.minimum(np.power(ratio, power), cap).astype(np.float32)


def _epoch_order(
    y: np.ndarray, cfg: TrainConfig, task: TaskSpec, gen: torch.Generator
) -> torch.Tensor:
    """Indices of one epoch's training items, shuffled with ``gen``.

    Single-label with ``cfg.class_per_epoch``: each class contributes at most that many items,
    a fresh random subset every epoch (so over the epochs the model sees all N beats).
    """
    n = y.shape[0]
    if task.multilabel or cfg.class_per_epoch <= 0:
        return torch.randperm(n, generator=gen)
    parts = []
    labels = torch.from_numpy(y)
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        if idx.shape[0] > cfg.class_per_epoch:
            idx = idx[torch.randperm(idx.shape[0], generator=gen)[: cfg.class_per_epoch]]
        parts.append(idx)
    chosen = torch.cat(parts)
    return chosen[torch.randperm(chosen.shape[0], generator=gen)]


def _augment(
    xb: torch.Tensor, n_signal: int, cfg: TrainConfig, gen: torch.Generator
) -> torch.Tensor:
    """Training-time changes to the first ``n_signal`` channels of ``(B, T, C)`` inputs.

    Each item's signal is scaled by a factor in ``[1 - augment_scale, 1 + augment_scale]`` and,
    with probability ``signal_dropout``, zeroed. Other (RR) channels are untouched.
    """
    factor = torch.ones(xb.shape[0], 1, 1)
    if cfg.augment_scale > 0:
        factor = factor + cfg.augment_scale * (2.0 * torch.rand(factor.shape, generator=gen) - 1.0)
    if cfg.signal_dropout > 0:
        factor = factor * (torch.rand(factor.shape, generator=gen) >= cfg.signal_dropout)
    return torch.cat([xb[:, :, :n_signal] * factor, xb[:, :, n_signal:]], dim=2)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _model_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


def _flat(prefix: str, d: dict[str, Any]) -> dict[str, str]:
    return {
        f"{prefix}.{k}": _json(v) if isinstance(v, list | tuple | dict) else str(v)
        for k, v in d.items()
    }


# =========================================================================== Ctrl-C
class _StopRequest:
    """Set by Ctrl-C; :meth:`check` raises ``KeyboardInterrupt`` at a safe point."""

    def __init__(self) -> None:
        self.requested = False

    def check(self, *_: int) -> None:
        if self.requested:
            raise KeyboardInterrupt


@contextlib.contextmanager
def _ctrl_c_at_batch_ends() -> Iterator[_StopRequest]:
    """Turn the first Ctrl-C (SIGINT) into a stop at the end of the current batch.

    A ``KeyboardInterrupt`` raised at an arbitrary point can land inside an MLflow store write
    and leave its database locked, so that marking the run KILLED then hangs. The first Ctrl-C
    only sets a flag that the training loop checks after every batch; a second one interrupts at
    once. Outside the main thread signals cannot be handled, and nothing is installed.
    """
    stop = _StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def on_sigint(signum: int, frame: Any) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.requested = True
        logger.warning("Ctrl-C: stopping after this batch (press again to stop at once)")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
