"""Serving benchmark: this service vs ``mlflow models serve``, same model, same strips, one run.

Both servers run on 127.0.0.1 as real processes and are driven over real HTTP by the same load
generator (``--clients`` threads, each with its own keep-alive ``httpx.Client``; bodies encoded
once, before timing). Inputs: 10-s MLII strips at 360 Hz, minute 5 of 16 real MIT-BIH records.

What each side does per request:

* **this service** (``uvicorn service.main:app``, ``--workers`` processes, default 1): the raw
  strip in, R-peak detection, the preprocessing from the model card, the forward pass, beats with
  classes and probabilities, summary; it logs every request.
* **mlflow models serve** (``--env-manager local``, ``--workers`` as ours, default 1): the pyfunc
  ``/invocations`` endpoint of the same registered model, fed the preprocessed beat tensor
  ``{"inputs": (n_beats, 87, 5)}``. It cannot take raw ECG: its client must detect the beats and
  preprocess. Except in ``single-e2e``, that work is done before timing and NOT counted, which
  favours the baseline; its cost per strip is reported separately.

Scenarios (each server in turn, same requests):

``single``          one strip per request, ``--clients`` concurrent clients
``single-1client``  one strip per request, one client (latency without queueing)
``single-rpeaks``   ours also gets the R peaks (no detection), like the baseline's tensor
``single-e2e``      the baseline's client detects and preprocesses inside the timed loop
``batch16``         all 16 strips in one request (ours: ``/predict/arrhythmia/batch``)

The model: ``models:/<name>@<alias>`` from ``--tracking-uri`` (or the environment's
``ECG_SERVICE_MLFLOW_TRACKING_URI`` / ``MLFLOW_TRACKING_URI``) when given; otherwise a bi-GRU of
the recommended size (hidden 64, patches of 3 samples) trained for a few steps on real MIT-BIH
beats and registered into a temporary sqlite store.

Usage::

    python -m bench.serving [--requests 200] [--clients 4] [--tracking-uri URI] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

logger = logging.getLogger("bench.serving")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MITDB = REPO.parent / "shared" / "physionet" / "mitdb" / "1.0.0"
STRIP_RECORDS = (
    "100", "101", "103", "105", "106", "108", "109", "111",
    "112", "113", "114", "115", "116", "117", "118", "119",
)  # fmt: skip


@dataclass
class Result:
    server: str
    scenario: str
    requests: int
    clients: int
    strips_per_request: int
    wall_s: float
    requests_per_s: float
    strips_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int


# --------------------------------------------------------------------------- servers
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited with code {proc.returncode}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not become ready in {timeout_s} s")


def _start(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log = log_path.open("wb")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- load
Bodies = list[bytes] | Callable[[int], bytes]


def _drive(
    url: str, bodies: Bodies, n_requests: int, clients: int
) -> tuple[float, list[float], int]:
    """Send ``n_requests`` POSTs from ``clients`` threads; latencies in s.

    ``bodies`` is a list used round-robin, or a function of the request number that builds the
    body inside the timed loop (client-side work that counts).
    """
    make = bodies if callable(bodies) else (lambda i: bodies[i % len(bodies)])
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(n_requests))

    def worker() -> None:
        nonlocal errors
        with httpx.Client(timeout=120, headers={"content-type": "application/json"}) as client:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                start = time.perf_counter()
                r = client.post(url, content=make(i))
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    errors += r.status_code != 200

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, latencies, errors


def _measure(
    server: str, scenario: str, url: str, bodies: Bodies, strips: int, n: int, clients: int
) -> Result:
    _drive(url, bodies, min(n, 10), 1)  # warm-up
    wall, lat, errors = _drive(url, bodies, n, clients)
    ms = np.asarray(lat) * 1000
    return Result(
        server=server,
        scenario=scenario,
        requests=n,
        clients=clients,
        strips_per_request=strips,
        wall_s=round(wall, 3),
        requests_per_s=round(n / wall, 2),
        strips_per_s=round(n * strips / wall, 2),
        p50_ms=round(float(np.percentile(ms, 50)), 2),
        p90_ms=round(float(np.percentile(ms, 90)), 2),
        p99_ms=round(float(np.percentile(ms, 99)), 2),
        errors=errors,
    )


# --------------------------------------------------------------------------- model + data
def _registry(args: argparse.Namespace, workdir: Path) -> tuple[str, str]:
    uri = (
        args.tracking_uri
        or os.environ.get("ECG_SERVICE_MLFLOW_TRACKING_URI")
        or os.environ.get("MLFLOW_TRACKING_URI")
    )
    if uri:
        return uri, "existing registry"
    from mlflow import MlflowClient

    from bench.tiny_models import register_model, train_arrhythmia

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).create_experiment(
        "tiny-service-models", artifact_location=(workdir / "artifacts").as_uri()
    )
    # The recommended size and patching (64 units, 29 steps of 3 samples): the forward pass
    # costs what the champion's does.
    module, card, example, metrics = train_arrhythmia(
        args.mitdb, hidden_size=64, patch_size=3, steps=10
    )
    register_model(uri, module, card, example, args.model_name, metrics=metrics, alias=args.alias)
    return uri, (
        "bi-GRU hidden 64, patches of 3, trained 10 steps on 3 MIT-BIH records "
        "(temporary sqlite store)"
    )


def _strips(mitdb: Path) -> list[tuple[np.ndarray, float]]:
    import wfdb

    out = []
    for record in STRIP_RECORDS:
        rec = wfdb.rdrecord(str(mitdb / record), sampfrom=300 * 360, sampto=310 * 360)
        out.append((rec.p_signal[:, rec.sig_name.index("MLII")].astype(np.float32), float(rec.fs)))
    return out


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per measurement")
    parser.add_argument("--batch-requests", type=int, default=50, help="requests, batch16")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client threads")
    parser.add_argument("--workers", type=int, default=1, help="server processes, both servers")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--model-name", default="ecg-arrhythmia")
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--mitdb", type=Path, default=DEFAULT_MITDB)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument(
        "--keep-workdir", action="store_true", help="keep the temporary store and server logs"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from models.predictor import ArrhythmiaPredictor, load_predictor
    from models.preprocessing import beat_inputs, detect_rpeaks

    workdir = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    uri, model_desc = _registry(args, workdir)
    model_uri = f"models:/{args.model_name}@{args.alias}"
    predictor = load_predictor(model_uri, tracking_uri=uri)
    if not isinstance(predictor, ArrhythmiaPredictor):
        raise SystemExit(f"{model_uri} is not an arrhythmia model")
    strips = _strips(args.mitdb)

    # The baseline's input: what its client must compute first (timed here, not in the load).
    t0 = time.perf_counter()
    tensors, peaks_list = [], []
    for signal, fs in strips:
        peaks = detect_rpeaks(signal, fs)
        peaks_list.append(peaks)
        tensors.append(beat_inputs(signal, fs, peaks, predictor.card.preprocess))
    client_prep_ms = (time.perf_counter() - t0) * 1000 / len(strips)

    ours_single = [json.dumps({"fs": fs, "signal": s.tolist()}).encode() for s, fs in strips]
    ours_peaks = [
        json.dumps({"fs": fs, "signal": s.tolist(), "r_peaks": p.tolist()}).encode()
        for (s, fs), p in zip(strips, peaks_list, strict=True)
    ]
    ours_batch = [
        json.dumps({"segments": [{"fs": fs, "signal": s.tolist()} for s, fs in strips]}).encode()
    ]
    base_single = [json.dumps({"inputs": t.tolist()}).encode() for t in tensors]
    base_batch = [json.dumps({"inputs": np.concatenate(tensors).tolist()}).encode()]

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ECG_SERVICE_", "MLFLOW_"))}
    # mlflow models serve starts `uvicorn` from PATH: the one of this environment.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    ours_port, base_port = _free_port(), _free_port()
    ours_env = {
        **env,
        "ECG_SERVICE_MLFLOW_TRACKING_URI": uri,
        "ECG_SERVICE_ARRHYTHMIA_MODEL": args.model_name,
        "ECG_SERVICE_HEART_DISEASE_MODEL": "",
        "ECG_SERVICE_MODEL_ALIAS": args.alias,
    }
    base_env = {**env, "MLFLOW_TRACKING_URI": uri}
    ours_cmd = [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1"]
    ours_cmd += ["--port", str(ours_port), "--no-access-log", "--workers", str(args.workers)]
    base_cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri]
    base_cmd += ["--env-manager", "local", "--host", "127.0.0.1", "-p", str(base_port)]
    base_cmd += ["--workers", str(args.workers)]

    results: list[Result] = []
    load_before = os.getloadavg()
    ours = _start(ours_cmd, ours_env, workdir / "ours.log")
    base = _start(base_cmd, base_env, workdir / "mlflow.log")
    try:
        _wait(f"http://127.0.0.1:{ours_port}/ready", ours)
        _wait(f"http://127.0.0.1:{base_port}/ping", base)
        ours_url = f"http://127.0.0.1:{ours_port}/predict/arrhythmia"
        base_url = f"http://127.0.0.1:{base_port}/invocations"

        # Same model behind both: the classes agree beat for beat.
        json_header = {"content-type": "application/json"}
        mine = httpx.post(ours_url, content=ours_single[0], timeout=60, headers=json_header)
        theirs = httpx.post(base_url, content=base_single[0], timeout=60, headers=json_header)
        logits = np.asarray(theirs.json()["predictions"])
        agree = [b["label"] for b in mine.json()["beats"]] == [
            predictor.card.classes[i] for i in logits.argmax(axis=1)
        ]
        logger.info("same classes from both servers on strip 0: %s", agree)

        def e2e(i: int) -> bytes:  # what a client of mlflow models serve must do per strip
            signal, fs = strips[i % len(strips)]
            peaks = detect_rpeaks(signal, fs)
            x = beat_inputs(signal, fs, peaks, predictor.card.preprocess)
            return json.dumps({"inputs": x.tolist()}).encode()

        n, nb, c = args.requests, args.batch_requests, args.clients
        plan: list[tuple[str, str, Bodies, str, Bodies, int, int, int]] = [
            # scenario, our path, our bodies, baseline label, baseline bodies, strips, n, clients
            ("single", "", ours_single, "", base_single, 1, n, c),
            ("single-1client", "", ours_single, "", base_single, 1, n, 1),
            ("single-rpeaks", "", ours_peaks, "", base_single, 1, n, c),
            ("single-e2e", "", ours_single, " +client prep", e2e, 1, n, c),
            ("batch16", "/batch", ours_batch, "", base_batch, len(strips), nb, c),
        ]
        for scenario, path, ours_bodies, label, base_bodies, k, m, cl in plan:
            # Alternate the servers so that background load hits both alike.
            results.append(
                _measure("this service", scenario, ours_url + path, ours_bodies, k, m, cl)
            )
            results.append(
                _measure(f"mlflow models serve{label}", scenario, base_url, base_bodies, k, m, cl)
            )
            logger.info("%s done", scenario)
    finally:
        _stop(ours)
        _stop(base)
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()

    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        },
        "server_workers": args.workers,
        "clients": args.clients,
        "model": {
            "uri": model_uri,
            "tracking_uri": uri,
            "what": model_desc,
            "architecture": predictor.card.architecture.to_dict(),
        },
        "inputs": {
            "strips": [f"mitdb/{r} MLII 300-310 s" for r in STRIP_RECORDS],
            "fs": 360,
            "beats_per_strip_mean": statistics.mean(len(t) for t in tensors),
        },
        "baseline_client_preprocessing_ms_per_strip": round(client_prep_ms, 2),
        "same_classes_on_strip_0": agree,
        "results": [asdict(r) for r in results],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out_file = args.out / f"serving-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out_file.write_text(json.dumps(report, indent=2))
    _print_table(report, results)
    print(f"\nwritten to {out_file}")
    return 0


def _print_table(report: dict[str, Any], results: list[Result]) -> None:
    print(f"\nmodel: {report['model']['what']}; {report['server_workers']} worker(s) per server")
    print(f"load average before/after: {report['machine']['loadavg_before']} / "
          f"{report['machine']['loadavg_after']} on {report['machine']['cpus']} CPUs")  # fmt: skip
    print(f"{'server':<34}{'scenario':<16}{'req/s':>8}{'strips/s':>10}"
          f"{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'errors':>8}")  # fmt: skip
    for r in results:
        print(f"{r.server:<34}{r.scenario:<16}{r.requests_per_s:>8.1f}{r.strips_per_s:>10.1f}"
              f"{r.p50_ms:>9.1f}{r.p90_ms:>9.1f}{r.p99_ms:>9.1f}{r.errors:>8}")  # fmt: skip
    for ours, base in zip(results[::2], results[1::2], strict=True):
        print(
            f"{ours.scenario}: throughput ratio {ours.requests_per_s / base.requests_per_s:.2f}x "
            f"(this service / {base.server})"
        )
    print(
        "baseline client-side preprocessing (detection + beat windows), not counted above: "
        f"{report['baseline_client_preprocessing_ms_per_strip']:.1f} ms per strip"
    )


if __name__ == "__main__":
    sys.exit(main())
