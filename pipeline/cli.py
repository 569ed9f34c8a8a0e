"""The ``ecg`` command line: thin typer commands over the pipeline modules.

Heavy imports (torch, mlflow, wfdb) happen inside each command so ``ecg --help`` stays fast.
Errors the user can fix (:class:`pipeline.errors.UserError`) end as one red line and exit code 2.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from pipeline.errors import UserError
from pipeline.settings import get_settings

__all__ = ["app"]

app = typer.Typer(
    help="ECG heart-disease prediction: download PhysioNet data, prepare datasets, train, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False):
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _fail(err: Exception) -> typer.Exit:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


# --------------------------------------------------------------------------- download
@app.command()
def download(
    database: Annotated[str, typer.Argument(help="mitdb, ptb-xl or ptbdb.")],
    version: Annotated[str | None, typer.Option(help="Database version (default: latest known).")] = None,
    base_url: Annotated[
        str | None,
        typer.Option("--base-url", help="PhysioNet or mirror base URL (env ECG_PHYSIONET_URL)."),
    ] = None,
    records: Annotated[
        str | None, typer.Option(help="Comma-separated record names to limit the download to.")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, max=32, help="Parallel downloads.")] = 8,
    dest: Annotated[Path | None, typer.Option(help="Raw data root (default: <data_dir>/raw).")] = None,
    rate: Annotated[
        list[int] | None,
        typer.Option(help="PTB-XL only: sampling rate(s) to fetch, 100 and/or 500 (default 100)."),
    ] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
) -> None:
    """Download a PhysioNet database version, verified against its SHA256SUMS.txt."""
    from pipeline.download import download_database

    settings = get_settings()
    try:
        report = download_database(
            database,
            dest_root=dest or settings.raw_dir,
            base_url=base_url or settings.physionet_url,
            version=version,
            records=[r.strip() for r in records.split(",") if r.strip()] if records else None,
            workers=workers,
            sampling_rates=rate or None,
            progress=False if no_progress else None,
        )
    except UserError as err:
        raise _fail(err) from None
    typer.echo(report.summary())


# --------------------------------------------------------------------------- prepare
@app.command()
def prepare(
    dataset: Annotated[str, typer.Argument(help="mitdb or ptb-xl.")],
    raw_dir: Annotated[Path | None, typer.Option(help="Raw data root (default: <data_dir>/raw).")] = None,
    out_dir: Annotated[
        Path | None, typer.Option(help="Processed root (default: <data_dir>/processed).")
    ] = None,
) -> None:
    """Build a versioned, patient-wise split dataset from downloaded records."""
    from pipeline.datasets import prepare_dataset

    settings = get_settings()
    try:
        path = prepare_dataset(
            dataset,
            raw_root=raw_dir or settings.raw_dir,
            processed_root=out_dir or settings.processed_dir,
        )
    except UserError as err:
        raise _fail(err) from None
    typer.echo(f"dataset written to {path}")


# --------------------------------------------------------------------------- serve
@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Worker processes (each loads the models; with >1, reload by polling: "
            "ECG_SERVICE_RELOAD_INTERVAL_S, as POST /admin/reload reaches one worker).",
        ),
    ] = 1,
) -> None:
    """Serve the registered models over HTTP (FastAPI ``service.main:app`` on uvicorn).

    Models, alias, tracking URI, API key and limits come from ``ECG_SERVICE_*`` variables
    (and ``MLFLOW_TRACKING_URI``); see service/settings.py.
    """
    import uvicorn

    # The service logs every request itself (method, path, status, latency, n_samples).
    uvicorn.run(
        "service.main:app",
        host=host,
        port=port,
        workers=workers,
        access_log=False,
        log_config=None,
    )


if __name__ == "__main__":  # pragma: no cover
    app()
