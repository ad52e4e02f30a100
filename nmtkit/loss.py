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
    log_probs: Tensor, target: Tensor, smoothing: float = 0.0, pad_id: int = PAD_ID,
    bos_id: int = BOS_ID,
) -> tuple[Tensor, Tensor]:
    """log_probs (batch, tgt_len, vocab), target (batch, tgt_len) -> (loss sum, nll sum).

    Both are sums over non-padding target tokens; the caller divides by the token count, so
    the gradient of a batch does not depend on how it was split (gradient accumulation, DDP).
    The plain negative log-likelihood is returned too, for perplexity.
    """
    log_probs = log_probs.float()
    mask = target != pad_id  # (batch, tgt_len)
    gold = log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (batch, tgt_len)
    nll = -(gold * mask).sum()
    if smoothing == 0.0:
        return nll, nll.detach()
    vocab = log_probs.size(-1)
    # sum over the entries that get smoothing mass = total - gold - pad - bos
    others = log_probs.sum(-1) - gold - log_probs[..., pad_id] - log_probs[..., bos_id]  # (batch, tgt_len)
    smooth = -(others * mask).sum()
    loss = (1.0 - smoothing) * nll + smoothing / (vocab - 3) * smooth
    return loss, nll.detach()


def perplexity(nll_per_token: float) -> float:
    return float(torch.tensor(min(nll_per_token, 100.0)).exp())
