"""Beat context speed and output identity against an earlier revision of the code.

:func:`models.beat_context.beat_context` is computed for every request the service answers. This
benchmark checks that a faster version returns the same arrays as the version at ``--ref`` (a git
revision; its ``models/beat_context.py`` and ``models/preprocessing.py`` are loaded from
``git show`` into temporary modules) on many real strips, then times both side by side.

Strips compared (real PhysioNet records, annotated beats as R peaks):

* every MIT-BIH record (48; MLII, or lead 0 in 102 and 104) at 360 Hz: 10-s strips at five
  offsets, the same strips with only their first 0, 1, 2 and 3 beats, with extra peaks on the first
  and last sample, and short strips (2, 0.5 and 0.1 s);
* 300-s strips of eight records and one whole record (30 min);
* the 10-s strips resampled to 100, 128, 250, 257, 500 and 1000 Hz (peaks mapped to the new rate);
* svdb strips at 128 Hz (10 s at three offsets, 300 s for some records);
* PTB-XL lead II at 100 Hz (peaks from a plain peak finder);
* non-default preprocessing / context configurations (notch, other rates and beat normalisations,
  short histories, no shift) on a subset, and bad inputs, whose error message must be the same;
* and :func:`models.preprocessing.preprocess_signal` alone on whole 30-min MIT-BIH records (as the
  dataset builder calls it) and on 12-lead PTB-XL records with the PTB-XL task's configuration.

Every array of the returned :class:`~models.beat_context.BeatContext` (``waves``, ``features``,
``templates``) must be bit-identical (same dtype, shape and values); the largest absolute and
relative differences are reported either way.

Timings (median over repeats, per strip, the two versions interleaved): the served case (10-s MLII
strips at 360 Hz of the 16 records ``bench.serving`` sends), 300-s strips and svdb 10-s strips.

Usage::

    python -m bench.context_speed [--ref a7458ca] [--raw-root ../shared/physionet] [--quick]

Measured (2026-12-01, 2 shared cores, ``--repeats 60``) against a7458ca: 1332 strips (20,328
beats, 8 refused inputs) and 24 ``preprocess_signal`` cases, 0 differences (max |diff| 0);
10-s MLII strips at 360 Hz 1.042 -> 0.461 ms (2.26x), 300-s strips 19.9 -> 9.0 ms (2.20x), svdb
10-s strips at 128 Hz 1.012 -> 0.427 ms (2.37x).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import default_raw_root
from models.beat_context import BeatContext, BeatContextConfig, beat_context
from models.labels import WFDB_BEAT_SYMBOLS
from models.preprocessing import PreprocessConfig

logger = logging.getLogger("bench.context_speed")

REPO = Path(__file__).resolve().parents[1]
#: The revision the speed-up started from.
DEFAULT_REF = "a7458ca"
#: The records ``bench.serving`` sends as single strips (MLII, 300-310 s).
SERVED_RECORDS = (
    "100", "101", "103", "105", "106", "108", "109", "111",
    "112", "113", "114", "115", "116", "117", "118", "119",
)  # fmt: skip
STRIP_OFFSETS_S = (0.0, 7.3, 300.0, 911.1, -10.0)  # negative: from the record's end
LONG_RECORDS = ("100", "106", "119", "201", "203", "208", "217", "233")
RATES_HZ = (100.0, 128.0, 250.0, 257.0, 500.0, 1000.0)
PTBXL_IDS = (1, 2, 9, 17, 21, 33, 77, 101, 250, 1000)

ContextFn = Callable[..., BeatContext]


@dataclass
class Case:
    """One call of ``beat_context``: the strip, its peaks and the configurations."""

    name: str
    signal: np.ndarray
    fs: float
    r_peaks: np.ndarray
    pre: PreprocessConfig = field(default_factory=PreprocessConfig)
    ctx: BeatContextConfig = field(default_factory=BeatContextConfig)


# --------------------------------------------------------------------------- reference code
def _module_from_source(name: str, source: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__file__ = f"<{name}>"
    sys.modules[name] = mod  # dataclasses look their module up while the class is built
    exec(compile(source, mod.__file__, "exec"), mod.__dict__)
    return mod


def load_reference(rev: str) -> types.ModuleType:
    """``models.beat_context`` as it was at git revision ``rev``, with that revision's
    ``models.preprocessing`` (both loaded as private modules; the current code is untouched)."""

    def show(path: str) -> str:
        return subprocess.run(
            ["git", "show", f"{rev}:{path}"], cwd=REPO, check=True, capture_output=True, text=True
        ).stdout

    tag = "".join(c for c in rev if c.isalnum())
    pre_name = f"_ref_preprocessing_{tag}"
    _module_from_source(pre_name, show("models/preprocessing.py"))
    ctx_src = show("models/beat_context.py").replace(
        "from models.preprocessing import", f"from {pre_name} import"
    )
    return _module_from_source(f"_ref_beat_context_{tag}", ctx_src)


# --------------------------------------------------------------------------- strips
def _read(path: Path, lead_names: tuple[str, ...]) -> tuple[np.ndarray, float, np.ndarray]:
    """A whole record's first matching lead (else lead 0), float32 mV, and its beat samples."""
    import wfdb

    rec = wfdb.rdrecord(str(path))
    names = list(rec.sig_name)
    lead = next((names.index(n) for n in lead_names if n in names), 0)
    signal = rec.p_signal[:, lead].astype(np.float32)
    ann = wfdb.rdann(str(path), "atr")
    keep = [i for i, s in enumerate(ann.symbol) if s in WFDB_BEAT_SYMBOLS]
    beats = np.unique(np.asarray(ann.sample, dtype=np.int64)[keep])
    beats = beats[(beats >= 0) & (beats < signal.shape[0])]
    return signal, float(rec.fs), beats


def _cut(
    signal: np.ndarray, fs: float, beats: np.ndarray, start_s: float, seconds: float
) -> tuple[np.ndarray, np.ndarray]:
    n = signal.shape[0]
    start = round(start_s * fs) if start_s >= 0 else n + round(start_s * fs)
    start = min(max(start, 0), max(n - 1, 0))
    stop = min(n, start + round(seconds * fs))
    peaks = beats[(beats >= start) & (beats < stop)] - start
    return signal[start:stop], peaks


def _with_edges(peaks: np.ndarray, n: int) -> np.ndarray:
    """Peaks plus the strip's first and last samples (kept strictly increasing)."""
    out = list(peaks.tolist())
    if not out or out[0] > 0:
        out.insert(0, 0)
    if out[-1] < n - 1:
        out.append(n - 1)
    return np.asarray(out, dtype=np.int64)


def _resampled(signal: np.ndarray, peaks: np.ndarray, fs: float, rate: float) -> Case:
    from fractions import Fraction

    from scipy import signal as sps

    ratio = Fraction(rate).limit_denominator(1000) / Fraction(fs).limit_denominator(1000)
    y = sps.resample_poly(signal.astype(np.float64), ratio.numerator, ratio.denominator)
    y = y.astype(np.float32)
    p = np.unique(np.clip(np.round(peaks * rate / fs).astype(np.int64), 0, y.shape[0] - 1))
    return Case("", y, rate, p)


def mitdb_cases(mitdb: Path, quick: bool) -> Iterator[Case]:
    """Strips of every MIT-BIH record (see the module notes)."""
    records = (mitdb / "RECORDS").read_text().split()
    if quick:
        records = records[::6]
    for record in records:
        signal, fs, beats = _read(mitdb / record, ("MLII",))
        for off in STRIP_OFFSETS_S:
            x, p = _cut(signal, fs, beats, off, 10.0)
            tag = f"mitdb/{record} 10s@{off:g}"
            yield Case(tag, x, fs, p)
            if off == STRIP_OFFSETS_S[0]:
                for k in (0, 1, 2, 3):
                    yield Case(f"{tag} first {k} beats", x, fs, p[:k])
                yield Case(f"{tag} edge peaks", x, fs, _with_edges(p, x.shape[0]))
                yield Case(f"{tag} float64", x.astype(np.float64), fs, p)
                for seconds in (2.0, 0.5, 0.1):
                    xs, ps = _cut(signal, fs, beats, 0.3, seconds)
                    yield Case(f"mitdb/{record} {seconds:g}s", xs, fs, ps)
                    yield Case(f"mitdb/{record} {seconds:g}s edges", xs, fs, _with_edges(ps, 1))
            if off == 300.0:
                for rate in RATES_HZ:
                    c = _resampled(x, p, fs, rate)
                    c.name = f"{tag} at {rate:g} Hz"
                    yield c
        if record in LONG_RECORDS:
            x, p = _cut(signal, fs, beats, 600.0, 300.0)
            yield Case(f"mitdb/{record} 300s@600", x, fs, p)
            if record == LONG_RECORDS[0]:
                yield Case(f"mitdb/{record} whole", signal, fs, beats)


def svdb_cases(svdb: Path, quick: bool) -> Iterator[Case]:
    """svdb strips at 128 Hz (the records present in the mirror)."""
    records = sorted(p.stem for p in svdb.glob("*.dat") if (svdb / f"{p.stem}.atr").exists())
    if quick:
        records = records[::8]
    for i, record in enumerate(records):
        signal, fs, beats = _read(svdb / record, ("ECG1",))
        for off in (0.0, 600.0, -10.0):
            x, p = _cut(signal, fs, beats, off, 10.0)
            yield Case(f"svdb/{record} 10s@{off:g}", x, fs, p)
        if i % 6 == 0:
            x, p = _cut(signal, fs, beats, 60.0, 300.0)
            yield Case(f"svdb/{record} 300s@60", x, fs, p)


def ptbxl_cases(ptbxl: Path) -> Iterator[Case]:
    """PTB-XL lead II at 100 Hz with peaks from a plain peak finder (fixed for both versions)."""
    import wfdb
    from scipy import signal as sps

    for ecg_id in PTBXL_IDS:
        path = ptbxl / "records100" / f"{(ecg_id // 1000) * 1000:05d}" / f"{ecg_id:05d}_lr"
        if not path.with_suffix(".hea").exists():
            continue
        rec = wfdb.rdrecord(str(path))
        x = rec.p_signal[:, list(rec.sig_name).index("II")].astype(np.float32)
        fs = float(rec.fs)
        p, _ = sps.find_peaks(np.abs(x - np.median(x)), distance=int(0.3 * fs))
        big = np.abs(x[p] - np.median(x)) > 0.5 * np.abs(x - np.median(x)).max()
        yield Case(f"ptb-xl/{ecg_id} II", x, fs, p[big].astype(np.int64))


def config_cases(base: list[Case]) -> Iterator[Case]:
    """Non-default configurations on a few strips."""
    pres = {
        "notch60": PreprocessConfig(notch_hz=60.0),
        "fs250": PreprocessConfig(fs_target=250.0),
        "fs360": PreprocessConfig(fs_target=360.0),
        "zscore beats": PreprocessConfig(beat_normalise="zscore"),
        "raw beats, zscore lead": PreprocessConfig(beat_normalise="none", normalise="zscore"),
        "no baseline": PreprocessConfig(baseline="none", filter_order=3),
    }
    ctxs = {
        "short histories": BeatContextConfig(rr_short_beats=2, rr_long_beats=5, template_beats=3),
        "no shift": BeatContextConfig(max_shift_s=0.0),
        "wide shift": BeatContextConfig(max_shift_s=0.2, qrs_before_s=0.0, qrs_after_s=0.5),
    }
    for case in base:
        for name, pre in pres.items():
            yield Case(f"{case.name} [{name}]", case.signal, case.fs, case.r_peaks, pre=pre)
        for name, ctx in ctxs.items():
            yield Case(f"{case.name} [{name}]", case.signal, case.fs, case.r_peaks, ctx=ctx)


def bad_cases(good: Case) -> Iterator[Case]:
    """Inputs both versions must refuse with the same message."""
    x, p = good.signal, good.r_peaks
    yield Case("bad: unsorted peaks", x, good.fs, p[::-1].copy())
    yield Case("bad: peak past the end", x, good.fs, np.append(p, x.shape[0]))
    yield Case("bad: negative peak", x, good.fs, np.insert(p, 0, -1))
    yield Case("bad: 2-D peaks", x, good.fs, p[:, None])
    yield Case("bad: two leads", np.stack([x, x], axis=1), good.fs, p)
    nan = x.copy()
    nan[5] = np.nan
    yield Case("bad: NaN", nan, good.fs, p)
    yield Case("bad: empty", x[:0], good.fs, p[:0])
    yield Case("bad: fs 0", x, 0.0, p)


def all_cases(raw_root: Path, quick: bool) -> list[Case]:
    """Every strip compared (the served strips first)."""
    cases = list(mitdb_cases(raw_root / "mitdb" / "1.0.0", quick))
    svdb = raw_root / "svdb" / "1.0.0"
    if svdb.is_dir():
        cases += list(svdb_cases(svdb, quick))
    ptbxl = raw_root / "ptb-xl" / "1.0.1"
    if ptbxl.is_dir():
        cases += list(ptbxl_cases(ptbxl))
    some = [c for c in cases if c.name.endswith("10s@300")][:3]
    some += [c for c in cases if "svdb" in c.name][:1]
    cases += list(config_cases(some))
    cases += list(bad_cases(some[0]))
    return cases


def preprocess_cases(raw_root: Path, quick: bool) -> list[Case]:
    """Whole records (one lead) and 12-lead PTB-XL records for ``preprocess_signal`` alone."""
    import wfdb

    from models.tasks import DATASETS

    mitdb = raw_root / "mitdb" / "1.0.0"
    cases = []
    for record in LONG_RECORDS[: 2 if quick else 4]:
        signal, fs, _ = _read(mitdb / record, ("MLII",))
        cases.append(Case(f"mitdb/{record} whole", signal, fs, np.zeros(0, dtype=np.int64)))
    ptbxl = raw_root / "ptb-xl" / "1.0.1"
    pre = DATASETS["ptb-xl"].preprocess
    for ecg_id in PTBXL_IDS[: 3 if quick else None]:
        path = ptbxl / "records100" / f"{(ecg_id // 1000) * 1000:05d}" / f"{ecg_id:05d}_lr"
        if path.with_suffix(".hea").exists():
            rec = wfdb.rdrecord(str(path))
            x = rec.p_signal.astype(np.float32)
            for name, cfg in (("ptb-xl task", pre), ("default", PreprocessConfig())):
                c = Case(f"ptb-xl/{ecg_id} 12 leads [{name}]", x, float(rec.fs), x[:0, 0], pre=cfg)
                cases.append(c)
    return cases


def compare_preprocess(ref: Callable[..., np.ndarray], cases: list[Case]) -> list[str]:
    """Cases where ``preprocess_signal`` differs from the reference (dtype, shape or any bit)."""
    from models.preprocessing import preprocess_signal

    bad = []
    for c in cases:
        a, b = ref(c.signal, c.fs, c.pre), preprocess_signal(c.signal, c.fs, c.pre)
        if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
            bad.append(f"{c.name}: preprocess_signal differs")
    return bad


# --------------------------------------------------------------------------- comparison
def _run(fn: ContextFn, case: Case) -> BeatContext | str:
    try:
        return fn(case.signal, case.fs, case.r_peaks, case.pre, case.ctx)
    except ValueError as err:
        return f"ValueError: {err}"


def compare(ref: ContextFn, new: ContextFn, cases: list[Case]) -> dict[str, Any]:
    """Run both versions on every case; count mismatches and the largest differences."""
    mismatches: list[str] = []
    max_abs = max_rel = 0.0
    n_beats = n_errors = 0
    for case in cases:
        a, b = _run(ref, case), _run(new, case)
        if isinstance(a, str) or isinstance(b, str):
            n_errors += 1
            if a != b:
                mismatches.append(f"{case.name}: {a!r} vs {b!r}")
            continue
        n_beats += a.n_beats
        if a.feature_names != b.feature_names:
            mismatches.append(f"{case.name}: feature names differ")
        for name in ("waves", "features", "templates"):
            u, v = getattr(a, name), getattr(b, name)
            if u.dtype != v.dtype or u.shape != v.shape:
                mismatches.append(f"{case.name}: {name} {u.dtype}{u.shape} vs {v.dtype}{v.shape}")
                continue
            if u.size:
                d = np.abs(u.astype(np.float64) - v.astype(np.float64))
                max_abs = max(max_abs, float(d.max()))
                rel = d / np.maximum(np.abs(u.astype(np.float64)), 1e-12)
                max_rel = max(max_rel, float(rel.max()))
            if not np.array_equal(u, v):
                mismatches.append(f"{case.name}: {name} differ")
    return {
        "cases": len(cases),
        "refused_inputs": n_errors,
        "beats": n_beats,
        "mismatches": mismatches,
        "max_abs_diff": max_abs,
        "max_rel_diff": max_rel,
    }


# --------------------------------------------------------------------------- timing
def time_pair(ref: ContextFn, new: ContextFn, cases: list[Case], repeats: int) -> dict[str, float]:
    """Median ms per strip of each version, interleaved so load changes hit both alike."""
    per: dict[str, list[float]] = {"ref": [], "new": []}
    for fn in (ref, new):  # warm caches (filter designs) once
        for c in cases:
            fn(c.signal, c.fs, c.r_peaks, c.pre, c.ctx)
    for _ in range(repeats):
        for key, fn in (("ref", ref), ("new", new)):
            t0 = time.perf_counter()
            for c in cases:
                fn(c.signal, c.fs, c.r_peaks, c.pre, c.ctx)
            per[key].append((time.perf_counter() - t0) * 1e3 / len(cases))
    ref_ms, new_ms = float(np.median(per["ref"])), float(np.median(per["new"]))
    return {"ref_ms": ref_ms, "new_ms": new_ms, "speedup": ref_ms / new_ms}


def timing_sets(raw_root: Path) -> dict[str, list[Case]]:
    """The strips timed: the served case, long strips and svdb."""
    mitdb = raw_root / "mitdb" / "1.0.0"
    served, long = [], []
    for record in SERVED_RECORDS:
        signal, fs, beats = _read(mitdb / record, ("MLII",))
        x, p = _cut(signal, fs, beats, 300.0, 10.0)
        served.append(Case(f"mitdb/{record}", x, fs, p))
        if record in LONG_RECORDS:
            x, p = _cut(signal, fs, beats, 600.0, 300.0)
            long.append(Case(f"mitdb/{record} 300 s", x, fs, p))
    sets = {"mitdb 10 s @360 Hz (served)": served, "mitdb 300 s @360 Hz": long}
    svdb = raw_root / "svdb" / "1.0.0"
    if svdb.is_dir():
        recs = sorted(p.stem for p in svdb.glob("*.dat"))[:16]
        sets["svdb 10 s @128 Hz"] = []
        for record in recs:
            signal, fs, beats = _read(svdb / record, ("ECG1",))
            x, p = _cut(signal, fs, beats, 300.0, 10.0)
            sets["svdb 10 s @128 Hz"].append(Case(f"svdb/{record}", x, fs, p))
    return sets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", default=DEFAULT_REF, help="git revision to compare against")
    parser.add_argument("--raw-root", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="every 6th record, fewer repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    raw_root = args.raw_root or default_raw_root()
    ref_mod = load_reference(args.ref)
    ref_fn: ContextFn = ref_mod.beat_context

    t0 = time.perf_counter()
    cases = all_cases(raw_root, args.quick)
    logger.info("%d cases built in %.1f s", len(cases), time.perf_counter() - t0)
    result = compare(ref_fn, beat_context, cases)
    pre_cases = preprocess_cases(raw_root, args.quick)
    ref_pre = sys.modules[f"_ref_preprocessing_{''.join(c for c in args.ref if c.isalnum())}"]
    result["mismatches"] += compare_preprocess(ref_pre.preprocess_signal, pre_cases)
    result["preprocess_cases"] = len(pre_cases)
    logger.info(
        "preprocess_signal alone: %d whole records / 12-lead records compared",
        len(pre_cases),
    )
    logger.info(
        "compared %d cases (%d beats, %d refused inputs) against %s: %d mismatches; "
        "max |diff| %.3g, max relative diff %.3g",
        result["cases"], result["beats"], result["refused_inputs"], args.ref,
        len(result["mismatches"]), result["max_abs_diff"], result["max_rel_diff"],
    )  # fmt: skip
    for line in result["mismatches"][:20]:
        logger.info("  MISMATCH %s", line)

    repeats = args.repeats or (5 if args.quick else 30)
    timings = {}
    for name, tcases in timing_sets(raw_root).items():
        t = time_pair(ref_fn, beat_context, tcases, repeats if "300" not in name else 3)
        timings[name] = t
        logger.info(
            "%-28s %2d strips  ref %7.3f ms  new %7.3f ms  %.2fx",
            name, len(tcases), t["ref_ms"], t["new_ms"], t["speedup"],
        )  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"ref": args.ref, **result, "timings": timings}, indent=2))
    return 1 if result["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
