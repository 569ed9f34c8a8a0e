"""PostgreSQL on 127.0.0.1 from this machine's server binaries, as MLflow's backend store.

PostgreSQL refuses to run as root: when this process is root, ``initdb`` and ``postgres`` run as
the ``postgres`` OS user (``subprocess``'s ``user=``, no wrapper process), in a data directory
owned by that user.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.stack.processes import ManagedProcess, StackError, free_port, spawn, wait_until

__all__ = [
    "PG_DATABASE",
    "PG_OS_USER",
    "PG_ROLE",
    "PostgresServer",
    "find_postgres_bin",
    "postgres_server",
]

logger = logging.getLogger(__name__)

#: Where Debian/Ubuntu (``apt-get install postgresql``), RHEL and source builds put the server.
_PG_BIN_GLOBS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin")
#: The OS user that runs PostgreSQL when this process is root.
PG_OS_USER = "postgres"
#: The database role and database MLflow uses (as in docker-compose.yml).
PG_ROLE = "mlflow"
PG_DATABASE = "mlflow"


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

    def connect(self, database: str | None = None) -> Any:
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
    proc = spawn(
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
        took = wait_until(proc, lambda: _pg_accepts(server), "accepting connections", timeout)
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
