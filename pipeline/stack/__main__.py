"""``python -m pipeline.stack`` (``make stack``): the local stack for a person, up until Ctrl-C.

Starts :func:`pipeline.stack.local.local_stack` (PostgreSQL, ``mlflow server``), optionally runs the
compose trainer's steps against it, then the prediction API, and prints where everything is.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import UserError
from pipeline.stack.local import Stack, local_stack

__all__ = ["TRAIN_STEPS", "main"]

# Named as the package, not "__main__", when run as ``python -m pipeline.stack``.
logger = logging.getLogger("pipeline.stack")


#: What the compose file's ``trainer`` service runs, in order.
TRAIN_STEPS: tuple[tuple[str, ...], ...] = (
    ("download", "mitdb"),
    ("download", "ptb-xl"),
    ("prepare", "mitdb"),
    ("prepare", "ptb-xl"),
    *(
        ("train", "--dataset", dataset, "--cell", cell, "--epochs", "{epochs}", "--register")
        for dataset in ("mitdb", "ptb-xl")
        for cell in ("gru", "lstm")
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
