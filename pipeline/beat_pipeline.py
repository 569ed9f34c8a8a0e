"""``ecg train-beats``: train the beat-sequence model, read DS2 once, log, register, promote.

Data: mitdb DS1 (less record 201 and the paced records) plus whatever svdb records are present.
One DS1 record in five (every fifth, sorted; at least one) is held out as validation, patient
apart; the calibration temperature and the selection metric (``val_macro_f1``, N/S/V F1 mean) come
from it. The recipe is bench/BEAT_RESEARCH.md's choice: LSTM, relative inputs, sqrt class weights.
DS2 (the test set) is read once after training and only logged.

Promotion: a beat-sequence version always replaces a single-beat champion; between beat-sequence
versions the higher ``val_macro_f1`` wins (ties keep the champion).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from models.beat_classifier import BeatClassifier
from models.beat_context import RELATIVE_FEATURE_NAMES
from models.beat_predictor import BEAT_MODEL_KIND, log_beat_model
from models.beat_sequence import BeatSequenceConfig
from models.tasks import TAG_SELECTION_METRIC, TAG_SELECTION_VALUE, TAG_TASK, TASK_ARRHYTHMIA
from pipeline.beat_sequences import (
    LABEL_CLASSES,
    BeatSequences,
    build_sequences,
    concat_sequences,
    ds1_records,
    ds2_records,
    svdb_records,
)
from pipeline.beat_train import (
    BeatTrainConfig,
    fit_temperature,
    per_class_scores,
    predict_logits,
    train_beat_model,
)
from pipeline.errors import UserError

__all__ = ["BeatTrainResult", "find_db_dir", "train_beats"]

logger = logging.getLogger(__name__)

#: Tag naming a registered version's model kind.
TAG_KIND = "ecg.kind"
SELECTION_METRIC = "val_macro_f1"
CHAMPION = "champion"


@dataclass(frozen=True)
class BeatTrainResult:
    """What one ``train-beats`` run produced."""

    run_id: str
    val_macro_f1: float
    temperature: float
    test_metrics: dict[str, float]
    version: str | None
    promoted: bool


def find_db_dir(raw_root: Path, db: str) -> Path | None:
    """``raw_root/<db>`` or its newest ``<version>/`` holding WFDB headers; None when absent."""
    base = raw_root / db
    if any(base.glob("*.hea")):
        return base
    versions = sorted(p for p in base.glob("*") if p.is_dir() and any(p.glob("*.hea")))
    return versions[-1] if versions else None


def _present(db_dir: Path, records: list[str]) -> list[str]:
    return [r for r in records if (db_dir / f"{r}.hea").is_file()]


def _scores(clf_model: object, data: BeatSequences, temperature: float) -> dict[str, float]:
    logits = predict_logits(clf_model, data)  # type: ignore[arg-type]
    return per_class_scores(data.label, (logits / temperature).argmax(axis=1), LABEL_CLASSES)


def train_beats(
    raw_root: Path,
    *,
    epochs: int = 6,
    tracking_uri: str | None = None,
    experiment: str = "ecg-arrhythmia",
    register: bool = True,
    model_name: str = "ecg-arrhythmia",
    seed: int = 0,
    mitdb_records: list[str] | None = None,
    test_records: list[str] | None = None,
    svdb_limit: int | None = None,
) -> BeatTrainResult:
    """Train, validate, test once, log and (optionally) register the beat-sequence model.

    Parameters
    ----------
    raw_root : Path
        Holds ``mitdb/[<version>/]`` and optionally ``svdb/[<version>/]`` WFDB records.
    epochs : int
    mitdb_records, test_records : list of str, optional
        Subsets of DS1 / DS2 (default: all present); for quick runs.
    svdb_limit : int, optional
        Use only the first this many svdb records.

    Raises
    ------
    UserError
        No mitdb records, or too few DS1 records for a validation split.
    """
    import mlflow

    from pipeline.tracking import ensure_experiment, tracking_scope

    mitdb = find_db_dir(raw_root, "mitdb")
    if mitdb is None:
        raise UserError(f"no mitdb records under {raw_root}; run `ecg download mitdb` first")
    ds1 = _present(mitdb, mitdb_records or ds1_records())
    ds2 = _present(mitdb, test_records or ds2_records())
    if len(ds1) < 2:
        raise UserError(f"{mitdb}: {len(ds1)} DS1 records present; at least 2 are needed")
    val_recs = ds1[::5]
    train_recs = [r for r in ds1 if r not in val_recs]
    svdb = find_db_dir(raw_root, "svdb")
    sv_recs = svdb_records(svdb)[:svdb_limit] if svdb is not None else []
    parts = [build_sequences(mitdb, "mitdb", train_recs, "mixed")]
    if svdb is not None and sv_recs:
        parts.append(build_sequences(svdb, "svdb", sv_recs, "mixed"))
    train = concat_sequences(parts)
    val = build_sequences(mitdb, "mitdb", val_recs, "mixed")
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
                    TAG_SELECTION_METRIC: SELECTION_METRIC,
                }
            )
            mlflow.log_params({f"model.{k}": v for k, v in model_cfg.to_dict().items()})
            mlflow.log_params({f"train.{k}": v for k, v in train_cfg.to_dict().items()})
            mlflow.log_params(
                {
                    "train_records": len(train_recs),
                    "svdb_records": len(sv_recs),
                    "val_records": ",".join(val_recs),
                    "train_beats": len(train),
                }
            )
            t0 = time.perf_counter()
            model = train_beat_model(model_cfg, train_cfg, train)
            mlflow.log_metric("train_seconds", time.perf_counter() - t0)
            z_val = predict_logits(model, val)
            temperature = fit_temperature(z_val, val.label)
            val_scores = per_class_scores(
                val.label, (z_val / temperature).argmax(axis=1), LABEL_CLASSES
            )
            val_f1 = float(np.nan_to_num(val_scores["macro_f1"]))
            mlflow.log_metrics({f"val_{k}": float(v) for k, v in val_scores.items()})
            mlflow.log_metrics({"temperature": temperature, f"best_{SELECTION_METRIC}": val_f1})
            model.config = replace(model.config, temperature=temperature)
            clf = BeatClassifier(model=model)
            # DS2, read once, after every choice: per-class precision (ppv) and recall (se).
            test: dict[str, float] = {}
            if ds2:
                data = build_sequences(mitdb, "mitdb", ds2, "300")
                test = {f"test_{k}": float(v) for k, v in _scores(model, data, 1.0).items()}
                test = {k: v for k, v in test.items() if np.isfinite(v)}
                mlflow.log_metrics(test)
            info = log_beat_model(clf)
        version, promoted = None, False
        if register:
            version, promoted = _register(uri, model_name, run.info.run_id, info, val_f1)
    logger.info("beat-sequence run %s: val macro F1 %.4f", run.info.run_id, val_f1)
    return BeatTrainResult(run.info.run_id, val_f1, temperature, test, version, promoted)


def _register(uri: str, name: str, run_id: str, info: object, val_f1: float) -> tuple[str, bool]:
    """New version of ``name``; @champion moves to it per the module's promotion rule."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name, tags={TAG_TASK: TASK_ARRHYTHMIA, TAG_SELECTION_METRIC: SELECTION_METRIC}
        )
    mv = client.create_model_version(
        name=name,
        source=client.get_logged_model(info.model_id).artifact_location,  # type: ignore[attr-defined]
        run_id=run_id,
        model_id=info.model_id,  # type: ignore[attr-defined]
        tags={
            TAG_TASK: TASK_ARRHYTHMIA,
            TAG_KIND: BEAT_MODEL_KIND,
            TAG_SELECTION_METRIC: SELECTION_METRIC,
            TAG_SELECTION_VALUE: repr(val_f1),
        },
    )
    version = str(mv.version)
    try:
        champ = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champ = None
    if champ is None or champ.tags.get(TAG_KIND) != BEAT_MODEL_KIND:
        promote = True
    else:
        promote = val_f1 > float(champ.tags.get(TAG_SELECTION_VALUE, "-inf"))
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    logger.info("registered %s v%s; champion: %s", name, version, promote)
    return version, promote
