"""Token embeddings, the checks that make sharing and tying them valid, and positional encodings.

Every model family builds its embeddings here: the RNN and the Transformer encoder-decoders,
the decoder-only model and (for positions) the Vision Transformer.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from nmtkit.errors import NMTKitError
from nmtkit.vocabulary import PAD_ID


def token_embedding(vocab_size: int, dim: int) -> nn.Embedding:
    """An embedding whose padding row stays zero and gets no gradient."""
    return nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)


def check_sharing(share_embeddings: bool, tie_output: bool, src_vocab: int, tgt_vocab: int,
                  embed_dim: int, output_dim: int) -> None:
    """share_embeddings: one table for source and target; tie_output: the target embedding
    is also the output layer's weight (Press & Wolf 2017)."""
    if share_embeddings and src_vocab != tgt_vocab:
        raise NMTKitError(
            "model.share_embeddings needs one joint vocabulary (set vocab.joint: true): "
            f"source has {src_vocab} entries, target {tgt_vocab}"
        )
    if tie_output and embed_dim != output_dim:
        raise NMTKitError(
            f"model.tie_output needs the embedding size ({embed_dim}) to equal the decoder "
            f"output size ({output_dim})"
        )


def sinusoids(length: int, d_model: int, layout: str = "interleaved") -> Tensor:
    """PE(p, 2i) = sin(p / 10000^(2i / d_model)), PE(p, 2i + 1) = cos(same): (length, d_model).

    Each pair of dimensions turns at its own frequency, so moving k positions is the same linear
    map wherever it starts, which lets attention learn relative offsets. The `halves` layout
    (Marian's) holds the same values with all sines first, then all cosines."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)  # (length, 1)
    inv_freq = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
    angles = position * inv_freq  # (length, ceil(d_model / 2))
    table = torch.empty(length, d_model)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : d_model // 2])  # an odd d_model has one cosine fewer
    if layout == "halves":
        table = torch.cat([table[:, 0::2], table[:, 1::2]], dim=1)  # (length, d_model)
    return table


class PositionalEncoding(nn.Module):
    """Adds a vector per position to the token embeddings, since attention itself ignores order.

        sinusoidal  the fixed `sinusoids` table: a buffer, rebuilt on construction, never saved
        learned     a trained table of `max_positions` vectors
        none        nothing: an encoder sees a bag of tokens, a decoder only its causal mask
    """

    def __init__(self, kind: str, d_model: int, max_positions: int,
                 layout: str = "interleaved") -> None:
        super().__init__()
        self.max_positions = max_positions
        if kind == "learned":
            # N(0, 1), the scale of the sinusoids and of the scaled token embeddings
            self.table = nn.Parameter(torch.randn(max_positions, d_model))
        else:
            table = sinusoids(max_positions, d_model, layout) if kind == "sinusoidal" else None
            self.register_buffer("table", table, persistent=False)

    def forward(self, x: Tensor, start: int | Tensor = 0) -> Tensor:
        """x (batch, len, d_model) holds positions start .. start + len - 1. `start` is an int
        (the same for every row; > 0 in search, where each step feeds the next position) or a
        (batch,) tensor of each row's first position (rows of a left-padded batch)."""
        if self.table is None:
            return x
        length = x.size(1)
        if isinstance(start, Tensor):
            end = int(start.max()) + length if start.numel() else length
            self._check(end)
            positions = start.unsqueeze(1) + torch.arange(length, device=x.device)  # (batch, len)
            return x + self.table[positions.clamp(min=0)]
        self._check(start + length)
        return x + self.table[start : start + length]

    def _check(self, end: int) -> None:
        if end > self.max_positions:
            raise NMTKitError(
                f"a sequence of {end} tokens is longer than model.max_positions "
                f"({self.max_positions}): raise it, or keep sentences shorter (data.max_len)"
            )
