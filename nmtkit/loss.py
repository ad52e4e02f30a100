"""Label-smoothed cross-entropy (Szegedy et al. 2016), normalised by the number of target tokens.

With smoothing eps over a vocabulary of V entries, the target distribution puts 1 - eps on the
gold token and spreads eps evenly over the V - 3 other tokens a target can hold: never `<pad>` or
`<bos>`, which no target position ever is (search never produces them either):

    loss = -(1 - eps) * log p(gold) - eps / (V - 3) * sum_{w not in {gold, pad, bos}} log p(w)
"""

from __future__ import annotations

import torch
from torch import Tensor

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
        lse = torch.logsumexp(scores, dim=-1)  # (batch, tgt_len): log of the normaliser
        mask = target != pad_id  # (batch, tgt_len)
        gold = scores.gather(-1, target.unsqueeze(-1)).squeeze(-1) - lse  # log p(gold)
        nll = -(gold * mask).sum()
        loss = nll
        vocab = scores.size(-1)
        if smoothing:
            # sum of log p over the entries that get smoothing mass: all - gold - pad - bos
            others = (scores.sum(-1) - vocab * lse) - gold \
                - (scores[..., pad_id] - lse) - (scores[..., bos_id] - lse)
            loss = (1.0 - smoothing) * nll - smoothing / (vocab - 3) * (others * mask).sum()
        ctx.save_for_backward(scores, lse, target)
        ctx.settings = (smoothing, pad_id, bos_id, logits.dtype)
        report = nll.clone()
        ctx.mark_non_differentiable(report)
        return loss, report

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_nll: Tensor) -> tuple[Tensor | None, ...]:
        scores, lse, target = ctx.saved_tensors
        smoothing, pad_id, bos_id, dtype = ctx.settings
        vocab = scores.size(-1)
        g = grad_loss.float()
        grad = torch.exp(scores - lse.unsqueeze(-1))  # p(w): (batch, tgt_len, vocab)
        # minus q(w): eps / (V - 3) everywhere but gold, <pad> and <bos>; 1 - eps at gold
        other = smoothing / (vocab - 3)
        grad.sub_(other)
        grad[..., [pad_id, bos_id]] += other
        gold = grad.gather(-1, target.unsqueeze(-1))
        grad.scatter_(-1, target.unsqueeze(-1), gold + other - (1.0 - smoothing))
        flat = grad.view(-1, vocab)
        padded = (target.reshape(-1) == pad_id).nonzero().squeeze(1)
        flat.index_fill_(0, padded, 0.0)  # padding positions are not part of the loss
        return grad.mul_(g).to(dtype), None, None, None, None


def perplexity(nll_per_token: float) -> float:
    return float(torch.tensor(min(nll_per_token, 100.0)).exp())
