"""Encoders: read the source sentence into `memory`, one vector per source token."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


@dataclass
class EncoderOutput:
    memory: Tensor  # (batch, src_len, memory_size)
    src_mask: Tensor  # (batch, src_len) bool, True at real tokens
    final_hidden: Tensor | None = None  # RNN: (layers * directions, batch, hidden)
    final_cell: Tensor | None = None  # LSTM only


def reverse_padded(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each sequence within its own length; padding stays at the end."""
    # x: (batch, seq_len, ...) ; lengths: (batch,)
    seq_len = x.size(1)
    positions = torch.arange(seq_len, device=x.device).unsqueeze(0)  # (1, seq_len)
    rev = lengths.unsqueeze(1) - 1 - positions  # (batch, seq_len)
    index = torch.where(rev >= 0, rev, positions)  # padding maps to itself
    if x.dim() > 2:
        index = index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


class RNNEncoder(nn.Module):
    """Embedding -> stacked (bi)LSTM/GRU. With `reverse_source` the RNN reads the sentence
    backwards (Sutskever et al. 2014); memory is flipped back so position i is source token i."""

    def __init__(
        self,
        embedding: nn.Embedding,
        cell: str,
        hidden_size: int,
        layers: int,
        bidirectional: bool,
        dropout: float,
        reverse_source: bool,
    ) -> None:
        super().__init__()
        self.embedding = embedding
        rnn_cls = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn_cls(
            embedding.embedding_dim,
            hidden_size,
            num_layers=layers,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
            batch_first=True,
        )
        self.dropout = nn.Dropout(dropout)
        self.reverse_source = reverse_source
        self.output_size = hidden_size * (2 if bidirectional else 1)

    def forward(self, src: Tensor, src_lengths: Tensor) -> EncoderOutput:
        src_mask = src != self.embedding.padding_idx  # (batch, src_len)
        if self.reverse_source:
            src = reverse_padded(src, src_lengths)
        emb = self.dropout(self.embedding(src))  # (batch, src_len, embed)
        packed = pack_padded_sequence(emb, src_lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, final = self.rnn(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))
        if self.reverse_source:
            memory = reverse_padded(memory, src_lengths)
        hidden, cell = final if isinstance(final, tuple) else (final, None)
        # hidden: (layers * directions, batch, hidden)
        return EncoderOutput(self.dropout(memory), src_mask, hidden, cell)
