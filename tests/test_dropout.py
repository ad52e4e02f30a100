import pytest
import torch

from nmtkit.dropout import Dropout


def test_dropout_zeroes_about_p_keeps_the_mean_and_is_identity_in_eval() -> None:
    torch.manual_seed(0)
    layer = Dropout(0.3)
    x = torch.ones(200_000)
    y = layer(x)
    zeroed = (y == 0).float().mean().item()
    assert zeroed == pytest.approx(0.3, abs=0.01)
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.7))
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)
    layer.eval()
    assert layer(x) is x
    assert Dropout(0.0).train()(x) is x


def test_gradient_flows_through_the_kept_elements_only() -> None:
    torch.manual_seed(1)
    x = torch.randn(50, 40, requires_grad=True)
    y = Dropout(0.5)(x)
    y.sum().backward()
    kept = y.detach() != 0
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 2.0))
    assert torch.equal(x.grad[~kept], torch.zeros_like(x.grad[~kept]))
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5, 0.9])
def test_each_16_bit_lane_of_the_mask_drops_p(p: float) -> None:
    """Four elements share one 64-bit draw: each of the four positions must drop p of the time
    (a draw with a fixed top bit would drop too few or too many in one lane), odd sizes too."""
    torch.manual_seed(2)
    y = Dropout(p)(torch.ones(4 * 60_001 + 3))
    for lane in range(4):
        assert (y[lane::4] == 0).float().mean().item() == pytest.approx(p, abs=0.006)
    torch.manual_seed(2)
    assert torch.equal(Dropout(p)(torch.ones(4 * 60_001 + 3)), y)  # seeded, so resumable
