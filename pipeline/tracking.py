"""Where MLflow runs and models go: the tracking-URI default and experiment set-up.

With nothing configured, runs land in a local sqlite store ``sqlite:///mlflow.db`` (which the Model
Registry needs; a plain file store has none) and artifacts in ``./mlartifacts``, which is what
``mlflow ui --backend-store-uri sqlite:///mlflow.db`` opens. ``ECG_MLFLOW_TRACKING_URI`` (see
:mod:`pipeline.settings`) or MLflow's own ``MLFLOW_TRACKING_URI`` point everything at a tracking
server instead; the server then decides where artifacts go.

Nothing here runs at import time: :func:`tracking_scope` wraps the code that logs.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from models.tracking_server import TrackingServerUnreachableError
from models.tracking_server import check_reachable as probe_tracking_server
from pipeline.errors import UserError
from pipeline.settings import PipelineSettings, get_settings

__all__ = [
    "DEFAULT_TRACKING_URI",
    "check_reachable",
    "ensure_experiment",
    "initialise_sqlite_store",
    "log_dataset_input",
    "resolve_tracking_uri",
    "runs_table_view",
    "tracking_scope",
]

logger = logging.getLogger(__name__)

_URI_ENV_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")

#: The experiment tag MLflow 3's UI reads to choose between its GenAI pages (traces, token
#: usage) and the classic runs table; "custom_model_development" selects the runs table.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
#: Tag prefix of a saved runs-table view; ``?viewStateShareKey=<key>`` opens it (MLflow's UI).
_VIEW_TAG_PREFIX = "mlflow.sharedViewState."

#: The store used when neither ECG_MLFLOW_TRACKING_URI nor MLFLOW_TRACKING_URI is set.
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def resolve_tracking_uri(
    explicit: str | None = None, settings: PipelineSettings | None = None
) -> str:
    """The tracking URI: ``explicit`` > ECG_MLFLOW_TRACKING_URI > MLFLOW_TRACKING_URI > sqlite.

    Parameters
    ----------
    explicit : str, optional
        A URI given on the command line or by a test.
    settings : PipelineSettings, optional
        Defaults to :func:`pipeline.settings.get_settings`.
    """
    if explicit:
        return explicit
    settings = settings or get_settings()
    if settings.mlflow_tracking_uri:
        return settings.mlflow_tracking_uri
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, with one clear line, when an HTTP tracking server does not answer.

    :func:`models.tracking_server.check_reachable` (MLflow's own client retries a refused
    connection with back-off for minutes), its failure as a :class:`UserError`.

    Raises
    ------
    UserError
        When the connection fails or times out.
    """
    try:
        probe_tracking_server(uri, timeout_s)
    except TrackingServerUnreachableError as err:
        raise UserError(str(err)) from err


def initialise_sqlite_store(uri: str, timeout_s: float = 300.0) -> None:
    """Create a sqlite store's tables while holding ``<db file>.lock``.

    MLflow creates (and migrates) the tables on first use; two processes doing that at once on the
    same new file race in its migrations ("table ... already exists") and one of them crashes.
    The lock makes the first one create them and the others find them. Other URIs are left alone.
    """
    if not uri.startswith("sqlite:///"):
        return
    from filelock import FileLock
    from mlflow import MlflowClient

    db = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    if not db.parent.is_dir():
        return  # MLflow reports the bad path itself
    with FileLock(f"{db}.lock", timeout=timeout_s):
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


def _is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


@contextlib.contextmanager
def tracking_scope(
    explicit: str | None = None, settings: PipelineSettings | None = None
) -> Iterator[str]:
    """Point MLflow's fluent API (tracking and registry) at :func:`resolve_tracking_uri`.

    Yields the URI, and on exit puts back what was there before: MLflow keeps these URIs in
    module globals *and* in the ``MLFLOW_TRACKING_URI`` / ``MLFLOW_REGISTRY_URI`` environment
    variables (for subprocesses), so a library call that set them and left would redirect every
    later client and child process of the caller.
    """
    import mlflow

    uri = resolve_tracking_uri(explicit, settings)
    check_reachable(uri)
    initialise_sqlite_store(uri)
    saved = {name: os.environ.get(name) for name in _URI_ENV_VARS}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    logger.debug("MLflow tracking URI: %s", uri)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])  # type: ignore[arg-type]
        mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])  # type: ignore[arg-type]
        for name, value in saved.items():  # set_registry_uri(None) leaves the variable set
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def ensure_experiment(
    name: str,
    tracking_uri: str,
    artifact_dir: Path | None = None,
    settings: PipelineSettings | None = None,
) -> str:
    """Id of experiment ``name``, creating it (with an explicit artifact location) when missing.

    For a local store (sqlite or file) the artifact location is set explicitly to ``artifact_dir``
    (default: settings' ``mlflow_artifact_dir``, ``./mlartifacts``), made absolute, so runs never
    write artifacts into whatever directory a process happens to start in. For a tracking server the
    server's default artifact root is used.

    Raises
    ------
    UserError
        When the experiment exists but was deleted (restore it or pick another name).
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise UserError(
                f"experiment {name!r} is deleted in {tracking_uri}; restore it "
                f"(mlflow experiments restore) or choose another --experiment"
            )
        if EXPERIMENT_KIND_TAG not in exp.tags:  # made before the tag existed: runs table too
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
        return str(exp.experiment_id)
    location = None
    if _is_local_store(tracking_uri):
        root = artifact_dir or (settings or get_settings()).mlflow_artifact_dir
        location = Path(root).resolve().as_uri()
    exp_id = client.create_experiment(
        name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND}
    )
    logger.info("created MLflow experiment %r (artifacts: %s)", name, location or "server default")
    return str(exp_id)


def log_dataset_input(name: str, path: Path | str, digest: str, context: str = "training") -> None:
    """Log a dataset as an input of the active run (the runs table's Dataset column).

    Parameters
    ----------
    name : str
        Dataset name, e.g. ``"mitdb"``.
    path : Path or str
        Where the prepared dataset lies (the dataset's source).
    digest : str
        Content hash of the dataset manifest; MLflow stores at most 36 characters of it.
    context : str
        The input's role in the run (MLflow's ``mlflow.data.context`` tag).
    """
    import warnings

    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": all local files
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(Path(path).resolve()))
    dataset = MetaDataset(source=source, name=name, digest=digest[:36])  # type: ignore[abstract]
    mlflow.log_input(dataset, context=context)


def runs_table_view(
    experiment_id: str,
    tracking_uri: str,
    metrics: list[str],
    order_by: str | None = None,
    name: str = "Key figures",
) -> str:
    """Save a runs-table view with ``metrics`` as columns; returns the UI link to it.

    MLflow's UI keeps the chosen columns in the browser; a view stored in the experiment tag
    ``mlflow.sharedViewState.<key>`` opens with ``?viewStateShareKey=<key>`` (the UI's own "Share"
    button writes the same tag). The key is a hash of the view, so saving the same view twice writes
    one tag. MLflow 3.17's UI picks GenAI or model-training pages by a browser-wide "GenAI | Model
    training" switch rather than by the experiment's ``mlflow.experimentKind`` tag: its bundle reads
    the ``workflowType`` query parameter, else localStorage ``mlflow.workflowType_v1`` (what the
    switch stores), else ``"genai"`` (it reads the tag only with its workflow-based navigation
    flag off, and 3.17 hard-wires that flag on).
    ``workflowType=machine_learning`` in the link selects the runs table whatever the switch says.

    Parameters
    ----------
    experiment_id, tracking_uri : str
    metrics : list of str
        Metric keys shown as columns, in order, after the run's Dataset.
    order_by : str, optional
        A metric key the runs are sorted by (descending); default: start time.
    name : str
        The view's name in the UI's **Views** menu (MLflow 3.17 lists the tags whose value is a
        ``{name, createdAt, updatedAt, state}`` envelope there; the share link reads either form).
    """
    import hashlib
    import json
    import time

    from mlflow import MlflowClient

    columns = ["attributes.`Dataset`", "attributes.`Models`"]
    columns += [f"metrics.`{m}`" for m in metrics]
    state = {
        "searchFilter": "",
        "orderByKey": f"metrics.`{order_by}`" if order_by else "attributes.start_time",
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": columns,
        "columnOrder": [],
        "columnWidths": {},
        "runsExpanded": {},
        "runsPinned": [],
        "runsHidden": [],
        "runsVisibilityMap": {},
        "runsHiddenMode": "FIRST_10_RUNS",
        "viewMaximized": False,
        "runListHidden": False,
        "isAccordionReordered": False,
        "groupBy": "",
        "groupsExpanded": {},
        "autoRefreshEnabled": True,
        "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True,
        "chartsSearchFilter": "",
    }
    value = json.dumps(state, separators=(",", ":"))
    key = "ecg-" + hashlib.sha256(value.encode()).hexdigest()[:16]
    now_ms = int(time.time() * 1000)
    envelope = {"name": name, "createdAt": now_ms, "updatedAt": now_ms, "state": value}
    MlflowClient(tracking_uri=tracking_uri).set_experiment_tag(
        experiment_id, _VIEW_TAG_PREFIX + key, json.dumps(envelope, separators=(",", ":"))
    )
    query = f"workflowType=machine_learning&viewStateShareKey={key}"
    return f"#/experiments/{experiment_id}/runs?{query}"
