"""The deployed topology without Docker: PostgreSQL -> ``mlflow server`` -> the prediction API.

``docker-compose.yml`` runs four services: ``postgres`` (MLflow's backend store), ``mlflow`` (the
tracking server and model registry, proxying artifacts to a local directory), a one-shot
``trainer`` and the ``api``. This module starts the same processes on 127.0.0.1 from this
machine's own binaries (Debian's ``postgresql`` package and the project's venv), so the topology
can be used and tested where there is no Docker engine:

>>> from pipeline.stack.local import local_stack
>>> with local_stack() as stack:  # doctest: +SKIP
...     stack.mlflow_url          # 'http://127.0.0.1:40123'
...     stack.start_api()         # 'http://127.0.0.1:40125' (``ecg serve`` against that server)

Every process is started in its own process group and is stopped (a polite signal, then
``SIGKILL`` after a timeout) when the context exits, whatever the reason. ``python -m
pipeline.stack`` (``make stack``, :mod:`pipeline.stack.__main__`) keeps the stack up until Ctrl-C.

PostgreSQL is started by :mod:`pipeline.stack.postgres`, every child process through
:mod:`pipeline.stack.processes`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.stack.postgres import PostgresServer, postgres_server
from pipeline.stack.processes import (
    ManagedProcess,
    StackError,
    free_port,
    http_ok,
    spawn,
    wait_until,
)

__all__ = ["MLFLOW_ALLOWED_HOSTS", "Stack", "api_command", "local_stack", "mlflow_server"]

logger = logging.getLogger(__name__)

#: Host headers the MLflow server accepts (its DNS-rebinding guard), as in docker-compose.yml,
#: where the other containers call it ``mlflow:5000``.
MLFLOW_ALLOWED_HOSTS = "mlflow,mlflow:5000,localhost,localhost:*,127.0.0.1,127.0.0.1:*"


# --------------------------------------------------------------------------- MLflow server
@contextlib.contextmanager
def mlflow_server(
    postgres: PostgresServer,
    artifacts_dir: Path,
    log_path: Path,
    *,
    port: int | None = None,
    workers: int = 1,
    timeout: float = 120.0,
) -> Iterator[tuple[str, ManagedProcess]]:
    """Run ``mlflow server`` on 127.0.0.1 over ``postgres``; yield ``(url, process)`` when healthy.

    Artifacts are proxied by the server (``--serve-artifacts``) and stored under
    ``artifacts_dir``, so clients need only the tracking URL, exactly as in the compose file. As
    there, it runs the ``ecg`` app (:mod:`pipeline.stack.mlflow_app`): MLflow's server whose UI
    opens experiments on the runs table.
    """
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = {**os.environ, **postgres.client_env()}
    env.pop("MLFLOW_TRACKING_URI", None)
    # MLflow's job runner (GenAI evaluation jobs, trace roll-ups) is unused here and would add
    # seven processes; as in docker-compose.yml it is off unless the environment turns it on.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    env.setdefault("MLFLOW_SERVER_ALLOWED_HOSTS", MLFLOW_ALLOWED_HOSTS)
    proc = spawn(
        "mlflow",
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            # The UI opens experiments on model training (pipeline/stack/mlflow_app.py).
            "--app-name",
            "ecg",
            "--backend-store-uri",
            postgres.uri,
            "--artifacts-destination",
            str(artifacts_dir),
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        log_path,
        env=env,
        cwd=artifacts_dir.parent,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        took = wait_until(proc, lambda: http_ok(f"{url}/health"), "healthy", timeout)
        logger.info("mlflow server ready at %s after %.1f s", url, took)
        yield url, proc
    finally:
        proc.stop()


# --------------------------------------------------------------------------- the stack
def api_command(host: str, port: int, *, use_uvicorn: bool = False) -> list[str]:
    """The command that serves the API: ``ecg serve`` (default) or ``uvicorn service.main:app``."""
    if use_uvicorn:
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "service.main:app",
            "--host",
            host,
            "--port",
            str(port),
        ]
    return [sys.executable, "-m", "pipeline.cli", "serve", "--host", host, "--port", str(port)]


@dataclass
class Stack:
    """A running PostgreSQL + MLflow server (+ API once :meth:`start_api` is called).

    Attributes
    ----------
    workdir : Path
        Holds ``pgdata/``, ``artifacts/`` and ``logs/<process>.log``.
    postgres : PostgresServer
    mlflow_url : str
        Tracking (and registry) URI of the MLflow server, ``http://127.0.0.1:<port>``.
    api_url : str or None
        Base URL of the API once started.
    """

    workdir: Path
    postgres: PostgresServer
    mlflow_url: str
    processes: list[ManagedProcess] = field(default_factory=list)
    api_url: str | None = None
    _exit_stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)
    startup_seconds: dict[str, float] = field(default_factory=dict)

    def client_env(self) -> dict[str, str]:
        """Environment variables that point training, serving and MLflow clients at the stack."""
        return {
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            # The pipeline's and the service's own settings win over MLflow's variable (and may
            # be set in a .env file): point them at the stack too.
            "ECG_MLFLOW_TRACKING_URI": self.mlflow_url,
            "ECG_SERVICE_MLFLOW_TRACKING_URI": self.mlflow_url,
        }

    def run(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 3600,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command (e.g. ``["ecg", "train", ...]``) against the stack; raise if it fails.

        It runs in ``cwd`` (default: the stack's workdir, so nothing lands in the caller's
        directory) with :meth:`client_env` and ``env`` added to this process's environment.
        """
        full_env = {**os.environ, **self.client_env(), **(env or {})}
        result = subprocess.run(
            list(args),
            env=full_env,
            cwd=cwd or self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(
                f"{' '.join(args)} exited with {result.returncode}:\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def start_api(
        self,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        env: Mapping[str, str] | None = None,
        command: Sequence[str] | None = None,
        cwd: Path | None = None,
        timeout: float = 120.0,
    ) -> str:
        """Start the prediction API against this stack's MLflow server; return its base URL.

        Parameters
        ----------
        port : int, optional
            TCP port (a free one by default).
        host : str
            Interface to bind.
        env : mapping, optional
            Extra environment for the API (e.g. model names or aliases).
        command : sequence of str, optional
            Replaces the default :func:`api_command` (``ecg serve``); ``{host}`` and ``{port}``
            in it are filled in.
        cwd : Path, optional
            Working directory (where a ``.env`` file would be read); default the workdir.
        timeout : float
            Seconds to wait for ``GET /health`` to answer 200.
        """
        if self.api_url is not None:
            raise StackError(f"the API is already running at {self.api_url}")
        port = port or free_port(host)
        cmd = (
            [part.format(host=host, port=port) for part in command]
            if command
            else api_command(host, port)
        )
        proc = spawn(
            "api",
            cmd,
            self.workdir / "logs" / "api.log",
            env={**os.environ, **self.client_env(), **(env or {})},
            cwd=cwd or self.workdir,
        )
        self._exit_stack.callback(proc.stop)
        self.processes.append(proc)
        url = f"http://{host}:{port}"
        self.startup_seconds["api"] = wait_until(
            proc, lambda: http_ok(f"{url}/health"), "healthy", timeout
        )
        logger.info("API ready at %s after %.1f s", url, self.startup_seconds["api"])
        self.api_url = url
        return url


@contextlib.contextmanager
def local_stack(
    workdir: Path | None = None,
    *,
    pg_port: int | None = None,
    mlflow_port: int | None = None,
    mlflow_workers: int = 1,
    durable: bool = True,
    keep: bool | None = None,
) -> Iterator[Stack]:
    """Start PostgreSQL and an MLflow server on it; stop everything on exit.

    Parameters
    ----------
    workdir : Path, optional
        Where the database cluster, MLflow artifacts and logs live. Default: a new temporary
        directory, removed on exit.
    pg_port, mlflow_port : int, optional
        TCP ports on 127.0.0.1 (free ones by default).
    mlflow_workers : int
        Worker processes of the MLflow server.
    durable : bool
        False runs PostgreSQL without ``fsync`` (see :func:`postgres_server`): for tests.
    keep : bool, optional
        Keep ``workdir`` on exit. Default: keep a directory you named, remove a temporary one.
    """
    temporary = workdir is None
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="ecg-stack-"))
    keep = (not temporary) if keep is None else keep
    with contextlib.ExitStack() as stack:
        if not keep:
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        t0 = time.monotonic()
        postgres = stack.enter_context(postgres_server(workdir, port=pg_port, durable=durable))
        t_pg = time.monotonic() - t0
        t0 = time.monotonic()
        url, mlflow_proc = stack.enter_context(
            mlflow_server(
                postgres,
                workdir / "artifacts",
                workdir / "logs" / "mlflow.log",
                port=mlflow_port,
                workers=mlflow_workers,
            )
        )
        t_mlflow = time.monotonic() - t0
        result = Stack(
            workdir=workdir,
            postgres=postgres,
            mlflow_url=url,
            processes=[postgres.process, mlflow_proc],
            startup_seconds={"postgres": t_pg, "mlflow": t_mlflow},
        )
        # The API (if started) stops first: ExitStack unwinds last-in, first-out.
        stack.enter_context(result._exit_stack)
        yield result
