"""Attention for the RNN decoder: score each encoder state h_s against the decoder's query q.

    score(q, h_s) = q . h_s                        dot       (Luong et al. 2015)
                  = (W_a q) . h_s                  general   (a bias-free linear map of the query)
                  = v_a . tanh(W_q q + W_k h_s)    concat    (Luong's name; also Bahdanau's score)

    a_t = softmax(score) over real source positions (padding gets exactly zero weight)
    c_t = sum_s a_t(s) h_s                         the context vector

`bahdanau` scores like `concat`; what makes it Bahdanau et al. (2015) is where the decoder asks
(with its previous state s_{t-1}, before the RNN step) and where the context goes (into the
RNN's input): see `rnn.RNNDecoder`. The Transformer's multi-head attention lives in
`transformer_layers.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KINDS = ("dot", "general", "concat", "bahdanau")


class RNNAttention(nn.Module):
    """One attention for all score functions; `keys` are precomputed once per sentence."""

    def __init__(self, kind: str, query_size: int, memory_size: int) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown attention {kind!r}")
        self.kind = kind
        self.additive = kind in ("concat", "bahdanau")
        self.query_proj: nn.Linear | None = None
        self.key_proj: nn.Linear | None = None
        self.v: nn.Linear | None = None
        if kind == "general":
            self.query_proj = nn.Linear(query_size, memory_size, bias=False)
        elif self.additive:
            self.query_proj = nn.Linear(query_size, query_size, bias=False)
            self.key_proj = nn.Linear(memory_size, query_size, bias=False)
            self.v = nn.Linear(query_size, 1, bias=False)
        elif query_size != memory_size:
            # dot needs equal sizes; a bidirectional encoder's states are twice the decoder's,
            # so they are mapped down once per sentence (not per step).
            self.key_proj = nn.Linear(memory_size, query_size, bias=False)

    def keys(self, memory: Tensor) -> Tensor:
        """Per-sentence part of the score: (batch, src_len, memory) -> (batch, src_len, k)."""
        return memory if self.key_proj is None else self.key_proj(memory)

    def forward(
        self, query: Tensor, keys: Tensor, memory: Tensor, src_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """query (batch, tgt_len, query); keys (batch, src_len, k); memory (batch, src_len, memory);
        src_mask (batch, src_len) True at real tokens. Returns context and weights."""
        if self.additive:
            q = self.query_proj(query)  # (batch, tgt_len, query)
            scores = self.v(torch.tanh(q.unsqueeze(2) + keys.unsqueeze(1))).squeeze(-1)
        else:
            q = query if self.query_proj is None else self.query_proj(query)
            scores = torch.bmm(q, keys.transpose(1, 2))  # (batch, tgt_len, src_len)
        scores = scores.masked_fill(~src_mask.unsqueeze(1), float("-inf"))
        weights = F.softmax(scores, dim=-1)  # (batch, tgt_len, src_len)
        context = torch.bmm(weights, memory)  # (batch, tgt_len, memory)
        return context, weights
