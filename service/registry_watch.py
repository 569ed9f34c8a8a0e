"""The models the service answers with, and how a moved alias is picked up.

Each task (arrhythmia, heart disease) has a :class:`ModelSlot` holding an immutable
:class:`LoadedModel`. A request reads ``slot.current`` once, at its start, and uses that snapshot
to the end; a reload builds the new predictor completely, then replaces the reference in one
assignment. So a swap never drops or mixes up an in-flight request, and a failed load leaves the
previous version serving (the failure is logged and shown by ``/ready``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from models.predictor import (
    ArrhythmiaPredictor,
    HeartDiseasePredictor,
    load_predictor,
)
from models.record_predictor import RecordPredictor, load_heart_disease_predictor
from models.segment import Segment
from models.tasks import TASK_ARRHYTHMIA, TASK_HEART_DISEASE
from models.tracking_server import check_reachable
from service.batcher import StripBatcher
from service.schemas import ReloadOutcome
from service.settings import ServiceSettings

__all__ = ["LoadedModel", "ModelHolder", "ModelSlot"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """One registered model version, ready to predict."""

    task: str
    name: str
    alias: str
    version: str
    run_id: str | None
    source: str
    predictor: ArrhythmiaPredictor | HeartDiseasePredictor | RecordPredictor
    test_metrics: dict[str, float]
    loaded_at: datetime


@dataclass
class ModelSlot:
    """The current model of one task, and what went wrong last."""

    task: str
    name: str
    alias: str
    current: LoadedModel | None = None
    error: str | None = None  # why nothing is loaded (start-up failure)
    last_reload_error: str | None = None
    last_reload_at: datetime | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


_PREDICTOR_CLASS: dict[str, tuple[type, ...]] = {
    TASK_ARRHYTHMIA: (ArrhythmiaPredictor,),
    TASK_HEART_DISEASE: (HeartDiseasePredictor, RecordPredictor),
}


class ModelHolder:
    """Loads ``models:/<name>@<alias>`` for each configured task and reloads when the alias moves.

    Parameters
    ----------
    settings : ServiceSettings
        Model names (an empty name switches a task off), alias and tracking URI.
    """

    def __init__(self, settings: ServiceSettings) -> None:
        self.tracking_uri = settings.mlflow_tracking_uri
        names = {
            TASK_ARRHYTHMIA: settings.arrhythmia_model,
            TASK_HEART_DISEASE: settings.heart_disease_model,
        }
        #: Admits ``settings.max_concurrent_inference`` predictions at a time (all tasks together).
        self.inference_gate = threading.BoundedSemaphore(settings.max_concurrent_inference)
        #: Coalesces concurrent single-segment arrhythmia requests (one forward pass).
        self.batcher = StripBatcher(settings, self.inference_gate)
        self.slots: dict[str, ModelSlot] = {
            task: ModelSlot(task=task, name=name, alias=settings.model_alias)
            for task, name in names.items()
            if name
        }

    def get(self, task: str) -> LoadedModel | None:
        """The current model of ``task`` (a snapshot: keep using it for the whole request)."""
        slot = self.slots.get(task)
        return None if slot is None else slot.current

    @property
    def ready(self) -> bool:
        return all(slot.current is not None for slot in self.slots.values())

    def reload_all(self, *, force: bool = False) -> list[ReloadOutcome]:
        """Reload every task whose alias points at a version other than the one served."""
        return [self.reload(task, force=force) for task in self.slots]

    def reload(self, task: str, *, force: bool = False) -> ReloadOutcome:
        """Resolve the alias; load and swap in its version if it changed (or ``force``).

        Never raises for registry or model problems: they are logged and recorded on the slot.
        """
        slot = self.slots[task]
        with slot.lock:  # one load per task at a time; requests never take this lock
            previous = slot.current
            prev_version = None if previous is None else previous.version

            def outcome(
                version: str | None, changed: bool, error: str | None = None
            ) -> ReloadOutcome:
                return ReloadOutcome(
                    task=task, name=slot.name, alias=slot.alias, previous_version=prev_version,
                    version=version, changed=changed, error=error,
                )  # fmt: skip

            try:
                loaded = self._load_if_changed(slot, prev_version, force)
            except Exception as err:  # registry unreachable, bad model, wrong task, ...
                message = f"{type(err).__name__}: {err}"
                slot.last_reload_error = message
                slot.last_reload_at = datetime.now(UTC)
                if previous is None:
                    slot.error = message
                    logger.error(
                        "%s model %s@%s not loaded: %s", task, slot.name, slot.alias, message
                    )
                else:
                    logger.error(
                        "reloading %s@%s failed, still serving version %s: %s",
                        slot.name, slot.alias, prev_version, message,
                    )  # fmt: skip
                return outcome(prev_version, False, message)
            slot.last_reload_at = datetime.now(UTC)
            slot.last_reload_error = None
            if loaded is None:
                return outcome(prev_version, False)
            slot.current = loaded  # the atomic swap
            slot.error = None
            logger.info(
                "serving %s model %s version %s (alias %s; was %s)",
                task, slot.name, loaded.version, slot.alias, prev_version,
            )  # fmt: skip
            return outcome(loaded.version, True)

    def _load_if_changed(
        self, slot: ModelSlot, prev_version: str | None, force: bool
    ) -> LoadedModel | None:
        import mlflow
        from mlflow import MlflowClient

        # A down server fails in seconds here, not after MLflow's minutes of retries.
        check_reachable(self.tracking_uri or mlflow.get_tracking_uri())
        client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        mv = client.get_model_version_by_alias(slot.name, slot.alias)
        version = str(mv.version)
        if version == prev_version and not force:
            return None
        # Load the resolved version, not the alias: the alias may move again while we download.
        uri = f"models:/{slot.name}/{version}"
        # A heart-disease champion is whichever kind its card names (record model or not).
        predictor: ArrhythmiaPredictor | HeartDiseasePredictor | RecordPredictor = (
            load_heart_disease_predictor(uri, tracking_uri=self.tracking_uri)
            if slot.task == TASK_HEART_DISEASE
            else load_predictor(uri, tracking_uri=self.tracking_uri)
        )
        if not isinstance(predictor, _PREDICTOR_CLASS[slot.task]):
            task = getattr(predictor.card, "task", TASK_HEART_DISEASE)
            raise ValueError(
                f"{uri} is a {task!r} model; the {slot.task!r} endpoint needs a "
                f"{slot.task!r} model (check the model name settings)"
            )
        _warm_up(predictor)  # also proves the model runs before it replaces the old one
        return LoadedModel(
            task=slot.task,
            name=slot.name,
            alias=slot.alias,
            version=version,
            run_id=mv.run_id,
            source=str(mv.source),
            predictor=predictor,
            test_metrics=_test_metrics(client, mv.run_id),
            loaded_at=datetime.now(UTC),
        )


def _test_metrics(client: object, run_id: str | None) -> dict[str, float]:
    """The ``test_*`` metrics of the training run (empty when the run cannot be read)."""
    if not run_id:
        return {}
    try:
        metrics = client.get_run(run_id).data.metrics  # type: ignore[attr-defined]
    except Exception as err:  # a deleted run must not stop the model from serving
        logger.warning("cannot read metrics of run %s: %s", run_id, err)
        return {}
    return {k: float(v) for k, v in sorted(metrics.items()) if k.startswith("test_")}


def _warm_up(predictor: ArrhythmiaPredictor | HeartDiseasePredictor | RecordPredictor) -> None:
    """Run one synthetic input through the whole chain (imports, detector, first forward pass).

    Raises if the model produces non-finite outputs, so a broken version is never swapped in.
    """
    start = time.perf_counter()
    fs = 360.0
    t = np.arange(int(4 * fs)) / fs
    beats = np.exp(-0.5 * ((t[:, None] - np.arange(0.4, 4.0, 0.8)[None, :]) / 0.015) ** 2)
    lead = (beats.sum(axis=1) + 0.01 * np.sin(2 * np.pi * 0.3 * t)).astype(np.float32)
    if isinstance(predictor, ArrhythmiaPredictor):
        probs = predictor.predict(lead, fs, assess_quality=False).probabilities
    elif isinstance(predictor, RecordPredictor):
        window_s = predictor.card.input_shape[0] / predictor.card.preprocess.fs_target
        record = np.resize(lead, int(window_s * fs))[:, None]
        answer = predictor.predict(record, fs, predictor.card.leads[:1], age=50.0, sex=0)
        probs = np.array([*answer.probabilities.values(), answer.heart_disease_probability])
    else:
        n_leads = len(predictor.card.leads)
        record = np.repeat(lead[:, None], n_leads, axis=1)
        record = np.resize(record, (int(predictor.card.window_s * fs), n_leads))
        probs = predictor.predict_many([Segment(record, fs, predictor.card.leads)])
    if not np.all(np.isfinite(probs)):
        raise ValueError("the model gives non-finite outputs on a synthetic ECG")
    logger.debug("warm-up took %.0f ms", (time.perf_counter() - start) * 1000)
