"""Real tiny models in a real MLflow registry, for the serving benchmark and the service tests.

:func:`build_registry` trains a small recurrent beat classifier on a few hundred real MIT-BIH beats
(records 100, 119 and 209; MLII; annotated R peaks) and a small heart-disease model on ~24 real
PTB-XL records, logs both with :func:`models.predictor.log_ecg_model` into a sqlite MLflow store in
a temporary directory, registers them and points the ``champion`` alias at them. It takes seconds
on a laptop CPU. Without the PhysioNet mirror it falls back to synthetic ECG-like signals so the
service can still be exercised (tests that need real records skip on their own).

The models are tiny and barely trained: they are real models with real weights, not good ones.
"""

from __future__ import annotations

import ast
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.beat_classifier import BeatClassifier
from models.beat_context import RELATIVE_FEATURE_NAMES, BeatContextConfig, beat_context
from models.beat_sequence import BeatSequenceConfig, BeatSequenceModel, model_inputs
from models.labels import (
    AAMI_CLASSES,
    PTBXL_SUPERCLASSES,
    WFDB_BEAT_SYMBOLS,
    aami_class,
)
from models.predictor import ModelCard, log_ecg_model
from models.preprocessing import PreprocessConfig, beat_inputs, preprocess_signal
from models.recurrent import RecurrentClassifier, RecurrentClassifierConfig
from models.tasks import TASK_ARRHYTHMIA, TASK_HEART_DISEASE

__all__ = [
    "ARRHYTHMIA_RECORDS",
    "PTBXL_LEADS",
    "TinyRegistry",
    "build_registry",
    "mitdb_strip",
    "ptbxl_record",
    "register_beat_model",
    "register_model",
    "train_arrhythmia",
    "train_beat_sequence",
    "train_heart_disease",
    "use_tracking_uri",
]

logger = logging.getLogger(__name__)

#: Records with N (100), V (119, bigeminy) and S (209) beats in their first minutes.
ARRHYTHMIA_RECORDS: tuple[str, ...] = ("100", "119", "209")
PTBXL_LEADS: tuple[str, ...] = (
    "I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6",
)  # fmt: skip


@dataclass(frozen=True)
class TinyRegistry:
    """Where the tiny models were registered."""

    tracking_uri: str
    arrhythmia_name: str
    heart_disease_name: str
    alias: str
    root: Path


@contextlib.contextmanager
def use_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (tracking and registry) at ``uri``; restore the previous one."""
    from pipeline.tracking import tracking_scope

    with tracking_scope(uri):
        yield


# --------------------------------------------------------------------------- data
def mitdb_strip(
    mitdb_dir: Path, record: str, start_s: float = 0.0, seconds: float = 10.0
) -> tuple[np.ndarray, float, np.ndarray, list[str | None]]:
    """A raw MLII strip of a MIT-BIH record with its annotated beats.

    Returns
    -------
    signal : np.ndarray
        float32 ``(n_samples,)`` in mV at ``fs`` (360 Hz).
    fs : float
    r_peaks : np.ndarray
        int64 ``(n_beats,)`` sample indices (relative to the strip) of every annotated QRS.
    labels : list of str or None
        AAMI class per R peak (None for beats outside the AAMI classes, e.g. '?').
    """
    import wfdb

    header = wfdb.rdheader(str(mitdb_dir / record))
    fs = float(header.fs)
    start = round(start_s * fs)
    stop = start + round(seconds * fs)
    rec = wfdb.rdrecord(str(mitdb_dir / record), sampfrom=start, sampto=stop)
    signal = rec.p_signal[:, rec.sig_name.index("MLII")].astype(np.float32)
    ann = wfdb.rdann(str(mitdb_dir / record), "atr", sampfrom=start, sampto=stop - 1)
    keep = [i for i, sym in enumerate(ann.symbol) if sym in WFDB_BEAT_SYMBOLS]
    peaks = np.asarray(ann.sample, dtype=np.int64)[keep] - start
    labels = [aami_class(ann.symbol[i]) for i in keep]
    inside = (peaks >= 0) & (peaks < len(signal))
    return signal, fs, peaks[inside], [lab for lab, ok in zip(labels, inside, strict=True) if ok]


def _superclasses(scp_codes: str, diagnostic_class: dict[str, str]) -> set[str]:
    codes = ast.literal_eval(scp_codes)
    return {diagnostic_class[c] for c in codes if c in diagnostic_class}


def ptbxl_record(ptbxl_dir: Path, ecg_id: int) -> tuple[np.ndarray, float, list[str]]:
    """A raw 100-Hz PTB-XL record: ``(signal (1000, 12) mV, fs, lead names)``."""
    import wfdb

    path = ptbxl_dir / "records100" / f"{(ecg_id // 1000) * 1000:05d}" / f"{ecg_id:05d}_lr"
    rec = wfdb.rdrecord(str(path))
    return rec.p_signal.astype(np.float32), float(rec.fs), list(rec.sig_name)


def _ptbxl_dataset(ptbxl_dir: Path, n_records: int) -> tuple[np.ndarray, float, np.ndarray]:
    import pandas as pd

    statements = pd.read_csv(ptbxl_dir / "scp_statements.csv", index_col=0)
    diag = statements[statements["diagnostic"] == 1]["diagnostic_class"].dropna().to_dict()
    table = pd.read_csv(ptbxl_dir / "ptbxl_database.csv", index_col="ecg_id")
    signals, targets = [], []
    for ecg_id in table.index[:n_records]:
        signal, fs, _ = ptbxl_record(ptbxl_dir, int(ecg_id))
        classes = _superclasses(table.loc[ecg_id, "scp_codes"], diag)
        signals.append(signal)
        targets.append([float(c in classes) for c in PTBXL_SUPERCLASSES])
    return np.stack(signals), fs, np.asarray(targets, dtype=np.float32)


def _synthetic_ecg(
    seconds: float, fs: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A crude ECG-like ``(n_samples,)`` signal, its R peaks and AAMI labels (narrow N, wide V)."""
    t = np.arange(round(seconds * fs)) / fs
    peaks_s = np.cumsum(rng.uniform(0.6, 1.1, size=int(seconds / 0.6) + 2)) - 0.3
    peaks_s = peaks_s[peaks_s < seconds - 0.05]
    wide = rng.random(len(peaks_s)) < 0.2
    x = 0.05 * rng.standard_normal(t.shape)
    for p, w in zip(peaks_s, wide, strict=True):
        x += np.exp(-0.5 * ((t - p) / (0.035 if w else 0.012)) ** 2)
        x += 0.3 * np.exp(-0.5 * ((t - p - 0.25) / 0.04) ** 2)
    labels = np.where(wide, AAMI_CLASSES.index("V"), AAMI_CLASSES.index("N")).astype(np.int64)
    return x.astype(np.float32), np.round(peaks_s * fs).astype(np.int64), labels


# --------------------------------------------------------------------------- training
def _fit(module: nn.Module, x: np.ndarray, y: np.ndarray, loss_fn: nn.Module, steps: int) -> None:
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    module.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(module(xt), yt)
        loss.backward()
        opt.step()
    module.eval()


def train_arrhythmia(
    mitdb_dir: Path | None,
    *,
    hidden_size: int = 12,
    patch_size: int = 1,
    steps: int = 20,
    seed: int = 0,
) -> tuple[nn.Module, ModelCard, np.ndarray, dict[str, float]]:
    """Train a tiny AAMI beat classifier on the first minute of :data:`ARRHYTHMIA_RECORDS`.

    Returns the module, its card, an input example ``(4, 87, 5)`` and test metrics measured on
    the next 30 s of the same records (``test_accuracy``, ``test_macro_f1``,
    ``test_recall_<class>``).
    """
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = PreprocessConfig()
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "test": []}
    for split, (start, seconds) in {"train": (0.0, 60.0), "test": (60.0, 30.0)}.items():
        if mitdb_dir is None:
            for _ in ARRHYTHMIA_RECORDS:
                signal, peaks, y = _synthetic_ecg(seconds, 360.0, rng)
                parts[split].append((beat_inputs(signal, 360.0, peaks, cfg), y))
            continue
        for record in ARRHYTHMIA_RECORDS:
            signal, fs, peaks, labels = mitdb_strip(mitdb_dir, record, start, seconds)
            x = beat_inputs(signal, fs, peaks, cfg)
            keep = [i for i, lab in enumerate(labels) if lab is not None]
            y = np.asarray([AAMI_CLASSES.index(labels[i]) for i in keep], dtype=np.int64)
            parts[split].append((x[keep], y))
    x_train = np.concatenate([p[0] for p in parts["train"]])
    y_train = np.concatenate([p[1] for p in parts["train"]])
    arch = RecurrentClassifierConfig(
        n_inputs=x_train.shape[2],
        n_classes=len(AAMI_CLASSES),
        n_static=len(cfg.rr_features),
        hidden_size=hidden_size,
        dropout=0.0,
        patch_size=patch_size,
    )
    module = RecurrentClassifier(arch)
    counts = np.bincount(y_train, minlength=len(AAMI_CLASSES)).astype(np.float32)
    weights = torch.from_numpy(np.where(counts > 0, counts.sum() / np.maximum(counts, 1), 0.0))
    _fit(module, x_train, y_train, nn.CrossEntropyLoss(weight=weights.float()), steps)

    x_test = np.concatenate([p[0] for p in parts["test"]])
    y_test = np.concatenate([p[1] for p in parts["test"]])
    with torch.inference_mode():
        pred = module(torch.from_numpy(x_test)).argmax(dim=1).numpy()
    present = sorted(set(y_test.tolist()))
    recalls = recall_score(y_test, pred, labels=present, average=None, zero_division=0)
    metrics = {
        "test_accuracy": float(accuracy_score(y_test, pred)),
        "test_macro_f1": float(f1_score(y_test, pred, labels=present, average="macro")),
        **{
            f"test_recall_{AAMI_CLASSES[c]}": float(r)
            for c, r in zip(present, recalls, strict=True)
        },
    }
    card = ModelCard(
        task=TASK_ARRHYTHMIA,
        classes=AAMI_CLASSES,
        leads=("MLII",),
        preprocess=cfg,
        architecture=arch,
        input_shape=(x_train.shape[1], x_train.shape[2]),
    )
    logger.info("tiny arrhythmia model: %d train beats, %s", len(y_train), metrics)
    return module, card, x_train[:4], metrics


def train_heart_disease(
    ptbxl_dir: Path | None,
    *,
    n_records: int = 20,
    hidden_size: int = 8,
    steps: int = 10,
    seed: int = 0,
) -> tuple[nn.Module, ModelCard, np.ndarray, dict[str, float]]:
    """Train a tiny multi-label superclass model on the first ``n_records`` PTB-XL records.

    Returns the module, its card, an input example ``(2, 1000, 12)`` and ``test_*`` metrics
    (measured on the training records themselves: this model only has to be real, not good).
    """
    from sklearn.metrics import f1_score

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = PreprocessConfig(fs_target=100.0, normalise="zscore")
    if ptbxl_dir is None:
        signals = rng.standard_normal((n_records, 1000, len(PTBXL_LEADS))).astype(np.float32)
        fs = 100.0
        targets = (rng.random((n_records, len(PTBXL_SUPERCLASSES))) < 0.4).astype(np.float32)
    else:
        signals, fs, targets = _ptbxl_dataset(ptbxl_dir, n_records)
    x = np.stack([preprocess_signal(s, fs, cfg) for s in signals]).astype(np.float32)
    arch = RecurrentClassifierConfig(
        n_inputs=len(PTBXL_LEADS),
        n_classes=len(PTBXL_SUPERCLASSES),
        hidden_size=hidden_size,
        patch_size=10,
        dropout=0.0,
    )
    module = RecurrentClassifier(arch)
    _fit(module, x, targets, nn.BCEWithLogitsLoss(), steps)
    with torch.inference_mode():
        pred = (torch.sigmoid(module(torch.from_numpy(x))).numpy() > 0.5).astype(np.float32)
    metrics = {"test_macro_f1": float(f1_score(targets, pred, average="macro", zero_division=0))}
    card = ModelCard(
        task=TASK_HEART_DISEASE,
        classes=PTBXL_SUPERCLASSES,
        leads=PTBXL_LEADS,
        preprocess=cfg,
        architecture=arch,
        input_shape=(x.shape[1], x.shape[2]),
    )
    return module, card, x[:2], metrics


def train_beat_sequence(
    mitdb_dir: Path,
    *,
    steps: int = 10,
    strip_s: float = 10.0,
    minutes: float = 1.0,
    seed: int = 0,
) -> BeatClassifier:
    """A beat-sequence model of the recommended recipe, trained a few steps on real strips.

    The recipe of ``ecg train-beats`` (bi-LSTM, relative waveform inputs, the patient-relative
    context features, N/S/V with F merged into V) at its default size; the data are the first
    ``minutes`` of :data:`ARRHYTHMIA_RECORDS` (MLII, annotated R peaks) cut into ``strip_s``-second
    strips, one sequence each. Its forward pass costs what the champion's does; its answers are
    not good (a few steps of Adam).

    Returns
    -------
    BeatClassifier
        In eval mode, temperature 1, no decision offsets.
    """
    torch.manual_seed(seed)
    config = BeatSequenceConfig(cell="lstm", feature_names=RELATIVE_FEATURE_NAMES)
    pre = PreprocessConfig()
    merged = config.merged_classes
    waves: list[np.ndarray] = []
    feats: list[np.ndarray] = []
    labels: list[list[int]] = []
    for record in ARRHYTHMIA_RECORDS:
        for k in range(int(minutes * 60 / strip_s)):
            signal, fs, peaks, aami = mitdb_strip(mitdb_dir, record, k * strip_s, strip_s)
            ctx = beat_context(signal, fs, peaks, pre, BeatContextConfig())
            w, f = model_inputs(ctx.waves, ctx.features, ctx.feature_names, config)
            names = [merged.get(c, c) if c is not None else None for c in aami]
            waves.append(w)
            feats.append(f)
            labels.append([config.classes.index(c) if c in config.classes else -1 for c in names])
    t = max(len(lab) for lab in labels)
    wv = np.zeros((len(waves), t, *waves[0].shape[1:]), dtype=np.float32)
    ft = np.zeros((len(feats), t, feats[0].shape[1]), dtype=np.float32)
    yt = np.full((len(labels), t), -1, dtype=np.int64)
    for i, (w, f, lab) in enumerate(zip(waves, feats, labels, strict=True)):
        wv[i, : len(lab)], ft[i, : len(lab)], yt[i, : len(lab)] = w, f, lab
    lengths = torch.tensor([len(lab) for lab in labels], dtype=torch.int64)
    model = BeatSequenceModel(config)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss(ignore_index=-1)
    x_w, x_f, target = torch.from_numpy(wv), torch.from_numpy(ft), torch.from_numpy(yt)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        logits = model(x_w, x_f, lengths)
        loss = loss_fn(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        loss.backward()
        opt.step()
    model.eval()
    logger.info("tiny beat-sequence model: %d strips, final loss %.3f", len(labels), loss.item())
    return BeatClassifier(model=model, preprocess=pre)


# --------------------------------------------------------------------------- registry
def register_beat_model(
    tracking_uri: str,
    clf: BeatClassifier,
    name: str,
    *,
    alias: str | None = "champion",
    experiment: str = "tiny-service-models",
) -> str:
    """Log ``clf`` (:func:`models.beat_predictor.log_beat_model`) and register it; its version."""
    import mlflow
    from mlflow import MlflowClient

    from models.beat_predictor import log_beat_model

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    with use_tracking_uri(tracking_uri):
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
        with mlflow.start_run(experiment_id=exp_id):
            info = log_beat_model(clf, registered_model_name=name)
    version = str(info.registered_model_version)
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return version


def register_model(
    tracking_uri: str,
    module: nn.Module,
    card: ModelCard,
    example: np.ndarray,
    name: str,
    *,
    metrics: dict[str, float] | None = None,
    alias: str | None = "champion",
    experiment: str = "tiny-service-models",
) -> str:
    """Log ``module`` in a new run of ``tracking_uri`` and register it as ``name``; its version.

    ``alias`` (when given) is moved to the new version.
    """
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    with use_tracking_uri(tracking_uri):
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
        with mlflow.start_run(experiment_id=exp_id):
            if metrics:
                mlflow.log_metrics(metrics)
            info = log_ecg_model(module, card, example, registered_model_name=name)
    version = str(info.registered_model_version)
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return version


def build_registry(
    root: Path,
    mitdb_dir: Path | None,
    ptbxl_dir: Path | None,
    *,
    arrhythmia_hidden: int = 12,
    alias: str = "champion",
    trained: dict[str, tuple[nn.Module, ModelCard, np.ndarray, dict[str, float]]] | None = None,
) -> TinyRegistry:
    """Register both tiny models in ``sqlite:///<root>/mlflow.db`` and point ``alias`` at them.

    ``trained`` (``{"arrhythmia": ..., "heart-disease": ...}`` as returned by the ``train_*``
    functions) skips training.
    """
    from mlflow import MlflowClient

    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    # Artifacts under root, not ./mlartifacts of the working directory.
    MlflowClient(tracking_uri=uri).create_experiment(
        "tiny-service-models", artifact_location=(root / "artifacts").as_uri()
    )
    if trained is None:
        trained = {
            TASK_ARRHYTHMIA: train_arrhythmia(mitdb_dir, hidden_size=arrhythmia_hidden),
            TASK_HEART_DISEASE: train_heart_disease(ptbxl_dir),
        }
    arr, hd = trained[TASK_ARRHYTHMIA], trained[TASK_HEART_DISEASE]
    register_model(uri, *arr[:3], "ecg-arrhythmia", metrics=arr[3], alias=alias)
    register_model(uri, *hd[:3], "ecg-heart-disease", metrics=hd[3], alias=alias)
    return TinyRegistry(uri, "ecg-arrhythmia", "ecg-heart-disease", alias, root)
