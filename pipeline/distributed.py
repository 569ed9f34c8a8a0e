"""Multi-process data-parallel training of the record model (``torchrun``, DDP).

For machines with many cores or several GPUs::

    torchrun --nproc-per-node 2 -m pipeline.distributed --data-dir data            # CPU, gloo
    torchrun --nproc-per-node 4 -m pipeline.distributed --data-dir data --device cuda  # NCCL

Every process loads the prepared PTB-XL dataset (``ecg prepare ptb-xl``) and trains a replica of
:class:`models.record_model.RecordModel` wrapped in ``DistributedDataParallel`` on its
``DistributedSampler`` shard of folds 1-8 (gradients are averaged across processes, so one epoch
covers the training set once in total). Rank 0 alone validates on fold 9 after each epoch,
broadcasts the early-stopping decision, keeps the best epoch's weights, calibrates them on fold
9, logs the single MLflow run (parameters, per-epoch metrics, the model with its card) and, with
``--register``, registers it (:func:`pipeline.registry.register_run`). Without ``torchrun``
(no ``WORLD_SIZE`` in the environment) it runs as one process.

The test split (fold 10) is read only with ``--evaluate-test`` (``ecg train-record`` sets it),
once, after the model is chosen and calibrated on fold 9; ``bench/ptbxl_final.py`` adds bootstrap
intervals.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from models.labels import PTBXL_SUPERCLASSES
from models.record_model import PTBXL_LEADS, RecordModel, RecordModelConfig
from models.record_predictor import RecordModelCard, log_record_model
from pipeline.errors import UserError
from pipeline.record_training import (
    RecordTrainConfig,
    calibrate,
    final_test_metrics,
    load_record_data,
    macro_auc,
    pos_weights,
    predict_logits,
    train_one_epoch,
)

__all__ = ["DistributedResult", "main", "train_distributed"]

logger = logging.getLogger(__name__)

#: MLflow experiment of distributed runs (the heart-disease experiment of ``ecg train``).
EXPERIMENT = "ecg-heart-disease"


@dataclass
class DistributedResult:
    """What rank 0 produced (other ranks get ``run_id=None``).

    Attributes
    ----------
    run_id : str or None
    model_uri : str or None
        ``models:/<model_id>`` of the logged model.
    best_epoch : int
    best_val_macro_auc : float
    epoch_seconds : list of float
    world_size : int
    registration : Any
    test_metrics : dict of str to float, optional
        Fold-10 figures, when the run read the test split.
    """

    run_id: str | None
    model_uri: str | None
    best_epoch: int
    best_val_macro_auc: float
    epoch_seconds: list[float]
    world_size: int
    registration: Any = None
    test_metrics: dict[str, float] | None = None


def _setup(device: str) -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes (or none); returns rank, world size, device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available; use --device cpu")
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    elif device == "cpu":
        dev = torch.device("cpu")
    else:
        raise UserError(f"unknown device {device!r}; expected 'cpu' or 'cuda'")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    return rank, world, dev


def train_distributed(
    data_dir: Path,
    table_csv: Path,
    *,
    arch: RecordModelConfig,
    cfg: RecordTrainConfig,
    device: str = "cpu",
    tracking_uri: str | None = None,
    experiment: str = EXPERIMENT,
    register: str | None = None,
    num_threads: int = 1,
    evaluate_test: bool = False,
) -> DistributedResult:
    """Train one record model with DDP across the processes ``torchrun`` started.

    Parameters
    ----------
    data_dir : Path
        Holds ``processed/ptb-xl``.
    table_csv : Path
        PTB-XL's ``ptbxl_database.csv`` (age and sex).
    arch, cfg :
        Architecture and optimisation (``cfg.batch_size`` is per process).
    device : {"cpu", "cuda"}
        gloo on CPU, NCCL on CUDA (one GPU per process, ``LOCAL_RANK``).
    tracking_uri : str, optional
        Where rank 0 logs (:func:`pipeline.tracking.resolve_tracking_uri` when None).
    experiment : str
    register : str, optional
        Register the logged model under this name (champion alias moved only if better).
    num_threads : int
        torch threads per process.
    evaluate_test : bool
        After calibration, rank 0 reads the test split (fold 10) once and logs its figures
        (:func:`pipeline.record_training.final_test_metrics`); nothing is chosen on them.
    """
    torch.set_num_threads(num_threads)
    rank, world, dev = _setup(device)
    try:
        return _train(data_dir, table_csv, arch, cfg, rank, world, dev, tracking_uri, experiment,
                      register, evaluate_test)  # fmt: skip
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _train(
    data_dir: Path,
    table_csv: Path,
    arch: RecordModelConfig,
    cfg: RecordTrainConfig,
    rank: int,
    world: int,
    dev: torch.device,
    tracking_uri: str | None,
    experiment: str,
    register: str | None,
    evaluate_test: bool = False,
) -> DistributedResult:
    import contextlib

    data = load_record_data(data_dir / "processed" / "ptb-xl", table_csv, ("train", "val"))
    train, val = data["train"], data["val"]
    torch.manual_seed(cfg.seed)  # identical initial weights (DDP also broadcasts rank 0's)
    model = RecordModel(arch).to(dev)
    ddp: nn.Module = (
        DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
        if world > 1
        else model
    )
    loss_fn = nn.BCEWithLogitsLoss(
        pos_weight=pos_weights(train.y, cfg.pos_weight_power, cfg.pos_weight_cap).to(dev)
    )
    opt = torch.optim.AdamW(ddp.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # A sampler needs only len(); range stands in for the in-memory training set.
    sampler: DistributedSampler[int] = DistributedSampler(
        range(len(train)),  # type: ignore[arg-type]
        num_replicas=world,
        rank=rank,
        shuffle=True,
        seed=cfg.seed,
    )
    steps_per_epoch = -(-len(sampler) // cfg.batch_size)
    scheduler = (
        torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch
        )
        if cfg.schedule == "onecycle"
        else None
    )
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)  # masks differ across ranks

    scope: Any = contextlib.nullcontext(None)
    if rank == 0:
        from pipeline.tracking import tracking_scope

        scope = tracking_scope(tracking_uri)
    with scope as uri:
        run = None
        if rank == 0:
            import mlflow

            from pipeline.record_training import key_metrics
            from pipeline.tracking import ensure_experiment, runs_table_view

            exp_id = ensure_experiment(experiment, uri)
            view = runs_table_view(
                exp_id,
                uri,
                key_metrics(arch.demographics),
                "best_val_macro_auc",
                "Record-model key figures",
            )
            logger.info("runs table with the key figures: <mlflow ui>/%s", view)
            run = mlflow.start_run(
                experiment_id=exp_id,
                run_name=f"ptb-xl-crnn-{arch.cell}-ddp{world}",
            )
            mlflow.set_tags(
                {
                    "ecg.task": "heart-disease",
                    "ecg.dataset": "ptb-xl",
                    "ecg.selection_metric": "val_macro_auc",
                    "ecg.model": f"crnn-{arch.cell}",
                    "ecg.distributed": f"{dev.type} x{world}",
                }
            )
            mlflow.log_params(
                {
                    **{f"arch.{k}": str(v) for k, v in arch.to_dict().items()},
                    **{f"train.{k}": str(v) for k, v in cfg.to_dict().items()},
                    "world_size": world,
                    "backend": dist.get_backend() if dist.is_initialized() else "none",
                    "device": dev.type,
                    "n_train": len(train),
                    "n_val": len(val),
                    "num_threads": torch.get_num_threads(),
                }
            )
            from pipeline.dataset_store import load_dataset
            from pipeline.tracking import log_dataset_input

            ds = load_dataset(data_dir / "processed" / "ptb-xl", verify=False)
            log_dataset_input(ds.name, ds.path, ds.content_sha256)
        try:
            result = _loop(ddp, model, train, val, cfg, sampler, opt, scheduler, loss_fn, gen,
                           rank, world, dev)  # fmt: skip
            if rank == 0:
                import mlflow

                model.cpu().eval()
                card = RecordModelCard(
                    classes=tuple(PTBXL_SUPERCLASSES),
                    leads=PTBXL_LEADS,
                    preprocess=_preprocess(data_dir),
                    architecture=arch,
                    input_shape=(int(train.x.shape[1]), len(PTBXL_LEADS)),
                    calibration=calibrate(model, val),
                )
                mlflow.log_metrics(
                    {
                        "best_val_macro_auc": result.best_val_macro_auc,
                        "best_epoch": result.best_epoch,
                        "epochs_run": len(result.epoch_seconds),
                        "mean_epoch_time_s": float(np.mean(result.epoch_seconds)),
                        "model_n_parameters": model.n_parameters(),
                    }
                )
                if evaluate_test:
                    result.test_metrics = _evaluate_test(model, data_dir, table_csv, card)
                info = log_record_model(model, card)
                result.model_uri = str(info.model_uri)
                result.run_id = mlflow.active_run().info.run_id  # type: ignore[union-attr]
                mlflow.end_run(status="FINISHED")
                if register:
                    from pipeline.registry import register_run

                    result.registration = register_run(
                        result.run_id, model_name=register, tracking_uri=uri
                    )
        except BaseException:
            if rank == 0 and run is not None:
                import mlflow

                mlflow.end_run(status="FAILED")
            raise
    if world > 1:
        dist.barrier()
    return result


def _evaluate_test(
    model: RecordModel, data_dir: Path, table_csv: Path, card: RecordModelCard
) -> dict[str, float]:
    """Read the test split once, log its figures to the active run and return them."""
    import mlflow

    test = load_record_data(data_dir / "processed" / "ptb-xl", table_csv, ("test",))["test"]
    logger.info("test split (fold 10), read once: %d records", len(test))
    metrics = final_test_metrics(model, test, card.calibration)
    mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
    mlflow.log_param("n_test", len(test))
    for key in ("12-lead", "limb-6", "lead-I"):
        k = key if model.config.demographics else f"{key}_no-demographics"
        logger.info(
            "test %s: macro-AUC %.4f, heart-disease AUC %.4f, accuracy %.3f",
            k, metrics[f"test_macro_auc_{k}"], metrics[f"test_heart_disease_auc_{k}"],
            metrics[f"test_hd_accuracy_{k}"],
        )  # fmt: skip
    return metrics


def _preprocess(data_dir: Path) -> Any:
    from pipeline.dataset_store import load_dataset

    return load_dataset(data_dir / "processed" / "ptb-xl").preprocess


def _loop(
    ddp: nn.Module,
    model: RecordModel,
    train: Any,
    val: Any,
    cfg: RecordTrainConfig,
    sampler: DistributedSampler[int],
    opt: torch.optim.Optimizer,
    scheduler: Any,
    loss_fn: nn.Module,
    gen: torch.Generator,
    rank: int,
    world: int,
    dev: torch.device,
) -> DistributedResult:
    best, best_epoch, stale = -np.inf, 0, 0
    best_state = copy.deepcopy(model.state_dict())
    seconds: list[float] = []
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), dtype=torch.long)  # this rank's shard, reshuffled
        train_loss = train_one_epoch(
            ddp, train, order, cfg, opt, loss_fn, gen, scheduler=scheduler, device=dev
        )
        # Rank 0 validates (BatchNorm running statistics differ slightly across replicas) and
        # tells the others whether to stop, so that every process runs the same epochs.
        decision = torch.zeros(1, device=dev)
        if rank == 0:
            score = macro_auc(
                val.y,
                predict_logits(model, val, demographics=model.config.demographics, device=dev),
            )
            seconds.append(time.perf_counter() - t0)
            if score > best:
                best, best_epoch, stale = score, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
            import mlflow

            mlflow.log_metrics(
                {"train_loss": train_loss, "val_macro_auc": score, "epoch_time_s": seconds[-1]},
                step=epoch,
            )
            logger.info(
                "epoch %d: train loss %.4f (rank 0), val macro-AUC %.4f (%.1f s, %d processes)",
                epoch, train_loss, score, seconds[-1], world,
            )  # fmt: skip
            decision[0] = float(stale >= cfg.patience)
        if world > 1:
            dist.broadcast(decision, src=0)
        if decision.item() > 0:
            break
    if rank == 0:
        if best_epoch == 0:
            raise UserError("validation macro-AUC was undefined in every epoch")
        model.load_state_dict(best_state)
    return DistributedResult(None, None, best_epoch, float(best), seconds, world)


def main(argv: list[str] | None = None) -> int:
    """``torchrun ... -m pipeline.distributed``; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument(
        "--table",
        type=Path,
        default=None,
        help="ptbxl_database.csv (default: <data-dir>/raw/ptb-xl/1.0.1/ptbxl_database.csv)",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--cell", choices=["gru", "lstm"], default="gru")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--no-demographics", action="store_true")
    p.add_argument("--no-lead-masking", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--experiment", default=EXPERIMENT)
    p.add_argument("--register", default=None, metavar="NAME", help="register the model as NAME")
    p.add_argument(
        "--evaluate-test", action="store_true", help="read fold 10 once at the end and log it"
    )
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {os.environ.get('RANK', '0')}] %(name)s: %(message)s",
    )
    table = args.table or args.data_dir / "raw" / "ptb-xl" / "1.0.1" / "ptbxl_database.csv"
    arch = RecordModelConfig(cell=args.cell, demographics=not args.no_demographics)
    cfg = replace(
        RecordTrainConfig(),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        lead_masking=not args.no_lead_masking,
        demographics_dropout=0.0 if args.no_demographics else 0.3,
        seed=args.seed,
    )
    try:
        res = train_distributed(
            args.data_dir, table, arch=arch, cfg=cfg, device=args.device,
            tracking_uri=args.tracking_uri, experiment=args.experiment, register=args.register,
            num_threads=args.threads, evaluate_test=args.evaluate_test,
        )  # fmt: skip
    except UserError as err:
        logger.error("%s", err)
        return 2
    if res.run_id:
        logger.info(
            "run %s: model %s, best epoch %d, val macro-AUC %.4f",
            res.run_id, res.model_uri, res.best_epoch, res.best_val_macro_auc,
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
