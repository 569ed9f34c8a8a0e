"""MLflow's own UI on a real store after a real (tiny) training run, in headless Chromium.

The experiment must open on the runs table (not MLflow 3's GenAI overview), list the run with its
dataset (name and digest), and the saved view must show the key figures as columns. The project's
server (``mlflow server --app-name ecg``, :mod:`pipeline.stack.mlflow_app`) opens even a plain
experiment link there in a fresh browser, and keeps a user's own GenAI choice. Needs Debian's
``chromium`` and ``chromium-driver``; skips with the reason when either is missing. The screenshot
goes to ``$ECG_TEST_ARTIFACTS`` when set, else the test's ``tmp_path``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

sys.path.insert(0, str(Path(__file__).parent / "pipeline"))
from training_data import build_tiny_mitdb

from pipeline.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND
from pipeline.train import train
from pipeline.train_config import TrainConfig
from tests.browser import headless_chromium, needs_chromium

logger = logging.getLogger(__name__)

TIMEOUT_S = 120  # a loaded 2-core CI machine starts `mlflow ui` slowly


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def trained_store(
    shared_physionet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, str, Any]:
    """A sqlite store holding one finished 1-epoch bi-GRU run on tiny mitdb."""
    from pipeline.settings import get_settings

    monkeypatch.setenv("ECG_MLFLOW_ARTIFACT_DIR", str(tmp_path / "mlartifacts"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("ECG_MLFLOW_TRACKING_URI", raising=False)
    get_settings.cache_clear()
    data = build_tiny_mitdb(shared_physionet, tmp_path / "data")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = TrainConfig(dataset="mitdb").updated(
        cell="gru", epochs=1, hidden_size=8, batch_size=256, class_per_epoch=300, num_threads=1
    )
    result = train(cfg, data_dir=data, tracking_uri=uri, register=False, progress=False)
    get_settings.cache_clear()
    run = MlflowClient(tracking_uri=uri).get_run(result.run_id)
    return uri, run.info.experiment_id, run


@pytest.fixture
def record_store(shared_physionet: Path, tmp_path: Path) -> tuple[str, str, Any]:
    """A sqlite store holding one finished 1-epoch record-model (CRNN) run on tiny PTB-XL."""
    from training_data import build_tiny_ptbxl, ptbxl_ids_by_fold
    from typer.testing import CliRunner

    from pipeline.cli import app

    ids = ptbxl_ids_by_fold(shared_physionet, n_train=16, n_val=8, n_test=8)
    data = build_tiny_ptbxl(shared_physionet, tmp_path / "record-data", ids)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["train-record", "--epochs", "1", "--batch-size", "16", "--tracking-uri", uri]
    args += ["--data-dir", str(data), "--experiment", "record-ui"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output + repr(out.exception)
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("record-ui").experiment_id])
    return uri, run.info.experiment_id, run


@contextlib.contextmanager
def _mlflow_ui(uri: str, tmp_path: Path, app_name: str | None = None) -> Iterator[str]:
    """A real ``mlflow ui`` (``mlflow server --app-name <app_name>``) on ``uri``; yields its URL."""
    port = _free_port()
    log = (tmp_path / "mlflow-ui.log").open("w")
    command = ["server", "--app-name", app_name] if app_name else ["ui"]
    # MLflow's GenAI job runner is unused here (as in docker-compose.yml) and slows start-up.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", *command, "--backend-store-uri", uri,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            try:
                if httpx.get(url + "health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((tmp_path / "mlflow-ui.log").read_text()[-3000:])
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@pytest.fixture
def mlflow_ui(trained_store: tuple[str, str, Any], tmp_path: Path) -> Iterator[str]:
    with _mlflow_ui(trained_store[0], tmp_path) as url:
        yield url


@pytest.fixture
def browser() -> Iterator[Any]:
    with headless_chromium("3000,900", TIMEOUT_S) as driver:
        yield driver


def _wait_for_text(driver: Any, texts: list[str]) -> str:
    """The page's visible text once it contains all of ``texts`` (fails after TIMEOUT_S)."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + TIMEOUT_S
    body = ""
    while time.monotonic() < deadline:
        body = driver.find_element(By.TAG_NAME, "body").text
        if all(t in body for t in texts):
            return str(body)
        time.sleep(0.5)
    raise AssertionError(f"missing {[t for t in texts if t not in body]} in page:\n{body[:3000]}")


@needs_chromium
def test_experiment_opens_on_runs_with_dataset_and_key_figures(
    trained_store: tuple[str, str, Any], mlflow_ui: str, browser: Any, tmp_path: Path
) -> None:
    uri, exp_id, run = trained_store
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment(exp_id)
    assert exp.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == "mitdb"
    assert inp.dataset.digest == run.data.params["dataset_sha256"][:36]
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "training"

    # The link train() logs: the runs table with the run, its dataset and the key figures as
    # columns, not the GenAI overview (which a fresh browser shows for a plain experiment link).
    (key,) = [k for k in exp.tags if k.startswith("mlflow.sharedViewState.")]
    share = key.split(".", 2)[2]
    link = f"#/experiments/{exp_id}/runs?workflowType=machine_learning&viewStateShareKey={share}"
    browser.get(mlflow_ui + link)
    where = Path(os.environ.get("ECG_TEST_ARTIFACTS") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)
    shot = where / "mlflow_ui_runs.png"
    try:
        body = _wait_for_text(browser, [run.info.run_name, "Dataset", "mitdb", inp.dataset.digest])
        assert "/runs" in browser.current_url, browser.current_url
        assert "Token Usage" not in body and "Tokens per Trace" not in body
        # The key figures as columns (long headers are cut short on screen: "test_S_precisio").
        _wait_for_text(browser, ["best_val_macro", "test_N_recall", "test_S_recall", "test_S_prec"])
        # The plain experiment URL follows the sidebar switch, which MLflow 3.17 keeps in
        # localStorage "mlflow.workflowType_v1" (default "genai"), not the experiment's kind tag:
        # with the value the "Model training" click stores, it opens the runs table and dataset.
        browser.execute_script("localStorage.clear()")
        browser.execute_script(
            "localStorage.setItem('mlflow.workflowType_v1', JSON.stringify('machine_learning'))"
        )
        browser.get("about:blank")  # a fresh page load: the app reads the switch at start-up
        browser.get(f"{mlflow_ui}#/experiments/{exp_id}")
        body = _wait_for_text(browser, [run.info.run_name, "Dataset", "mitdb"])
        assert "/runs" in browser.current_url, browser.current_url
        assert "Token Usage" not in body and "Tokens per Trace" not in body
    finally:
        browser.save_screenshot(str(shot))
        logger.info("screenshot: %s", shot)


def test_experiments_made_before_the_tag_get_it(tmp_path: Path) -> None:
    from pipeline.tracking import ensure_experiment

    uri = f"sqlite:///{tmp_path / 'old.db'}"
    client = MlflowClient(tracking_uri=uri)
    old = client.create_experiment("old", artifact_location=(tmp_path / "art").as_uri())
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(old).tags
    assert ensure_experiment("old", uri) == old
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND


def _view_link(exp: Any, name: str) -> str:
    """The runs-table link of the experiment's saved view called ``name`` (the tag's envelope)."""
    keys = [
        k.split(".", 2)[2]
        for k, v in exp.tags.items()
        if k.startswith("mlflow.sharedViewState.") and json.loads(v)["name"] == name
    ]
    assert len(keys) == 1, exp.tags
    query = f"workflowType=machine_learning&viewStateShareKey={keys[0]}"
    return f"#/experiments/{exp.experiment_id}/runs?{query}"


@needs_chromium
def test_record_model_runs_get_their_key_figure_columns(
    record_store: tuple[str, str, Any], browser: Any, tmp_path: Path
) -> None:
    uri, exp_id, run = record_store
    exp = MlflowClient(tracking_uri=uri).get_experiment(exp_id)
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == "ptb-xl"
    metrics = run.data.metrics
    for key in ("12-lead", "limb-6", "lead-I"):  # the columns exist as metrics of the run
        assert f"test_macro_auc_{key}" in metrics and f"test_heart_disease_auc_{key}" in metrics
    link = _view_link(exp, "Record-model key figures")
    where = Path(os.environ.get("ECG_TEST_ARTIFACTS") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)
    shot = where / "mlflow_ui_record_runs.png"
    with _mlflow_ui(uri, tmp_path) as url:
        browser.get(url + link)
        try:
            body = _wait_for_text(browser, [run.info.run_name, "Dataset", "ptb-xl"])
            assert "Token Usage" not in body and "Tokens per Trace" not in body
            # headers are cut short on screen: "test_macro_auc_", "test_heart_dise"
            _wait_for_text(browser, ["best_val_macro", "test_macro_auc", "test_heart_dis"])
        finally:
            browser.save_screenshot(str(shot))
            logger.info("screenshot: %s", shot)


# --------------------------------------------------------------------------- --app-name ecg
@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """A sqlite store with one experiment made by the pipeline and one run with a dataset input.

    Returns ``(tracking URI, experiment id, run name)``.
    """
    import mlflow

    from pipeline.tracking import ensure_experiment, log_dataset_input, tracking_scope

    where = tmp_path_factory.mktemp("small-store")
    uri = f"sqlite:///{where / 'mlflow.db'}"
    data = where / "prepared" / "mitdb"
    data.mkdir(parents=True)
    with tracking_scope(uri):
        exp_id = ensure_experiment("ui-default", uri, artifact_dir=where / "mlartifacts")
        with mlflow.start_run(experiment_id=exp_id, run_name="tiny-gru") as run:
            log_dataset_input("mitdb", data, "0f" * 32)
            mlflow.log_metric("best_val_macro_f1", 0.5)
        assert run.info.run_name == "tiny-gru"
    return uri, exp_id, "tiny-gru"


@pytest.fixture(scope="module")
def ecg_ui(
    small_store: tuple[str, str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``mlflow server --app-name ecg`` on :func:`small_store`; yields its base URL."""
    with _mlflow_ui(small_store[0], tmp_path_factory.mktemp("ecg-ui"), app_name="ecg") as url:
        yield url


def _stored_workflow_type(driver: Any) -> Any:
    return driver.execute_script("return localStorage.getItem('mlflow.workflowType_v1')")


def test_ecg_app_serves_the_default_before_the_bundle_and_the_api(
    small_store: tuple[str, str, str], ecg_ui: str
) -> None:
    from pipeline.stack.mlflow_app import WORKFLOW_TYPE_KEY, inject_default_workflow

    _, exp_id, run_name = small_store
    page = httpx.get(ecg_ui, timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    head = page.text.split("<head>", 1)[1]
    assert head.startswith("<script>") and WORKFLOW_TYPE_KEY in head.split("</script>", 1)[0]
    assert head.index(WORKFLOW_TYPE_KEY) < head.index("static-files/static/js/main.")
    # Everything else is MLflow's server: the REST API answers as usual.
    api = httpx.post(
        ecg_ui + "api/2.0/mlflow/runs/search", json={"experiment_ids": [exp_id]}, timeout=10
    )
    assert api.status_code == 200, api.text
    assert [r["info"]["run_name"] for r in api.json()["runs"]] == [run_name]
    with pytest.raises(ValueError, match="no <head>"):
        inject_default_workflow("<html><body></body></html>")


@needs_chromium
def test_ecg_app_opens_a_plain_experiment_link_on_the_runs_table(
    small_store: tuple[str, str, str], ecg_ui: str, browser: Any, tmp_path: Path
) -> None:
    """``mlflow server --app-name ecg``: a fresh browser opens ``#/experiments/<id>`` on runs.

    A choice the user made on the UI's switch (here GenAI) is kept.
    """
    _, exp_id, run_name = small_store
    where = Path(os.environ.get("ECG_TEST_ARTIFACTS") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)
    # A fresh profile (empty localStorage) and the plain link, no query.
    browser.get(f"{ecg_ui}#/experiments/{exp_id}")
    try:
        body = _wait_for_text(browser, [run_name, "Dataset", "mitdb"])
        assert "/runs" in browser.current_url, browser.current_url
        assert "Token Usage" not in body and "Tokens per Trace" not in body
        assert _stored_workflow_type(browser) == '"machine_learning"'
    finally:
        browser.save_screenshot(str(where / "mlflow_ui_ecg_app_runs.png"))
    # The user switches to GenAI: the next page load keeps that choice.
    browser.execute_script("localStorage.setItem('mlflow.workflowType_v1', '\"genai\"')")
    browser.get("about:blank")
    browser.get(f"{ecg_ui}#/experiments/{exp_id}")
    try:
        _wait_for_text(browser, ["Overview", "Judges", "Tool calls"])  # GenAI pages
        assert "/runs" not in browser.current_url, browser.current_url
    finally:
        browser.save_screenshot(str(where / "mlflow_ui_ecg_app_genai_kept.png"))
    assert _stored_workflow_type(browser) == '"genai"'


@needs_chromium
def test_plain_mlflow_ui_opens_a_plain_experiment_link_on_genai(
    small_store: tuple[str, str, str], browser: Any, tmp_path: Path
) -> None:
    """The control: MLflow's own server shows a fresh browser the GenAI overview.

    When an MLflow upgrade makes this fail, the ``ecg`` app's default may no longer be needed.
    """
    _, exp_id, _ = small_store
    with _mlflow_ui(small_store[0], tmp_path) as url:
        browser.get(f"{url}#/experiments/{exp_id}")
        _wait_for_text(browser, ["Overview", "Judges", "Tool calls"])
        assert "/runs" not in browser.current_url, browser.current_url
        assert _stored_workflow_type(browser) is None
