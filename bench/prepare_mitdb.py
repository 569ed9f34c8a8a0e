"""Time ``ecg prepare mitdb`` (or ``ptb-xl``) end to end, into a temporary directory.

Each repeat builds the whole dataset (read WFDB, preprocess, window, split, hash, write
atomically) and is timed with a wall clock; the real-time factor is hours of ECG processed per
second of wall time, from the records that went into the dataset.

Usage::

    python -m bench.prepare_mitdb [--raw-root ../shared/physionet] [--repeats 3] [--workers 2]
    python -m bench.prepare_mitdb --dataset ptb-xl
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import default_raw_root
from pipeline.dataset_store import load_dataset
from pipeline.datasets import prepare_dataset
from pipeline.errors import UserError
from pipeline.records import read_record

logger = logging.getLogger(__name__)


def ecg_hours(dataset_dir: Path, raw_root: Path) -> float:
    """Hours of ECG recordings (all leads counted once) in a prepared dataset."""
    ds = load_dataset(dataset_dir, verify=False)
    src = raw_root / ds.manifest["source"]["database"] / ds.manifest["source"]["version"]
    if ds.spec.is_beats:  # beats: whole records were read
        seconds = sum(read_record(src / r).duration_s for r in ds.records())
    else:  # one 10-s record per item
        seconds = 10.0 * len(ds)
    return seconds / 3600.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw-root", type=Path, default=None, help="default: mirror or data/raw")
    parser.add_argument("--dataset", default="mitdb", choices=["mitdb", "ptb-xl"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="default: CPU count, max 8")
    args = parser.parse_args(argv)
    args.raw_root = args.raw_root or default_raw_root()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    times = []
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        for i in range(args.repeats):
            t0 = time.perf_counter()
            try:
                out = prepare_dataset(
                    args.dataset,
                    raw_root=args.raw_root,
                    processed_root=Path(tmp),
                    workers=args.workers,
                )
            except UserError as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
            times.append(time.perf_counter() - t0)
            print(f"run {i + 1}: {times[-1]:.2f} s")
        hours = ecg_hours(out, args.raw_root)
        size_mb = sum(p.stat().st_size for p in out.iterdir()) / 1e6
        n_items = load_dataset(out, verify=False).manifest["n_items"]
    best, median = min(times), statistics.median(times)
    print(
        f"{args.dataset}: {n_items} items, {hours:.1f} h of ECG, {size_mb:.0f} MB on disk, "
        f"{os.cpu_count()} CPUs, workers={args.workers or 'default'}"
    )
    print(
        f"wall time: best {best:.2f} s, median {median:.2f} s over {len(times)} runs; "
        f"real-time factor {hours * 3600 / median:.0f}x (seconds of ECG per second, median run)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
