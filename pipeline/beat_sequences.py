"""Beat-sequence datasets from MIT-BIH (mitdb) and the MIT-BIH Supraventricular Arrhythmia
Database (svdb): every beat with its patient-relative context, tagged with database, record and
patient, in strips cut the way the service receives them.

Each record goes through the one preprocessing chain at its own rate (mitdb MLII at 360 Hz; svdb
``ECG1`` at 128 Hz, lead placement not stated, so treated as unknown), is cut into strips, and
:func:`models.beat_context.context_from_windows` sets every beat against its own strip. Strips are
what the service sees; their length decides how much history the context has, so training uses
``"mixed"`` strips (lengths drawn log-uniformly from 10 s to 5 min, seeded by the record name) and
evaluation can use fixed lengths (10 s as a user posts, or 300 s).

Labels: N, S, V with F merged into V (:data:`LABEL_CLASSES`); Q and unclassified beats get -1 (no
loss, no score) but stay in the sequence and in the RR context. ``aami`` keeps the original AAMI
class (0-4 in :data:`models.labels.AAMI_CLASSES` order, -1 none) so F can be reported apart.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.beat_context import BeatContextConfig, context_from_windows
from models.labels import (
    AAMI_CLASSES,
    DS1_RECORDS,
    DS2_RECORDS,
    EXCLUDED_FROM_TRAINING,
    MITDB_SYMBOL_TO_AAMI,
    PACED_RECORDS,
    WFDB_BEAT_SYMBOLS,
)
from models.preprocessing import PreprocessConfig, beat_windows, preprocess_signal
from pipeline.records import MITDB_LEAD, RecordError, read_annotations, read_record

__all__ = [
    "LABEL_CLASSES",
    "N_FOLDS",
    "SVDB_LEAD",
    "BeatSequences",
    "build_sequences",
    "concat_sequences",
    "ds1_records",
    "ds2_records",
    "make_folds",
    "record_beats",
    "svdb_records",
]

logger = logging.getLogger(__name__)

#: Training labels: F merged into V (flagged in the model config), Q not learned.
LABEL_CLASSES: tuple[str, ...] = ("N", "S", "V")
_AAMI_TO_LABEL = {"N": 0, "S": 1, "V": 2, "F": 2}

#: svdb's first lead (placement not stated in the headers).
SVDB_LEAD = "ECG1"

#: svdb's annotation symbols map like MIT-BIH's (N, S, V, F, Q).
_SYMBOL_TO_AAMI = MITDB_SYMBOL_TO_AAMI

Segmentation = str  # "mixed" or a strip length in seconds, e.g. "10", "300"

#: Patient-grouped folds over DS1 + svdb (bench/BEAT_RESEARCH.md); train-beats holds one out.
N_FOLDS = 5


@dataclass(frozen=True)
class BeatSequences:
    """Beats of many records in strip order, with their context.

    Attributes
    ----------
    waves : np.ndarray
        float16 ``(n, 2, w)``: beat / template peak-to-peak, (beat - template) / same.
    features : np.ndarray
        float32 ``(n, len(CONTEXT_FEATURE_NAMES))``.
    label : np.ndarray
        int64 ``(n,)`` index into :data:`LABEL_CLASSES`, -1 for no label (Q, unclassified).
    aami : np.ndarray
        int64 ``(n,)`` index into ``AAMI_CLASSES``, -1 for non-AAMI beats.
    record : np.ndarray
        str ``(n,)`` ``"<db>/<record>"`` (one patient per record: svdb records are separate
        patients; mitdb 201 is excluded from training as the same subject as DS2's 202).
    strip : np.ndarray
        int64 ``(n,)`` strip id, unique across the whole set; beats of a strip are consecutive.
    sample : np.ndarray
        int64 ``(n,)`` R-peak sample index in the record, at the record's rate.
    """

    waves: np.ndarray
    features: np.ndarray
    label: np.ndarray
    aami: np.ndarray
    record: np.ndarray
    strip: np.ndarray
    sample: np.ndarray

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def subset(self, mask: np.ndarray) -> BeatSequences:
        """Beats where ``mask`` is True (select whole records or strips to keep order intact)."""
        return BeatSequences(*(getattr(self, f)[mask] for f in self.__dataclass_fields__))

    def save(self, path: Path) -> None:
        """Write to one ``.npz``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **{f: getattr(self, f) for f in self.__dataclass_fields__})

    @classmethod
    def load(cls, path: Path) -> BeatSequences:
        """Read what :meth:`save` wrote."""
        with np.load(path) as z:
            return cls(**{f: z[f] for f in cls.__dataclass_fields__})


def concat_sequences(parts: list[BeatSequences]) -> BeatSequences:
    """Concatenate sets, renumbering strips so that they stay unique."""
    out: dict[str, list[np.ndarray]] = {f: [] for f in BeatSequences.__dataclass_fields__}
    offset = 0
    for p in parts:
        for f in out:
            v = getattr(p, f)
            out[f].append(v + offset if f == "strip" else v)
        if len(p):
            offset += int(p.strip.max()) + 1
    return BeatSequences(**{f: np.concatenate(v) for f, v in out.items()})


def ds1_records() -> list[str]:
    """mitdb DS1 less the records kept out of training (201: same subject as DS2's 202)."""
    return [r for r in DS1_RECORDS if r not in EXCLUDED_FROM_TRAINING and r not in PACED_RECORDS]


def ds2_records() -> list[str]:
    """mitdb DS2, the test set (read once, at the end)."""
    return list(DS2_RECORDS)


def svdb_records(svdb_dir: Path) -> list[str]:
    """svdb records present on disk (header, signal and annotations), sorted."""
    names = sorted(p.stem for p in svdb_dir.glob("*.hea"))
    return [
        n for n in names if (svdb_dir / f"{n}.dat").is_file() and (svdb_dir / f"{n}.atr").is_file()
    ]


@dataclass(frozen=True)
class _RecordBeats:
    lead: np.ndarray  # (n_samples,) mV at fs
    fs: float
    sample: np.ndarray  # (n_beats,) every QRS annotation
    aami: np.ndarray  # (n_beats,) AAMI index or -1


def record_beats(db_dir: Path, db: str, record: str) -> _RecordBeats:
    """One record's lead (MLII for mitdb, ECG1 for svdb) and its annotated QRS complexes.

    Raises
    ------
    RecordError
        If the record is unreadable or lacks the lead.
    """
    lead_name = MITDB_LEAD if db == "mitdb" else SVDB_LEAD
    rec = read_record(db_dir / record, leads=[lead_name])
    ann = read_annotations(db_dir / record).select(WFDB_BEAT_SYMBOLS)
    aami = np.array(
        [
            AAMI_CLASSES.index(_SYMBOL_TO_AAMI[s]) if s in _SYMBOL_TO_AAMI else -1
            for s in ann.symbol
        ],
        dtype=np.int64,
    )
    keep = (ann.sample >= 0) & (ann.sample < rec.n_samples)
    if not np.all(keep):
        logger.warning("record %s: %d annotations outside the signal", record, int((~keep).sum()))
    return _RecordBeats(rec.lead(lead_name), rec.fs, ann.sample[keep], aami[keep])


def _strip_bounds(n_samples: int, fs: float, segmentation: Segmentation, seed: str) -> np.ndarray:
    """Strip start samples (plus the end) covering the record."""
    if segmentation == "mixed":
        h = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "little")
        rng = np.random.default_rng(h)
        bounds = [0]
        while bounds[-1] < n_samples:
            length_s = float(np.exp(rng.uniform(np.log(10.0), np.log(300.0))))
            bounds.append(bounds[-1] + int(length_s * fs))
    else:
        step = int(float(segmentation) * fs)
        if step <= 0:
            raise ValueError(f"strip length must be > 0 s, got {segmentation!r}")
        bounds = [*range(0, n_samples, step), n_samples]
    b = np.asarray(bounds, dtype=np.int64)
    b[-1] = n_samples
    return b


def build_sequences(
    db_dir: Path,
    db: str,
    records: list[str],
    segmentation: Segmentation = "mixed",
    pre_cfg: PreprocessConfig | None = None,
    ctx_cfg: BeatContextConfig | None = None,
) -> BeatSequences:
    """Beat sequences of ``records`` of one database, strips as ``segmentation`` says.

    Parameters
    ----------
    db_dir : Path
        The database's directory (``<root>/mitdb/1.0.0``).
    db : {"mitdb", "svdb"}
    records : list of str
    segmentation : str
        ``"mixed"`` (log-uniform 10 s - 5 min strips, seeded by record) or a fixed strip length in
        seconds (``"10"``).
    pre_cfg, ctx_cfg
        Preprocessing and context configuration (defaults when None).

    Returns
    -------
    BeatSequences
    """
    if db not in ("mitdb", "svdb"):
        raise ValueError(f"unknown database {db!r}; expected 'mitdb' or 'svdb'")
    pre_cfg = pre_cfg or PreprocessConfig()
    ctx_cfg = ctx_cfg or BeatContextConfig()
    r_index = round(pre_cfg.beat_before_s * pre_cfg.fs_target)
    parts: list[BeatSequences] = []
    for record in records:
        try:
            rb = record_beats(db_dir, db, record)
        except RecordError as err:
            logger.warning("skipping %s/%s: %s", db, record, err)
            continue
        x = preprocess_signal(rb.lead, rb.fs, pre_cfg)
        peaks_t = np.round(rb.sample * (pre_cfg.fs_target / rb.fs)).astype(np.int64)
        waves_all = beat_windows(x, peaks_t, pre_cfg)
        bounds = _strip_bounds(rb.lead.shape[0], rb.fs, segmentation, f"{db}/{record}")
        strip_of = np.searchsorted(bounds, rb.sample, side="right") - 1
        w_list, f_list, s_list = [], [], []
        for s in np.unique(strip_of):
            m = strip_of == s
            ctx = context_from_windows(
                waves_all[m], rb.sample[m], rb.fs, pre_cfg.fs_target, r_index, ctx_cfg
            )
            w_list.append(ctx.waves.astype(np.float16))
            f_list.append(ctx.features)
            s_list.append(np.full(int(m.sum()), s, dtype=np.int64))
        aami = rb.aami
        label = np.array(
            [_AAMI_TO_LABEL.get(AAMI_CLASSES[a], -1) if a >= 0 else -1 for a in aami],
            dtype=np.int64,
        )
        parts.append(
            BeatSequences(
                waves=np.concatenate(w_list),
                features=np.concatenate(f_list),
                label=label,
                aami=aami,
                record=np.full(label.shape[0], f"{db}/{record}"),
                strip=np.concatenate(s_list),
                sample=rb.sample,
            )
        )
        logger.info("%s/%s: %d beats, %d strips", db, record, label.shape[0], len(w_list))
    return concat_sequences(parts)


def make_folds(data: BeatSequences, n_folds: int = N_FOLDS) -> dict[str, int]:
    """Record -> fold, grouped by record (one record = one patient), stratified by S and V content.

    Records are put in three strata (at least 20 S beats; else at least 20 V beats; the rest),
    each sorted by its S (V, size) count and dealt to the folds in snake order (0..4, 4..0, ...),
    so every fold gets S patients of every size and about the same number of records. Over DS1 +
    the 52 svdb records of the mirror each of the 5 folds holds 14-15 records and 9-10 S patients.

    Parameters
    ----------
    data : BeatSequences
        Beats of every record to deal (``record`` and ``label`` are read).
    n_folds : int

    Returns
    -------
    dict of str to int
        ``"<db>/<record>"`` -> fold in ``range(n_folds)``.
    """
    rows = []
    for r in np.unique(data.record):
        lab = data.label[data.record == r]
        rows.append((str(r), int((lab == 1).sum()), int((lab == 2).sum()), int(lab.size)))
    strata = [
        sorted((x for x in rows if x[1] >= 20), key=lambda x: (-x[1], x[0])),
        sorted((x for x in rows if x[1] < 20 and x[2] >= 20), key=lambda x: (-x[2], x[0])),
        sorted((x for x in rows if x[1] < 20 and x[2] < 20), key=lambda x: (-x[3], x[0])),
    ]
    folds: dict[str, int] = {}
    i = 0
    for stratum in strata:
        for x in stratum:
            cycle, pos = divmod(i, n_folds)
            folds[x[0]] = pos if cycle % 2 == 0 else n_folds - 1 - pos
            i += 1
    return folds
