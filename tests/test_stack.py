"""The deployed topology without Docker: a real PostgreSQL, a real ``mlflow server`` on it, the API.

Everything runs on 127.0.0.1 through :mod:`pipeline.stack.local` (what ``make stack`` runs);
nothing is mocked. Skips when PostgreSQL's server binaries are not installed
(``apt-get install postgresql``; ``.ci/run`` installs them).
"""

from __future__ import annotations

import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipeline.stack.local import Stack, local_stack
from pipeline.stack.postgres import find_postgres_bin
from pipeline.stack.processes import StackError

pytestmark = pytest.mark.stack


def _require_postgres() -> None:
    if find_postgres_bin() is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, postgres) not found: apt-get install postgresql, "
            "or set ECG_PG_BIN to their directory"
        )


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """PostgreSQL + ``mlflow server`` in a temporary directory, shared by this module's tests.

    Session-scoped: under xdist, tests of other modules run in between, which would tear a
    module-scoped stack down and start it again; at most one stack per worker this way.
    """
    _require_postgres()
    with local_stack(durable=False) as running:
        yield running


def _group_members(pgid: int) -> set[int]:
    """PIDs of live (non-zombie) processes whose process group is ``pgid`` (Linux /proc)."""
    members = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            members.add(int(stat.parent.name))
    return members


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _http_status(url: str, host: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


# --------------------------------------------------------------------------- the servers
def test_mlflow_server_stores_its_data_in_postgresql(stack: Stack) -> None:
    print(  # shown with -s / -rA: the measured start-up times
        f"start-up: postgres {stack.startup_seconds['postgres']:.1f} s "
        f"(initdb included), mlflow server {stack.startup_seconds['mlflow']:.1f} s"
    )
    assert stack.postgres.uri.startswith("postgresql+psycopg2://mlflow@127.0.0.1:")
    assert ":" + stack.postgres.password not in stack.postgres.uri
    conn = stack.postgres.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            (version,) = cur.fetchone()
            # MLflow's schema migrations ran in this database.
            cur.execute("SELECT version_num FROM alembic_version")
            assert cur.fetchone() is not None
            cur.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = ANY(%s)",
                (["experiments", "runs", "registered_models", "model_versions"],),
            )
            assert cur.fetchone() == (4,)
    finally:
        conn.close()
    assert int(version.split(".")[0]) >= 12
    assert _http_status(f"{stack.mlflow_url}/health") == 200


def test_mlflow_accepts_the_host_headers_of_the_compose_network(stack: Stack) -> None:
    # Containers call the server "mlflow:5000"; MLflow's DNS-rebinding guard must let that in
    # (same setting as docker-compose.yml) and still turn foreign hosts away.
    url = f"{stack.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _http_status(url, host="mlflow:5000") == 200
    assert _http_status(url, host=f"127.0.0.1:{stack.mlflow_url.rsplit(':', 1)[1]}") == 200
    assert _http_status(url, host="attacker.example") == 403


def test_tracking_and_registry_round_trip_through_the_server(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow import MlflowClient
    from sklearn.linear_model import LogisticRegression

    from pipeline.tracking import tracking_scope

    with tracking_scope(stack.mlflow_url):
        client = MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)
        experiment_id = client.create_experiment("stack-round-trip")
        x = np.random.default_rng(0).normal(size=(60, 3)).astype(np.float32)
        y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
        model = LogisticRegression().fit(x, y)
        note = tmp_path / "note.txt"
        note.write_text("proxied artifact\n")
        with mlflow.start_run(experiment_id=experiment_id) as run:
            mlflow.log_param("cell", "gru")
            for epoch, loss in enumerate([0.9, 0.5, 0.3]):
                mlflow.log_metric("val_loss", loss, step=epoch)
            mlflow.log_artifact(str(note))
            info = mlflow.sklearn.log_model(
                model, name="model", pip_requirements=["scikit-learn"], input_example=x[:2]
            )
        version = mlflow.register_model(info.model_uri, "stack-round-trip-model")
        client.set_registered_model_alias("stack-round-trip-model", "champion", version.version)

        # Read everything back through the server.
        fetched = client.get_run(run.info.run_id)
        assert fetched.data.params == {"cell": "gru"}
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert [(m.step, m.value) for m in history] == [(0, 0.9), (1, 0.5), (2, 0.3)]
        champion = client.get_model_version_by_alias("stack-round-trip-model", "champion")
        assert champion.version == version.version
        loaded = mlflow.pyfunc.load_model("models:/stack-round-trip-model@champion")
        np.testing.assert_array_equal(loaded.predict(x), model.predict(x))

    # The artifacts went through the server's proxy into the stack's artifact directory ...
    stored = list((stack.workdir / "artifacts").rglob("note.txt"))
    assert [p.read_text() for p in stored] == ["proxied artifact\n"]
    assert list((stack.workdir / "artifacts").rglob("MLmodel"))
    # ... and the registry rows are in PostgreSQL.
    conn = stack.postgres.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT alias, version FROM registered_model_aliases WHERE name = %s",
                ("stack-round-trip-model",),
            )
            assert cur.fetchall() == [("champion", int(version.version))]
    finally:
        conn.close()


# --------------------------------------------------------------------------- clean-up
def test_every_process_is_stopped_even_when_startup_fails() -> None:
    _require_postgres()
    failing_api = [sys.executable, "-c", "import sys; print('api: no model'); sys.exit(3)"]
    with (
        pytest.raises(StackError, match=r"api exited with code 3 .*\n.*api: no model"),
        local_stack(durable=False) as stack,
    ):
        groups = {p.pid: _group_members(p.pid) for p in stack.processes}
        ports = [stack.postgres.port, int(stack.mlflow_url.rsplit(":", 1)[1])]
        workdir = stack.workdir
        assert all(groups.values())
        assert all(_port_open(port) for port in ports)
        stack.start_api(command=failing_api, timeout=30)
    for pgid, members in groups.items():
        assert _group_members(pgid) == set(), f"process group {pgid} ({members}) survived"
    assert not any(_port_open(port) for port in ports)
    assert not workdir.exists()


def test_a_named_workdir_is_kept_and_reused() -> None:
    _require_postgres()
    import shutil
    import tempfile

    from pipeline.stack.postgres import postgres_server

    # Not under pytest's tmp_path: that is mode 0700, which the postgres OS user (when we are
    # root) cannot traverse; a workdir must be reachable by it.
    workdir = Path(tempfile.mkdtemp(prefix="ecg-stack-test-"))
    try:
        with postgres_server(workdir, durable=False) as first:
            conn = first.connect()
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
            conn.close()
        assert (workdir / "pgdata" / "PG_VERSION").exists()
        assert oct((workdir / "pgpassword").stat().st_mode & 0o777) == "0o600"
        with postgres_server(workdir, durable=False) as second:
            assert second.password == first.password
            conn = second.connect()
            with conn.cursor() as cur:
                cur.execute("SELECT v FROM kept")
                assert cur.fetchall() == [(42,)]
            conn.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_missing_postgres_binaries_give_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.stack.postgres as postgres_module

    monkeypatch.setattr(postgres_module, "find_postgres_bin", lambda: None)
    with (
        pytest.raises(StackError, match="apt-get install -y postgresql"),
        postgres_module.postgres_server(tmp_path),
    ):
        pass
    assert not (tmp_path / "pgdata").exists()


# --------------------------------------------------------------------------- end to end
MITDB_RECORDS = ("106", "209", "223", "100")  # DS1 train (V, S), DS1 validation, DS2 test
PTBXL_IDS = range(1, 101)  # folds 1-10 among them
TINY_TRAINING = ("--epochs", "1", "--hidden-size", "8", "--no-progress")


def _cli_commands() -> set[str]:
    from pipeline.cli import app

    return {c.name or c.callback.__name__ for c in app.registered_commands if c.callback}


def _post(url: str, body: dict) -> dict:
    import json

    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        return json.loads(response.read())


def _get_json(url: str) -> dict:
    import json

    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def test_train_register_and_serve_through_the_stack(
    stack: Stack, physionet_mirror: str, mitdb_dir: Path, ptbxl_dir: Path, tmp_path: Path
) -> None:
    """download -> prepare -> train + register (both tasks) -> API, all against the server."""
    missing = {"download", "prepare", "train", "serve"} - _cli_commands()
    if missing:
        pytest.skip(f"`ecg {'/'.join(sorted(missing))}` not implemented yet")
    import wfdb
    from mlflow import MlflowClient

    from models.predictor import load_predictor
    from models.segment import Segment

    env = {"ECG_DATA_DIR": str(tmp_path / "data"), "ECG_PHYSIONET_URL": physionet_mirror}
    ecg = [sys.executable, "-m", "pipeline.cli"]
    ptbxl_records = ",".join(f"{i:05d}_lr" for i in PTBXL_IDS)
    for args in (
        ["download", "mitdb", "--records", ",".join(MITDB_RECORDS), "--no-progress"],
        ["download", "ptb-xl", "--records", ptbxl_records, "--no-progress"],
        ["prepare", "mitdb"],
        ["prepare", "ptb-xl"],
        [
            "train",
            "--dataset",
            "mitdb",
            "--model",
            "gru",
            "--val-records",
            "223",
            *TINY_TRAINING,
            "--register",
        ],
        ["train", "--dataset", "ptb-xl", "--model", "lstm", *TINY_TRAINING, "--register"],
    ):
        stack.run([*ecg, *args], env=env, timeout=600)

    # Registered on the server, each first version the champion.
    client = MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)
    champions = {
        name: client.get_model_version_by_alias(name, "champion")
        for name in ("ecg-arrhythmia", "ecg-heart-disease")
    }
    assert {name: mv.version for name, mv in champions.items()} == {
        "ecg-arrhythmia": "1",
        "ecg-heart-disease": "1",
    }
    params = client.get_run(champions["ecg-heart-disease"].run_id).data.params
    assert params["train.cell"] == "lstm"
    # promote is idempotent on the champion itself
    promoted = stack.run([*ecg, "promote", "--model-name", "ecg-arrhythmia", "--version", "1"])
    assert promoted.returncode == 0

    api = stack.start_api()
    assert _get_json(f"{api}/ready")["ready"] is True

    # A real MIT-BIH segment: record 100 (DS2, never trained on), MLII, 10 s at 360 Hz.
    record = wfdb.rdrecord(str(mitdb_dir / "100"), sampto=3600)
    mlii = record.p_signal[:, record.sig_name.index("MLII")].astype(float)
    answer = _post(f"{api}/predict/arrhythmia", {"fs": 360, "signal": mlii.tolist()})
    assert answer["model"] == {
        "name": "ecg-arrhythmia",
        "version": "1",
        "alias": "champion",
        "run_id": champions["ecg-arrhythmia"].run_id,
    }
    reference = wfdb.rdann(str(mitdb_dir / "100"), "atr", sampto=3600)
    n_reference = sum(symbol in "NLRejAaJSVEFfQ/" for symbol in reference.symbol)
    assert abs(answer["summary"]["n_beats"] - n_reference) <= 2
    # The same model pulled from the registry in-process gives the same answer (no skew).
    local = load_predictor(
        "models:/ecg-arrhythmia@champion", tmp_path / "dl-arr", tracking_uri=stack.mlflow_url
    )
    expected = local.predict(mlii.astype(np.float32), 360.0)
    assert [b["sample"] for b in answer["beats"]] == expected.r_peaks.tolist()
    assert [b["label"] for b in answer["beats"]] == expected.labels
    got = np.array([[b["probabilities"][c] for c in expected.classes] for b in answer["beats"]])
    np.testing.assert_allclose(got, expected.probabilities, atol=1e-5)

    # A real PTB-XL record outside the downloaded subset: 12 leads, 10 s at 100 Hz.
    rec = wfdb.rdrecord(str(ptbxl_dir / "records100" / "00000" / "00150_lr"))
    body = {"fs": 100, "leads": rec.sig_name, "signal": rec.p_signal.tolist()}
    answer = _post(f"{api}/predict/heart-disease", body)
    assert answer["model"]["name"] == "ecg-heart-disease"
    assert answer["model"]["version"] == "1"
    assert set(answer["probabilities"]) == {"NORM", "MI", "STTC", "CD", "HYP"}
    assert answer["heart_disease_probability"] == pytest.approx(
        1.0 - answer["probabilities"]["NORM"], abs=1e-6
    )
    assert set(answer["labels"]) == {c for c, p in answer["probabilities"].items() if p >= 0.5}
    local_hd = load_predictor(
        "models:/ecg-heart-disease@champion", tmp_path / "dl-hd", tracking_uri=stack.mlflow_url
    )
    probs = local_hd.predict_many([Segment(rec.p_signal, 100.0, tuple(rec.sig_name))])[0]
    np.testing.assert_allclose(
        [answer["probabilities"][c] for c in local_hd.card.classes], probs, atol=1e-5
    )
