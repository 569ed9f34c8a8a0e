"""MLflow Model Registry: one registration and promotion path for every model kind.

Each task's models are registered under the task's name in the catalogue (:mod:`models.tasks`:
``ecg-arrhythmia``, ``ecg-heart-disease``). Every version carries, as tags copied from its run:

* ``ecg.kind``: the model kind (``single-beat``: ``ecg train``'s beat classifier;
  ``beat-sequence``: ``ecg train-beats``; ``record-model``: the heart-disease record model). Runs
  without the tag take their task's default (arrhythmia: single-beat; heart disease: record-model).
* ``ecg.selection_metric`` / ``ecg.selection_value``: the validation figure that selects it
  (validation macro-F1 for arrhythmia, macro-AUC for heart disease).
* ``ecg.validation_set``: which validation set that figure was measured on (set by training, or
  derived from the run's dataset tag, dataset hash and validation records).

Promotion rule (``champion`` is the alias the service loads, ``models:/<name>@champion``):

1. no champion yet: the candidate becomes champion;
2. different kinds: the higher-ranked kind wins whatever the numbers (a beat-sequence model
   outranks a single-beat one), so ``ecg train --register`` never demotes a beat-sequence
   champion and a beat-sequence model always replaces a single-beat one;
3. same kind, same selection metric, same validation set: the strictly higher value wins; a tie
   keeps the champion;
4. same kind but a different metric or validation set: the figures are not comparable, so the
   champion stays (``ecg promote --force`` moves it anyway);
5. ``force`` (``ecg promote --force``) promotes without any comparison.

The decision, its reason and both values are written on the candidate version (tags and
description) and returned for the CLI to print.

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
    TAG_DATASET,
    TAG_DATASET_SHA256,
    TAG_SELECTION_METRIC,
    TAG_SELECTION_VALUE,
    TAG_TASK,
    TASK_ARRHYTHMIA,
    TASK_HEART_DISEASE,
    TASKS,
    best_metric_of,
)
from pipeline.errors import UserError

__all__ = [
    "CHAMPION_ALIAS",
    "KIND_BEAT_SEQUENCE",
    "KIND_RANK",
    "KIND_RECORD",
    "KIND_SINGLE_BEAT",
    "TAG_KIND",
    "TAG_VALIDATION_SET",
    "PromotionDecision",
    "Registration",
    "promote",
    "register_run",
    "run_kind",
    "run_validation_set",
]

logger = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"

#: Run and version tag: the model kind.
TAG_KIND = "ecg.kind"
#: Run and version tag: identity of the validation set the selection value was measured on.
TAG_VALIDATION_SET = "ecg.validation_set"

KIND_SINGLE_BEAT = "single-beat"
#: Equals :data:`models.beat_predictor.BEAT_MODEL_KIND` (kept here so the CLI stays light).
KIND_BEAT_SEQUENCE = "beat-sequence"
#: Equals :data:`models.record_predictor.MODEL_KIND`.
KIND_RECORD = "record-model"
#: Higher outranks lower whatever the figures; equal ranks are compared by number.
KIND_RANK: dict[str, int] = {KIND_SINGLE_BEAT: 0, KIND_RECORD: 0, KIND_BEAT_SEQUENCE: 1}
_DEFAULT_KIND = {TASK_ARRHYTHMIA: KIND_SINGLE_BEAT, TASK_HEART_DISEASE: KIND_RECORD}


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
    kind, champion_kind : str
        Model kinds (``ecg.kind``) of the candidate and of the champion (None: no champion).
    reason : str
        ``first``, ``same-version``, ``forced``, ``outranks``, ``outranked``, ``not-comparable``,
        ``better`` or ``not-better`` (see the module's promotion rule).
    detail : str
        Why two versions were not comparable (empty otherwise).
    """

    model_name: str
    version: str
    metric: str
    candidate_value: float
    champion_version: str | None
    champion_value: float | None
    promoted: bool
    forced: bool = False
    kind: str = ""
    champion_kind: str | None = None
    reason: str = ""
    detail: str = ""

    def summary(self) -> str:
        """One line for the CLI and the version's description."""
        alias = f"@{CHAMPION_ALIAS}"
        value = _fmt(self.candidate_value)
        cand = f"{self.model_name} v{self.version} ({self.kind}) {self.metric}={value}"
        if self.champion_version is None:
            return f"{cand}: no champion yet -> promoted to {alias}"
        champ = (
            f"champion v{self.champion_version} ({self.champion_kind}) "
            f"{self.metric}={_fmt(self.champion_value)}"
        )
        if self.forced:
            return f"{cand} vs {champ}: forced -> promoted to {alias}"
        if self.champion_version == self.version:
            return f"{cand} is already {alias}"
        verdict = {
            "outranks": f"a {self.kind} model outranks a {self.champion_kind} one -> promoted to",
            "outranked": f"a {self.champion_kind} champion outranks a {self.kind} model -> kept",
            "not-comparable": f"not comparable ({self.detail}) -> kept",
            "better": "better -> promoted to",
        }.get(self.reason, "not better -> kept")
        line = f"{cand} vs {champ}: {verdict} {alias}"
        if self.reason == "not-comparable":
            line += " (`ecg promote --force` overrides)"
        return line


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


def run_kind(run: Any) -> str:
    """The model kind of an MLflow run: its ``ecg.kind`` tag, else its task's default kind."""
    tags = run.data.tags
    return str(tags.get(TAG_KIND) or _DEFAULT_KIND.get(tags.get(TAG_TASK, ""), "unknown"))


def run_validation_set(run: Any) -> str:
    """Identity of the validation set a run's selection value was measured on.

    The run's ``ecg.validation_set`` tag when training set one; otherwise derived from its dataset
    tag, dataset hash and validation-record parameter (runs made before the tag existed).
    """
    tags, params = run.data.tags, run.data.params
    if tags.get(TAG_VALIDATION_SET):
        return str(tags[TAG_VALIDATION_SET])
    parts = [str(tags.get(TAG_DATASET) or "unknown-dataset")]
    if tags.get(TAG_DATASET_SHA256):
        parts.append(f"sha256:{tags[TAG_DATASET_SHA256][:16]}")
    val = params.get("train.val_records") or params.get("val_records")
    if val and val != "None":
        parts.append(f"val_records={val}")
    return " ".join(parts)


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
    """Register the model of a finished training run; move ``champion`` per the promotion rule.

    Any kind: ``ecg train`` (single-beat), ``ecg train-beats`` (beat-sequence), the record model.
    The version gets the run's kind, selection metric and value, and validation-set identity.

    Parameters
    ----------
    run_id : str
    model_name : str, optional
        Default from the run's task: ``ecg-arrhythmia`` or ``ecg-heart-disease``.
    promote_if_better : bool
        Compare with the current champion and move the alias as the module's rule says.
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
                TAG_KIND: run_kind(run),
                TAG_VALIDATION_SET: run_validation_set(run),
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
    """Move ``champion`` to ``model_name`` v``version`` per the module's rule (or ``force``).

    A higher-ranked kind wins (beat-sequence over single-beat); the same kind on the same
    validation set wins on a strictly higher selection value; anything else keeps the champion.

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


def _soft_value(mv: Any) -> tuple[str | None, float | None]:
    """Selection metric and value of ``mv``, None where a tag is missing or unreadable."""
    metric, raw = mv.tags.get(TAG_SELECTION_METRIC), mv.tags.get(TAG_SELECTION_VALUE)
    try:
        return metric, None if raw is None else float(raw)
    except ValueError:
        return metric, None


def _identity(client: Any, mv: Any) -> tuple[str, str]:
    """``(kind, validation set)`` of a version: its tags, else derived from its run."""
    from mlflow.exceptions import MlflowException

    kind, valset = mv.tags.get(TAG_KIND), mv.tags.get(TAG_VALIDATION_SET)
    if kind and valset:
        return str(kind), str(valset)
    try:
        run = client.get_run(mv.run_id) if mv.run_id else None
    except MlflowException:
        run = None
    if run is not None:
        return str(kind or run_kind(run)), str(valset or run_validation_set(run))
    default = _DEFAULT_KIND.get(mv.tags.get(TAG_TASK, ""), "unknown")
    return str(kind or default), str(valset or "unknown")


def _rule(
    kind: str, valset: str, metric: str, value: float, champ: Any, champ_id: tuple[str, str]
) -> tuple[bool, str, str]:
    """``(promoted, reason, detail)`` of the module's rule for a candidate against ``champ``."""
    champ_kind, champ_valset = champ_id
    rank, champ_rank = KIND_RANK.get(kind, 0), KIND_RANK.get(champ_kind, 0)
    if rank != champ_rank:
        return (True, "outranks", "") if rank > champ_rank else (False, "outranked", "")
    if kind != champ_kind:
        return False, "not-comparable", f"kinds differ: {kind} vs {champ_kind}"
    champ_metric, _ = _soft_value(champ)
    if champ_metric != metric:
        return False, "not-comparable", f"metrics differ: {metric} vs {champ_metric}"
    if valset != champ_valset:
        return False, "not-comparable", f"validation sets differ: {valset!r} vs {champ_valset!r}"
    _, champ_value = _value_of(champ)
    # Strictly better only: a tie keeps the model that is already serving.
    return (True, "better", "") if value > champ_value else (False, "not-better", "")


def _decide(client: Any, name: str, version: str, *, force: bool) -> PromotionDecision:
    """Apply the promotion rule to ``version``, move the alias if it wins, record the decision."""
    from mlflow.exceptions import MlflowException

    cand = client.get_model_version(name, version)
    metric, value = _value_of(cand)
    kind, valset = _identity(client, cand)
    try:
        champ = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException:
        champ = None
    champ_kind: str | None = None
    champ_value: float | None = None
    detail = ""
    if champ is None:
        promoted, reason = True, "first"
    elif str(champ.version) == version:
        promoted, reason = False, "same-version"
        champ_kind, champ_value = kind, value
    else:
        champ_id = _identity(client, champ)
        champ_kind, champ_value = champ_id[0], _soft_value(champ)[1]
        if force:
            promoted, reason = True, "forced"
        else:
            promoted, reason, detail = _rule(kind, valset, metric, value, champ, champ_id)
    decision = PromotionDecision(
        model_name=name,
        version=version,
        metric=metric,
        candidate_value=value,
        champion_version=None if champ is None else str(champ.version),
        champion_value=champ_value,
        promoted=promoted,
        forced=reason == "forced",
        kind=kind,
        champion_kind=champ_kind,
        reason=reason,
        detail=detail,
    )
    tags = {
        "ecg.champion_decision": "promoted" if promoted else "not promoted",
        "ecg.champion_reason": reason,
        "ecg.compared_with_version": decision.champion_version or "none",
        "ecg.compared_with_kind": champ_kind or "none",
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
