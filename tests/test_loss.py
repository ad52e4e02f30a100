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
    changed[0, 2] = torch.randn(5) * 10  # a padding position: any scores, same loss
    assert label_smoothed_nll(changed, target, 0.1)[0].item() == pytest.approx(
        label_smoothed_nll(log_probs, target, 0.1)[0].item(), rel=1e-6)


def test_perplexity() -> None:
    assert perplexity(math.log(20.0)) == pytest.approx(20.0, rel=1e-5)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_gradient_equals_autograd_of_the_formula(smoothing: float) -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 9, requires_grad=True)
    target = torch.tensor([[4, 5, 3, 0], [8, 0, 0, 0], [3, 3, 7, 6]])
    loss, nll = label_smoothed_nll(logits, target, smoothing)
    (2.5 * loss).backward()
    fast = logits.grad.clone()
    logits.grad = None
    # the same loss, from its definition: q(gold) = 1 - eps, q(w) = eps / (V - 3) elsewhere
    # except <pad> (0) and <bos> (2), nothing at padding positions
    log_probs = torch.log_softmax(logits, -1)
    q = torch.full((3, 4, 9), smoothing / 6)
    q[..., [0, 2]] = 0.0
    q.scatter_(-1, target.unsqueeze(-1), 1.0 - smoothing)
    reference = -(q * log_probs).sum(-1)[target != 0].sum()
    (2.5 * reference).backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    assert torch.allclose(fast, logits.grad, atol=1e-6)
    assert not nll.requires_grad
    # log-probabilities in place of logits give the same loss (normalising again changes nothing)
    assert label_smoothed_nll(log_probs.detach(), target, smoothing)[0].item() == pytest.approx(loss.item(), rel=1e-5)


@pytest.mark.avx2
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("bias", [True, False])
def test_output_layer_loss_in_chunks_equals_the_whole_scores(monkeypatch, smoothing: float, bias: bool) -> None:
    from torch import nn

    from nmtkit import loss as loss_module

    monkeypatch.setattr(loss_module, "CHUNK_SCORES", 3 * 50)  # 3 rows at a time: chunks and a remainder
    torch.manual_seed(1)
    generator = nn.Linear(16, 50, bias=bias)
    hidden = torch.randn(3, 7, 16, requires_grad=True)
    target = torch.randint(3, 50, (3, 7))
    target[0, 5:] = 0  # padding
    target[2, 2:] = 0
    loss, nll = loss_module.output_layer_loss(hidden, generator, target, smoothing)
    (1.5 * loss).backward()
    chunked = [hidden.grad.clone(), generator.weight.grad.clone()]
    if bias:
        chunked.append(generator.bias.grad.clone())
    hidden.grad = None
    generator.zero_grad()
    ref_loss, ref_nll = label_smoothed_nll(generator(hidden), target, smoothing)
    (1.5 * ref_loss).backward()
    whole = [hidden.grad, generator.weight.grad] + ([generator.bias.grad] if bias else [])
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    assert nll.item() == pytest.approx(ref_nll.item(), rel=1e-5)
    for a, b in zip(chunked, whole, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert hidden.grad[0, 5:].abs().sum() == 0  # padding positions get no gradient
    with torch.inference_mode():  # validation: the loss alone
        assert loss_module.output_layer_loss(hidden, generator, target, smoothing)[1].item() == \
            pytest.approx(ref_nll.item(), rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # products in bf16, as nn.Linear's
        low, _ = loss_module.output_layer_loss(hidden, generator, target, smoothing)
        ref_low, _ = label_smoothed_nll(generator(hidden), target, smoothing)
    assert low.item() == pytest.approx(ref_low.item(), rel=1e-3)


def test_output_layer_loss_under_no_grad_runs_the_forward_products_only() -> None:
    """Validation runs under inference_mode while the parameters still require gradients: the
    loss must not compute the gradients of the output layer then (they tripled its products)."""
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode

    from nmtkit.loss import output_layer_loss

    generator = nn.Linear(16, 50)
    hidden = torch.randn(3, 7, 16, requires_grad=True)
    target = torch.randint(3, 50, (3, 7))
    forward_flops = 2 * 3 * 7 * 16 * 50  # the scores of the 21 target positions
    for context in (torch.no_grad, torch.inference_mode):
        with context(), FlopCounterMode(display=False) as counter:
            loss, _ = output_layer_loss(hidden, generator, target, 0.1)
        assert counter.get_total_flops() == forward_flops
        assert not loss.requires_grad
    with FlopCounterMode(display=False) as counter:  # training: the gradients come with it
        output_layer_loss(hidden, generator, target, 0.1)
    assert counter.get_total_flops() == 3 * forward_flops
