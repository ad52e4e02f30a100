"""Label-smoothed cross-entropy (Szegedy et al. 2016), normalised by the number of target tokens.

With smoothing eps over a vocabulary of V entries, the target distribution puts 1 - eps on the
gold token and spreads eps evenly over the V - 3 other tokens a target can hold: never `<pad>` or
`<bos>`, which no target position ever is (search never produces them either):

    loss = -(1 - eps) * log p(gold) - eps / (V - 3) * sum_{w not in {gold, pad, bos}} log p(w)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmtkit.vocabulary import BOS_ID, PAD_ID


def label_smoothed_nll(
    logits: Tensor, target: Tensor, smoothing: float = 0.0, pad_id: int = PAD_ID,
    bos_id: int = BOS_ID,
) -> tuple[Tensor, Tensor]:
    """logits (batch, tgt_len, vocab): the output layer's scores (or already log-probabilities:
    normalising them again changes nothing); target (batch, tgt_len) -> (loss sum, nll sum).

    Both are sums over non-padding target tokens; the caller divides by the token count, so
    the gradient of a batch does not depend on how it was split (gradient accumulation, DDP).
    The plain negative log-likelihood is returned too (no gradient), for perplexity.
    """
    loss, nll = _SmoothedCrossEntropy.apply(logits, target, smoothing, pad_id, bos_id)
    return loss, nll


def _loss_terms(scores: Tensor, lse: Tensor, gold: Tensor, smoothing: float, pad_id: int,
                bos_id: int) -> tuple[Tensor, Tensor]:
    """scores (..., vocab) in fp32, lse (..., 1) their log-normaliser, gold (..., 1) ->
    (loss, nll) per position, each (..., 1)."""
    gold_lp = scores.gather(-1, gold) - lse  # log p(gold)
    nll = -gold_lp
    if not smoothing:
        return nll, nll
    vocab = scores.size(-1)
    # log p summed over the words that get smoothing mass: all - gold - <pad> - <bos>
    others = scores.sum(-1, keepdim=True) - vocab * lse - gold_lp \
        - (scores[..., [pad_id, bos_id]] - lse).sum(-1, keepdim=True)
    return (1.0 - smoothing) * nll - smoothing / (vocab - 3) * others, nll


def _scores_grad_(log_probs: Tensor, gold: Tensor, smoothing: float, pad_id: int, bos_id: int) -> Tensor:
    """d loss / d score(w) = p(w) - q(w), written over log_probs (..., vocab) in place."""
    other = smoothing / (log_probs.size(-1) - 3)  # q(w) of the words that get smoothing mass
    grad = log_probs.exp_()  # p(w)
    grad.sub_(other)
    grad[..., [pad_id, bos_id]] += other  # q is 0 at <pad> and <bos> ...
    # ... and 1 - eps at gold
    grad.scatter_add_(-1, gold, torch.full(gold.shape, other - (1.0 - smoothing), dtype=grad.dtype,
                                           device=grad.device))
    return grad


class _SmoothedCrossEntropy(torch.autograd.Function):
    """log_softmax and the loss above in one, with the gradient written directly:

        d loss / d logit(w) = p(w) - q(w)   at real target positions (q: the smoothed target)

    Autograd would keep the (tokens x vocabulary) log-probabilities and build the gradient
    from a log_softmax backward and the gather's and column selections' backwards, each filling
    a tensor of that size: for a small model with an 8k vocabulary half of an update's time
    went to those passes over memory."""

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, smoothing: float, pad_id: int,
                bos_id: int) -> tuple[Tensor, Tensor]:
        scores = logits.float()
        lse = torch.logsumexp(scores, dim=-1, keepdim=True)  # (batch, tgt_len, 1)
        mask = (target != pad_id).unsqueeze(-1)  # (batch, tgt_len, 1)
        loss, nll = _loss_terms(scores, lse, target.unsqueeze(-1), smoothing, pad_id, bos_id)
        loss, nll = (loss * mask).sum(), (nll * mask).sum()
        ctx.save_for_backward(scores, lse, target)
        ctx.settings = (smoothing, pad_id, bos_id, logits.dtype)
        report = nll.detach().clone()
        ctx.mark_non_differentiable(report)
        return loss, report

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_nll: Tensor) -> tuple[Tensor | None, ...]:
        scores, lse, target = ctx.saved_tensors
        smoothing, pad_id, bos_id, dtype = ctx.settings
        grad = _scores_grad_(scores - lse, target.unsqueeze(-1), smoothing, pad_id, bos_id)
        padded = (target.reshape(-1) == pad_id).nonzero().squeeze(1)
        grad.view(-1, grad.size(-1)).index_fill_(0, padded, 0.0)  # padding is not part of the loss
        return grad.mul_(grad_loss.float()).to(dtype), None, None, None, None


CHUNK_SCORES = 1 << 23  # scores (rows x vocabulary) computed at once: 32 MB in fp32


def output_layer_loss(
    hidden: Tensor, generator: nn.Linear, target: Tensor, smoothing: float = 0.0,
    pad_id: int = PAD_ID, bos_id: int = BOS_ID,
) -> tuple[Tensor, Tensor]:
    """hidden (batch, tgt_len, d): what the output layer reads; target (batch, tgt_len) ->
    (loss sum, nll sum), as `label_smoothed_nll(generator(hidden), target, ...)` gives them.

    The output layer and the loss run together, about a thousand target positions at a time, so
    the (tokens x vocabulary) scores never exist whole: with 8k-token batches and an 8k
    vocabulary they are 260 MB, and with their gradient the largest blocks of an update. Blocks
    of that size, kept by the allocator (cpu.keep_freed_memory) and each a little bigger or
    smaller with the batch, made a long run's resident memory climb in steps; chunks of 32 MB
    reuse the same memory. Padding positions are left out before the output layer."""
    real = target != pad_id  # (batch, tgt_len)
    rows, gold = hidden[real], target[real]  # (tokens, d), (tokens,)
    weight, bias = generator.weight, generator.bias
    if not torch.is_grad_enabled():
        # needs_input_grad follows requires_grad even under no_grad: without this, validation
        # computed the output layer's gradients too (a third of its loss pass)
        rows, weight = rows.detach(), weight.detach()
        bias = None if bias is None else bias.detach()
    return _OutputLayerLoss.apply(rows, weight, bias, gold, smoothing, pad_id, bos_id)


class _OutputLayerLoss(torch.autograd.Function):
    """The loss of _SmoothedCrossEntropy, with the output layer: the forward pass also computes
    the gradients (of rows, weight and bias) chunk by chunk, and the backward pass scales them."""

    @staticmethod
    def forward(ctx, rows: Tensor, weight: Tensor, bias: Tensor | None, gold: Tensor, smoothing: float,
                pad_id: int, bos_id: int) -> tuple[Tensor, Tensor]:
        device = rows.device.type
        # under autocast the products run in its dtype, as they would in nn.Linear
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        need_grad = any(ctx.needs_input_grad[:3])
        with torch.autocast(device, enabled=False):
            w = weight.to(dtype)
            b = None if bias is None else bias.to(dtype)
            grad_rows = grad_w = grad_b = None
            if need_grad:
                grad_rows = torch.empty_like(rows)
                grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
                if bias is not None:
                    grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
            loss = torch.zeros((), dtype=torch.float32, device=rows.device)
            nll = torch.zeros((), dtype=torch.float32, device=rows.device)
            step = max(1, CHUNK_SCORES // weight.size(0))
            for start in range(0, rows.size(0), step):
                h, y = rows[start:start + step].to(dtype), gold[start:start + step].unsqueeze(1)
                scores = F.linear(h, w, b).float()  # (n, vocab)
                lse = torch.logsumexp(scores, dim=-1, keepdim=True)  # (n, 1)
                chunk_loss, chunk_nll = _loss_terms(scores, lse, y, smoothing, pad_id, bos_id)
                loss += chunk_loss.sum()
                nll += chunk_nll.sum()
                if not need_grad:
                    continue
                grad = _scores_grad_(scores.sub_(lse), y, smoothing, pad_id, bos_id)  # (n, vocab)
                g = grad.to(dtype)
                grad_rows[start:start + step] = g @ w  # (n, d)
                grad_w += (g.t() @ h).float()  # (vocab, d)
                if grad_b is not None:
                    grad_b += grad.sum(0)
        ctx.save_for_backward(grad_rows, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        report = nll.clone()
        ctx.mark_non_differentiable(report)
        return loss, report

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_nll: Tensor) -> tuple[Tensor | None, ...]:
        grad_rows, grad_w, grad_b = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.dtypes
        g = grad_loss.float()
        grad_bias = None if bias_dtype is None else (grad_b * g).to(bias_dtype)
        grad_weight = (grad_w * g).to(weight_dtype)
        return grad_rows * g.to(grad_rows.dtype), grad_weight, grad_bias, None, None, None, None


def perplexity(nll_per_token: float) -> float:
    return float(torch.tensor(min(nll_per_token, 100.0)).exp())
