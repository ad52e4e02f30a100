import pytest
import torch
from torch import nn

from nmtkit.ema import WeightAverage
from nmtkit.errors import NMTKitError


def test_average_follows_the_warmed_up_decay_and_applied_swaps_back() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ema = WeightAverage(model, decay=0.5)
    expected = model.weight.detach().clone()
    for step in range(1, 6):
        with torch.no_grad():
            model.weight.add_(torch.randn(2, 3))
        ema.update(step)
        d = min(0.5, (1 + step) / (10 + step))  # 0.18, 0.25, ... then capped at 0.5
        expected = d * expected + (1 - d) * model.weight.detach()
    assert ema.decay_at(1) == pytest.approx(2 / 11) and ema.decay_at(100) == 0.5
    raw = model.weight.detach().clone()
    with ema.applied() as saved:
        assert torch.allclose(model.weight, expected)
        assert torch.equal(saved["raw.weight"], raw)
    assert torch.equal(model.weight, raw)  # back to the raw weights after the block


def test_resume_restores_raw_weights_and_refuses_a_checkpoint_without_them() -> None:
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(1.0)  # as loaded from a checkpoint: the average
    ema = WeightAverage(model, decay=0.9)
    ema.resume({"raw.weight": torch.zeros(2, 3), "raw.bias": torch.zeros(2)}, "ckpt/training.safetensors")
    assert torch.equal(model.weight, torch.zeros(2, 3))
    with ema.applied():
        assert torch.equal(model.weight, torch.ones(2, 3))
    with pytest.raises(NMTKitError, match=r"ckpt/training.safetensors: no raw weights for weight"):
        WeightAverage(model, 0.9).resume({}, "ckpt/training.safetensors")
