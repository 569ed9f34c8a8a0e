"""Serving benchmark: this service vs ``mlflow models serve``, same model, same strips, one run.

Both servers run on 127.0.0.1 as real processes and are driven over real HTTP by the same load
generator (``--clients`` threads, each with its own keep-alive ``httpx.Client``; bodies encoded
once, before timing). Inputs: 10-s MLII strips at 360 Hz, minute 5 of 16 real MIT-BIH records.

Results (figures, profile before/after, how to re-run): ``bench/SERVING.md``.

What each side does per request:

* **this service** (``uvicorn service.main:app``, ``--workers`` processes, default 1): the raw
  strip in, the signal-quality check (which detects the R peaks unless given), the beat context
  and the forward pass of the beat-sequence model, beats with classes, probabilities and quality
  verdicts, summary; it logs every request.
* **mlflow models serve** (``--env-manager local``, ``--workers`` as ours, default 1): the pyfunc
  ``/invocations`` endpoint of the same registered model
  (:class:`models.beat_predictor.BeatPyfuncModel`), fed ``{"inputs": {"signal", "fs",
  "r_peaks"}}``: it cannot detect beats, so its client hands it ready-made R peaks. Except in
  ``single-e2e`` that detection is done before timing and NOT counted, which favours the
  baseline; it also skips the quality check. Its cost per strip is reported separately.

Scenarios (each server in turn, same strips):

``single``          one strip per request, ``--clients`` concurrent clients
``single-1client``  one strip per request, one client (latency without queueing)
``single-rpeaks``   ours also gets the R peaks (no detection), like the baseline
``single-e2e``      the baseline's client detects the R peaks inside the timed loop
``single-binary``   as ``single``, ours sent the strip as a little-endian float32 body
                    (``/predict/arrhythmia/binary?fs=360&leads=MLII``; no JSON to decode)
``batch16``         all 16 strips at once: ours one ``/predict/arrhythmia/batch`` request; the
                    baseline's pyfunc reads one strip per call (a one-row input), so its unit is
                    16 POSTs one after another on one keep-alive connection (strips/s compared)

The model: ``models:/<name>@<alias>`` from ``--tracking-uri`` (or the environment's
``ECG_SERVICE_MLFLOW_TRACKING_URI`` / ``MLFLOW_TRACKING_URI``) when given; otherwise a
beat-sequence model of the ``ecg train-beats`` recipe at its default size (bi-LSTM, relative
inputs, context features) trained 10 steps on real MIT-BIH strips and registered into a temporary
sqlite store (:func:`bench.tiny_models.train_beat_sequence`). A single-beat model from
``--tracking-uri`` still works (the baseline then gets the preprocessed beat tensor).

``--profile`` then samples each server with py-spy (``--gil``: threads holding the GIL) while it
answers ``--requests`` single strips from ``--clients`` clients; the raw stacks go to ``--out``
and a summary (own and inclusive shares of the busy samples) into the JSON and markdown report.

Usage::

    python -m bench.serving [--requests 200] [--clients 4] [--rounds 3] [--tracking-uri URI]
                            [--out DIR] [--profile]

Every scenario runs ``--rounds`` times (the whole plan, round after round, the two servers
alternating); the table gives the per-round medians, the ratios of the medians and their range
over the rounds, and each server's CPU time per strip (psutil: the process and its workers),
which moves less with background load than throughput does.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import signal as os_signal
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
    #: User + system CPU of the server's processes per strip: robust to background load.
    server_cpu_ms_per_strip: float


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
    url: str,
    bodies: Bodies,
    n_units: int,
    clients: int,
    per_unit: int = 1,
    content_type: str = "application/json",
) -> tuple[float, list[float], int]:
    """Send ``n_units`` units of ``per_unit`` POSTs each from ``clients`` threads.

    A unit's POSTs go one after another over the client's keep-alive connection; its latency
    (seconds) is the time for all of them. ``bodies`` is a list used round-robin (unit ``i``
    sends bodies ``i * per_unit ...``), or a function of the request number that builds the body
    inside the timed loop (client-side work that counts). Returns wall time, latencies and the
    number of non-200 answers.
    """
    make = bodies if callable(bodies) else (lambda i: bodies[i % len(bodies)])
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(n_units))

    def worker() -> None:
        nonlocal errors
        with httpx.Client(timeout=120, headers={"content-type": content_type}) as client:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                bad = 0
                start = time.perf_counter()
                for j in range(i * per_unit, (i + 1) * per_unit):
                    bad += client.post(url, content=make(j)).status_code != 200
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    errors += bad

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, latencies, errors


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its children (server workers)."""
    import psutil  # type: ignore[import-untyped]

    total = 0.0
    root = psutil.Process(pid)
    for proc in (root, *root.children(recursive=True)):
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _measure(
    server: str,
    pid: int,
    scenario: str,
    url: str,
    bodies: Bodies,
    strips: int,
    n: int,
    clients: int,
    per_unit: int = 1,
    content_type: str = "application/json",
) -> Result:
    _drive(url, bodies, min(n, 10), 1, per_unit, content_type)  # warm-up
    cpu_before = _cpu_s(pid)
    wall, lat, errors = _drive(url, bodies, n, clients, per_unit, content_type)
    cpu_ms = (_cpu_s(pid) - cpu_before) * 1000 / (n * strips)
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
        server_cpu_ms_per_strip=round(cpu_ms, 3),
    )


# --------------------------------------------------------------------------- profile
#: Functions whose inclusive share of the busy samples the profile summary reports.
PROFILE_FUNCTIONS: tuple[str, ...] = (
    "assess_strip",
    "detect_rpeaks",
    "detect_rpeaks_pantompkins",
    "beat_context",
    "predict_strips",
    "BeatSequencePredictor.predict_many",
    "loads",
    "FastJSONRequest.json",
    "request_body_to_args",
    "_segment",
    "_arrhythmia_results",
    "serialize_response",
    "jsonable_encoder",
    "render",
    "run_endpoint_function",
)


def _profile(pid: int, url: str, bodies: Bodies, n: int, clients: int, out: Path) -> dict[str, Any]:
    """py-spy samples of ``pid`` while it answers ``n`` requests; raw stacks to ``out``."""
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("--profile needs py-spy (pip install -e '.[dev]')")
    cmd = [py_spy, "record", "--pid", str(pid), "--format", "raw", "--nolineno"]
    cmd += ["--rate", "200", "--gil", "--subprocesses", "-o", str(out)]
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # py-spy attaches
    _drive(url, bodies, n, clients)
    spy.send_signal(os_signal.SIGINT)
    try:
        spy.wait(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()
    if not out.exists():
        err = spy.stderr.read().decode() if spy.stderr else ""
        raise SystemExit(f"py-spy wrote no profile: {err.strip()}")
    return summarise_profile(out.read_text())


#: Leaf frames that are a thread waiting, not working (py-spy's idle detection misses them).
WAIT_FRAMES: tuple[str, ...] = ("Condition.wait", "Runner.run", "_worker", "select", "wait")


def summarise_profile(raw: str, top: int = 15) -> dict[str, Any]:
    """Top of a py-spy ``--format raw`` profile: busy samples by own and inclusive function.

    Parameters
    ----------
    raw : str
        Collapsed stacks, one ``frame;frame;...;frame count`` line per stack. Stacks whose leaf
        is one of :data:`WAIT_FRAMES` (a thread-pool worker or the event loop waiting) are
        counted as ``waiting_samples``, not as busy.
    top : int
        How many functions to list by own (self) samples.

    Returns
    -------
    dict
        ``busy_samples``, ``self_top`` (``[name, share]``, most first) and ``inclusive``
        (share of the busy samples with each of :data:`PROFILE_FUNCTIONS` on the stack).
    """
    own: dict[str, int] = {}
    inclusive = dict.fromkeys(PROFILE_FUNCTIONS, 0)
    total = waiting = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")[1:]  # the first is the process / thread
        if not frames:
            continue
        if frames[-1].split(" (", 1)[0] in WAIT_FRAMES:
            waiting += count
            continue
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        names = {f.split(" (", 1)[0] for f in frames}
        for name in inclusive:
            if name in names:
                inclusive[name] += count
    share = (lambda c: round(c / total, 4)) if total else (lambda c: 0.0)
    ranked = sorted(own.items(), key=lambda kv: -kv[1])[:top]
    return {
        "busy_samples": total,
        "waiting_samples": waiting,
        "self_top": [[name, share(c)] for name, c in ranked],
        "inclusive": {name: share(c) for name, c in inclusive.items()},
    }


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

    from bench.tiny_models import register_beat_model, train_beat_sequence

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).create_experiment(
        "tiny-service-models", artifact_location=(workdir / "artifacts").as_uri()
    )
    # The recommended recipe at its default size (bi-LSTM, relative inputs, context features):
    # the forward pass costs what the champion's does.
    clf = train_beat_sequence(args.mitdb, steps=10)
    register_beat_model(uri, clf, args.model_name, alias=args.alias)
    return uri, (
        "beat-sequence bi-LSTM (ecg train-beats recipe, default size), trained 10 steps on "
        "3 MIT-BIH records (temporary sqlite store)"
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
    parser.add_argument(
        "--rounds", type=int, default=3, help="times the whole plan runs; medians are reported"
    )
    parser.add_argument("--workers", type=int, default=1, help="server processes, both servers")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--model-name", default="ecg-arrhythmia")
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--mitdb", type=Path, default=DEFAULT_MITDB)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also sample both servers with py-spy while they answer single strips",
    )
    parser.add_argument(
        "--keep-workdir", action="store_true", help="keep the temporary store and server logs"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per request
    started = time.perf_counter()

    from models.beat_predictor import BeatSequencePredictor
    from models.predictor import ArrhythmiaPredictor, load_predictor
    from models.preprocessing import beat_inputs, detect_rpeaks

    workdir = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    uri, model_desc = _registry(args, workdir)
    model_uri = f"models:/{args.model_name}@{args.alias}"
    predictor = load_predictor(model_uri, tracking_uri=uri)
    if not isinstance(predictor, ArrhythmiaPredictor):
        raise SystemExit(f"{model_uri} is not an arrhythmia model")
    beat_sequence = isinstance(predictor, BeatSequencePredictor)
    strips = _strips(args.mitdb)

    def baseline_body(x: np.ndarray, fs: float, peaks: np.ndarray) -> bytes:
        """What ``mlflow models serve`` of this model reads for one strip."""
        if beat_sequence:  # BeatPyfuncModel: the raw strip and its R peaks
            inputs: Any = {"signal": x.tolist(), "fs": fs, "r_peaks": peaks.tolist()}
        else:  # a single-beat model: the preprocessed (n_beats, 87, 5) beat tensor
            inputs = beat_inputs(x, fs, peaks, predictor.card.preprocess).tolist()
        return json.dumps({"inputs": inputs}).encode()

    # The baseline's input: what its client must compute first (timed here, not in the load).
    t0 = time.perf_counter()
    peaks_list = [detect_rpeaks(x, fs) for x, fs in strips]
    base_single = [baseline_body(x, fs, p) for (x, fs), p in zip(strips, peaks_list, strict=True)]
    client_prep_ms = (time.perf_counter() - t0) * 1000 / len(strips)

    ours_single = [json.dumps({"fs": fs, "signal": x.tolist()}).encode() for x, fs in strips]
    ours_peaks = [
        json.dumps({"fs": fs, "signal": x.tolist(), "r_peaks": p.tolist()}).encode()
        for (x, fs), p in zip(strips, peaks_list, strict=True)
    ]
    # The binary body: little-endian float32 samples, rate and lead as query parameters.
    ours_binary = [x.astype("<f4").tobytes() for x, _ in strips]
    binary_path = f"/binary?fs={strips[0][1]:g}&leads=MLII"
    ours_batch = [
        json.dumps({"segments": [{"fs": fs, "signal": x.tolist()} for x, fs in strips]}).encode()
    ]

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
    profiles: dict[str, Any] = {}
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    load_before = os.getloadavg()
    ours = _start(ours_cmd, ours_env, workdir / "ours.log")
    base = _start(base_cmd, base_env, workdir / "mlflow.log")
    try:
        _wait(f"http://127.0.0.1:{ours_port}/ready", ours)
        _wait(f"http://127.0.0.1:{base_port}/ping", base)
        ours_url = f"http://127.0.0.1:{ours_port}/predict/arrhythmia"
        base_url = f"http://127.0.0.1:{base_port}/invocations"

        # Same model behind both: the classes agree on every beat this service classified.
        json_header = {"content-type": "application/json"}
        mine = httpx.post(ours_url, content=ours_single[0], timeout=60, headers=json_header)
        theirs = httpx.post(base_url, content=base_single[0], timeout=60, headers=json_header)
        mine.raise_for_status()
        theirs.raise_for_status()
        theirs_labels = [
            predictor.card.classes[i] for i in np.asarray(theirs.json()["predictions"]).argmax(1)
        ]
        ours_labels = [b["label"] for b in mine.json()["beats"]]
        agree = len(ours_labels) == len(theirs_labels) and all(
            a is None or a == b for a, b in zip(ours_labels, theirs_labels, strict=True)
        )
        logger.info("same classes from both servers on strip 0: %s", agree)

        def e2e(i: int) -> bytes:  # what a client of mlflow models serve must do per strip
            x, fs = strips[i % len(strips)]
            return baseline_body(x, fs, detect_rpeaks(x, fs))

        n, nb, c, k = args.requests, args.batch_requests, args.clients, len(strips)
        plan: list[tuple[str, str, Bodies, str, Bodies, int, int, int, int]] = [
            # scenario, our path, our bodies, baseline label, baseline bodies, strips, n,
            # clients, baseline POSTs per unit
            ("single", "", ours_single, "", base_single, 1, n, c, 1),
            ("single-1client", "", ours_single, "", base_single, 1, n, 1, 1),
            ("single-rpeaks", "", ours_peaks, "", base_single, 1, n, c, 1),
            ("single-e2e", "", ours_single, " +client detection", e2e, 1, n, c, 1),
            ("single-binary", binary_path, ours_binary, "", base_single, 1, n, c, 1),
            ("batch16", "/batch", ours_batch, " (16 POSTs)", base_single, k, nb, c, k),
        ]
        for round_no in range(args.rounds):  # rounds: the spread shows the machine's noise
            for scenario, path, ours_bodies, label, base_bodies, strips_n, m, cl, per in plan:
                # Alternate the servers so that background load hits both alike.
                media = "application/octet-stream" if path == binary_path else "application/json"
                results.append(
                    _measure(
                        "this service",
                        ours.pid,
                        scenario,
                        ours_url + path,
                        ours_bodies,
                        strips_n,
                        m,
                        cl,
                        content_type=media,
                    )
                )
                results.append(
                    _measure(
                        f"mlflow models serve{label}",
                        base.pid,
                        scenario,
                        base_url,
                        base_bodies,
                        strips_n,
                        m,
                        cl,
                        per,
                    )
                )
                logger.info("round %d: %s done", round_no + 1, scenario)
        if args.profile:
            for name, proc, url, bodies in (
                ("this-service", ours, ours_url, ours_single),
                ("mlflow-models-serve", base, base_url, base_single),
            ):
                raw = args.out / f"profile-{name}-{stamp}.txt"
                profiles[name] = {"raw": str(raw), **_profile(proc.pid, url, bodies, n, c, raw)}
                logger.info("profiled %s", name)
    finally:
        _stop(ours)
        _stop(base)
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()
    medians = median_results(results)

    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - started, 1),
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
            "kind": "beat-sequence" if beat_sequence else "single-beat",
            "architecture": predictor.card.architecture.to_dict(),
        },
        "inputs": {
            "strips": [f"mitdb/{r} MLII 300-310 s" for r in STRIP_RECORDS],
            "fs": 360,
            "beats_per_strip_mean": statistics.mean(len(p) for p in peaks_list),
        },
        "baseline_input": (
            "signal, fs and R peaks (detected before timing)"
            if beat_sequence
            else "preprocessed beat tensor (n_beats, 87, 5)"
        ),
        "baseline_client_preprocessing_ms_per_strip": round(client_prep_ms, 2),
        "same_classes_on_strip_0": agree,
        "rounds": args.rounds,
        "results_per_round": [asdict(r) for r in results],
        "results": [asdict(r) for r in medians],
        **_ratios(results),
        "profiles": profiles,
    }
    out_file = args.out / f"serving-{stamp}.json"
    out_file.write_text(json.dumps(report, indent=2))
    table = _table(report, medians)
    out_file.with_suffix(".md").write_text(table)
    print(table)
    print(f"written to {out_file} and {out_file.with_suffix('.md')}")
    return 0


def median_results(results: list[Result]) -> list[Result]:
    """One :class:`Result` per (server, scenario), in first-seen order: the per-round medians."""
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.server, r.scenario), []).append(r)
    out = []
    for rounds in groups.values():
        first = asdict(rounds[0])
        for key, value in first.items():
            if isinstance(value, float):
                first[key] = round(float(np.median([getattr(r, key) for r in rounds])), 3)
        first["errors"] = sum(r.errors for r in rounds)
        out.append(Result(**first))
    return out


def _ratios(results: list[Result]) -> dict[str, dict[str, Any]]:
    """Per scenario: this service / mlflow of the medians, and the range over the rounds.

    ``results`` alternate this service and mlflow, scenario by scenario, round after round.
    """
    pairs = list(zip(results[::2], results[1::2], strict=True))
    speed: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for ours, base in pairs:
        speed.setdefault(ours.scenario, []).append(ours.strips_per_s / base.strips_per_s)
        cpu.setdefault(ours.scenario, []).append(
            base.server_cpu_ms_per_strip / max(ours.server_cpu_ms_per_strip, 1e-9)
        )
    medians = median_results(results)
    mid = list(zip(medians[::2], medians[1::2], strict=True))
    return {
        "ratios": {o.scenario: round(o.strips_per_s / b.strips_per_s, 2) for o, b in mid},
        "cpu_ratios": {
            o.scenario: round(b.server_cpu_ms_per_strip / max(o.server_cpu_ms_per_strip, 1e-9), 2)
            for o, b in mid
        },
        "ratio_ranges": {k: [round(min(v), 2), round(max(v), 2)] for k, v in speed.items()},
        "cpu_ratio_ranges": {k: [round(min(v), 2), round(max(v), 2)] for k, v in cpu.items()},
    }


def _table(report: dict[str, Any], results: list[Result]) -> str:
    """The results as a markdown table with the ratios and the profile summaries."""
    lines = [
        f"model: {report['model']['what']}; {report['server_workers']} worker(s) per server; "
        f"{report['clients']} clients",
        "",
        f"load average before/after: {report['machine']['loadavg_before']} / "
        f"{report['machine']['loadavg_after']} on {report['machine']['cpus']} CPUs; "
        f"run took {report['duration_s']} s",
        "",
        "| server | scenario | req/s | strips/s | p50 ms | p90 ms | p99 ms | server CPU ms/strip "
        "| errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.server} | {r.scenario} | {r.requests_per_s:.1f} | {r.strips_per_s:.1f} | "
        f"{r.p50_ms:.1f} | {r.p90_ms:.1f} | {r.p99_ms:.1f} | {r.server_cpu_ms_per_strip:.2f} | "
        f"{r.errors} |"
        for r in results
    ]
    lines += [
        "",
        f"medians of {report['rounds']} rounds; ratios of the medians (range over the rounds)",
        "",
        "| scenario | strips/s, this service / mlflow models serve | server CPU per strip, "
        "mlflow / this service |",
        "|---|---:|---:|",
    ]
    for name, ratio in report["ratios"].items():
        lo, hi = report["ratio_ranges"][name]
        clo, chi = report["cpu_ratio_ranges"][name]
        lines.append(
            f"| {name} | {ratio:.2f}x ({lo:.2f}-{hi:.2f}) | "
            f"{report['cpu_ratios'][name]:.2f}x ({clo:.2f}-{chi:.2f}) |"
        )
    lines += [
        "",
        "baseline input: "
        f"{report['baseline_input']}; its client-side R-peak detection, not counted except in "
        f"single-e2e: {report['baseline_client_preprocessing_ms_per_strip']:.1f} ms per strip",
    ]
    for name, prof in report["profiles"].items():
        lines += ["", f"profile {name} ({prof['busy_samples']} busy samples, single, py-spy):"]
        lines += [f"- self {share:.1%} {fn}" for fn, share in prof["self_top"]]
        lines += [
            f"- inclusive {share:.1%} {fn}" for fn, share in prof["inclusive"].items() if share
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
