"""``ecg train-beats``: train the beat-sequence model with patient-grouped validation, read DS2
once, log, register.

Data: mitdb DS1 (less record 201 and the paced records) plus whatever svdb records are present,
one record = one patient, dealt into the research's patient-grouped folds
(:func:`pipeline.beat_sequences.make_folds`: 5 folds, stratified so each holds several S and V
patients; bench/BEAT_RESEARCH.md). The recipe is the research's choice: LSTM, relative inputs,
sqrt class weights. Validation scores held-out records cut into 10-s and into 300-s strips, as
the service receives them.

Default, all folds (the research's procedure, fixed in advance):

* one model per fold, trained on the other folds' patients for every epoch (no early stop) and
  scored on its fold every epoch (``fold<k>_val_argmax_macro_f1`` per step);
* the epoch count is the epoch with the best mean over folds of that argmax macro-F1 (mean of the
  10-s and 300-s scorings; ``val_argmax_macro_f1`` per step, ``chosen_epoch``);
* the temperature (NLL-optimal) and the decision rule (log-offsets on P(S), P(V), grid -2..2 step
  0.25, best macro-F1) are fitted on the pooled out-of-fold logits of that epoch (all folds, both
  strip lengths; saved as ``oof_logits.npz``);
* ``val_macro_f1`` (selection metric) is the pooled out-of-fold macro-F1 as served (temperature
  and rule applied), mean of the 10-s and 300-s scorings; ``val_pooled_*`` per-class Se/PPV, ECE
  before/after T and ``fold<k>_*`` per-fold figures are logged on the same run;
* the final model trains on every patient with the same schedule, stopped after the chosen epoch;
  its card carries that temperature and those offsets.

``val_fold=k`` (quick mode): train once on the other folds, pick the best epoch on fold ``k``
(with patience), fit T and the rule on fold ``k`` and keep that model.

``ecg.validation_set`` names the mode and a hash of the records (and folds), so promotion only
compares like with like. DS2 (the test set) is read once after every choice, by the kept model
only, at 300-s (``test_*``) and 10-s (``test10_*``) strips, and only logged. Registration goes
through :func:`pipeline.registry.register_run`, whose rule puts a beat-sequence model above a
single-beat champion and compares beat-sequence models on the same validation set by
``val_macro_f1`` (ties keep the champion).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from models.beat_classifier import BeatClassifier
from models.beat_context import RELATIVE_FEATURE_NAMES
from models.beat_predictor import BEAT_MODEL_KIND, log_beat_model
from models.beat_sequence import BeatSequenceConfig, BeatSequenceModel
from models.tasks import TAG_CELL, TAG_DATASET, TAG_SELECTION_METRIC, TAG_TASK, TASK_ARRHYTHMIA
from pipeline.beat_sequences import (
    LABEL_CLASSES,
    N_FOLDS,
    BeatSequences,
    build_sequences,
    concat_sequences,
    ds1_records,
    ds2_records,
    make_folds,
    svdb_records,
)
from pipeline.beat_train import (
    BeatTrainConfig,
    choose_decision_rule,
    decide,
    expected_calibration_error,
    fit_temperature,
    per_class_scores,
    predict_logits,
    softmax,
    train_beat_model,
)
from pipeline.errors import UserError
from pipeline.registry import TAG_KIND, TAG_VALIDATION_SET, PromotionDecision, Registration

__all__ = ["TAG_KIND", "BeatTrainResult", "find_db_dir", "train_beats"]

logger = logging.getLogger(__name__)

SELECTION_METRIC = "val_macro_f1"
#: Validation strip lengths (s), as in the research: a user's 10-s strip and a 5-min one.
VAL_SEGMENTATIONS: tuple[str, ...] = ("10", "300")


@dataclass(frozen=True)
class BeatTrainResult:
    """What one ``train-beats`` run produced.

    Attributes
    ----------
    run_id : str
    val_macro_f1 : float
        Selection metric: validation macro-F1 as served (temperature + decision rule).
    temperature : float
    decision_offsets : dict of str to float
        Log-offsets for S and V chosen on validation.
    best_epoch : int
        The epoch kept: best on the held-out fold, or (all folds) the chosen epoch count.
    val_records : list of str
        The validation patients (``"<db>/<record>"``): the held-out fold, or every patient.
    val_fold : int or None
        The held-out fold; None for all folds (out-of-fold).
    val_metrics, test_metrics : dict of str to float
        Validation figures as served; DS2 figures (read once).
    version : str or None
        Registered version (None when not registered).
    promoted : bool
    decision : PromotionDecision or None
    """

    run_id: str
    val_macro_f1: float
    temperature: float
    decision_offsets: dict[str, float]
    best_epoch: int
    val_records: list[str]
    val_fold: int | None = None
    val_metrics: dict[str, float] = field(default_factory=dict)
    test_metrics: dict[str, float] = field(default_factory=dict)
    version: str | None = None
    promoted: bool = False
    decision: PromotionDecision | None = None


def find_db_dir(raw_root: Path, db: str) -> Path | None:
    """``raw_root/<db>`` or its newest ``<version>/`` holding WFDB headers; None when absent."""
    base = raw_root / db
    if any(base.glob("*.hea")):
        return base
    versions = sorted(p for p in base.glob("*") if p.is_dir() and any(p.glob("*.hea")))
    return versions[-1] if versions else None


def _present(db_dir: Path, records: list[str]) -> list[str]:
    return [r for r in records if (db_dir / f"{r}.hea").is_file()]


def _finite(d: dict[str, float], prefix: str) -> dict[str, float]:
    return {f"{prefix}_{k}": float(v) for k, v in d.items() if np.isfinite(v)}


def _validation_set_id(val_records: list[str], val_fold: int, n_folds: int) -> str:
    """Identity of the validation set: fold, strip lengths and a hash of its records."""
    digest = hashlib.sha256(",".join(sorted(val_records)).encode()).hexdigest()[:16]
    strips = "+".join(f"{s}s" for s in VAL_SEGMENTATIONS)
    return (
        f"beat-folds fold={val_fold}/{n_folds} strips={strips} "
        f"records={len(val_records)} sha256:{digest}"
    )


def _all_folds_set_id(folds: dict[str, int], n_folds: int) -> str:
    """Identity of the out-of-fold validation set: every record, its fold, the strip lengths."""
    digest = hashlib.sha256(
        ",".join(f"{r}:{f}" for r, f in sorted(folds.items())).encode()
    ).hexdigest()[:16]
    strips = "+".join(f"{s}s" for s in VAL_SEGMENTATIONS)
    return f"beat-folds all/{n_folds} oof strips={strips} records={len(folds)} sha256:{digest}"


class _EpochValidator:
    """Scores every epoch on the validation patients; keeps the best epoch's weights and logits."""

    def __init__(
        self,
        val: dict[str, BeatSequences],
        patience: int | None,
        prefix: str = "",
        keep_all: bool = False,
    ) -> None:
        self.val = val
        self.patience = patience
        self.prefix = prefix
        self.keep_all = keep_all
        self.best = -1.0
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_logits: dict[str, np.ndarray] = {}
        #: Argmax macro-F1 per epoch (epoch 1 first).
        self.history: list[float] = []
        #: Epoch -> strip length -> logits (``keep_all`` only).
        self.all_logits: dict[int, dict[str, np.ndarray]] = {}

    def __call__(self, epoch: int, model: BeatSequenceModel, loss: float) -> bool:
        import mlflow

        logits = {seg: predict_logits(model, data) for seg, data in self.val.items()}
        metrics = {"train_loss": loss}
        f1s = []
        for seg, z in logits.items():
            s = per_class_scores(self.val[seg].label, z.argmax(axis=1), LABEL_CLASSES)
            metrics.update(_finite(s, f"val{seg}_argmax"))
            f1s.append(float(np.nan_to_num(s["macro_f1"])))
        f1 = float(np.mean(f1s))
        metrics["val_argmax_macro_f1"] = f1
        mlflow.log_metrics({f"{self.prefix}{k}": v for k, v in metrics.items()}, step=epoch)
        self.history.append(f1)
        if self.keep_all:
            self.all_logits[epoch] = logits
        logger.info(
            "%sepoch %d: validation macro-F1 %.4f (argmax; %s)",
            self.prefix,
            epoch,
            f1,
            ", ".join(
                f"{seg} s {c} {metrics.get(f'val{seg}_argmax_{c}_se', float('nan')):.3f}/"
                f"{metrics.get(f'val{seg}_argmax_{c}_ppv', float('nan')):.3f}"
                for seg in self.val
                for c in LABEL_CLASSES
            ),
        )
        if f1 > self.best and not self.keep_all:
            self.best, self.best_epoch = f1, epoch
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.best_logits = logits
        return self.patience is not None and epoch - self.best_epoch >= self.patience


def _build(dirs: dict[str, Path], records: list[str], segmentation: str) -> BeatSequences:
    """Beat sequences of ``"<db>/<record>"`` names over their databases."""
    parts = []
    for db, db_dir in dirs.items():
        names = [r.split("/", 1)[1] for r in records if r.startswith(f"{db}/")]
        if names:
            parts.append(build_sequences(db_dir, db, names, segmentation))
    return concat_sequences(parts)


def _setup(
    raw_root: Path,
    n_folds: int,
    mitdb_records: list[str] | None,
    test_records: list[str] | None,
    svdb_limit: int | None,
) -> tuple[Path, dict[str, Path], list[str], list[str], list[str]]:
    """Database folders and records: ``(mitdb, dirs, all_recs, ds2, sv_recs)``."""
    mitdb = find_db_dir(raw_root, "mitdb")
    if mitdb is None:
        raise UserError(f"no mitdb records under {raw_root}; run `ecg download mitdb` first")
    ds1 = _present(mitdb, mitdb_records or ds1_records())
    ds2 = _present(mitdb, ds2_records() if test_records is None else test_records)
    svdb = find_db_dir(raw_root, "svdb")
    sv_recs = svdb_records(svdb)[:svdb_limit] if svdb is not None else []
    dirs = {"mitdb": mitdb, **({"svdb": svdb} if svdb is not None and sv_recs else {})}
    all_recs = [f"mitdb/{r}" for r in ds1] + [f"svdb/{r}" for r in sv_recs]
    if len(all_recs) < n_folds:
        raise UserError(
            f"{len(all_recs)} DS1 + svdb records under {raw_root}; at least {n_folds} are needed "
            "for patient-grouped validation"
        )
    return mitdb, dirs, all_recs, ds2, sv_recs


def _fit_rule(
    z: dict[str, np.ndarray], y: dict[str, np.ndarray]
) -> tuple[float, tuple[float, float], dict[str, float], float]:
    """Temperature and decision rule on validation logits, and the figures as served.

    Parameters
    ----------
    z : dict of str to np.ndarray
        Validation logits ``(n_seg, 3)`` per strip length (``"10"``, ``"300"``).
    y : dict of str to np.ndarray
        Their labels, int ``(n_seg,)`` (-1 unlabelled).

    Returns
    -------
    temperature, offsets, val_metrics, val_macro_f1
        T fitted on both strip lengths pooled, then the S/V offsets on the calibrated pool;
        ``val{seg}_*``, ``val_pooled_*`` and per-class ECE before/after T; the selection metric
        (mean over strip lengths of the macro-F1 as served).
    """
    z_all = np.concatenate([z[s] for s in VAL_SEGMENTATIONS])
    y_all = np.concatenate([y[s] for s in VAL_SEGMENTATIONS])
    temperature = fit_temperature(z_all, y_all)
    p_all = softmax(z_all / temperature)
    offsets = choose_decision_rule(p_all, y_all)
    metrics = _served_f1(z, y, temperature, offsets, prefix="")
    val_f1 = metrics[SELECTION_METRIC]
    metrics.update(
        _finite(per_class_scores(y_all, decide(p_all, offsets), LABEL_CLASSES), "val_pooled")
    )
    ece_before = expected_calibration_error(softmax(z_all), y_all)
    ece_after = expected_calibration_error(p_all, y_all)
    for c, before, after in zip(LABEL_CLASSES, ece_before, ece_after, strict=True):
        metrics[f"val_ece_{c}_before_t"] = float(before)
        metrics[f"val_ece_{c}"] = float(after)
    metrics[SELECTION_METRIC] = val_f1
    return temperature, offsets, metrics, val_f1


def _served_f1(
    z: dict[str, np.ndarray],
    y: dict[str, np.ndarray],
    temperature: float,
    offsets: tuple[float, float],
    prefix: str,
) -> dict[str, float]:
    """Per-strip-length figures as served (``<prefix>val<seg>_*``) and ``<prefix>val_macro_f1``."""
    out: dict[str, float] = {}
    f1s = []
    for seg in VAL_SEGMENTATIONS:
        s = per_class_scores(y[seg], decide(softmax(z[seg] / temperature), offsets), LABEL_CLASSES)
        out.update(_finite(s, f"{prefix}val{seg}"))
        f1s.append(float(np.nan_to_num(s["macro_f1"])))
    out[f"{prefix}val_macro_f1"] = float(np.mean(f1s))
    return out


def _read_ds2(
    mitdb: Path,
    ds2: list[str],
    model: BeatSequenceModel,
    temperature: float,
    offsets: tuple[float, float],
) -> dict[str, float]:
    """DS2, read once after every choice, at 300-s (``test_*``) and 10-s (``test10_*``) strips."""
    test: dict[str, float] = {}
    for seg, prefix in (("300", "test"), ("10", "test10")) if ds2 else ():
        data = build_sequences(mitdb, "mitdb", ds2, seg)
        probs = softmax(predict_logits(model, data) / temperature)
        test.update(
            _finite(per_class_scores(data.label, decide(probs, offsets), LABEL_CLASSES), prefix)
        )
    return test


def train_beats(
    raw_root: Path,
    *,
    epochs: int = 6,
    patience: int | None = 3,
    val_fold: int | None = None,
    n_folds: int = N_FOLDS,
    tracking_uri: str | None = None,
    experiment: str = "ecg-arrhythmia",
    register: bool = True,
    model_name: str = "ecg-arrhythmia",
    seed: int = 0,
    mitdb_records: list[str] | None = None,
    test_records: list[str] | None = None,
    svdb_limit: int | None = None,
) -> BeatTrainResult:
    """Train the beat-sequence model with patient-grouped validation, test once on DS2, log and
    (optionally) register it.

    Parameters
    ----------
    raw_root : Path
        Holds ``mitdb/[<version>/]`` and optionally ``svdb/[<version>/]`` WFDB records.
    epochs : int
        Most epochs (one-cycle schedule over this many).
    patience : int, optional
        Single-fold mode only: stop after this many epochs without a better validation macro-F1
        (None: never). All-folds mode trains every fold for ``epochs``.
    val_fold : int, optional
        None (default): all folds (the research's procedure, module docstring). A fold number:
        hold that fold out, train once on the others and keep that model (quick mode).
    n_folds : int
        Patient-grouped folds over DS1 + svdb.
    tracking_uri, experiment, register, model_name, seed
        MLflow store and experiment; register as ``model_name`` (promotion per
        :mod:`pipeline.registry`); torch/numpy seed.
    mitdb_records, test_records : list of str, optional
        Subsets of DS1 / DS2 (default: all present); for quick runs.
    svdb_limit : int, optional
        Use only the first this many svdb records.

    Raises
    ------
    UserError
        No mitdb records, fewer records than folds, or a fold number out of range.
    """
    if val_fold is not None and not 0 <= val_fold < n_folds:
        raise UserError(f"--val-fold must be 'all' or in 0..{n_folds - 1}, got {val_fold}")
    mitdb, dirs, all_recs, ds2, sv_recs = _setup(
        raw_root, n_folds, mitdb_records, test_records, svdb_limit
    )
    t_start = time.perf_counter()
    pool = _build(dirs, all_recs, "mixed")
    folds = make_folds(pool, n_folds)
    ctx = _RunContext(
        mitdb=mitdb, dirs=dirs, all_recs=all_recs, ds2=ds2, sv_recs=sv_recs, pool=pool,
        folds=folds, n_folds=n_folds, epochs=epochs, seed=seed, t_start=t_start,
    )  # fmt: skip
    if val_fold is None:
        return _train_all_folds(
            ctx, tracking_uri=tracking_uri, experiment=experiment, register=register,
            model_name=model_name,
        )  # fmt: skip
    return _train_one_fold(
        ctx, val_fold, patience, tracking_uri=tracking_uri, experiment=experiment,
        register=register, model_name=model_name,
    )  # fmt: skip


@dataclass
class _RunContext:
    """What both modes share: data, folds and settings."""

    mitdb: Path
    dirs: dict[str, Path]
    all_recs: list[str]
    ds2: list[str]
    sv_recs: list[str]
    pool: BeatSequences
    folds: dict[str, int]
    n_folds: int
    epochs: int
    seed: int
    t_start: float
    model_cfg: BeatSequenceConfig = field(
        default_factory=lambda: BeatSequenceConfig(
            cell="lstm", feature_names=RELATIVE_FEATURE_NAMES
        )
    )

    @property
    def train_cfg(self) -> BeatTrainConfig:
        return BeatTrainConfig(epochs=self.epochs, seed=self.seed)

    def fold_records(self, k: int) -> list[str]:
        return sorted(r for r, f in self.folds.items() if f == k)

    def s_patients(self, records: list[str]) -> int:
        """Records with at least 20 S beats."""
        return sum(int((self.pool.label[self.pool.record == r] == 1).sum() >= 20) for r in records)


def _start(ctx: _RunContext, valset_id: str, params: dict[str, object]) -> None:
    """Tags and parameters common to both modes, on the active run."""
    import mlflow

    mlflow.set_tags(
        {
            TAG_TASK: TASK_ARRHYTHMIA,
            TAG_KIND: BEAT_MODEL_KIND,
            TAG_DATASET: "+".join(ctx.dirs),
            TAG_CELL: ctx.model_cfg.cell,
            TAG_SELECTION_METRIC: SELECTION_METRIC,
            TAG_VALIDATION_SET: valset_id,
        }
    )
    mlflow.log_params({f"model.{k}": v for k, v in ctx.model_cfg.to_dict().items()})
    mlflow.log_params({f"train.{k}": v for k, v in ctx.train_cfg.to_dict().items()})
    mlflow.log_params(
        {
            "n_folds": ctx.n_folds,
            "svdb_records": len(ctx.sv_recs),
            "test_records": ",".join(ctx.ds2),
            **params,
        }
    )


def _finish(
    ctx: _RunContext,
    model: BeatSequenceModel,
    temperature: float,
    offsets: tuple[float, float],
) -> dict[str, float]:
    """Card (temperature + offsets), DS2 read once and logged, the model logged; DS2 figures."""
    import mlflow

    mlflow.log_param("decision_offsets", json.dumps({"S": offsets[0], "V": offsets[1]}))
    model.config = replace(model.config, temperature=temperature)
    clf = BeatClassifier(model=model, decision_offsets={"S": offsets[0], "V": offsets[1]})
    test = _read_ds2(ctx.mitdb, ctx.ds2, model, temperature, offsets)
    if test:
        mlflow.log_metrics(test)
    log_beat_model(clf)
    mlflow.log_metric("total_seconds", time.perf_counter() - ctx.t_start)
    return test


def _train_one_fold(
    ctx: _RunContext,
    val_fold: int,
    patience: int | None,
    *,
    tracking_uri: str | None,
    experiment: str,
    register: bool,
    model_name: str,
) -> BeatTrainResult:
    """Quick mode: train on all folds but ``val_fold``; epoch, T and rule on the held-out fold."""
    import mlflow

    from pipeline.registry import register_run
    from pipeline.tracking import ensure_experiment, tracking_scope

    pool = ctx.pool
    val_recs = ctx.fold_records(val_fold)
    train = pool.subset(~np.isin(pool.record, val_recs))
    val = {seg: _build(ctx.dirs, val_recs, seg) for seg in VAL_SEGMENTATIONS}
    valset_id = _validation_set_id(val_recs, val_fold, ctx.n_folds)
    n_s = ctx.s_patients(val_recs)
    logger.info(
        "validation fold %d/%d: %d patients (%d with >= 20 S beats): %s",
        val_fold, ctx.n_folds, len(val_recs), n_s, ",".join(val_recs),
    )  # fmt: skip
    torch.manual_seed(ctx.seed)
    with tracking_scope(tracking_uri) as uri:
        exp_id = ensure_experiment(experiment, uri)
        with mlflow.start_run(experiment_id=exp_id, run_name="beat-sequence-lstm") as run:
            _start(
                ctx,
                valset_id,
                {
                    "patience": patience,
                    "val_fold": val_fold,
                    "train_records": len(ctx.all_recs) - len(val_recs),
                    "val_records": ",".join(val_recs)[:6000],
                    "val_s_patients": n_s,
                    "train_beats": len(train),
                    "val_beats": len(val[VAL_SEGMENTATIONS[0]]),
                },
            )
            mlflow.log_dict({"folds": ctx.folds, "val_fold": val_fold}, "beat_folds.json")
            validator = _EpochValidator(val, patience)
            t0 = time.perf_counter()
            model = train_beat_model(ctx.model_cfg, ctx.train_cfg, train, on_epoch=validator)
            mlflow.log_metric("train_seconds", time.perf_counter() - t0)
            assert validator.best_state is not None
            model.load_state_dict(validator.best_state)
            model.eval()
            temperature, offsets, val_metrics, val_f1 = _fit_rule(
                validator.best_logits, {s: val[s].label for s in VAL_SEGMENTATIONS}
            )
            mlflow.log_metrics(
                {
                    **val_metrics,
                    f"best_{SELECTION_METRIC}": val_f1,
                    "best_epoch": validator.best_epoch,
                    "temperature": temperature,
                    "decision_offset_S": offsets[0],
                    "decision_offset_V": offsets[1],
                }
            )
            test = _finish(ctx, model, temperature, offsets)
        registration = register_run(run.info.run_id, model_name=model_name, tracking_uri=uri) \
            if register else None  # fmt: skip
    return _result(
        run.info.run_id, val_f1, temperature, offsets, validator.best_epoch, val_recs,
        val_metrics, test, registration, val_fold,
    )  # fmt: skip


def _result(
    run_id: str,
    val_f1: float,
    temperature: float,
    offsets: tuple[float, float],
    best_epoch: int,
    val_recs: list[str],
    val_metrics: dict[str, float],
    test: dict[str, float],
    registration: Registration | None,
    val_fold: int | None,
) -> BeatTrainResult:
    logger.info(
        "beat-sequence run %s (%s): epoch %d, validation macro-F1 %.4f as served (T %.2f, "
        "offsets S %+.2f V %+.2f)",
        run_id, "all folds" if val_fold is None else f"fold {val_fold}", best_epoch, val_f1,
        temperature, *offsets,
    )  # fmt: skip
    decision = registration.decision if registration is not None else None
    return BeatTrainResult(
        run_id=run_id,
        val_macro_f1=val_f1,
        temperature=temperature,
        decision_offsets={"S": offsets[0], "V": offsets[1]},
        best_epoch=best_epoch,
        val_records=val_recs,
        val_fold=val_fold,
        val_metrics=val_metrics,
        test_metrics=test,
        version=registration.version if registration is not None else None,
        promoted=bool(decision is not None and decision.promoted),
        decision=decision,
    )


class _StopAfter:
    """``on_epoch`` that ends training after ``epoch`` epochs."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, epoch: int, model: BeatSequenceModel, loss: float) -> bool:
        import mlflow

        mlflow.log_metric("final_train_loss", loss, step=epoch)
        return epoch >= self.epoch


def _train_all_folds(
    ctx: _RunContext,
    *,
    tracking_uri: str | None,
    experiment: str,
    register: bool,
    model_name: str,
) -> BeatTrainResult:
    """The research's procedure: out-of-fold choices over all folds, final model on every patient.

    Every fold's model trains ``ctx.epochs`` epochs (no early stop) on the other folds and is
    scored on its fold every epoch; the epoch with the best mean-over-folds argmax macro-F1 wins;
    T and the S/V offsets are fitted on the pooled out-of-fold logits of that epoch; the final
    model trains on every patient with the same schedule, stopped after that epoch.
    """
    import mlflow

    from pipeline.registry import register_run
    from pipeline.tracking import ensure_experiment, tracking_scope

    pool = ctx.pool
    # Every record cut into 10-s and 300-s strips once; folds index into these.
    scored = {seg: _build(ctx.dirs, ctx.all_recs, seg) for seg in VAL_SEGMENTATIONS}
    valset_id = _all_folds_set_id(ctx.folds, ctx.n_folds)
    logger.info("all %d folds: %d patients; %s", ctx.n_folds, len(ctx.all_recs), valset_id)
    fold_logits: list[dict[int, dict[str, np.ndarray]]] = []
    fold_labels: list[dict[str, np.ndarray]] = []
    fold_f1: list[list[float]] = []
    assignment: dict[str, object] = {"folds": ctx.folds, "val_fold": "all"}
    fold_train: dict[str, list[str]] = {}
    fold_val: dict[str, list[str]] = {}
    with tracking_scope(tracking_uri) as uri:
        exp_id = ensure_experiment(experiment, uri)
        with mlflow.start_run(experiment_id=exp_id, run_name="beat-sequence-lstm") as run:
            _start(
                ctx,
                valset_id,
                {
                    "val_fold": "all",
                    "patience": None,
                    "epoch_rule": "argmax over epochs of the mean over folds of the argmax "
                    "macro-F1 (mean of 10-s and 300-s strips)",
                    "train_records": len(ctx.all_recs),
                    "train_beats": len(pool),
                },
            )
            t0 = time.perf_counter()
            for k in range(ctx.n_folds):
                val_recs = ctx.fold_records(k)
                train = pool.subset(~np.isin(pool.record, val_recs))
                val = {
                    seg: data.subset(np.isin(data.record, val_recs)) for seg, data in scored.items()
                }
                fold_train[str(k)] = sorted(str(r) for r in np.unique(train.record))
                fold_val[str(k)] = val_recs
                mlflow.log_params(
                    {
                        f"fold{k}_val_records": ",".join(val_recs)[:6000],
                        f"fold{k}_val_s_patients": ctx.s_patients(val_recs),
                        f"fold{k}_train_beats": len(train),
                    }
                )
                logger.info(
                    "fold %d/%d: validation %d patients (%d with >= 20 S beats), training %d "
                    "beats", k, ctx.n_folds, len(val_recs), ctx.s_patients(val_recs), len(train),
                )  # fmt: skip
                validator = _EpochValidator(val, None, prefix=f"fold{k}_", keep_all=True)
                torch.manual_seed(ctx.seed)
                train_beat_model(ctx.model_cfg, ctx.train_cfg, train, on_epoch=validator)
                fold_logits.append(validator.all_logits)
                fold_labels.append({seg: val[seg].label for seg in VAL_SEGMENTATIONS})
                fold_f1.append(validator.history)
            assignment["fold_train_records"] = fold_train
            assignment["fold_val_records"] = fold_val
            mlflow.log_metric("folds_train_seconds", time.perf_counter() - t0)

            # The epoch: best mean over folds of the per-epoch argmax macro-F1.
            f1 = np.array(fold_f1)  # (n_folds, epochs)
            mean_f1 = f1.mean(axis=0)
            for e, v in enumerate(mean_f1, start=1):
                mlflow.log_metric("val_argmax_macro_f1", float(v), step=e)
            best_epoch = int(np.argmax(mean_f1)) + 1
            mlflow.log_param("chosen_epoch", best_epoch)
            logger.info(
                "mean over folds of the argmax macro-F1 per epoch: %s; chosen epoch %d",
                ", ".join(f"{v:.4f}" for v in mean_f1), best_epoch,
            )  # fmt: skip

            # T and rule on the pooled out-of-fold logits of that epoch.
            z = {
                seg: np.concatenate([fl[best_epoch][seg] for fl in fold_logits])
                for seg in VAL_SEGMENTATIONS
            }
            y = {seg: np.concatenate([fy[seg] for fy in fold_labels]) for seg in VAL_SEGMENTATIONS}
            temperature, offsets, val_metrics, val_f1 = _fit_rule(z, y)
            for k in range(ctx.n_folds):
                per_fold = _served_f1(
                    fold_logits[k][best_epoch], fold_labels[k], temperature, offsets, f"fold{k}_"
                )
                val_metrics.update(per_fold)
            mlflow.log_metrics(
                {
                    **val_metrics,
                    f"best_{SELECTION_METRIC}": val_f1,
                    "best_epoch": best_epoch,
                    "temperature": temperature,
                    "decision_offset_S": offsets[0],
                    "decision_offset_V": offsets[1],
                }
            )
            _log_oof(z, y, scored, fold_val)

            # Final model: every patient, same schedule, stopped after the chosen epoch.
            assignment["final_train_records"] = sorted(str(r) for r in np.unique(pool.record))
            mlflow.log_dict(assignment, "beat_folds.json")
            t1 = time.perf_counter()
            torch.manual_seed(ctx.seed)
            model = train_beat_model(
                ctx.model_cfg, ctx.train_cfg, pool, on_epoch=_StopAfter(best_epoch)
            )
            mlflow.log_metrics(
                {"train_seconds": time.perf_counter() - t1, "final_epochs": best_epoch}
            )
            test = _finish(ctx, model, temperature, offsets)
        registration = register_run(run.info.run_id, model_name=model_name, tracking_uri=uri) \
            if register else None  # fmt: skip
    return _result(
        run.info.run_id, val_f1, temperature, offsets, best_epoch, sorted(ctx.all_recs),
        val_metrics, test, registration, None,
    )  # fmt: skip


def _log_oof(
    z: dict[str, np.ndarray],
    y: dict[str, np.ndarray],
    scored: dict[str, BeatSequences],
    fold_val: dict[str, list[str]],
) -> None:
    """``oof_logits.npz``: the pooled out-of-fold logits T and the rule were fitted on.

    Arrays (one row per beat, folds in order, 10-s strips then 300-s): ``logits`` float32
    ``(n, 3)``, ``labels`` int ``(n,)``, ``fold`` int ``(n,)``, ``strip_s`` int ``(n,)`` (10 or
    300), ``record`` str ``(n,)``.
    """
    import mlflow

    rows: dict[str, list[np.ndarray]] = {"fold": [], "strip_s": [], "record": []}
    for seg in VAL_SEGMENTATIONS:
        for k in sorted(fold_val, key=int):
            recs = scored[seg].record[np.isin(scored[seg].record, fold_val[k])]
            rows["fold"].append(np.full(recs.size, int(k)))
            rows["strip_s"].append(np.full(recs.size, int(seg)))
            rows["record"].append(recs.astype(str))
    record = np.concatenate(rows["record"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "oof_logits.npz"
        np.savez_compressed(
            path,
            logits=np.concatenate([z[s] for s in VAL_SEGMENTATIONS]).astype(np.float32),
            labels=np.concatenate([y[s] for s in VAL_SEGMENTATIONS]),
            fold=np.concatenate(rows["fold"]),
            strip_s=np.concatenate(rows["strip_s"]),
            record=record,
        )
        mlflow.log_artifact(str(path))
