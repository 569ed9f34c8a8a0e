"""The deployed topology without Docker: a real PostgreSQL, a real ``mlflow server`` on it, the API.

Everything runs on 127.0.0.1 through :mod:`pipeline.stack` (what ``make stack`` runs); nothing is
mocked. Skips when PostgreSQL's server binaries are not installed (``apt-get install postgresql``;
``.ci/run`` installs them).
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

from pipeline.stack import (
    Stack,
    StackError,
    find_postgres_bin,
    local_stack,
)

# `make test` runs `--dist loadgroup`: these tests share one xdist worker, so one stack starts.
pytestmark = [pytest.mark.stack, pytest.mark.xdist_group("stack")]


def _require_postgres() -> None:
    if find_postgres_bin() is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, postgres) not found: apt-get install postgresql, "
            "or set ECG_PG_BIN to their directory"
        )


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """PostgreSQL + ``mlflow server`` in a temporary directory, shared by this module's tests."""
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

    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.mlflow_url)
    mlflow.set_tracking_uri(stack.mlflow_url)
    try:
        client = MlflowClient(tracking_uri=stack.mlflow_url)
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
    finally:
        mlflow.set_tracking_uri(None)

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

    from pipeline.stack import postgres_server

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
    import pipeline.stack as stack_module

    monkeypatch.setattr(stack_module, "find_postgres_bin", lambda: None)
    with (
        pytest.raises(StackError, match="apt-get install -y postgresql"),
        stack_module.postgres_server(tmp_path),
    ):
        pass
    assert not (tmp_path / "pgdata").exists()
