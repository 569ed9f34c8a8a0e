"""Child processes of the local stack (:mod:`pipeline.stack.local`, :mod:`pipeline.stack.postgres`).

Each runs in its own process group with its output in a log file, and is stopped politely, then
killed, whatever happens.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError

__all__ = ["ManagedProcess", "StackError", "free_port", "http_ok", "spawn", "wait_until"]

logger = logging.getLogger(__name__)


class StackError(UserError):
    """A stack process could not be started; the message carries the tail of its log."""


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


def spawn(
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


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_until(proc: ManagedProcess, ready: Callable[[], bool], what: str, timeout: float) -> float:
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
