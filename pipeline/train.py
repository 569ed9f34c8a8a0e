"""Train a GRU / LSTM classifier on a prepared dataset and track it in MLflow: ``ecg train``.

The loop reads top to bottom (after nanoGPT's ``train.py``):

1. load the dataset (``pipeline.datasets.load_dataset``) and its train / validation splits
   (the test split is not touched until the end);
2. seed everything, build :class:`models.recurrent.RecurrentClassifier` from the config;
3. per epoch: shuffle with a seeded generator, train with a class-weighted loss, evaluate on
   validation under ``torch.inference_mode()``, log the epoch's metrics with ``step=epoch``, keep
   a copy of the weights only when the validation metric improves (macro-F1 over N, S, V, F for
   MIT-BIH beats, macro ROC-AUC for PTB-XL; never accuracy), stop after ``patience`` epochs
   without improvement;
4. restore the best weights, evaluate validation and then, once, the test split (MIT-BIH DS2 /
   PTB-XL fold 10), log metrics, figures and reports, and log the model with its
   :class:`models.predictor.ModelCard`;
5. close the run FINISHED, then optionally register it (:mod:`pipeline.registry`).

Ctrl-C ends the run as KILLED and registers nothing; any other exception ends it as FAILED.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.predictor import TASK_HEART_DISEASE, ModelCard, log_ecg_model
from models.recurrent import RecurrentClassifier, RecurrentClassifierConfig
from pipeline.errors import UserError
from pipeline.evaluate import (
    EvaluationResult,
    evaluate_arrhythmia,
    evaluate_heart_disease,
    log_evaluation,
    predict_proba,
)
from pipeline.train_config import RECOMMENDED, SELECTION_METRICS, TrainConfig

__all__ = [
    "RECOMMENDED",
    "BatchCallback",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "class_weights",
    "train",
]

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
        Final metrics of the restored best model.
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
    registration: Any = None


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the MLflow run ``run_id`` was ended as KILLED."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"training interrupted; MLflow run {run_id} marked KILLED")
        self.run_id = run_id


# --------------------------------------------------------------------------- data
@dataclass
class _Split:
    x: np.ndarray  # float32 (n, T, C)
    y: np.ndarray  # int64 (n,) or float32 (n, K)
    records: list[str]


def _load(cfg: TrainConfig, data_dir: Path) -> Any:
    from pipeline.datasets import load_dataset

    ds = load_dataset(Path(data_dir) / "processed" / cfg.dataset)
    if ds.name != cfg.dataset:
        raise UserError(f"{ds.path} holds a {ds.name!r} dataset, not {cfg.dataset!r}")
    return ds


def _rr_columns(ds: Any, cfg: TrainConfig) -> list[int] | None:
    """Indices of the chosen RR features among the dataset's (None: keep all)."""
    if cfg.rr_features is None:
        return None
    have = list(ds.preprocess.rr_features)
    unknown = [f for f in cfg.rr_features if f not in have]
    if unknown:
        raise UserError(
            f"RR features {unknown} are not in dataset {ds.path} (it has {have}); "
            "re-prepare it with them or choose among these"
        )
    return [have.index(f) for f in cfg.rr_features]


def _split_masks(ds: Any, cfg: TrainConfig) -> dict[str, np.ndarray]:
    split = ds.arrays["split"]
    masks = {s: split == s for s in ("train", "val", "test")}
    if cfg.val_records:
        records = ds.arrays["record"]
        ds1 = masks["train"] | masks["val"]
        available = sorted(set(records[ds1].tolist()))
        unknown = sorted(set(cfg.val_records) - set(available))
        if unknown:
            raise UserError(
                f"--val-records {unknown} are not training/validation (DS1) records of "
                f"{ds.path}; choose among {available}"
            )
        is_val = np.isin(records, list(cfg.val_records)) & ds1
        masks["val"], masks["train"] = is_val, ds1 & ~is_val
    for s in ("train", "val"):
        if not masks[s].any():
            raise UserError(f"dataset {ds.path} has no {s} items; re-run `ecg prepare {ds.name}`")
    return masks


def _inputs(
    ds: Any, mask: np.ndarray, rr_cols: list[int] | None, cfg: TrainConfig | None = None
) -> _Split:
    from models.preprocessing import assemble_beat_inputs, normalise_beats

    a = ds.arrays
    if ds.name == "mitdb":
        rr = a["rr"][mask] if rr_cols is None else a["rr"][mask][:, rr_cols]
        waves = a["waves"][mask]
        if cfg is not None and cfg.beat_normalise == "zscore":
            waves = normalise_beats(waves, "zscore")  # what serving's beat_windows does
        x = assemble_beat_inputs(waves, rr)
    else:
        x = np.ascontiguousarray(a["signals"][mask], dtype=np.float32)
    return _Split(x, a["labels"][mask], sorted(set(a["record"][mask].tolist())))


# --------------------------------------------------------------------------- helpers
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


def _epoch_order(y: np.ndarray, cfg: TrainConfig, task: str, gen: torch.Generator) -> torch.Tensor:
    """Indices of one epoch's training items, shuffled with ``gen``.

    Single-label with ``cfg.class_per_epoch``: each class contributes at most that many items,
    a fresh random subset every epoch (so over the epochs the model sees all N beats).
    """
    n = y.shape[0]
    if task == TASK_HEART_DISEASE or cfg.class_per_epoch <= 0:
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


def _evaluate(
    task: str, model: nn.Module, data: _Split, classes: list[str], split: str, figures: bool
) -> tuple[EvaluationResult, np.ndarray]:
    multilabel = task == TASK_HEART_DISEASE
    proba = predict_proba(model, data.x, multilabel=multilabel)
    if multilabel:
        res = evaluate_heart_disease(data.y, proba, classes, split=split, figures=figures)
    else:
        res = evaluate_arrhythmia(data.y, proba, classes, split=split, figures=figures)
    return res, proba


@torch.inference_mode()
def _val_loss(model: nn.Module, loss_fn: nn.Module, data: _Split, batch_size: int = 1024) -> float:
    model.eval()
    total, n = 0.0, data.x.shape[0]
    for s in range(0, n, batch_size):
        xb = torch.from_numpy(data.x[s : s + batch_size])
        yb = torch.from_numpy(data.y[s : s + batch_size])
        total += float(loss_fn(model(xb), yb)) * xb.shape[0]
    return total / max(n, 1)


def _flat(prefix: str, d: dict[str, Any]) -> dict[str, str]:
    return {
        f"{prefix}.{k}": json.dumps(v) if isinstance(v, list | tuple | dict) else str(v)
        for k, v in d.items()
    }


# --------------------------------------------------------------------------- the loop
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
        MLflow experiment (default ``ecg-arrhythmia`` / ``ecg-heart-disease``).
    tracking_uri : str, optional
        Overrides :func:`pipeline.tracking.resolve_tracking_uri`.
    register : bool
        Register the model (``ecg-arrhythmia`` / ``ecg-heart-disease``) and move ``champion`` to
        it if it beats the current champion on the validation metric.
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
    from pipeline.tracking import tracking_scope

    with tracking_scope(tracking_uri) as uri:
        return _train(
            cfg,
            data_dir=data_dir,
            experiment=experiment,
            uri=uri,
            register=register,
            progress=progress,
            callbacks=callbacks,
        )


def _train(
    cfg: TrainConfig,
    *,
    data_dir: Path | str,
    experiment: str | None,
    uri: str,
    register: bool,
    progress: bool,
    callbacks: Sequence[BatchCallback],
) -> TrainResult:
    import mlflow
    from tqdm.auto import tqdm

    from pipeline.tracking import DEFAULT_EXPERIMENTS, ensure_experiment

    task = cfg.task
    ds = _load(cfg, Path(data_dir))
    rr_cols = _rr_columns(ds, cfg)
    masks = _split_masks(ds, cfg)
    tr, va = _inputs(ds, masks["train"], rr_cols, cfg), _inputs(ds, masks["val"], rr_cols, cfg)
    classes = list(ds.classes)
    preprocess = ds.preprocess
    if rr_cols is not None:
        preprocess = dataclasses.replace(preprocess, rr_features=tuple(cfg.rr_features or ()))
    if cfg.beat_normalise == "zscore":
        preprocess = dataclasses.replace(preprocess, beat_normalise="zscore")
    n_static = len(preprocess.rr_features) if cfg.dataset == "mitdb" else 0
    if cfg.rr_in_sequence:
        n_static = 0
    arch = RecurrentClassifierConfig(
        n_inputs=tr.x.shape[2],
        n_classes=len(classes),
        n_static=n_static,
        cell=cfg.model,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        bidirectional=cfg.bidirectional,
        dropout=cfg.dropout,
        patch_size=cfg.resolved_patch_size(),
    )
    if arch.patch_size > tr.x.shape[1]:
        raise UserError(
            f"--patch-size {arch.patch_size} is longer than one input ({tr.x.shape[1]} steps); "
            f"choose at most {tr.x.shape[1]}"
        )
    card = ModelCard(
        task=task,  # type: ignore[arg-type]
        classes=tuple(classes),
        leads=tuple(ds.manifest["leads"]),
        preprocess=preprocess,
        architecture=arch,
        input_shape=(int(tr.x.shape[1]), int(tr.x.shape[2])),
    )

    exp_id = ensure_experiment(experiment or DEFAULT_EXPERIMENTS[cfg.dataset], uri)
    torch.set_num_threads(cfg.num_threads or os.cpu_count() or 1)
    _seed_everything(cfg.seed)
    model = RecurrentClassifier(arch)
    multilabel = task == TASK_HEART_DISEASE
    weights = torch.from_numpy(
        class_weights(
            tr.y, len(classes), cfg.class_weight_power, cfg.class_weight_cap,
            per_class_limit=0 if multilabel else cfg.class_per_epoch,
        )
    )  # fmt: skip
    loss_fn: nn.Module = (
        nn.BCEWithLogitsLoss(pos_weight=weights)
        if multilabel
        else nn.CrossEntropyLoss(weight=weights)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)

    run = mlflow.start_run(
        experiment_id=exp_id, run_name=f"{cfg.dataset}-{cfg.model}-h{cfg.hidden_size}-s{cfg.seed}"
    )
    run_id = run.info.run_id
    logger.info("MLflow run %s in %s (experiment %s)", run_id, uri, exp_id)
    try:
        mlflow.set_tags(
            {
                "ecg.task": task,
                "ecg.dataset": cfg.dataset,
                "ecg.dataset_sha256": ds.content_sha256,
                "ecg.selection_metric": f"val_{SELECTION_METRICS[task]}",
                "ecg.model": cfg.model,
            }
        )
        mlflow.log_params(
            {
                **_flat("train", cfg.to_dict()),
                **_flat("arch", arch.to_dict()),
                **_flat("preprocess", preprocess.to_dict()),
                "dataset": cfg.dataset,
                "dataset_sha256": ds.content_sha256,
                "dataset_path": str(ds.path),
                "dataset_r_peaks": ds.manifest.get("r_peaks", "n/a"),
                "train_records": json.dumps(tr.records),
                "val_records": json.dumps(va.records),
                "n_train": tr.x.shape[0],
                "n_val": va.x.shape[0],
                "class_weights": json.dumps([round(float(w), 4) for w in weights]),
                "num_threads": torch.get_num_threads(),
            }
        )
        mlflow.log_dict(
            {
                "train": cfg.to_dict(),
                "architecture": arch.to_dict(),
                "preprocess": preprocess.to_dict(),
                "model_card": card.to_metadata(),
                "dataset": {
                    "path": str(ds.path),
                    "content_sha256": ds.content_sha256,
                    "r_peaks": ds.manifest.get("r_peaks"),
                    "detection": ds.manifest.get("detection"),
                },
            },
            "config.json",
        )
        with _ctrl_c_at_batch_ends() as stop:
            result = _fit_and_log(
                cfg, task, model, loss_fn, opt, gen, tr, va, classes, card, ds, masks, rr_cols,
                progress, (*callbacks, stop.check), tqdm,
            )  # fmt: skip
            stop.check()  # a Ctrl-C during the final evaluation still means "do not keep this"
    except KeyboardInterrupt:
        mlflow.set_tag("ecg.end", "interrupted (KeyboardInterrupt)")
        mlflow.end_run(status="KILLED")
        logger.warning("interrupted: MLflow run %s marked KILLED; nothing registered", run_id)
        raise TrainingInterrupted(run_id) from None
    except BaseException as err:
        mlflow.set_tag("ecg.end", f"failed: {type(err).__name__}: {err}"[:5000])
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")
    result.run_id = run_id
    if register:
        from pipeline.registry import register_run

        result.registration = register_run(run_id, tracking_uri=uri)
    return result


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


def _fit_and_log(
    cfg: TrainConfig,
    task: str,
    model: RecurrentClassifier,
    loss_fn: nn.Module,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    tr: _Split,
    va: _Split,
    classes: list[str],
    card: ModelCard,
    ds: Any,
    masks: dict[str, np.ndarray],
    rr_cols: list[int] | None,
    progress: bool,
    callbacks: Sequence[BatchCallback],
    tqdm: Any,
) -> TrainResult:
    import mlflow

    selection = SELECTION_METRICS[task]
    x_train, y_train = torch.from_numpy(tr.x), torch.from_numpy(tr.y)
    # Signal channels: the waveform (mitdb: channel 0) or all leads (ptb-xl).
    n_signal = 1 if cfg.dataset == "mitdb" else tr.x.shape[2]
    best_val, best_epoch, best_state = -np.inf, 0, copy.deepcopy(model.state_dict())
    epoch_seconds: list[float] = []
    stale = 0
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = _epoch_order(tr.y, cfg, task, gen)  # seeded: the same order on every run
        n = int(order.shape[0])
        total = 0.0
        bar = tqdm(
            range(0, n, cfg.batch_size),
            desc=f"epoch {epoch}/{cfg.epochs}",
            unit="batch",
            leave=False,
            disable=not progress,
            mininterval=1.0,
        )
        for b, start in enumerate(bar):
            idx = order[start : start + cfg.batch_size]
            xb, yb = x_train[idx], y_train[idx]  # (B, T, C), (B,) or (B, K)
            if cfg.augment_scale > 0 or cfg.signal_dropout > 0:
                xb = _augment(xb, n_signal, cfg, gen)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            if cfg.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            opt.step()
            batch_loss = loss.item()
            total += batch_loss * xb.shape[0]
            if b % 20 == 0:
                bar.set_postfix(loss=f"{batch_loss:.4f}")
            for cb in callbacks:
                cb(epoch, b)
        bar.close()
        train_loss = total / n
        val_res, _ = _evaluate(task, model, va, classes, "val", figures=False)
        val_loss = _val_loss(model, loss_fn, va)
        seconds = time.perf_counter() - t0
        epoch_seconds.append(seconds)
        score = val_res.metrics[selection]
        improved = score > best_val
        if improved:
            # The only checkpoint: weights of the best validation epoch so far.
            best_val, best_epoch, stale = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
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
            epoch, train_loss, val_loss, selection, score, " *" if improved else "", seconds,
        )  # fmt: skip
        if stale >= cfg.patience:
            logger.info("early stop: no val %s improvement for %d epochs", selection, stale)
            break

    if best_epoch == 0:  # the selection metric was never finite: nothing worth keeping
        raise UserError(
            f"validation {selection} was undefined in every epoch (e.g. a class without positive "
            "examples in the validation split); choose other validation records"
        )
    model.load_state_dict(best_state)
    mlflow.log_metrics(
        {
            # What promotion compares (pipeline.registry): the selection metric of the best epoch.
            f"best_val_{selection}": float(best_val),
            "best_epoch": best_epoch,
            "epochs_run": len(epoch_seconds),
            "mean_epoch_time_s": float(np.mean(epoch_seconds)),
            "model_n_parameters": model.n_parameters(),
            "model_size_bytes": _model_bytes(model),
        }
    )
    mlflow.set_tag("ecg.best_epoch", str(best_epoch))

    val_res, _ = _evaluate(task, model, va, classes, "val", figures=True)
    log_evaluation(val_res, prefix="final_val")  # "val_*" holds the per-epoch history
    val_res.close()
    # The test split, once, after model selection.
    test_metrics: dict[str, float] = {}
    te = _inputs(ds, masks["test"] if cfg.evaluate_test else masks["test"] & False, rr_cols, cfg)
    if te.x.shape[0]:
        test_res, _ = _evaluate(task, model, te, classes, "test", figures=True)
        log_evaluation(test_res)
        test_metrics = dict(test_res.metrics)
        test_res.close()
    else:
        logger.warning(
            "no test evaluation (evaluate_test=%s, dataset %s)", cfg.evaluate_test, ds.path
        )
    info = log_ecg_model(model, card, va.x[:5])
    return TrainResult(
        run_id="",
        model_uri=str(info.model_uri),
        best_epoch=best_epoch,
        selection_metric=f"val_{selection}",
        best_val=float(best_val),
        val=dict(val_res.metrics),
        test=test_metrics,
        epoch_seconds=epoch_seconds,
    )
