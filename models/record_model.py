"""A convolutional-recurrent record classifier for 10-s ECGs with any lead subset and optional
patient context (age, sex).

The network (a CRNN) is a small 1-D convolutional front end, after ``resnet1d_wang`` of the
PTB-XL benchmark (Strodthoff et al. 2021) but plain conv-BN-ReLU blocks with stride, followed by
a (bi-)GRU or LSTM over the shortened sequence. Two side inputs make one model answer for any
recording:

* a **lead mask** ``(batch, 12)`` (1 = lead recorded): absent leads are zeroed in the signal and
  the mask also enters as a learned bias of the first convolution and as features of the head,
  so the network knows which zeros are "not recorded" rather than "flat";
* **demographics** ``(batch, 3)``: standardised age, sex (1 = female, as PTB-XL codes it) and a
  presence flag; a missing value is given as zeros with flag 0 (:func:`encode_demographics`).

Trained with random lead subsets (:func:`sample_lead_masks`) and random dropping of the
demographics, the same weights serve 12-lead, 6-limb-lead and single-lead records, with or without
the patient's age and sex.

References
----------
Strodthoff N, Wagner P, Schaeffter T, Samek W. Deep learning for ECG analysis: benchmarks and
insights from PTB-XL. IEEE J Biomed Health Inform 25(5):1519-1528 (2021).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

import numpy as np
import torch
from torch import nn

from models.recurrent import recurrent_layer

__all__ = [
    "DEMOGRAPHIC_FEATURES",
    "LEAD_SUBSETS",
    "LIMB_LEADS",
    "PTBXL_LEADS",
    "RecordModel",
    "RecordModelConfig",
    "encode_demographics",
    "lead_mask",
    "sample_lead_masks",
]

#: PTB-XL's lead order (the channel order of the prepared dataset).
PTBXL_LEADS: Final[tuple[str, ...]] = (
    "I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6",
)  # fmt: skip
#: The six limb leads (Einthoven + Goldberger), recordable without chest electrodes.
LIMB_LEADS: Final[tuple[str, ...]] = ("I", "II", "III", "AVR", "AVL", "AVF")
#: Named lead subsets reported and served.
LEAD_SUBSETS: Final[dict[str, tuple[str, ...]]] = {
    "12-lead": PTBXL_LEADS,
    "limb-6": LIMB_LEADS,
    "lead-I": ("I",),
}
#: Columns of the demographics input.
DEMOGRAPHIC_FEATURES: Final[tuple[str, ...]] = ("age_z", "sex", "present")
_AGE_MEAN, _AGE_STD, _AGE_MAX = 60.0, 17.0, 90.0


@dataclass(frozen=True)
class RecordModelConfig:
    """Architecture of a :class:`RecordModel` (saved with the weights).

    Attributes
    ----------
    n_leads : int
        Signal channels (12 for PTB-XL); the lead mask has this many columns.
    n_classes : int
        Output logits (5 PTB-XL superclasses, independent sigmoids).
    conv_channels : tuple of int
        Output channels of each conv-BN-ReLU block of the front end.
    conv_kernels : tuple of int
        Kernel size of each block (odd, "same" padding).
    conv_strides : tuple of int
        Stride of each block; their product shortens the sequence (e.g. 2*2*2 = 8: 1,000
        samples at 100 Hz become 125 steps of 80 ms).
    cell : {"gru", "lstm"}
        Recurrent cell after the front end.
    hidden_size, num_layers : int
    bidirectional : bool
    dropout : float
        Before the head (and between recurrent layers).
    demographics : bool
        Whether the model reads the ``(batch, 3)`` demographics input (age, sex, presence).
    """

    n_leads: int = 12
    n_classes: int = 5
    conv_channels: tuple[int, ...] = (32, 64, 64)
    conv_kernels: tuple[int, ...] = (7, 5, 5)
    conv_strides: tuple[int, ...] = (2, 2, 2)
    cell: Literal["gru", "lstm"] = "gru"
    hidden_size: int = 64
    num_layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.3
    demographics: bool = True

    def __post_init__(self) -> None:
        if self.cell not in ("gru", "lstm"):
            raise ValueError(f"cell must be 'gru' or 'lstm', got {self.cell!r}")
        n = len(self.conv_channels)
        if n == 0 or len(self.conv_kernels) != n or len(self.conv_strides) != n:
            raise ValueError(
                "conv_channels, conv_kernels and conv_strides must be non-empty and of equal "
                f"length, got {self.conv_channels}, {self.conv_kernels}, {self.conv_strides}"
            )
        if any(k < 1 or k % 2 == 0 for k in self.conv_kernels):
            raise ValueError(f"conv_kernels must be odd and >= 1, got {self.conv_kernels}")
        if any(s < 1 for s in self.conv_strides) or any(c < 1 for c in self.conv_channels):
            raise ValueError("conv strides and channels must be >= 1")
        for name in ("n_leads", "n_classes", "hidden_size", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def total_stride(self) -> int:
        """Input samples per recurrent step."""
        return int(np.prod(self.conv_strides))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("conv_channels", "conv_kernels", "conv_strides"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RecordModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("conv_channels", "conv_kernels", "conv_strides"):
            if k in kw:
                kw[k] = tuple(int(v) for v in kw[k])
        return cls(**kw)


class RecordModel(nn.Module):
    """CRNN over a 10-s multi-lead ECG with a lead mask and optional demographics.

    ``forward(x, lead_mask=None, demographics=None)``:

    x : float32 ``(batch, time, n_leads)``
        The preprocessed signal (PTB-XL: 100 Hz, z-scored per lead); absent leads may hold
        anything, they are zeroed here.
    lead_mask : float32 ``(batch, n_leads)``, optional
        1 for recorded leads, 0 for absent ones; None = all leads present.
    demographics : float32 ``(batch, 3)``, optional
        :func:`encode_demographics` output; None = unknown (zeros with flag 0). Ignored when the
        config has ``demographics=False``.

    Returns ``(batch, n_classes)`` logits.
    """

    def __init__(self, config: RecordModelConfig) -> None:
        super().__init__()
        self.config = config
        blocks: list[nn.Module] = []
        c_in = config.n_leads
        for c_out, k, s in zip(
            config.conv_channels, config.conv_kernels, config.conv_strides, strict=True
        ):
            blocks.append(
                nn.Sequential(
                    nn.Conv1d(c_in, c_out, k, stride=s, padding=k // 2, bias=False),
                    nn.BatchNorm1d(c_out),
                    nn.ReLU(inplace=True),
                )
            )
            c_in = c_out
        self.front = nn.ModuleList(blocks)
        # The lead mask shifts the first block's pre-activation: "which leads are real".
        self.mask_bias = nn.Linear(config.n_leads, config.conv_channels[0])
        self.rnn = recurrent_layer(
            config.cell,
            c_in,
            config.hidden_size,
            num_layers=config.num_layers,
            bidirectional=config.bidirectional,
            dropout=config.dropout,
        )
        n_dir = 2 if config.bidirectional else 1
        n_side = config.n_leads + (len(DEMOGRAPHIC_FEATURES) if config.demographics else 0)
        summary = 2 * n_dir * config.hidden_size + n_side
        self.head = nn.Sequential(
            nn.Dropout(config.dropout),
            nn.Linear(summary, config.hidden_size),
            nn.ReLU(),
            nn.Linear(config.hidden_size, config.n_classes),
        )

    def forward(
        self,
        x: torch.Tensor,
        lead_mask: torch.Tensor | None = None,
        demographics: torch.Tensor | None = None,
    ) -> torch.Tensor:
        cfg = self.config
        b = x.shape[0]
        if x.ndim != 3 or x.shape[2] != cfg.n_leads:
            raise ValueError(f"x must be (batch, time, {cfg.n_leads}), got {tuple(x.shape)}")
        if lead_mask is None:
            lead_mask = x.new_ones(b, cfg.n_leads)
        h = (x * lead_mask[:, None, :]).transpose(1, 2)  # (B, n_leads, T)
        for i, block in enumerate(self.front):
            conv, bn, act = cast(nn.Sequential, block)
            h = conv(h)  # (B, C_i, T_i)
            if i == 0:
                h = h + self.mask_bias(lead_mask)[:, :, None]
            h = act(bn(h))
        out, _ = self.rnn(h.transpose(1, 2))  # (B, T', n_dir * H)
        hs = cfg.hidden_size
        if cfg.bidirectional:
            # Last step of the forward direction, first of the backward: each has seen it all.
            last = torch.cat([out[:, -1, :hs], out[:, 0, hs:]], dim=1)
        else:
            last = out[:, -1]
        parts = [last, out.mean(dim=1), lead_mask]
        if cfg.demographics:
            if demographics is None:
                demographics = x.new_zeros(b, len(DEMOGRAPHIC_FEATURES))
            parts.append(demographics)
        return self.head(torch.cat(parts, dim=1))

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


# --------------------------------------------------------------------------- side inputs
def lead_mask(leads: Sequence[str], order: Sequence[str] = PTBXL_LEADS, n: int = 1) -> np.ndarray:
    """Lead mask for records holding ``leads`` (names, case-insensitive, in any order).

    Returns
    -------
    np.ndarray
        float32 ``(n, len(order))``: 1 where the lead is present.

    Raises
    ------
    ValueError
        A lead not in ``order``, or no lead at all.
    """
    upper = [o.upper() for o in order]
    if not leads:
        raise ValueError("at least one lead is needed")
    unknown = [lead for lead in leads if lead.upper() not in upper]
    if unknown:
        raise ValueError(f"unknown leads {unknown}; expected some of {list(order)}")
    m = np.zeros((n, len(order)), dtype=np.float32)
    m[:, [upper.index(lead.upper()) for lead in leads]] = 1.0
    return m


def sample_lead_masks(
    n: int,
    gen: torch.Generator,
    *,
    p_all: float = 0.3,
    p_limb: float = 0.2,
    p_single: float = 0.2,
    n_leads: int = 12,
) -> torch.Tensor:
    """Random lead masks for training: one model for any lead subset.

    With probability ``p_all`` all leads; ``p_limb`` the six limb leads; ``p_single`` lead I
    alone; otherwise each lead kept with probability 1/2 (at least one).

    Returns
    -------
    torch.Tensor
        float32 ``(n, n_leads)``.
    """
    u = torch.rand(n, generator=gen)
    masks = (torch.rand(n, n_leads, generator=gen) < 0.5).float()
    empty = masks.sum(dim=1) == 0
    masks[empty, torch.randint(0, n_leads, (int(empty.sum()),), generator=gen)] = 1.0
    limb = torch.zeros(n_leads)
    limb[: min(6, n_leads)] = 1.0
    single = torch.zeros(n_leads)
    single[0] = 1.0
    masks[u < p_all] = 1.0
    masks[(u >= p_all) & (u < p_all + p_limb)] = limb
    masks[(u >= p_all + p_limb) & (u < p_all + p_limb + p_single)] = single
    return masks


def encode_demographics(age: np.ndarray | Sequence[float | None], sex: Any) -> np.ndarray:
    """Demographics input from ages (years) and sexes (0 male, 1 female; PTB-XL's coding).

    A record whose age or sex is missing (None / NaN) gets zeros with presence flag 0. Ages are
    clipped at 90 (PTB-XL codes ages over 89 as 300) and standardised (mean 60, sd 17 years).

    Returns
    -------
    np.ndarray
        float32 ``(n, 3)``: age z-score, sex, presence flag.

    Raises
    ------
    ValueError
        An age outside [0, 300] or a sex other than 0 / 1.
    """
    a = np.asarray(
        [np.nan if v is None else v for v in np.atleast_1d(np.asarray(age, dtype=object))],
        dtype=np.float64,
    )
    s = np.asarray(
        [np.nan if v is None else v for v in np.atleast_1d(np.asarray(sex, dtype=object))],
        dtype=np.float64,
    )
    if a.shape != s.shape:
        raise ValueError(f"age and sex must have the same length, got {a.shape} and {s.shape}")
    present = np.isfinite(a) & np.isfinite(s)
    if np.any((a[present] < 0) | (a[present] > 300)):
        raise ValueError("age must be in years, 0-300 (PTB-XL codes > 89 as 300)")
    if np.any(~np.isin(s[present], (0.0, 1.0))):
        raise ValueError("sex must be 0 (male) or 1 (female)")
    out = np.zeros((a.shape[0], 3), dtype=np.float32)
    out[present, 0] = (np.minimum(a[present], _AGE_MAX) - _AGE_MEAN) / _AGE_STD
    out[present, 1] = s[present]
    out[present, 2] = 1.0
    return out
