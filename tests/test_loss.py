import math

import pytest
import torch

from nmtkit.loss import label_smoothed_nll, perplexity


def test_label_smoothing_against_hand_computed_value() -> None:
    # vocabulary: pad(0), bos(1), a(2), b(3), c(4); one target token, gold = b
    probs = torch.tensor([[[0.05, 0.05, 0.2, 0.6, 0.1]]])
    log_probs = probs.log()
    target = torch.tensor([[3]])
    eps = 0.3
    loss, nll = label_smoothed_nll(log_probs, target, eps, pad_id=0, bos_id=1)
    # 1 - eps on the gold token, eps spread evenly over the V - 3 = 2 tokens that are neither
    # gold nor pad nor bos (a, c): nothing on pad or bos
    expected = -(0.7 * math.log(0.6) + 0.15 * math.log(0.2) + 0.15 * math.log(0.1))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert nll.item() == pytest.approx(-math.log(0.6), rel=1e-6)


def test_padding_is_ignored_and_no_smoothing_is_plain_nll() -> None:
    torch.manual_seed(0)
    log_probs = torch.log_softmax(torch.randn(2, 3, 5), -1)
    target = torch.tensor([[1, 2, 0], [3, 0, 0]])
    loss, nll = label_smoothed_nll(log_probs, target, 0.0, bos_id=2)
    ref = torch.nn.functional.nll_loss(log_probs.transpose(1, 2), target, ignore_index=0,
                                       reduction="sum")
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert nll.item() == pytest.approx(ref.item(), rel=1e-6)
    changed = log_probs.clone()
    changed[0, 2] = -50.0  # a padding position
    changed[:, :, 0] = -60.0  # the <pad> and <bos> entries get no smoothing mass
    changed[:, :, 2] = -70.0
    target = torch.tensor([[1, 3, 0], [3, 0, 0]])  # no gold token is <bos> (2)
    assert label_smoothed_nll(changed, target, 0.1, bos_id=2)[0].item() == pytest.approx(
        label_smoothed_nll(log_probs, target, 0.1, bos_id=2)[0].item(), rel=1e-6)


def test_perplexity() -> None:
    assert perplexity(math.log(20.0)) == pytest.approx(20.0, rel=1e-5)
