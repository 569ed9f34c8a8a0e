"""The deployed topology without Docker: PostgreSQL -> ``mlflow server`` -> the prediction API.

``docker-compose.yml`` runs four services: ``postgres`` (MLflow's backend store), ``mlflow`` (the
tracking server and model registry, proxying artifacts to a local directory), a one-shot
``trainer`` and the ``api``. This module starts the same processes on 127.0.0.1 from this
machine's own binaries (Debian's ``postgresql`` package and the project's venv), so the topology
can be used and tested where there is no Docker engine:

>>> from pipeline.stack import local_stack
>>> with local_stack() as stack:  # doctest: +SKIP
...     stack.mlflow_url          # 'http://127.0.0.1:40123'
...     stack.start_api()         # 'http://127.0.0.1:40125' (``ecg serve`` against that server)

Every process is started in its own process group and is stopped (a polite signal, then
``SIGKILL`` after a timeout) when the context exits, whatever the reason. ``python -m
pipeline.stack`` (``make stack``) keeps the stack up until Ctrl-C.

PostgreSQL is started by :mod:`pipeline.postgres`, every child process through
:mod:`pipeline.processes`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import UserError
from pipeline.postgres import PostgresServer, find_postgres_bin, postgres_server
from pipeline.processes import ManagedProcess, StackError, free_port, http_ok, spawn, wait_until

__all__ = [
    "MLFLOW_ALLOWED_HOSTS",
    "ManagedProcess",
    "PostgresServer",
    "Stack",
    "StackError",
    "find_postgres_bin",
    "free_port",
    "local_stack",
    "main",
    "mlflow_server",
    "postgres_server",
]

# Named as the module even when run as ``python -m pipeline.stack`` (``__name__ == "__main__"``).
logger = logging.getLogger("pipeline.stack")

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
    ``artifacts_dir``, so clients need only the tracking URL, exactly as in the compose file.
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


# --------------------------------------------------------------------------- make stack
#: What the compose file's ``trainer`` service runs, in order.
TRAIN_STEPS: tuple[tuple[str, ...], ...] = (
    ("download", "mitdb"),
    ("download", "ptb-xl"),
    ("prepare", "mitdb"),
    ("prepare", "ptb-xl"),
    *(
        ("train", "--dataset", dataset, "--model", model, "--epochs", "{epochs}", "--register")
        for dataset in ("mitdb", "ptb-xl")
        for model in ("gru", "lstm")
    ),
)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.stack",
        description="Run PostgreSQL + MLflow server + the prediction API on 127.0.0.1 "
        "(the docker-compose topology without Docker). Ctrl-C stops everything.",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("data/stack"),
        help="database cluster, artifacts and logs (kept across runs; default: %(default)s)",
    )
    parser.add_argument("--mlflow-port", type=int, default=5000, help="default: %(default)s")
    parser.add_argument("--api-port", type=int, default=8000, help="default: %(default)s")
    parser.add_argument("--pg-port", type=int, default=None, help="default: a free port")
    parser.add_argument("--no-api", action="store_true", help="start only PostgreSQL + MLflow")
    parser.add_argument(
        "--train",
        action="store_true",
        help="before the API, run the compose trainer's steps (download, prepare, "
        "train GRU and LSTM on both datasets, register) against this server",
    )
    parser.add_argument("--epochs", type=int, default=15, help="with --train (default 15)")
    return parser.parse_args(argv)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _bring_up(stack: Stack, args: argparse.Namespace) -> int:
    """Train (optionally), start the API, print where things are, wait until a process dies."""
    if args.train:
        for step in TRAIN_STEPS:
            argv = [part.format(epochs=args.epochs) for part in step]
            logger.info("running: ecg %s", " ".join(argv))
            subprocess.run(
                [sys.executable, "-m", "pipeline.cli", *argv],
                env={**os.environ, **stack.client_env()},
                check=True,
            )
    if not args.no_api:
        # From the current directory (a .env there configures the service, as for `make serve`);
        # it picks up champions registered later within 30 s.
        stack.start_api(
            port=args.api_port,
            cwd=Path.cwd(),
            env={
                "ECG_SERVICE_RELOAD_INTERVAL_S": os.environ.get(
                    "ECG_SERVICE_RELOAD_INTERVAL_S", "30"
                )
            },
        )
    lines = [
        "",
        f"PostgreSQL   127.0.0.1:{stack.postgres.port} (cluster in {stack.workdir}/pgdata)",
        f"MLflow UI    {stack.mlflow_url}",
    ]
    if stack.api_url:
        lines.append(f"API docs     {stack.api_url}/docs")
    lines += [
        f"Logs         {stack.workdir}/logs/",
        f"Train into it:  MLFLOW_TRACKING_URI={stack.mlflow_url} make train",
        "Ctrl-C stops everything.",
    ]
    print("\n".join(lines), flush=True)
    while all(p.running() for p in stack.processes):
        time.sleep(1.0)
    dead = next(p for p in stack.processes if not p.running())
    logger.error("%s exited (code %s):\n%s", dead.name, dead.popen.returncode, dead.log_tail())
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Bring the stack up for a person and keep it up until Ctrl-C (or SIGTERM).

    Returns the exit code: 0 after Ctrl-C, 1 when a process of the stack died, 2 when it could
    not start.
    """
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        with local_stack(args.workdir, pg_port=args.pg_port, mlflow_port=args.mlflow_port) as stack:
            try:
                return _bring_up(stack, args)
            except KeyboardInterrupt:
                # A second Ctrl-C must not cut the clean shutdown short.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                logger.info("Ctrl-C: stopping the stack")
                return 0
    except KeyboardInterrupt:
        logger.info("interrupted while starting; stopped")
        return 0
    except (UserError, subprocess.CalledProcessError) as err:
        logger.error("%s", err)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
