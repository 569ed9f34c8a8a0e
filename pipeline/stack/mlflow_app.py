"""``mlflow server --app-name ecg``: MLflow's own server whose UI opens on model training.

MLflow 3.17's web UI chooses between its GenAI pages (overview, traces) and its model-training
pages (runs table, datasets) from, in order, the URL's ``workflowType`` query parameter, the
browser's ``localStorage["mlflow.workflowType_v1"]`` (a JSON string, written by the sidebar's
"GenAI" / "Model training" switch), and else the built-in default ``"genai"``; the experiment's
``mlflow.experimentKind`` tag is not consulted. A plain experiment link
(``#/experiments/<id>``) in a fresh browser therefore opens the GenAI overview, which is empty
for this project's training runs.

This app plugin (entry point ``ecg`` in the ``mlflow.app`` group, see ``pyproject.toml``) is the
unchanged MLflow server except for its one HTML page: the view that returns the UI's
``index.html`` gets a small inline script at the start of ``<head>`` that stores
``'"machine_learning"'`` under that key **only when the key is not set yet**, so a user's own
switch choice (either way) is kept. It runs before the UI's bundle, which reads the key at
start-up. Everything else (REST API, artifacts, static files, the FastAPI routes) is MLflow's::

    mlflow server --app-name ecg --backend-store-uri sqlite:///mlflow.db --port 5000
    mlflow ui --app-name ecg ...   # the same: ``mlflow ui`` is an alias of ``mlflow server``
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_WORKFLOW_TYPE", "WORKFLOW_TYPE_KEY", "create_app", "default_workflow_script"]

logger = logging.getLogger(__name__)

#: localStorage key of the UI's GenAI / model-training switch (MLflow 3.17: ``<key>_v<version>``).
WORKFLOW_TYPE_KEY = "mlflow.workflowType_v1"
#: The switch value this app stores when the browser has none.
DEFAULT_WORKFLOW_TYPE = "machine_learning"


def default_workflow_script(
    key: str = WORKFLOW_TYPE_KEY, value: str = DEFAULT_WORKFLOW_TYPE
) -> str:
    """The inline ``<script>`` that stores ``value`` under ``key`` unless the key is set.

    The value is stored JSON-encoded (``'"machine_learning"'``), as the UI's own storage hook
    writes and reads it. Errors (storage disabled by the browser) are ignored: the UI then falls
    back to its own default.
    """
    if "<" in key + value:
        raise ValueError(f"'<' in a localStorage key or value: {key!r}, {value!r}")
    k, stored = json.dumps(key), json.dumps(json.dumps(value))
    return (
        f"<script>try{{if(window.localStorage.getItem({k})===null)"
        f"{{window.localStorage.setItem({k},{stored});}}}}catch(e){{}}</script>"
    )


def inject_default_workflow(html: str, script: str | None = None) -> str:
    """``html`` with ``script`` (default :func:`default_workflow_script`) right after ``<head>``.

    Raises
    ------
    ValueError
        If ``html`` has no ``<head>`` tag (not MLflow's ``index.html``).
    """
    script = default_workflow_script() if script is None else script
    start = html.find("<head>")
    if start < 0:
        raise ValueError("no <head> in the page: not MLflow's index.html")
    cut = start + len("<head>")
    return html[:cut] + script + html[cut:]


@functools.lru_cache(maxsize=1)
def _patched_index(index_path: str, mtime_ns: int) -> bytes:
    """The UI's ``index.html`` with the default-switch script (cached per file version)."""
    html = Path(index_path).read_text(encoding="utf-8")
    return inject_default_workflow(html).encode("utf-8")


def _install_index_view(flask_app: Any) -> None:
    """Replace the Flask app's ``serve`` view (the UI page) with one that injects the script.

    When the UI build is missing (a source install of MLflow), MLflow's own view answers, with
    its explanation.
    """
    from flask import Response

    original = flask_app.view_functions["serve"]
    if getattr(original, "_ecg_patched", False):
        return

    def serve() -> Any:
        index = Path(flask_app.static_folder or "") / "index.html"
        try:
            body = _patched_index(str(index), index.stat().st_mtime_ns)
        except (OSError, ValueError):
            return original()
        response = Response(body, mimetype="text/html")
        # The page is tiny and changes with the MLflow version: always revalidate.
        response.headers["Cache-Control"] = "no-cache"
        return response

    serve._ecg_patched = True  # type: ignore[attr-defined]
    flask_app.view_functions["serve"] = serve


def create_app() -> Any:
    """The MLflow server app with the model-training default (the ``mlflow.app`` factory).

    ``mlflow server --app-name ecg`` calls it in each worker. Under uvicorn (MLflow's default
    server) it returns MLflow's FastAPI app, which mounts the patched Flask app; under gunicorn
    or waitress (``--gunicorn-opts`` / ``--waitress-opts``) the patched Flask app itself.
    """
    from mlflow.server import app as flask_app

    _install_index_view(flask_app)
    # ``mlflow server`` tells its workers which server runs them (MLflow's _MLFLOW_SGI_NAME).
    if os.environ.get("_MLFLOW_SGI_NAME", "uvicorn") == "uvicorn":
        from mlflow.server.fastapi_app import app as fastapi_app

        logger.info("MLflow UI defaults to the model-training view (%s)", WORKFLOW_TYPE_KEY)
        return fastapi_app
    return flask_app
