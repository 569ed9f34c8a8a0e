"""The CRNN record model: shapes, lead masks, any lead subset, optional age and sex."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.record_model import (
    LEAD_SUBSETS,
    LIMB_LEADS,
    PTBXL_LEADS,
    RecordModel,
    RecordModelConfig,
    encode_demographics,
    lead_mask,
    sample_lead_masks,
)


def _model(**kw: object) -> RecordModel:
    torch.manual_seed(0)
    return RecordModel(RecordModelConfig(**kw)).eval()  # type: ignore[arg-type]


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_shapes_for_both_cells_and_side_inputs_optional(cell: str) -> None:
    m = _model(cell=cell)
    x = torch.randn(3, 1000, 12)
    with torch.inference_mode():
        assert m(x).shape == (3, 5)
        assert m(x, torch.ones(3, 12), torch.zeros(3, 3)).shape == (3, 5)
        # Nothing given = all leads, demographics unknown.
        assert torch.allclose(m(x), m(x, torch.ones(3, 12), torch.zeros(3, 3)))
    # Other lengths work too (10 s is what PTB-XL gives, not a requirement).
    assert m(torch.randn(1, 500, 12)).shape == (1, 5)
    assert m.config.total_stride == 8


def test_absent_leads_are_ignored_and_the_mask_is_read() -> None:
    m = _model()
    x = torch.randn(2, 1000, 12)
    mask = torch.from_numpy(lead_mask(LIMB_LEADS, n=2))
    noisy = x.clone()
    noisy[:, :, 6:] = 100.0 * torch.randn(2, 1000, 6)  # chest leads: garbage, but masked
    with torch.inference_mode():
        assert torch.allclose(m(x, mask), m(noisy, mask), atol=1e-6)
        # The same zeros read differently when the mask says "recorded": the mask is an input.
        zeroed = x.clone()
        zeroed[:, :, 6:] = 0.0
        assert not torch.allclose(m(zeroed, mask), m(zeroed, torch.ones(2, 12)), atol=1e-4)


@pytest.mark.parametrize("subset", sorted(LEAD_SUBSETS))
def test_any_named_lead_subset(subset: str) -> None:
    m = _model()
    mask = torch.from_numpy(lead_mask(LEAD_SUBSETS[subset], n=2))
    assert mask.sum(dim=1).tolist() == [len(LEAD_SUBSETS[subset])] * 2
    with torch.inference_mode():
        out = m(torch.randn(2, 1000, 12), mask)
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_lead_mask_names_and_errors() -> None:
    m = lead_mask(["v1", "I", "aVF"])
    assert m.shape == (1, 12) and m.dtype == np.float32
    assert [PTBXL_LEADS[i] for i in np.flatnonzero(m[0])] == ["I", "AVF", "V1"]
    with pytest.raises(ValueError, match="unknown leads"):
        lead_mask(["I", "V7"])
    with pytest.raises(ValueError, match="at least one lead"):
        lead_mask([])


def test_demographics_are_optional_and_used_when_present() -> None:
    m = _model(demographics=True)
    x = torch.randn(2, 1000, 12)
    demo = torch.from_numpy(encode_demographics([70.0, 30.0], [1, 0]))
    with torch.inference_mode():
        assert torch.allclose(m(x, None, None), m(x, None, torch.zeros(2, 3)))
        assert not torch.allclose(m(x, None, demo), m(x, None, None), atol=1e-5)
    blind = _model(demographics=False)
    with torch.inference_mode():
        assert torch.allclose(blind(x, None, demo), blind(x))
    assert blind.n_parameters() < m.n_parameters()


def test_encode_demographics() -> None:
    d = encode_demographics([60.0, None, 300.0, 45.0], [0, 1, 1, float("nan")])
    assert d.shape == (4, 3) and d.dtype == np.float32
    np.testing.assert_allclose(d[0], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(d[1], [0.0, 0.0, 0.0])  # age missing: all zeros, flag 0
    np.testing.assert_allclose(d[2], [30.0 / 17.0, 1.0, 1.0], rtol=1e-6)  # 300 = "over 89" -> 90
    np.testing.assert_allclose(d[3], [0.0, 0.0, 0.0])  # sex missing
    with pytest.raises(ValueError, match="sex must be 0"):
        encode_demographics([50.0], [2])
    with pytest.raises(ValueError, match="age must be"):
        encode_demographics([-1.0], [0])
    with pytest.raises(ValueError, match="same length"):
        encode_demographics([50.0, 60.0], [0])


def test_training_lead_masks() -> None:
    gen = torch.Generator().manual_seed(0)
    masks = sample_lead_masks(20_000, gen, p_all=0.3, p_limb=0.2, p_single=0.2)
    assert masks.shape == (20_000, 12)
    assert (masks.sum(dim=1) >= 1).all()
    n = masks.sum(dim=1)
    limb = (masks[:, :6].sum(dim=1) == 6) & (n == 6)
    single = (masks[:, 0] == 1) & (n == 1)
    # Random subsets also produce these now and then, hence the one-sided margins.
    assert 0.29 < float((n == 12).float().mean()) < 0.32
    assert 0.19 < float(limb.float().mean()) < 0.22
    assert 0.19 < float(single.float().mean()) < 0.22


def test_config_validation_and_round_trip() -> None:
    cfg = RecordModelConfig(cell="lstm", conv_channels=(16, 32), conv_kernels=(5, 3),
                            conv_strides=(2, 4), demographics=False)  # fmt: skip
    assert RecordModelConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.total_stride == 8
    with pytest.raises(ValueError, match="cell"):
        RecordModelConfig(cell="rnn")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="equal length"):
        RecordModelConfig(conv_channels=(8,), conv_kernels=(3, 3), conv_strides=(2,))
    with pytest.raises(ValueError, match="odd"):
        RecordModelConfig(conv_kernels=(4, 5, 5))
    with pytest.raises(ValueError, match="dropout"):
        RecordModelConfig(dropout=1.0)
