"""``ecg train-beats``: train the beat-sequence model, validate on held-out patients, read DS2 once,
log, register.

Data: mitdb DS1 (less record 201 and the paced records) plus whatever svdb records are present,
one record = one patient. The records are dealt into the research's patient-grouped folds
(:func:`pipeline.beat_sequences.make_folds`: 5 folds, stratified so each holds several S and V
patients; bench/BEAT_RESEARCH.md); fold ``val_fold`` (default 0) is held out as validation, the
other folds train. The recipe is the research's choice: LSTM, relative inputs, sqrt class weights.

Validation (held-out patients only), scored on the validation records cut into 10-s and into 300-s
strips as the service receives them:

* every epoch: per-class Se/PPV and ``val_argmax_macro_f1`` (N/S/V macro-F1 of the argmax, mean
  of the 10-s and 300-s scorings), logged per step; the best epoch's weights are kept, and
  training stops after ``patience`` epochs without improvement;
* then the temperature (NLL-optimal) and the decision rule (log-offsets on P(S), P(V), the
  research's grid -2..2 step 0.25, best pooled macro-F1) are fitted on those patients' logits and
  saved in the model card;
* the selection metric ``val_macro_f1`` is the macro-F1 as served (temperature and decision rule
  applied), mean of the 10-s and 300-s scorings; the run also carries ``ecg.validation_set``
  (the fold and a hash of its records) so that promotion only compares like with like.

DS2 (the test set) is read once after every choice, at 300-s (``test_*``) and 10-s (``test10_*``)
strips, and only logged. Registration goes through :func:`pipeline.registry.register_run`, whose
rule puts a beat-sequence model above a single-beat champion and compares beat-sequence models on
the same validation set by ``val_macro_f1`` (ties keep the champion).
"""

from __future__ import annotations

import hashlib
import json
import logging
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
from pipeline.registry import TAG_KIND, TAG_VALIDATION_SET, PromotionDecision

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
    val_records : list of str
        The held-out validation patients (``"<db>/<record>"``).
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


class _EpochValidator:
    """Scores every epoch on the validation patients; keeps the best epoch's weights and logits."""

    def __init__(self, val: dict[str, BeatSequences], patience: int | None) -> None:
        self.val = val
        self.patience = patience
        self.best = -1.0
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_logits: dict[str, np.ndarray] = {}

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
        mlflow.log_metrics(metrics, step=epoch)
        logger.info(
            "epoch %d: validation macro-F1 %.4f (argmax; %s)",
            epoch,
            f1,
            ", ".join(
                f"{seg} s {c} {metrics.get(f'val{seg}_argmax_{c}_se', float('nan')):.3f}/"
                f"{metrics.get(f'val{seg}_argmax_{c}_ppv', float('nan')):.3f}"
                for seg in self.val
                for c in LABEL_CLASSES
            ),
        )
        if f1 > self.best:
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


def train_beats(
    raw_root: Path,
    *,
    epochs: int = 6,
    patience: int | None = 3,
    val_fold: int = 0,
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
    """Train on all folds but one, choose epoch, temperature and rule on the held-out patients,
    test once on DS2, log and (optionally) register the beat-sequence model.

    Parameters
    ----------
    raw_root : Path
        Holds ``mitdb/[<version>/]`` and optionally ``svdb/[<version>/]`` WFDB records.
    epochs : int
        Most epochs (one-cycle schedule over this many).
    patience : int, optional
        Stop after this many epochs without a better validation macro-F1 (None: never).
    val_fold, n_folds : int
        Patient-grouped folds over DS1 + svdb; fold ``val_fold`` is the validation set.
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
    import mlflow

    from pipeline.registry import register_run
    from pipeline.tracking import ensure_experiment, tracking_scope

    if not 0 <= val_fold < n_folds:
        raise UserError(f"--val-fold must be in 0..{n_folds - 1}, got {val_fold}")
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
    t_start = time.perf_counter()
    pool = _build(dirs, all_recs, "mixed")
    folds = make_folds(pool, n_folds)
    val_recs = sorted(r for r, f in folds.items() if f == val_fold)
    train = pool.subset(~np.isin(pool.record, val_recs))
    val = {seg: _build(dirs, val_recs, seg) for seg in VAL_SEGMENTATIONS}
    valset_id = _validation_set_id(val_recs, val_fold, n_folds)
    n_s_patients = sum(int((pool.label[pool.record == r] == 1).sum() >= 20) for r in val_recs)
    logger.info(
        "validation fold %d/%d: %d patients (%d with >= 20 S beats): %s",
        val_fold, n_folds, len(val_recs), n_s_patients, ",".join(val_recs),
    )  # fmt: skip

    model_cfg = BeatSequenceConfig(cell="lstm", feature_names=RELATIVE_FEATURE_NAMES)
    train_cfg = BeatTrainConfig(epochs=epochs, seed=seed)
    torch.manual_seed(seed)
    with tracking_scope(tracking_uri) as uri:
        exp_id = ensure_experiment(experiment, uri)
        with mlflow.start_run(experiment_id=exp_id, run_name="beat-sequence-lstm") as run:
            mlflow.set_tags(
                {
                    TAG_TASK: TASK_ARRHYTHMIA,
                    TAG_KIND: BEAT_MODEL_KIND,
                    TAG_DATASET: "+".join(dirs),
                    TAG_CELL: model_cfg.cell,
                    TAG_SELECTION_METRIC: SELECTION_METRIC,
                    TAG_VALIDATION_SET: valset_id,
                }
            )
            mlflow.log_params({f"model.{k}": v for k, v in model_cfg.to_dict().items()})
            mlflow.log_params({f"train.{k}": v for k, v in train_cfg.to_dict().items()})
            mlflow.log_params(
                {
                    "patience": patience,
                    "val_fold": val_fold,
                    "n_folds": n_folds,
                    "train_records": len(all_recs) - len(val_recs),
                    "svdb_records": len(sv_recs),
                    "val_records": ",".join(val_recs)[:6000],
                    "val_s_patients": n_s_patients,
                    "train_beats": len(train),
                    "val_beats": len(val[VAL_SEGMENTATIONS[0]]),
                    "test_records": ",".join(ds2),
                }
            )
            mlflow.log_dict({"folds": folds, "val_fold": val_fold}, "beat_folds.json")
            validator = _EpochValidator(val, patience)
            t0 = time.perf_counter()
            model = train_beat_model(model_cfg, train_cfg, train, on_epoch=validator)
            mlflow.log_metric("train_seconds", time.perf_counter() - t0)
            assert validator.best_state is not None
            model.load_state_dict(validator.best_state)
            model.eval()

            # Temperature and decision rule: the validation patients' logits of the best epoch.
            z = validator.best_logits
            z_all = np.concatenate([z[s] for s in VAL_SEGMENTATIONS])
            y_all = np.concatenate([val[s].label for s in VAL_SEGMENTATIONS])
            temperature = fit_temperature(z_all, y_all)
            p_all = softmax(z_all / temperature)
            offsets = choose_decision_rule(p_all, y_all)
            decision_offsets = {"S": offsets[0], "V": offsets[1]}
            val_metrics: dict[str, float] = {}
            f1s = []
            for seg in VAL_SEGMENTATIONS:
                s = per_class_scores(
                    val[seg].label, decide(softmax(z[seg] / temperature), offsets), LABEL_CLASSES
                )
                val_metrics.update(_finite(s, f"val{seg}"))
                f1s.append(float(np.nan_to_num(s["macro_f1"])))
            val_f1 = float(np.mean(f1s))
            pooled = per_class_scores(y_all, decide(p_all, offsets), LABEL_CLASSES)
            val_metrics.update(_finite(pooled, "val_pooled"))
            ece_before = expected_calibration_error(softmax(z_all), y_all)
            ece_after = expected_calibration_error(p_all, y_all)
            for c, before, after in zip(LABEL_CLASSES, ece_before, ece_after, strict=True):
                val_metrics[f"val_ece_{c}_before_t"] = float(before)
                val_metrics[f"val_ece_{c}"] = float(after)
            val_metrics[SELECTION_METRIC] = val_f1
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
            mlflow.log_param("decision_offsets", json.dumps(decision_offsets))
            model.config = replace(model.config, temperature=temperature)
            clf = BeatClassifier(model=model, decision_offsets=decision_offsets)

            # DS2, read once, after every choice: per-class PPV (precision) and Se (recall).
            test: dict[str, float] = {}
            for seg, prefix in (("300", "test"), ("10", "test10")) if ds2 else ():
                data = build_sequences(mitdb, "mitdb", ds2, seg)
                probs = softmax(predict_logits(model, data) / temperature)
                scores = per_class_scores(data.label, decide(probs, offsets), LABEL_CLASSES)
                test.update(_finite(scores, prefix))
            if test:
                mlflow.log_metrics(test)
            log_beat_model(clf)
            mlflow.log_metric("total_seconds", time.perf_counter() - t_start)
        registration = register_run(run.info.run_id, model_name=model_name, tracking_uri=uri) \
            if register else None  # fmt: skip
    logger.info(
        "beat-sequence run %s: best epoch %d, validation macro-F1 %.4f as served (T %.2f, "
        "offsets S %+.2f V %+.2f)",
        run.info.run_id, validator.best_epoch, val_f1, temperature, *offsets,
    )  # fmt: skip
    decision = registration.decision if registration is not None else None
    return BeatTrainResult(
        run_id=run.info.run_id,
        val_macro_f1=val_f1,
        temperature=temperature,
        decision_offsets=decision_offsets,
        best_epoch=validator.best_epoch,
        val_records=val_recs,
        val_metrics=val_metrics,
        test_metrics=test,
        version=registration.version if registration is not None else None,
        promoted=bool(decision is not None and decision.promoted),
        decision=decision,
    )
