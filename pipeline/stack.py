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

PostgreSQL refuses to run as root: when this process is root, ``initdb`` and ``postgres`` run as
the ``postgres`` OS user (``subprocess``'s ``user=``, no wrapper process), in a data directory
owned by that user.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import UserError

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

#: Where Debian/Ubuntu (``apt-get install postgresql``), RHEL and source builds put the server.
_PG_BIN_GLOBS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin")
#: The OS user that runs PostgreSQL when this process is root.
PG_OS_USER = "postgres"
#: The database role and database MLflow uses (as in docker-compose.yml).
PG_ROLE = "mlflow"
PG_DATABASE = "mlflow"
#: Host headers the MLflow server accepts (its DNS-rebinding guard), as in docker-compose.yml,
#: where the other containers call it ``mlflow:5000``.
MLFLOW_ALLOWED_HOSTS = "mlflow,mlflow:5000,localhost,localhost:*,127.0.0.1,127.0.0.1:*"


class StackError(UserError):
    """A stack process could not be started; the message carries the tail of its log."""


# --------------------------------------------------------------------------- processes
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class ManagedProcess:
    """A child process in its own process group, with its output in a log file.

    Attributes
    ----------
    name : str
        Short name used in messages (``postgres``, ``mlflow``, ``api``).
    popen : subprocess.Popen
        The process; it leads its own process group (``start_new_session=True``).
    log_path : Path
        File receiving its stdout and stderr.
    stop_signal : int
        Signal asking for a clean shutdown.
    signal_group : bool
        Send ``stop_signal`` to the whole group (servers that fork workers without forwarding
        signals) rather than to the leader alone (PostgreSQL's postmaster stops its children).
    """

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: int = signal.SIGTERM
    signal_group: bool = True

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n_lines: int = 30) -> str:
        """The last ``n_lines`` lines of the process's log ('' if it wrote nothing)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n_lines:])

    def stop(self, timeout: float = 15.0) -> None:
        """Ask the process to stop; ``SIGKILL`` its whole group after ``timeout`` seconds.

        Safe to call more than once and on a process that has already exited (stray members of
        its group are still killed).
        """
        started = time.monotonic()
        if self.running():
            logger.info("stopping %s (pid %d)", self.name, self.pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if self.signal_group:
                    os.killpg(self.pid, self.stop_signal)
                else:
                    os.kill(self.pid, self.stop_signal)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop within %.0f s; killing it", self.name, timeout)
        # Whatever is left in the group (workers, the leader itself after a timeout) goes now.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5.0)
        logger.debug("%s stopped after %.1f s", self.name, time.monotonic() - started)


def _spawn(
    name: str,
    cmd: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
    stop_signal: int = signal.SIGTERM,
    signal_group: bool = True,
) -> ManagedProcess:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logger.debug("starting %s: %s (log %s)", name, " ".join(cmd), log_path)
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            user=user,
            start_new_session=True,
        )
    return ManagedProcess(name, popen, log_path, stop_signal, signal_group)


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _wait_until(
    proc: ManagedProcess, ready: Callable[[], bool], what: str, timeout: float
) -> float:
    """Poll ``ready()`` until true; return the seconds it took. Raise if ``proc`` dies first."""
    start = time.monotonic()
    while True:
        if ready():
            return time.monotonic() - start
        if not proc.running():
            raise StackError(
                f"{proc.name} exited with code {proc.popen.returncode} before {what}; "
                f"its log ({proc.log_path}) ends with:\n{proc.log_tail()}"
            )
        if time.monotonic() - start > timeout:
            raise StackError(
                f"{proc.name} was not {what} after {timeout:.0f} s; its log ({proc.log_path}) "
                f"ends with:\n{proc.log_tail()}"
            )
        time.sleep(0.2)


# --------------------------------------------------------------------------- PostgreSQL
def find_postgres_bin() -> Path | None:
    """The directory holding PostgreSQL's ``initdb`` and ``postgres``, or None.

    Looked for in ``$ECG_PG_BIN``, then next to ``initdb`` on ``PATH``, then in the usual
    install locations (Debian's ``/usr/lib/postgresql/<major>/bin`` first, newest major first).
    """
    candidates: list[Path] = []
    if env_bin := os.environ.get("ECG_PG_BIN"):
        candidates.append(Path(env_bin))
    if on_path := shutil.which("initdb"):
        candidates.append(Path(on_path).resolve().parent)
    for pattern in _PG_BIN_GLOBS:
        matches = [Path(match) for match in glob.glob(pattern)]
        candidates.extend(sorted(matches, key=_major_version, reverse=True))
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "postgres").is_file():
            return directory
    return None


def _major_version(bin_dir: Path) -> int:
    for part in bin_dir.parts:
        digits = part.removeprefix("pgsql-")
        if digits.isdigit():
            return int(digits)
    return 0


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _pg_os_user() -> str | None:
    """The OS user to run PostgreSQL as: ``postgres`` when we are root, else ourselves (None)."""
    if not _is_root():
        return None
    import pwd

    try:
        pwd.getpwnam(PG_OS_USER)
    except KeyError:
        raise StackError(
            f"running as root, and PostgreSQL refuses to run as root, but there is no "
            f"'{PG_OS_USER}' OS user to run it as; install PostgreSQL with your package manager "
            f"(it creates one) or run as an ordinary user"
        ) from None
    return PG_OS_USER


def _chown_to(path: Path, user: str | None) -> None:
    if user is not None:
        shutil.chown(path, user=user, group=user)


@dataclass(frozen=True)
class PostgresServer:
    """A running PostgreSQL server reachable over TCP on 127.0.0.1.

    ``uri`` carries no password: clients get it from ``PGPASSWORD`` (see :meth:`client_env`),
    as the compose file's ``mlflow`` service does, so it never shows in a command line.
    """

    host: str
    port: int
    user: str
    password: str
    database: str
    process: ManagedProcess

    @property
    def uri(self) -> str:
        """SQLAlchemy URI of the MLflow database, without the password."""
        return f"postgresql+psycopg2://{self.user}@{self.host}:{self.port}/{self.database}"

    def client_env(self) -> dict[str, str]:
        """Environment variables that let libpq clients (psycopg2, psql) log in."""
        return {"PGPASSWORD": self.password}

    def connect(self, database: str | None = None):
        """A new psycopg2 connection (the caller closes it)."""
        import psycopg2

        return psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=database or self.database,
            connect_timeout=3,
        )


def _read_or_create_password(path: Path) -> str:
    if path.exists():
        return path.read_text().strip()
    password = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    return password


def _initdb(
    bin_dir: Path,
    data_dir: Path,
    password: str,
    os_user: str | None,
    log: Path,
    *,
    durable: bool = True,
) -> None:
    """Create a cluster in ``data_dir`` whose superuser ``mlflow`` logs in with ``password``."""
    data_dir.mkdir(mode=0o700, parents=True)
    _chown_to(data_dir, os_user)
    # initdb reads the password from a file that its (possibly other) OS user can read.
    with tempfile.NamedTemporaryFile("w", prefix="ecg-pgpw-", delete=False) as fh:
        fh.write(password + "\n")
        pwfile = Path(fh.name)
    try:
        _chown_to(pwfile, os_user)
        cmd = [
            str(bin_dir / "initdb"),
            "--pgdata",
            str(data_dir),
            "--username",
            PG_ROLE,
            "--pwfile",
            str(pwfile),
            "--auth",
            "scram-sha-256",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
        ]
        if not durable:
            cmd.append("--no-sync")
        with open(log, "ab") as out:
            result = subprocess.run(
                cmd, stdout=out, stderr=subprocess.STDOUT, user=os_user, cwd=data_dir, check=False
            )
    finally:
        pwfile.unlink(missing_ok=True)
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise StackError(f"initdb failed (exit {result.returncode}) in {data_dir}:\n{tail}")


@contextlib.contextmanager
def postgres_server(
    workdir: Path,
    *,
    port: int | None = None,
    bin_dir: Path | None = None,
    durable: bool = True,
    timeout: float = 60.0,
) -> Iterator[PostgresServer]:
    """Run PostgreSQL on 127.0.0.1 with its cluster in ``workdir/pgdata``; yield it when ready.

    The cluster is created on first use (``initdb``; the superuser ``mlflow``'s password is kept
    in ``workdir/pgpassword``, mode 0600) and reused afterwards; the ``mlflow`` database is
    created if missing. Unix sockets are off: clients use TCP on 127.0.0.1.

    Parameters
    ----------
    workdir : Path
        Directory for the cluster, the password file and ``logs/postgres.log``. When running as
        root it must be reachable (``x`` permission on every parent) by the ``postgres`` user.
    port : int, optional
        TCP port; a free one by default.
    bin_dir : Path, optional
        Directory of ``initdb`` and ``postgres`` (default :func:`find_postgres_bin`).
    durable : bool
        False turns off ``fsync`` (and ``initdb``'s syncing): faster, for throwaway test
        clusters only; a crash of the machine can corrupt such a cluster.
    timeout : float
        Seconds to wait for the server to accept connections.
    """
    bin_dir = bin_dir or find_postgres_bin()
    if bin_dir is None:
        raise StackError(
            "PostgreSQL server binaries (initdb, postgres) not found; install them "
            "(Debian/Ubuntu: apt-get install -y postgresql) or set ECG_PG_BIN to their directory"
        )
    os_user = _pg_os_user()
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if os_user is not None:
        # postgres must traverse into workdir to reach pgdata (it need not list it).
        workdir.chmod(workdir.stat().st_mode | 0o111)
    data_dir = workdir / "pgdata"
    log = workdir / "logs" / "postgres.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    password = _read_or_create_password(workdir / "pgpassword")
    if not (data_dir / "PG_VERSION").exists():
        _initdb(bin_dir, data_dir, password, os_user, log, durable=durable)
    port = port or free_port()
    proc = _spawn(
        "postgres",
        [
            str(bin_dir / "postgres"),
            "-D",
            str(data_dir),
            "-p",
            str(port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "unix_socket_directories=",
            *([] if durable else ["-c", "fsync=off", "-c", "synchronous_commit=off"]),
        ],
        log,
        cwd=data_dir,
        user=os_user,
        stop_signal=signal.SIGINT,  # "fast shutdown": roll back open transactions, exit cleanly
        signal_group=False,
    )
    try:
        server = PostgresServer("127.0.0.1", port, PG_ROLE, password, PG_DATABASE, proc)
        took = _wait_until(proc, lambda: _pg_accepts(server), "accepting connections", timeout)
        logger.info("postgres ready on 127.0.0.1:%d after %.1f s", port, took)
        _create_database(server)
        yield server
    finally:
        proc.stop()


def _pg_accepts(server: PostgresServer) -> bool:
    import psycopg2

    try:
        server.connect(database="postgres").close()
    except psycopg2.OperationalError:
        return False
    return True


def _create_database(server: PostgresServer) -> None:
    conn = server.connect(database="postgres")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (server.database,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{server.database}"')
                logger.info("created database %s", server.database)
    finally:
        conn.close()


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
    proc = _spawn(
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
        took = _wait_until(proc, lambda: _http_ok(f"{url}/health"), "healthy", timeout)
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
        proc = _spawn(
            "api",
            cmd,
            self.workdir / "logs" / "api.log",
            env={**os.environ, **self.client_env(), **(env or {})},
            cwd=cwd or self.workdir,
        )
        self._exit_stack.callback(proc.stop)
        self.processes.append(proc)
        url = f"http://{host}:{port}"
        self.startup_seconds["api"] = _wait_until(
            proc, lambda: _http_ok(f"{url}/health"), "healthy", timeout
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
