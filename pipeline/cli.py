"""The ``ecg`` command line: thin typer commands over the pipeline modules.

Heavy imports (torch, mlflow, wfdb) happen inside each command so ``ecg --help`` stays fast.
Errors the user can fix (:class:`pipeline.errors.UserError`) end as one red line and exit code 2.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.errors import UserError
from pipeline.settings import get_settings

__all__ = ["app"]

app = typer.Typer(
    help="ECG heart-disease prediction: download PhysioNet data, prepare datasets, train, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _tracking_errors() -> tuple[type[Exception], ...]:
    """What a command that talks to MLflow reports as one line: ours, and MLflow's own (an
    unreachable tracking server, a missing model or version)."""
    from mlflow.exceptions import MlflowException

    return (UserError, MlflowException)


def _fail(err: Exception) -> typer.Exit:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


# --------------------------------------------------------------------------- download
@app.command()
def download(
    database: Annotated[str, typer.Argument(help="mitdb, ptb-xl, ptbdb, svdb or nstdb.")],
    version: Annotated[
        str | None, typer.Option(help="Database version (default: latest known).")
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option("--base-url", help="PhysioNet or mirror base URL (env ECG_PHYSIONET_URL)."),
    ] = None,
    records: Annotated[
        str | None, typer.Option(help="Comma-separated record names to limit the download to.")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, max=32, help="Parallel downloads.")] = 8,
    dest: Annotated[
        Path | None, typer.Option(help="Raw data root (default: <data_dir>/raw).")
    ] = None,
    rate: Annotated[
        list[int] | None,
        typer.Option(help="PTB-XL only: sampling rate(s) to fetch, 100 and/or 500 (default 100)."),
    ] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
) -> None:
    """Download a PhysioNet database version, verified against its SHA256SUMS.txt."""
    from pipeline.download import download_database

    settings = get_settings()
    try:
        report = download_database(
            database,
            dest_root=dest or settings.raw_dir,
            base_url=base_url or settings.physionet_url,
            version=version,
            records=[r.strip() for r in records.split(",") if r.strip()] if records else None,
            workers=workers,
            sampling_rates=rate or None,
            progress=False if no_progress else None,
        )
    except UserError as err:
        raise _fail(err) from None
    typer.echo(report.summary())


# --------------------------------------------------------------------------- prepare
@app.command()
def prepare(
    dataset: Annotated[str, typer.Argument(help="mitdb or ptb-xl.")],
    raw_dir: Annotated[
        Path | None, typer.Option(help="Raw data root (default: <data_dir>/raw).")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option(help="Processed root (default: <data_dir>/processed).")
    ] = None,
    r_peaks: Annotated[
        str,
        typer.Option(
            help="mitdb: centre beats on the reference annotations ('annotated') or on the "
            "detector's R peaks, as the service does without given peaks ('detected')."
        ),
    ] = "annotated",
) -> None:
    """Build a versioned, patient-wise split dataset from downloaded records."""
    from pipeline.datasets import prepare_dataset

    settings = get_settings()
    try:
        path = prepare_dataset(
            dataset,
            raw_root=raw_dir or settings.raw_dir,
            processed_root=out_dir or settings.processed_dir,
            r_peaks=r_peaks,
        )
    except UserError as err:
        raise _fail(err) from None
    typer.echo(f"dataset written to {path}")


# --------------------------------------------------------------------------- train
def _csv(value: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


def _config_options() -> list[inspect.Parameter]:
    """One ``--option`` per field of ``TrainConfig`` and its ``RecurrentArch`` (declared there,
    with their help): left out, a field keeps the dataset's recommended value."""
    import dataclasses
    import typing

    from models.recurrent import RecurrentArch
    from pipeline.train_config import TrainConfig

    out = []
    for cls in (RecurrentArch, TrainConfig):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in ("dataset", "arch") or not f.metadata.get("cli", True):
                continue
            hint = hints[f.name]
            kind = hint if hint in (bool, int, float) else str  # tuples: comma-separated
            flags = [f.metadata.get("flag", f"--{f.name.replace('_', '-')}")]
            if f.name == "cell":
                flags.append("--model")  # the name before the catalogue; kept for scripts
            if kind is bool:
                flags = [f"{flags[0]}/--no-{flags[0][2:]}"]
            option = typer.Option(*flags, help=f.metadata.get("help"))
            annotation = Annotated[kind | None, option]  # type: ignore[valid-type]
            out.append(inspect.Parameter(f.name, _KW, default=None, annotation=annotation))
    return out


_KW = inspect.Parameter.KEYWORD_ONLY
#: ``ecg train``'s own options (the rest are the configuration's, :func:`_config_options`).
_TRAIN_RUN_OPTIONS: list[inspect.Parameter] = [
    inspect.Parameter("dataset", _KW, annotation=Annotated[
        str, typer.Option(help="A catalogue dataset: mitdb (AAMI beats), ptb-xl (superclasses).")
    ]),
    inspect.Parameter("register", _KW, default=True, annotation=Annotated[
        bool, typer.Option(help="Register the model; move @champion only if it is better on the "
                           "same validation set (a single-beat model never displaces a "
                           "beat-sequence champion).")
    ]),
    inspect.Parameter("data_dir", _KW, default=None, annotation=Annotated[
        Path | None, typer.Option(help="Holds processed/<dataset>/ (default: ECG_DATA_DIR).")
    ]),
    inspect.Parameter("experiment", _KW, default=None, annotation=Annotated[
        str | None, typer.Option(help="MLflow experiment (default: the task's).")
    ]),
    inspect.Parameter("tracking_uri", _KW, default=None, annotation=Annotated[
        str | None,
        typer.Option(help="MLflow tracking URI (default: env, else sqlite:///mlflow.db)."),
    ]),
    inspect.Parameter("progress", _KW, default=True, annotation=Annotated[
        bool, typer.Option(help="Progress bar per epoch.")
    ]),
]  # fmt: skip


def train(**options: Any) -> None:
    """Train a GRU/LSTM, log it to MLflow (params, per-epoch metrics, test figures, model).

    Options left out take the dataset's recommended values (pipeline.train_config.RECOMMENDED,
    the configurations behind the reported figures).
    """
    from pipeline.train import TrainingInterrupted
    from pipeline.train import train as run_training
    from pipeline.train_config import TrainConfig

    run = {p.name: options.pop(p.name) for p in _TRAIN_RUN_OPTIONS}
    for key in ("rr_features", "val_records"):
        options[key] = _csv(options[key])
    given = {k: v for k, v in options.items() if v is not None}
    try:
        cfg = TrainConfig.recommended(run["dataset"], **given)
        result = run_training(
            cfg,
            data_dir=run["data_dir"] or get_settings().data_dir,
            experiment=run["experiment"],
            tracking_uri=run["tracking_uri"],
            register=run["register"],
            progress=run["progress"],
        )
    except _tracking_errors() as err:
        raise _fail(err) from None
    except TrainingInterrupted as err:
        typer.secho(f"interrupted: MLflow run {err.run_id} marked KILLED; nothing registered",
                    fg=typer.colors.YELLOW, err=True)  # fmt: skip
        raise typer.Exit(code=130) from None
    _print_result(result)


def _print_result(result: Any) -> None:
    typer.echo(f"run {result.run_id}: best epoch {result.best_epoch}, "
               f"{result.selection_metric} {result.best_val:.4f}")  # fmt: skip
    shown = ("macro_f1", "accuracy", "macro_auc", "heart_disease_auc")
    typer.echo("test: " + ", ".join(f"{k} {result.test[k]:.4f}" for k in shown if k in result.test))
    if result.registration is not None:
        reg = result.registration
        typer.echo(f"registered {reg.model_name} v{reg.version}")
        if reg.decision is not None:
            typer.echo(reg.decision.summary())


_train_params = [*_TRAIN_RUN_OPTIONS, *_config_options()]
train.__signature__ = inspect.Signature(_train_params)  # type: ignore[attr-defined]
train.__annotations__ = {p.name: p.annotation for p in _train_params}
app.command()(train)


# --------------------------------------------------------------------------- record model
def _ptbxl_table(data_dir: Path) -> Path:
    """``ptbxl_database.csv`` of the newest downloaded PTB-XL version under ``data_dir/raw``."""
    found = sorted((data_dir / "raw" / "ptb-xl").glob("*/ptbxl_database.csv"))
    if not found:
        raise UserError(
            f"no ptbxl_database.csv under {data_dir / 'raw' / 'ptb-xl'}: run `ecg download ptb-xl`"
        )
    return found[-1]


@app.command("train-record")
def train_record(
    cell: Annotated[str, typer.Option(help="Recurrent cell after the CNN: gru or lstm.")] = "gru",
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs (early stop on fold 9).")] = 20,
    patience: Annotated[int, typer.Option(min=1, help="Epochs without improvement.")] = 5,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    lr: Annotated[float, typer.Option(min=0.0)] = 2e-3,
    demographics: Annotated[
        bool, typer.Option(help="Read age and sex (optional at prediction time).")
    ] = True,
    seed: Annotated[int, typer.Option()] = 0,
    register: Annotated[
        bool,
        typer.Option(help="Register as ecg-heart-disease; @champion if better on fold 9."),
    ] = True,
    evaluate_test: Annotated[
        bool, typer.Option(help="Read fold 10 once after training and log its figures.")
    ] = True,
    num_threads: Annotated[int, typer.Option(min=1, help="torch threads.")] = 1,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Holds processed/ and raw/ptb-xl (default: ECG_DATA_DIR)."),
    ] = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment.")] = "ecg-heart-disease",
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="MLflow tracking URI (default: env, else sqlite:///mlflow.db)."),
    ] = None,
) -> None:
    """Train the CRNN record model (any lead subset, optional age/sex) on prepared PTB-XL.

    Trains on folds 1-8 with early stopping on fold 9's macro-AUC, calibrates each lead subset on
    fold 9, reads fold 10 once, logs one MLflow run and registers the model. One process; for
    several, ``torchrun --nproc-per-node N -m pipeline.distributed`` (same steps).
    """
    from dataclasses import replace

    from models.record_model import RecordModelConfig
    from models.tasks import TASK_HEART_DISEASE, TASKS
    from pipeline.distributed import train_distributed
    from pipeline.record_training import RecordTrainConfig

    root = data_dir or get_settings().data_dir
    try:
        if cell not in ("gru", "lstm"):
            raise UserError(f"--cell must be gru or lstm, got {cell!r}")
        arch = RecordModelConfig(cell=cell, demographics=demographics)  # type: ignore[arg-type]
        cfg = replace(
            RecordTrainConfig(),
            epochs=epochs,
            patience=patience,
            batch_size=batch_size,
            lr=lr,
            demographics_dropout=0.3 if demographics else 0.0,
            seed=seed,
        )
        result = train_distributed(
            root,
            _ptbxl_table(root),
            arch=arch,
            cfg=cfg,
            tracking_uri=tracking_uri,
            experiment=experiment,
            register=TASKS[TASK_HEART_DISEASE].model_name if register else None,
            num_threads=num_threads,
            evaluate_test=evaluate_test,
        )
    except _tracking_errors() as err:
        raise _fail(err) from None
    typer.echo(f"run {result.run_id}: best epoch {result.best_epoch}, "
               f"val_macro_auc {result.best_val_macro_auc:.4f}")  # fmt: skip
    if result.test_metrics:
        shown = {k: v for k, v in result.test_metrics.items() if "macro_auc" in k}
        typer.echo("test: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    if result.registration is not None:
        reg = result.registration
        typer.echo(f"registered {reg.model_name} v{reg.version}")
        if reg.decision is not None:
            typer.echo(reg.decision.summary())


@app.command("train-beats")
def train_beats(
    epochs: Annotated[int, typer.Option(min=1, help="Most passes over DS1 + svdb.")] = 6,
    patience: Annotated[
        int,
        typer.Option(
            min=0,
            help="Single-fold mode: stop after this many epochs without a better validation "
            "macro-F1 (0: never). All-folds mode trains every fold for --epochs.",
        ),
    ] = 3,
    val_fold: Annotated[
        str,
        typer.Option(
            help="'all' (default): the research's procedure - one model per patient-grouped fold "
            "(5 over DS1 + svdb), epoch count, temperature and S/V offsets chosen on the pooled "
            "out-of-fold logits, final model on every patient. A fold number 0..4: quick mode, "
            "train once on the other folds and validate on that one."
        ),
    ] = "all",
    seed: Annotated[int, typer.Option()] = 0,
    register: Annotated[
        bool,
        typer.Option(
            help="Register as ecg-arrhythmia and move @champion by the registry's rule: a "
            "beat-sequence model outranks a single-beat champion; between beat-sequence models on "
            "the same validation set the higher validation macro-F1 wins (ties keep the champion); "
            "on a different validation set the champion stays (`ecg promote --force` overrides)."
        ),
    ] = True,
    num_threads: Annotated[int, typer.Option(min=1, help="torch threads.")] = 1,
    data_dir: Annotated[
        Path | None, typer.Option(help="Holds raw/mitdb and raw/svdb (default: ECG_DATA_DIR).")
    ] = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment.")] = "ecg-arrhythmia",
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="MLflow tracking URI (default: env, else sqlite:///mlflow.db)."),
    ] = None,
) -> None:
    """Train the beat-sequence model (LSTM over each strip's beats) on MIT-BIH DS1 + svdb.

    Validation: 5 patient-grouped folds over DS1 + svdb (whole patients, several with S beats).
    By default every fold is held out once: the epoch count, the temperature and the S/V decision
    offsets (saved in the model card) are chosen on the pooled out-of-fold logits, the selection
    metric is the pooled out-of-fold macro-F1 as served, and the final model trains on every
    patient. `--val-fold N` holds out fold N only (quick). DS2 is read once at the end and logged
    (per-class precision and recall).
    """
    import torch

    from pipeline.beat_pipeline import train_beats as run_train_beats

    if val_fold.strip().lower() == "all":
        fold: int | None = None
    elif val_fold.strip().isdigit():
        fold = int(val_fold)
    else:
        raise typer.BadParameter(
            f"must be 'all' or a fold number, got {val_fold!r}", param_hint="--val-fold"
        )
    torch.set_num_threads(num_threads)
    root = (data_dir or get_settings().data_dir) / "raw"
    try:
        result = run_train_beats(
            root,
            epochs=epochs,
            patience=patience or None,
            val_fold=fold,
            seed=seed,
            register=register,
            experiment=experiment,
            tracking_uri=tracking_uri,
        )
    except _tracking_errors() as err:
        raise _fail(err) from None
    off = ", ".join(f"{k} {v:+.2f}" for k, v in result.decision_offsets.items())
    typer.echo(
        f"run {result.run_id}: "
        + ("out-of-fold (all folds), epochs " if result.val_fold is None else "best epoch ")
        + f"{result.best_epoch}, val_macro_f1 "
        f"{result.val_macro_f1:.4f} (temperature {result.temperature:.2f}; offsets {off})"
    )
    pooled = [
        f"{k.removeprefix('val_pooled_')} {v:.3f}"
        for k, v in result.val_metrics.items()
        if k.startswith("val_pooled_") and k.endswith(("_se", "_ppv"))
    ]
    typer.echo("validation: " + ", ".join(pooled))
    per_fold = [
        f"{k.removesuffix('_val_macro_f1')} {v:.3f}"
        for k, v in result.val_metrics.items()
        if k.startswith("fold") and k.endswith("_val_macro_f1")
    ]
    if per_fold:
        typer.echo("validation macro-F1 per fold (as served): " + ", ".join(per_fold))
    if result.test_metrics:
        shown = {k: v for k, v in result.test_metrics.items() if k.endswith(("_se", "_ppv"))}
        typer.echo("test (DS2): " + ", ".join(f"{k} {v:.3f}" for k, v in shown.items()))
    if result.version is not None:
        typer.echo(f"registered ecg-arrhythmia v{result.version}")
        if result.decision is not None:
            typer.echo(result.decision.summary())


# --------------------------------------------------------------------------- registry
@app.command()
def register(
    run_id: Annotated[str, typer.Option("--run-id", help="A finished `ecg train` run.")],
    model_name: Annotated[
        str | None, typer.Option(help="Default: ecg-arrhythmia / ecg-heart-disease by task.")
    ] = None,
    promote: Annotated[
        bool, typer.Option(help="Move @champion to it if it beats the champion on validation.")
    ] = True,
    tracking_uri: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Register the model of a training run in the MLflow Model Registry.

    Promotion rule (any kind): a beat-sequence model outranks a single-beat one; the same kind on
    the same validation set wins on a strictly higher selection metric (ties keep the champion);
    different validation sets or metrics are not compared (the champion stays).
    """
    from pipeline.registry import register_run

    try:
        reg = register_run(
            run_id, model_name=model_name, promote_if_better=promote, tracking_uri=tracking_uri
        )
    except _tracking_errors() as err:
        raise _fail(err) from None
    typer.echo(f"registered {reg.model_name} v{reg.version} from run {reg.run_id}")
    if reg.decision is not None:
        typer.echo(reg.decision.summary())


@app.command()
def promote(
    model_name: Annotated[str, typer.Option(help="Registered model, e.g. ecg-arrhythmia.")],
    version: Annotated[str, typer.Option(help="Version number to promote.")],
    force: Annotated[bool, typer.Option(help="Move @champion even if it is not better.")] = False,
    tracking_uri: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Move @champion to a version if it beats the champion by the registry's rule (or --force).

    A beat-sequence model outranks a single-beat one; the same kind on the same validation set
    wins on a strictly higher selection metric (ties keep the champion); versions on different
    validation sets are not compared. --force moves the alias without comparing.
    """
    from pipeline.registry import promote as promote_version

    try:
        decision = promote_version(model_name, version, force=force, tracking_uri=tracking_uri)
    except _tracking_errors() as err:
        raise _fail(err) from None
    typer.echo(decision.summary())


# --------------------------------------------------------------------------- serve
@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Worker processes (each loads the models; with >1, reload by polling: "
            "ECG_SERVICE_RELOAD_INTERVAL_S, as POST /admin/reload reaches one worker).",
        ),
    ] = 1,
) -> None:
    """Serve the registered models over HTTP (FastAPI ``service.main:app`` on uvicorn).

    Models, alias, tracking URI, API key and limits come from ``ECG_SERVICE_*`` variables
    (and ``MLFLOW_TRACKING_URI``); see service/settings.py.
    """
    import uvicorn

    # The service logs every request itself (method, path, status, latency, n_samples).
    uvicorn.run(
        "service.main:app",
        host=host,
        port=port,
        workers=workers,
        access_log=False,
        log_config=None,
    )


if __name__ == "__main__":  # pragma: no cover
    app()
