"""Recurrent (GRU / LSTM) classifiers built from one config dataclass saved with the weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

__all__ = [
    "CELLS",
    "RecurrentArch",
    "RecurrentClassifier",
    "RecurrentClassifierConfig",
    "recurrent_layer",
]


CELLS: tuple[str, ...] = ("gru", "lstm")


@dataclass(frozen=True)
class RecurrentArch:
    """What one chooses about a :class:`RecurrentClassifier`: the architecture, declared once.

    Training configurations (``pipeline.train_config.TrainConfig.arch``) and the full model
    config (:class:`RecurrentClassifierConfig`, which adds what the data decides) share it.

    Attributes
    ----------
    cell : {"gru", "lstm"}
        Recurrent cell.
    hidden_size : int
        Units per direction (the head's hidden layer has as many).
    num_layers : int
        Stacked recurrent layers.
    bidirectional : bool
    dropout : float
        Between recurrent layers and before the head, in [0, 1).
    patch_size : int
        Non-overlapping patches of this many steps are flattened into one step before the
        recurrence (a cheap way to shorten long sequences such as 10-s records; 1 = off). 0 in a
        training configuration means the dataset's default (:mod:`models.tasks`).
    """

    cell: Literal["gru", "lstm"] = field(default="gru", metadata={"help": "Recurrent cell."})
    hidden_size: int = field(default=64, metadata={"help": "Units per direction."})
    num_layers: int = field(default=1, metadata={"help": "Recurrent layers.", "flag": "--layers"})
    bidirectional: bool = field(default=True, metadata={"help": "Bidirectional recurrence."})
    dropout: float = field(default=0.2, metadata={"help": "Dropout in [0, 1)."})
    patch_size: int = field(
        default=0, metadata={"help": "Samples per recurrent step (0: the dataset's default)."}
    )

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; expected 'gru' or 'lstm'")
        for name in ("hidden_size", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.patch_size < 0:
            raise ValueError(f"patch_size must be >= 0, got {self.patch_size}")


@dataclass(frozen=True, kw_only=True)
class RecurrentClassifierConfig(RecurrentArch):
    """A :class:`RecurrentArch` plus what the data decides: the model's complete config.

    Attributes
    ----------
    n_inputs : int
        Channels per time step of the input ``(batch, time, n_inputs)``, static ones included.
    n_classes : int
        Output logits.
    n_static : int
        The last ``n_static`` input channels are per-sample constants (e.g. RR-interval features
        repeated along time). They are read from the first step and joined to the recurrent summary
        before the head instead of being fed through the recurrence.
    """

    n_inputs: int
    n_classes: int
    n_static: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.n_static < self.n_inputs:
            raise ValueError(f"n_static={self.n_static} must be in [0, n_inputs={self.n_inputs})")
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")

    @classmethod
    def build(
        cls, arch: RecurrentArch, *, n_inputs: int, n_classes: int, n_static: int = 0
    ) -> RecurrentClassifierConfig:
        """The complete config of ``arch`` for inputs of ``n_inputs`` channels."""
        return cls(**dataclasses.asdict(arch), n_inputs=n_inputs, n_classes=n_classes,
                   n_static=n_static)  # fmt: skip

    @property
    def arch(self) -> RecurrentArch:
        """The chosen part of this config."""
        names = {f.name for f in dataclasses.fields(RecurrentArch)}
        return RecurrentArch(**{k: v for k, v in self.to_dict().items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RecurrentClassifierConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def recurrent_layer(
    cell: str,
    input_size: int,
    hidden_size: int,
    *,
    num_layers: int = 1,
    bidirectional: bool = True,
    dropout: float = 0.0,
) -> nn.GRU | nn.LSTM:
    """The batch-first ``nn.GRU`` or ``nn.LSTM`` every model of this project recurs with.

    Input ``(batch, time, input_size)``; dropout between stacked layers only (PyTorch ignores it,
    with a warning, for one layer, so it is passed only when ``num_layers > 1``).
    """
    rnn_cls = nn.GRU if cell == "gru" else nn.LSTM
    return rnn_cls(
        input_size=input_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        batch_first=True,
        bidirectional=bidirectional,
        dropout=dropout if num_layers > 1 else 0.0,
    )


class RecurrentClassifier(nn.Module):
    """GRU/LSTM over a sequence, summarised by last state and mean pooling, then an MLP head.

    Input ``(batch, time, n_inputs)`` float32; output ``(batch, n_classes)`` logits.
    """

    def __init__(self, config: RecurrentClassifierConfig) -> None:
        super().__init__()
        self.config = config
        n_seq = (config.n_inputs - config.n_static) * config.patch_size
        self.rnn = recurrent_layer(
            config.cell,
            n_seq,
            config.hidden_size,
            num_layers=config.num_layers,
            bidirectional=config.bidirectional,
            dropout=config.dropout,
        )
        n_dir = 2 if config.bidirectional else 1
        summary = 2 * n_dir * config.hidden_size + config.n_static
        self.head = nn.Sequential(
            nn.Dropout(config.dropout),
            nn.Linear(summary, config.hidden_size),
            nn.ReLU(),
            nn.Linear(config.hidden_size, config.n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        n_seq = cfg.n_inputs - cfg.n_static
        seq = x[:, :, :n_seq]  # (B, T, C_seq)
        if cfg.patch_size > 1:
            b, t, c = seq.shape
            t_cut = (t // cfg.patch_size) * cfg.patch_size
            seq = seq[:, :t_cut].reshape(b, t_cut // cfg.patch_size, c * cfg.patch_size)
        out, _ = self.rnn(seq)  # (B, T', n_dir * H)
        n_dir = 2 if cfg.bidirectional else 1
        h = cfg.hidden_size
        # Last step of the forward direction, first step of the backward one: each has seen it all.
        last = out[:, -1, :h] if n_dir == 1 else torch.cat([out[:, -1, :h], out[:, 0, h:]], dim=1)
        parts = [last, out.mean(dim=1)]
        if cfg.n_static:
            parts.append(x[:, 0, n_seq:])  # (B, n_static)
        return self.head(torch.cat(parts, dim=1))

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
