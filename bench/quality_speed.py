"""Speed of the signal-quality check and the R-peak detector, old against new, same answers.

Loads :mod:`models.quality` and :mod:`models.rpeaks` as they were at a git revision (``--rev``,
default the commit before the speed-ups) next to the current ones, runs both on many real strips
and checks that every answer is identical: the R peaks of
:func:`models.preprocessing.detect_rpeaks` and of
:func:`models.quality.detect_rpeaks_pantompkins` exactly; of :func:`models.quality.assess_strip`
the strip verdict and reasons, every beat's verdict and reasons and the R peaks exactly, the SQIs
and per-beat indices to ``rtol`` 1e-9 (and it lists the numbers that are not bit-identical).
Then it times both side by side (best of ``--repeats`` passes, old and new alternating) on the
16 10-s MLII strips of ``bench.serving`` (at 300 s) and on four 300-s strips.

The strips (all genuine PhysioNet signals; 360 Hz unless said):

- every MIT-BIH record (MLII, or its first lead), 10-s strips at six offsets;
- 300-s strips of six records, and of three with noise;
- nstdb ``em``, ``ma`` and ``bw`` noise mixed into 10-s strips of eight records at 6, 0, -6 and
  -12 dB (``nst``'s SNR: :mod:`pipeline.noise_stress`), so that noisy and unreadable verdicts
  occur;
- strips resampled to 100, 128, 250, 500 and 1000 Hz (``scipy.signal.resample_poly``);
- edge cases: strips of 0.03-45 s, a flat line, a clipped strip, powerline hum, Gaussian noise.

``assess_strip`` is run with ``r_peaks=None`` (the service's call) and with the annotated beats.

Usage::

    python -m bench.quality_speed [--rev a7458ca] [--mitdb DIR] [--nstdb DIR] [--repeats 20]
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from scipy import signal as sps

from models.labels import WFDB_BEAT_SYMBOLS
from pipeline.noise_stress import noise_gain, noise_power, qrs_power

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MITDB = REPO.parent / "shared" / "physionet" / "mitdb" / "1.0.0"
DEFAULT_NSTDB = REPO.parent / "shared" / "physionet" / "nstdb" / "1.0.0"
#: The revision before the speed-ups (the reference answers).
REFERENCE_REV = "a7458ca"
MITDB_RECORDS = (
    "100", "101", "102", "103", "104", "105", "106", "107", "108", "109", "111", "112",
    "113", "114", "115", "116", "117", "118", "119", "121", "122", "123", "124", "200",
    "201", "202", "203", "205", "207", "208", "209", "210", "212", "213", "214", "215",
    "217", "219", "220", "221", "222", "223", "228", "230", "231", "232", "233", "234",
)  # fmt: skip
#: The strips ``bench.serving`` times (10 s at 300 s of each record).
TIMING_RECORDS = (
    "100", "101", "103", "105", "106", "108", "109", "111",
    "112", "113", "114", "115", "116", "117", "118", "119",
)  # fmt: skip
OFFSETS_S = (0.0, 95.3, 412.0, 777.7, 1203.1, 1790.0)
RTOL = 1e-9
Counter_t = dict[str, int]
#: Largest relative difference seen per SQI that was within RTOL but not bit-identical.
INEXACT: dict[str, float] = {}


@dataclass(frozen=True)
class Case:
    """One strip to compare.

    Attributes
    ----------
    name : str
    signal : np.ndarray
        ``(n_samples,)`` float32 or float64, mV at ``fs``.
    fs : float
        Sampling rate, Hz.
    peaks : np.ndarray or None
        int64 annotated beats (relative to the strip) for the given-peaks call; None: only the
        detecting call.
    """

    name: str
    signal: np.ndarray
    fs: float
    peaks: np.ndarray | None


@dataclass(frozen=True)
class Impl:
    """One version of the three functions under test."""

    detect_rpeaks: Callable[[np.ndarray, float], np.ndarray]
    pantompkins: Callable[[np.ndarray, float], np.ndarray]
    assess_strip: Callable[..., Any]


# --------------------------------------------------------------------------- implementations
def _module_at(rev: str, path: str, name: str) -> types.ModuleType:
    src = subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout
    module = types.ModuleType(name)
    module.__file__ = f"{rev}:{path}"
    sys.modules[name] = module  # dataclasses look their module up
    exec(compile(src, module.__file__, "exec"), module.__dict__)
    return module


def reference_impl(rev: str) -> Impl:
    """:mod:`models.rpeaks` and :mod:`models.quality` as they were at ``rev``."""
    from models import preprocessing

    rpeaks = _module_at(rev, "models/rpeaks.py", "_ref_rpeaks")
    quality = _module_at(rev, "models/quality.py", "_ref_quality")

    def detect(signal: np.ndarray, fs: float) -> np.ndarray:
        x = preprocessing._check_signal(signal, fs)
        if x.ndim != 1:
            raise ValueError(f"detect_rpeaks takes one lead (n_samples,), got shape {x.shape}")
        return np.asarray(rpeaks.detect_qrs(x, fs))

    quality.__dict__["detect_rpeaks"] = detect
    return Impl(detect, quality.detect_rpeaks_pantompkins, quality.assess_strip)


def current_impl() -> Impl:
    """The working tree's functions."""
    from models.preprocessing import detect_rpeaks
    from models.quality import assess_strip, detect_rpeaks_pantompkins

    return Impl(detect_rpeaks, detect_rpeaks_pantompkins, assess_strip)


# --------------------------------------------------------------------------- strips
def _read(mitdb: Path, record: str) -> tuple[np.ndarray, float, np.ndarray]:
    import wfdb

    header = wfdb.rdheader(str(mitdb / record))
    channel = header.sig_name.index("MLII") if "MLII" in header.sig_name else 0
    rec = wfdb.rdrecord(str(mitdb / record), channels=[channel])
    ann = wfdb.rdann(str(mitdb / record), "atr")
    keep = np.isin(np.asarray(ann.symbol), sorted(WFDB_BEAT_SYMBOLS))
    return rec.p_signal[:, 0].astype(np.float32), float(header.fs), ann.sample[keep]


def _cut(sig: np.ndarray, ann: np.ndarray, fs: float, start_s: float, seconds: float) -> tuple:
    start = round(start_s * fs)
    stop = min(sig.shape[0], start + round(seconds * fs))
    start = max(0, stop - round(seconds * fs))
    peaks = ann[(ann >= start) & (ann < stop)] - start
    return sig[start:stop], peaks.astype(np.int64)


def _noise(nstdb: Path, kind: str) -> np.ndarray:
    import wfdb

    return wfdb.rdrecord(str(nstdb / kind), channels=[0]).p_signal[:, 0]


def build_cases(mitdb: Path, nstdb: Path) -> list[Case]:
    """The strips compared (see the module docstring)."""
    cases: list[Case] = []
    records = {r: _read(mitdb, r) for r in MITDB_RECORDS}
    for r, (sig, fs, ann) in records.items():
        for off in OFFSETS_S:
            x, p = _cut(sig, ann, fs, off, 10.0)
            cases.append(Case(f"{r}@{off}", x, fs, p))
    for r in ("100", "105", "108", "203", "207", "232"):
        sig, fs, ann = records[r]
        x, p = _cut(sig, ann, fs, 600.0, 300.0)
        cases.append(Case(f"{r}@600/300s", x, fs, p))
    noises = {k: _noise(nstdb, k) for k in ("em", "ma", "bw")}
    for r, kind, snr in (("105", "em", 0.0), ("119", "ma", -6.0), ("203", "bw", -6.0)):
        sig, fs, ann = records[r]
        x, p = _cut(sig, ann, fs, 600.0, 300.0)
        w = noises[kind][: x.shape[0]]
        gain = noise_gain(qrs_power(x, fs, p), noise_power(noises[kind], fs), snr)
        cases.append(Case(f"{r}@600/300s+{kind}@{snr:g}dB", x + gain * w, fs, p))
    rng = np.random.default_rng(12)
    for r in ("100", "103", "105", "119", "201", "208", "213", "228"):
        sig, fs, ann = records[r]
        for off in (300.0, 1000.0):
            x, p = _cut(sig, ann, fs, off, 10.0)
            clean = x.astype(np.float64)
            ps = qrs_power(clean, fs, p)
            for kind, w in noises.items():
                at = int(rng.integers(0, w.shape[0] - x.shape[0]))
                seg = w[at : at + x.shape[0]]
                for snr in (6.0, 0.0, -6.0, -12.0):
                    noisy = clean + noise_gain(ps, noise_power(w, fs), snr) * seg
                    cases.append(Case(f"{r}@{off}+{kind}@{snr:g}dB", noisy, fs, p))
    for r in ("100", "106", "119", "203", "209", "232"):
        sig, fs, ann = records[r]
        for off in (60.0, 1500.0):
            x, p = _cut(sig, ann, fs, off, 10.0)
            for rate in (100.0, 128.0, 250.0, 500.0, 1000.0):
                ratio = Fraction(rate) / Fraction(fs)
                y = sps.resample_poly(x.astype(np.float64), ratio.numerator, ratio.denominator)
                q = np.unique(np.clip(np.round(p * rate / fs).astype(np.int64), 0, y.shape[0] - 1))
                cases.append(Case(f"{r}@{off}@{rate:g}Hz", y, rate, q))
    sig, fs, ann = records["100"]
    for seconds in (0.03, 0.2, 0.6, 1.0, 3.0, 7.0, 14.0, 16.0, 25.0, 45.0):
        x, p = _cut(sig, ann, fs, 100.0, seconds)
        cases.append(Case(f"100@100/{seconds:g}s", x, fs, p))
    x, p = _cut(sig, ann, fs, 200.0, 10.0)
    t = np.arange(x.shape[0]) / fs
    cases += [
        Case("flat", np.zeros(3600), 360.0, np.zeros(0, dtype=np.int64)),
        Case("constant", np.full(3600, 1.5), 360.0, None),
        Case("half-flat", np.where(t < 5.0, x, 0.0), fs, p),
        Case("clipped", np.clip(x, -0.3, 0.4), fs, p),
        Case("hum50", x + 2.0 * np.sin(2 * np.pi * 50.0 * t), fs, p),
        Case("gauss", np.random.default_rng(0).normal(0, 0.3, 3600), 360.0, None),
        Case("gauss128", np.random.default_rng(1).normal(0, 0.3, 1280), 128.0, None),
        Case("float64", x.astype(np.float64), fs, p),
        Case("given-none", x, fs, np.zeros(0, dtype=np.int64)),
        Case("given-400bpm", x, fs, np.arange(20, x.shape[0], 54)),  # hr_bpm out of range
        Case("given-12bpm", x, fs, np.array([100, 1900])),
    ]
    return cases


# --------------------------------------------------------------------------- comparison
def run(impl: Impl, case: Case) -> dict[str, Any]:
    """Every answer of ``impl`` on one strip."""
    out: dict[str, Any] = {
        "detect": impl.detect_rpeaks(case.signal, case.fs),
        "second": impl.pantompkins(np.asarray(case.signal, dtype=np.float64), case.fs),
        "assess": impl.assess_strip(case.signal, case.fs),
    }
    if case.peaks is not None:
        out["given"] = impl.assess_strip(case.signal, case.fs, case.peaks)
    return out


def _differences(a: Any, b: Any, where: str) -> list[str]:
    diffs: list[str] = []
    if isinstance(a, np.ndarray):
        if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b):
            diffs.append(f"{where}: peaks differ")
        return diffs
    for name in ("verdict", "reasons", "beat_verdicts", "beat_reasons"):
        if getattr(a, name) != getattr(b, name):
            diffs.append(f"{where}.{name}: {getattr(a, name)!r} != {getattr(b, name)!r}")
    if not np.array_equal(a.r_peaks, b.r_peaks) or a.r_peaks.dtype != b.r_peaks.dtype:
        diffs.append(f"{where}.r_peaks differ")
    if list(a.sqi) != list(b.sqi):
        diffs.append(f"{where}.sqi keys {list(a.sqi)} != {list(b.sqi)}")
    for k in a.sqi:
        if k in b.sqi and not np.isclose(a.sqi[k], b.sqi[k], rtol=RTOL, atol=0.0):
            diffs.append(f"{where}.sqi[{k}]: {a.sqi[k]!r} != {b.sqi[k]!r}")
        elif k in b.sqi and a.sqi[k] != b.sqi[k]:
            rel = abs(a.sqi[k] - b.sqi[k]) / max(abs(a.sqi[k]), 1e-300)
            INEXACT[k] = max(INEXACT.get(k, 0.0), rel)
    if list(a.beat_sqi) != list(b.beat_sqi):
        diffs.append(f"{where}.beat_sqi keys differ")
    for k in a.beat_sqi:
        u, v = np.asarray(a.beat_sqi[k]), np.asarray(b.beat_sqi.get(k, []))
        if u.shape != v.shape or not np.allclose(u, v, rtol=RTOL, atol=0.0, equal_nan=True):
            diffs.append(f"{where}.beat_sqi[{k}] differ")
        elif not np.array_equal(u, v, equal_nan=True):
            finite = np.isfinite(u) & (u != 0)
            rel = float(np.max(np.abs(u - v)[finite] / np.abs(u[finite]), initial=0.0))
            INEXACT[k] = max(INEXACT.get(k, 0.0), rel)
    return diffs


def compare(ref: Impl, new: Impl, cases: list[Case]) -> tuple[int, list[str], Counter_t]:
    """Run both on every case; return the count of calls compared, the differences and the
    reference's strip verdicts and reasons (how often each was seen)."""
    diffs: list[str] = []
    calls = 0
    verdicts: Counter_t = {}
    for case in cases:
        a, b = run(ref, case), run(new, case)
        for key in a:
            calls += 1
            diffs += _differences(a[key], b[key], f"{case.name}:{key}")
        for key in ("assess", "given"):
            if key in a:
                for v in (f"{key}:{a[key].verdict}", *a[key].reasons):
                    verdicts[v] = verdicts.get(v, 0) + 1
    return calls, diffs, verdicts


# --------------------------------------------------------------------------- timing
def _pass(fn: Callable[[np.ndarray, float], Any], strips: list[tuple]) -> float:
    """Mean ms per strip of one pass over ``strips``."""
    t0 = time.perf_counter()
    for sig, fs, _ in strips:
        fn(sig, fs)
    return (time.perf_counter() - t0) / len(strips) * 1e3


def _strips(ref: Impl, mitdb: Path, records: tuple[str, ...], seconds: float) -> list[tuple]:
    out = []
    for r in records:
        sig, fs, ann = _read(mitdb, r)
        x, _ = _cut(sig, ann, fs, 300.0, seconds)
        out.append((x, fs, ref.detect_rpeaks(x, fs)))
    return out


def timing(ref: Impl, new: Impl, mitdb: Path, repeats: int) -> list[tuple[str, float, float]]:
    """ms per strip of each function, old and new: best of ``repeats`` passes over the 16 10-s
    strips (and of ``repeats // 10`` over four 300-s strips), old and new passes alternating so
    that both see the same load."""
    short = _strips(ref, mitdb, TIMING_RECORDS, 10.0)
    long = _strips(ref, mitdb, ("100", "105", "119", "208"), 300.0)
    peaks = {id(s[0]): s[2] for s in short + long}
    named: list[tuple[str, Callable[[Impl], Callable[[np.ndarray, float], Any]]]] = [
        ("detect_rpeaks", lambda m: m.detect_rpeaks),
        ("detect_rpeaks_pantompkins", lambda m: lambda s, fs: m.pantompkins(s, fs)),
        ("assess_strip (r_peaks None)", lambda m: m.assess_strip),
        ("assess_strip (given peaks)", lambda m: lambda s, fs: m.assess_strip(s, fs, peaks[id(s)])),
    ]
    rows = []
    for strips, label, n in ((short, "10 s", repeats), (long, "300 s", max(1, repeats // 10))):
        for name, pick in named:
            old_fn, new_fn = pick(ref), pick(new)
            _pass(old_fn, strips[:2])  # warm the caches
            _pass(new_fn, strips[:2])
            old, cur = np.inf, np.inf
            for _ in range(n):
                old = min(old, _pass(old_fn, strips))
                cur = min(cur, _pass(new_fn, strips))
            rows.append((f"{name}, {label}", float(old), float(cur)))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Compare and time; exit status 1 when any answer differs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default=REFERENCE_REV, help="git revision of the reference")
    parser.add_argument("--mitdb", type=Path, default=DEFAULT_MITDB)
    parser.add_argument("--nstdb", type=Path, default=DEFAULT_NSTDB)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-compare", action="store_true", help="only time")
    parser.add_argument("--no-timing", action="store_true", help="only compare")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ref, new = reference_impl(args.rev), current_impl()
    status = 0
    if not args.no_compare:
        t0 = time.perf_counter()
        cases = build_cases(args.mitdb, args.nstdb)
        calls, diffs, verdicts = compare(ref, new, cases)
        log.info(
            "%d strips, %d calls compared in %.0f s; reference verdicts and strip reasons %s",
            len(cases), calls, time.perf_counter() - t0, dict(sorted(verdicts.items())),
        )  # fmt: skip
        for d in diffs[:50]:
            log.info("DIFF %s", d)
        log.info("%d differences", len(diffs))
        log.info(
            "numbers not bit-identical (largest relative difference): %s",
            {k: f"{v:.1e}" for k, v in sorted(INEXACT.items())} or "none",
        )
        status = 1 if diffs else 0
    if not args.no_timing:
        head = ("ms per MLII strip (360 Hz)", args.rev, "current", "speed-up")
        log.info("%-38s %10s %10s %8s", *head)
        for name, old, cur in timing(ref, new, args.mitdb, args.repeats):
            log.info("%-38s %10.3f %10.3f %7.2fx", name, old, cur, old / cur)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
