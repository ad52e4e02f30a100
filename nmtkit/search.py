"""Search: turn a trained model into output sentences, using only the decoder's step interface.

Every search runs all sentences of a batch in one tensor pass per step; a sentence that has
produced EOS (or reached its length limit) leaves the active set, so the work per step shrinks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from nmtkit.model import Seq2Seq
from nmtkit.vocabulary import BOS_ID, EOS_ID


@dataclass
class Hypothesis:
    tokens: list[int]  # target ids without BOS/EOS
    score: float  # sum of log-probabilities (length-penalised for beam search)
    attention: Tensor | None = None  # (len(tokens) + 1, src_len): rows include the EOS step
    nbest: list[Hypothesis] = field(default_factory=list)


def max_lengths(src_lengths: Tensor, max_len_a: float, max_len_b: int) -> Tensor:
    """The longest output allowed per sentence: a * src_len + b target tokens (EOS excluded)."""
    return (src_lengths.float() * max_len_a + max_len_b).long().clamp(min=1)


def length_limits(model: Seq2Seq, src_lengths: Tensor, max_len_a: float, max_len_b: int) -> Tensor:
    """max_lengths, capped where the decoder has a fixed number of positions."""
    limits = max_lengths(src_lengths, max_len_a, max_len_b)
    cap = model.decoder.max_steps
    return limits if cap is None else limits.clamp(max=cap - 1)


@torch.inference_mode()
def greedy_search(
    model: Seq2Seq,
    src: Tensor,
    src_lengths: Tensor,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    return_attention: bool = False,
) -> list[Hypothesis]:
    """Pick the most probable token at each step. src (batch, src_len) -> one hypothesis each."""
    batch = src.size(0)
    enc = model.encode(src, src_lengths)
    state = model.init_state(enc)
    limits = length_limits(model, src_lengths, max_len_a, max_len_b)  # (batch,)
    active = torch.arange(batch, device=src.device)  # original index of each active row
    prev = torch.full((batch,), BOS_ID, dtype=torch.long, device=src.device)
    tokens: list[list[int]] = [[] for _ in range(batch)]
    scores = [0.0] * batch
    attentions: list[list[Tensor]] = [[] for _ in range(batch)]
    for t in range(int(limits.max()) + 1):
        log_probs, attention, state = model.step(prev, state)  # (active, vocab)
        force_eos = limits.index_select(0, active) <= t  # out of length budget: end here
        log_probs[force_eos] = float("-inf")
        log_probs[force_eos, EOS_ID] = 0.0
        best_lp, best = log_probs.max(dim=-1)  # (active,)
        done = best == EOS_ID
        for row, (i, tok, lp) in enumerate(zip(active.tolist(), best.tolist(), best_lp.tolist(),
                                                strict=True)):
            scores[i] += lp
            if tok != EOS_ID:
                tokens[i].append(tok)
            if return_attention and attention is not None:
                attentions[i].append(attention[row].float().cpu())
        if bool(done.all()):
            break
        keep = (~done).nonzero().squeeze(1)
        if len(keep) < len(active):
            active, state = active.index_select(0, keep), state.select(keep)
            best = best.index_select(0, keep)
        prev = best
    return [
        Hypothesis(tokens[i], scores[i], torch.stack(attentions[i]) if attentions[i] else None)
        for i in range(batch)
    ]
