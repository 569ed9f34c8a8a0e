"""MLflow Model Registry: register a training run, move ``champion`` only to a better model.

Each task's models are registered under the task's name in the catalogue (:mod:`models.tasks`:
``ecg-arrhythmia``, ``ecg-heart-disease``). Every version carries its validation selection
metric as tags (``ecg.selection_metric``, ``ecg.selection_value``: validation macro-F1 over N,
S, V, F for arrhythmia, validation macro-AUC for heart disease). The alias ``champion`` moves to
a new version only when its value is strictly higher than the current champion's; the decision
and both values are written on the candidate version (tags and description) and returned for the
CLI to print.
The service loads ``models:/<name>@champion``.

Registration is all or nothing: if anything fails after the version is created (tags, the
decision, the alias), the version is deleted again, and so is the registered model when this call
created it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from models.tasks import (
    TAG_CELL,
    TAG_DATASET_SHA256,
    TAG_SELECTION_METRIC,
    TAG_SELECTION_VALUE,
    TAG_TASK,
    TASKS,
    best_metric_of,
)
from pipeline.errors import UserError

__all__ = [
    "CHAMPION_ALIAS",
    "PromotionDecision",
    "Registration",
    "promote",
    "register_run",
]

logger = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"


@dataclass(frozen=True)
class PromotionDecision:
    """Whether ``version`` of ``model_name`` became the champion, and why.

    Attributes
    ----------
    model_name, version : str
    metric : str
        e.g. ``val_macro_f1``.
    candidate_value : float
    champion_version : str or None
        The champion before the decision (None: there was none).
    champion_value : float or None
    promoted : bool
    forced : bool
        Promoted without comparison (``ecg promote --force``).
    """

    model_name: str
    version: str
    metric: str
    candidate_value: float
    champion_version: str | None
    champion_value: float | None
    promoted: bool
    forced: bool = False

    def summary(self) -> str:
        """One line for the CLI and the version's description."""
        cand = f"{self.model_name} v{self.version} {self.metric}={self.candidate_value:.4f}"
        if self.champion_version is None:
            return f"{cand}: no champion yet -> promoted to @{CHAMPION_ALIAS}"
        champ = f"champion v{self.champion_version} {self.metric}={_fmt(self.champion_value)}"
        if self.forced:
            return f"{cand} vs {champ}: forced -> promoted to @{CHAMPION_ALIAS}"
        if self.champion_version == self.version:
            return f"{cand} is already @{CHAMPION_ALIAS}"
        verdict = "better -> promoted to" if self.promoted else "not better -> kept"
        return f"{cand} vs {champ}: {verdict} @{CHAMPION_ALIAS}"


@dataclass(frozen=True)
class Registration:
    """A registered version and the champion decision taken for it."""

    model_name: str
    version: str
    run_id: str
    decision: PromotionDecision | None


def _fmt(v: float | None) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:.4f}"


def _client(tracking_uri: str | None) -> Any:
    from mlflow import MlflowClient

    from pipeline.tracking import check_reachable, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    check_reachable(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _run_model(client: Any, run: Any) -> Any:
    """The model logged by ``run`` (MLflow 3 logged model); UserError when there is none."""
    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
    )
    if not models:
        raise UserError(f"run {run.info.run_id} logged no model; train it to the end first")
    return sorted(models, key=lambda m: m.creation_timestamp)[-1]


def _selection(run: Any) -> tuple[str, float]:
    metric = run.data.tags.get(TAG_SELECTION_METRIC)
    if not metric:
        raise UserError(
            f"run {run.info.run_id} has no {TAG_SELECTION_METRIC} tag; was it made by `ecg train`?"
        )
    key = best_metric_of(metric)
    if key not in run.data.metrics:
        raise UserError(f"run {run.info.run_id} has no metric {key}; it did not finish training")
    return metric, float(run.data.metrics[key])


def _wait_ready(client: Any, name: str, version: str, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        mv = client.get_model_version(name, version)
        if mv.status == "READY":
            return
        if mv.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise RuntimeError(f"{name} v{version}: registration status {mv.status}")
        time.sleep(1.0)


def register_run(
    run_id: str,
    *,
    model_name: str | None = None,
    promote_if_better: bool = True,
    tracking_uri: str | None = None,
) -> Registration:
    """Register the model of a finished ``ecg train`` run; move ``champion`` to it if better.

    Parameters
    ----------
    run_id : str
    model_name : str, optional
        Default from the run's task: ``ecg-arrhythmia`` or ``ecg-heart-disease``.
    promote_if_better : bool
        Compare with the current champion and move the alias when the candidate is better.
    tracking_uri : str, optional

    Raises
    ------
    UserError
        Unknown run, unfinished run, run without a model, or a name that does not fit its task.
    """

    client = _client(tracking_uri)
    run = _finished_run(client, run_id)
    task = run.data.tags.get(TAG_TASK)
    if task not in TASKS:
        raise UserError(f"run {run_id} has no known {TAG_TASK} tag (got {task!r})")
    name = model_name or TASKS[task].model_name
    metric, value = _selection(run)
    logged = _run_model(client, run)

    created_model = _ensure_registered_model(client, name, task, metric)
    mv = None
    try:
        existing = client.get_registered_model(name).tags.get(TAG_TASK)
        if existing and existing != task:
            raise UserError(f"registered model {name!r} holds {existing} models, not {task}")
        mv = client.create_model_version(
            name=name,
            source=logged.artifact_location,
            run_id=run_id,
            model_id=logged.model_id,
            tags={
                TAG_TASK: task,
                TAG_SELECTION_METRIC: metric,
                TAG_SELECTION_VALUE: repr(value),
                TAG_DATASET_SHA256: run.data.tags.get(TAG_DATASET_SHA256, ""),
                TAG_CELL: run.data.tags.get(TAG_CELL, ""),
            },
        )
        _wait_ready(client, name, mv.version)
        decision = (
            _decide(client, name, str(mv.version), force=False) if promote_if_better else None
        )
    except BaseException:
        # All or nothing: no half-registered version, no empty registered model.
        if mv is not None:
            _quietly(client.delete_model_version, name, mv.version)
        if created_model:
            _quietly(client.delete_registered_model, name)
        raise
    logger.info("registered run %s as %s v%s", run_id, name, mv.version)
    return Registration(name, str(mv.version), run_id, decision)


def _finished_run(client: Any, run_id: str) -> Any:
    """The run ``run_id``; UserError when it does not exist or did not finish."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise UserError(
            f"no MLflow run {run_id!r} in {client.tracking_uri}: {err.message}"
        ) from None
    if run.info.status != "FINISHED":
        raise UserError(f"run {run_id} is {run.info.status}; only FINISHED runs are registered")
    return run


def _ensure_registered_model(client: Any, name: str, task: str, metric: str) -> bool:
    """Create registered model ``name`` for ``task`` unless it exists; True when created."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name, tags={TAG_TASK: task, TAG_SELECTION_METRIC: metric},
            description=f"ECG {task} model; @{CHAMPION_ALIAS} = best {metric} so far",
        )  # fmt: skip
        return True
    return False


def promote(
    model_name: str, version: str | int, *, force: bool = False, tracking_uri: str | None = None
) -> PromotionDecision:
    """Move ``champion`` to ``model_name`` v``version`` if it beats the champion (or ``force``).

    Raises
    ------
    UserError
        Unknown model or version, or a version without a selection metric.
    """
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        client.get_model_version(model_name, str(version))
    except MlflowException:
        raise UserError(
            f"no version {version} of registered model {model_name!r} in {client.tracking_uri}"
        ) from None
    return _decide(client, model_name, str(version), force=force)


def _value_of(mv: Any) -> tuple[str, float]:
    metric, raw = mv.tags.get(TAG_SELECTION_METRIC), mv.tags.get(TAG_SELECTION_VALUE)
    if not metric or raw is None:
        raise UserError(
            f"{mv.name} v{mv.version} has no {TAG_SELECTION_METRIC}/{TAG_SELECTION_VALUE} tags; "
            "register it with `ecg register --run-id`"
        )
    return metric, float(raw)


def _decide(client: Any, name: str, version: str, *, force: bool) -> PromotionDecision:
    """Compare ``version`` with the champion, move the alias if better, record the decision."""
    from mlflow.exceptions import MlflowException

    cand = client.get_model_version(name, version)
    metric, value = _value_of(cand)
    try:
        champ = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException:
        champ = None
    champ_value: float | None = None
    if champ is not None:
        champ_metric, champ_value = _value_of(champ)
        if champ_metric != metric:
            raise UserError(
                f"{name}: champion v{champ.version} is scored by {champ_metric}, "
                f"v{version} by {metric}; they cannot be compared"
            )
    if champ is None:
        promoted = True
    elif str(champ.version) == version:
        promoted = False
    else:
        assert champ_value is not None
        # Strictly better only: a tie keeps the model that is already serving.
        promoted = force or value > champ_value
    decision = PromotionDecision(
        model_name=name,
        version=version,
        metric=metric,
        candidate_value=value,
        champion_version=None if champ is None else str(champ.version),
        champion_value=champ_value,
        promoted=promoted,
        forced=force and champ is not None and str(champ.version) != version,
    )
    tags = {
        "ecg.champion_decision": "promoted" if promoted else "not promoted",
        "ecg.compared_with_version": decision.champion_version or "none",
        "ecg.compared_with_value": "none" if champ_value is None else repr(champ_value),
        "ecg.decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for key, val in tags.items():
        client.set_model_version_tag(name, version, key, val)
    client.update_model_version(name, version, description=decision.summary())
    if promoted:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    logger.info("%s", decision.summary())
    return decision


def _quietly(fn: Any, *args: Any) -> None:
    from mlflow.exceptions import MlflowException

    try:
        fn(*args)
    except MlflowException as err:  # best-effort clean-up; the original error is re-raised
        logger.warning("clean-up %s%s failed: %s", getattr(fn, "__name__", fn), args, err)
