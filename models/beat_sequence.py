"""A recurrence over consecutive beats: each beat classified in the light of its neighbours.

Rhythm is a sequence: whether a beat is premature, and whether a wide beat is the patient's usual
one, shows against the beats around it. Each beat is embedded by a small 1-D convolutional encoder
(its normalised waveform and its difference from the strip's template, see
:mod:`models.beat_context`) joined to its per-beat context features; a bidirectional GRU or LSTM
runs over the beats of a strip and a linear head gives logits for every beat.

Classes: the model predicts N, S and V. F (fusion) beats are merged into V during training and
flagged in the answer (``merged_classes``): MIT-BIH DS1 holds 415 F beats, 373 of them in one
record (208), too few patients to learn F. Q (unclassifiable; 8 training beats) is not learned and
never predicted. A calibration temperature (fitted on validation folds) travels with the config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.recurrent import recurrent_layer

__all__ = [
    "BeatSequenceConfig",
    "BeatSequenceModel",
    "model_inputs",
    "predict_strip",
    "predict_strips",
    "strip_chunks",
]


def model_inputs(
    waves: np.ndarray,
    features: np.ndarray,
    feature_names: tuple[str, ...],
    config: BeatSequenceConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """The model's inputs from a strip's beat context (the one place that picks them).

    Parameters
    ----------
    waves : np.ndarray
        ``(n_beats, 2, w)`` :attr:`models.beat_context.BeatContext.waves`.
    features : np.ndarray
        ``(n_beats, n_all)`` :attr:`models.beat_context.BeatContext.features`.
    feature_names : tuple of str
        Names of the columns of ``features``.
    config : BeatSequenceConfig

    Returns
    -------
    tuple of np.ndarray
        float32 ``(n_beats, config.wave_channels, w)`` and ``(n_beats, config.n_features)``.
    """
    w = np.asarray(waves, dtype=np.float32)
    if config.wave_mode == "relative":
        wv = w
    elif config.wave_mode == "zscore":
        b = w[:, :1]
        mu = b.mean(axis=2, keepdims=True)
        sd = np.maximum(b.std(axis=2, keepdims=True), 1e-6)
        wv = (b - mu) / sd
    else:
        wv = w[:, :0]
    idx = [feature_names.index(n) for n in config.feature_names]
    return np.ascontiguousarray(wv, dtype=np.float32), np.asarray(features, np.float32)[:, idx]


@dataclass(frozen=True)
class BeatSequenceConfig:
    """Architecture (and output vocabulary) of a :class:`BeatSequenceModel`.

    Attributes
    ----------
    wave_mode : {"relative", "zscore", "none"}
        Waveform input: "relative" = the beat and the beat minus its template, both divided by the
        template's peak-to-peak amplitude (2 channels); "zscore" = the z-scored beat alone, no
        reference to the patient (1 channel, the baseline); "none" = features only.
    wave_len : int
        Samples per beat window (87 at 125 Hz for a 0.25 s + 0.45 s window).
    feature_names : tuple of str
        Per-beat context features fed to the model, in column order (see
        :data:`models.beat_context.CONTEXT_FEATURE_NAMES`).
    cell : {"gru", "lstm"}
    conv_channels : int
        Channels of the beat encoder's convolutions.
    embed_size : int
        Beat embedding size (waveform code + features) fed to the recurrence.
    hidden_size : int
        Recurrent units per direction.
    bidirectional : bool
        Read the strip both ways (the next beat's timing matters for S and V).
    dropout : float
    classes : tuple of str
        Output classes in logit order.
    merged_classes : dict
        Annotated classes folded into an output class for training (``{"F": "V"}``).
    temperature : float
        Calibration temperature applied to the logits by :func:`predict_strip` (1 = none).
    """

    wave_mode: Literal["relative", "zscore", "none"] = "relative"
    wave_len: int = 87
    feature_names: tuple[str, ...] = ()
    cell: Literal["gru", "lstm"] = "gru"
    conv_channels: int = 16
    embed_size: int = 32
    hidden_size: int = 32
    bidirectional: bool = True
    dropout: float = 0.2
    classes: tuple[str, ...] = ("N", "S", "V")
    merged_classes: dict[str, str] = field(default_factory=lambda: {"F": "V"})
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.cell not in ("gru", "lstm"):
            raise ValueError(f"cell must be 'gru' or 'lstm', got {self.cell!r}")
        if self.wave_mode not in ("relative", "zscore", "none"):
            raise ValueError(
                f"wave_mode must be 'relative', 'zscore' or 'none', got {self.wave_mode!r}"
            )
        if self.wave_channels and self.wave_len < 16:
            raise ValueError(f"wave_len must be >= 16 samples, got {self.wave_len}")
        if self.wave_channels == 0 and not self.feature_names:
            raise ValueError("a model needs waveform channels or context features, or both")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        object.__setattr__(self, "feature_names", tuple(self.feature_names))
        object.__setattr__(self, "classes", tuple(self.classes))

    @property
    def wave_channels(self) -> int:
        """Waveform channels the encoder reads."""
        return {"relative": 2, "zscore": 1, "none": 0}[self.wave_mode]

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        d = dataclasses.asdict(self)
        d["feature_names"] = list(self.feature_names)
        d["classes"] = list(self.classes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BeatSequenceConfig:
        """Rebuild from :meth:`to_dict` output, ignoring unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class _BeatEncoder(nn.Module):
    """``(N, C, L)`` beat windows -> ``(N, out)``: three strided convolutions and a linear map."""

    def __init__(self, in_ch: int, ch: int, length: int, out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(in_ch, ch // 2, 7, stride=2, padding=3),
            nn.ReLU(),
            nn.Conv1d(ch // 2, ch, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv1d(ch, ch, 5, stride=2, padding=2),
            nn.ReLU(),
        )
        with torch.no_grad():
            n_flat = int(self.conv(torch.zeros(1, in_ch, length)).numel())
        self.proj = nn.Linear(n_flat, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.proj(self.conv(x).flatten(1)))


class BeatSequenceModel(nn.Module):
    """Per-beat logits for sequences of consecutive beats.

    ``forward(waves, feats, lengths)``: ``waves`` float32 ``(B, T, wave_channels, wave_len)``,
    ``feats`` float32 ``(B, T, n_features)``, ``lengths`` int64 ``(B,)`` valid beats per sequence
    (the rest is padding); returns ``(B, T, n_classes)`` logits (padding rows are zeros).
    """

    def __init__(self, config: BeatSequenceConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        wave_out = c.embed_size if c.wave_channels else 0
        self.encoder = (
            _BeatEncoder(c.wave_channels, c.conv_channels, c.wave_len, c.embed_size)
            if c.wave_channels
            else None
        )
        self.embed = nn.Sequential(
            nn.Linear(wave_out + c.n_features, c.embed_size),
            nn.ReLU(),
            nn.Dropout(c.dropout),
        )
        self.rnn = recurrent_layer(
            c.cell, c.embed_size, c.hidden_size, bidirectional=c.bidirectional
        )
        n_dir = 2 if c.bidirectional else 1
        self.head = nn.Sequential(
            nn.Dropout(c.dropout),
            nn.Linear(n_dir * c.hidden_size + c.embed_size, len(c.classes)),
        )

    def forward(
        self, waves: torch.Tensor, feats: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        b, t = feats.shape[:2]
        parts = []
        if self.encoder is not None:
            c, length = waves.shape[2:]
            parts.append(self.encoder(waves.reshape(b * t, c, length)).reshape(b, t, -1))
        if self.config.n_features:
            parts.append(feats)
        e = self.embed(torch.cat(parts, dim=2))  # (B, T, E)
        lengths = lengths.cpu()
        if bool((lengths == t).all()):  # no padding (one strip, say): packing only costs time
            h, _ = self.rnn(e)
        else:
            packed = pack_padded_sequence(
                e, lengths.clamp(min=1), batch_first=True, enforce_sorted=False
            )
            out, _ = self.rnn(packed)
            h, _ = pad_packed_sequence(out, batch_first=True, total_length=t)  # (B, T, dirs * H)
        return self.head(torch.cat([h, e], dim=2))

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def strip_chunks(n: int, max_beats: int) -> list[tuple[int, int]]:
    """``[start, stop)`` beat ranges of a strip of ``n`` beats read ``max_beats`` at a time.

    A short tail chunk reads poorly: a tail under half a chunk joins the previous one.
    """
    starts = list(range(0, n, max_beats))
    if len(starts) > 1 and n - starts[-1] < max_beats // 2:
        starts.pop()
    return [(s, starts[i + 1] if i + 1 < len(starts) else n) for i, s in enumerate(starts)]


def predict_strip(
    model: BeatSequenceModel,
    waves: np.ndarray,
    feats: np.ndarray,
    max_beats: int = 64,
) -> np.ndarray:
    """Calibrated class probabilities for the beats of one strip.

    Strips longer than ``max_beats`` are read in consecutive chunks of ``max_beats`` beats (each
    chunk still carries context features computed over the whole strip).

    Parameters
    ----------
    model : BeatSequenceModel
    waves : np.ndarray
        float32 ``(n_beats, wave_channels, wave_len)`` from :func:`model_inputs`.
    feats : np.ndarray
        float32 ``(n_beats, n_features)`` in ``model.config.feature_names`` order.
    max_beats : int
        Longest sequence fed to the recurrence at once.

    Returns
    -------
    np.ndarray
        float32 ``(n_beats, len(model.config.classes))`` probabilities (softmax of logits divided
        by ``model.config.temperature``).
    """
    return predict_strips(model, [(waves, feats)], max_beats)[0]


@torch.inference_mode()
def predict_strips(
    model: BeatSequenceModel,
    strips: Sequence[tuple[np.ndarray, np.ndarray]],
    max_beats: int = 64,
) -> list[np.ndarray]:
    """:func:`predict_strip` of several strips through one forward pass.

    Every strip is cut into chunks as :func:`predict_strip` cuts it; the chunks of all strips
    form one padded batch (the recurrence reads each chunk to its own length, so a strip's
    answer does not depend on its neighbours in the batch beyond float rounding).

    Parameters
    ----------
    model : BeatSequenceModel
    strips : sequence of (waves, feats)
        Per strip, float32 ``(n_beats, wave_channels, wave_len)`` and ``(n_beats, n_features)``
        from :func:`model_inputs`; ``n_beats`` may differ and may be 0.
    max_beats : int
        Longest sequence fed to the recurrence at once.

    Returns
    -------
    list of np.ndarray
        Per strip, float32 ``(n_beats, len(model.config.classes))`` probabilities.
    """
    k = len(model.config.classes)
    chunks = [
        (i, s, e)
        for i, (_, feats) in enumerate(strips)
        for s, e in strip_chunks(len(feats), max_beats)
    ]
    if not chunks:
        return [np.zeros((0, k), dtype=np.float32) for _ in strips]
    if model.training:  # eval() walks every submodule: only when needed
        model.eval()
    waves0, feats0 = strips[chunks[0][0]]
    t_max = max(e - s for _, s, e in chunks)
    wv = np.zeros((len(chunks), t_max, *waves0.shape[1:]), dtype=np.float32)
    ft = np.zeros((len(chunks), t_max, feats0.shape[1]), dtype=np.float32)
    for row, (i, s, e) in enumerate(chunks):
        wv[row, : e - s] = strips[i][0][s:e]
        ft[row, : e - s] = strips[i][1][s:e]
    lengths = torch.tensor([e - s for _, s, e in chunks], dtype=torch.int64)
    logits = model(torch.from_numpy(wv), torch.from_numpy(ft), lengths)
    probs = torch.softmax(logits / model.config.temperature, dim=2).numpy()
    parts: list[list[np.ndarray]] = [[] for _ in strips]
    for row, (i, s, e) in enumerate(chunks):
        parts[i].append(probs[row, : e - s])
    return [
        np.concatenate(p).astype(np.float32) if p else np.zeros((0, k), dtype=np.float32)
        for p in parts
    ]
