"""Decoders, and the step interface that search uses for every model family.

A decoder offers two ways to run:
- `forward(tgt_in, enc)`: teacher forcing over the whole gold prefix at once (training);
- `init_state(enc, max_len)` then `step(prev_tokens, state)`: one target token at a time (search).
The state is a small object whose `select(index)` picks batch rows, which is all beam search
needs to expand sentences into beams, reorder beams and drop finished sentences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nmtkit.attention import RNNAttention
from nmtkit.encoders import EncoderOutput


class DecoderState:
    """Per-sentence decoding state; every tensor in it has the batch on a known dimension."""

    def select(self, index: Tensor) -> DecoderState:
        raise NotImplementedError


class Decoder(nn.Module):
    """What search needs from a decoder; both model families implement it."""

    output_size: int
    max_steps: int | None = None  # longest target the decoder can handle (position tables)

    def init_state(self, enc: EncoderOutput, max_len: int = 0) -> DecoderState:
        """The state before the first target token; max_len, if known, is the most steps that
        will follow (room to set aside)."""
        raise NotImplementedError

    def step(self, prev_tokens: Tensor, state: DecoderState) -> tuple[Tensor, Tensor | None, DecoderState]:
        """prev_tokens (batch,) -> output (batch, output_size), attention (batch, src_len), state."""
        raise NotImplementedError


class Bridge(nn.Module):
    """Merges a bidirectional encoder's two final states into the decoder's initial state,
    per layer: `concat` ([fwd; bwd] -> linear -> tanh), `sum` or `mean`."""

    def __init__(self, mode: str, hidden_size: int, bidirectional: bool) -> None:
        super().__init__()
        self.mode = mode
        self.bidirectional = bidirectional
        self.proj = (
            nn.Linear(2 * hidden_size, hidden_size) if bidirectional and mode == "concat" else None
        )

    def forward(self, final: Tensor) -> Tensor:
        # final: (layers * directions, batch, hidden) -> (layers, batch, hidden)
        if not self.bidirectional:
            return final
        fwd, bwd = final[0::2], final[1::2]  # PyTorch interleaves directions per layer
        if self.mode == "sum":
            return fwd + bwd
        if self.mode == "mean":
            return (fwd + bwd) / 2
        return torch.tanh(self.proj(torch.cat([fwd, bwd], dim=-1)))


@dataclass
class RNNState(DecoderState):
    hidden: Tensor  # (layers, batch, hidden)
    cell: Tensor | None  # (layers, batch, hidden), LSTM only
    input_feed: Tensor  # (batch, hidden): h~_{t-1}, the previous attentional vector
    memory: Tensor  # (batch, src_len, memory)
    keys: Tensor | None  # (batch, src_len, k): attention keys computed once per sentence
    src_mask: Tensor  # (batch, src_len)

    def select(self, index: Tensor) -> RNNState:
        return RNNState(
            hidden=self.hidden.index_select(1, index),
            cell=None if self.cell is None else self.cell.index_select(1, index),
            input_feed=self.input_feed.index_select(0, index),
            memory=self.memory.index_select(0, index),
            keys=None if self.keys is None else self.keys.index_select(0, index),
            src_mask=self.src_mask.index_select(0, index),
        )


class RNNDecoder(Decoder):
    """Stacked LSTM/GRU decoder with attention and input feeding (Luong et al. 2015).

        input_t = [emb(y_{t-1}); h~_{t-1}]         input feeding (if on)
        h_t     = RNN(input_t, h_{t-1})
        c_t     = attention(h_t, memory)          the context vector
        h~_t    = tanh(W_c [c_t; h_t])            the attentional layer
    """

    def __init__(
        self,
        embedding: nn.Embedding,
        cell: str,
        hidden_size: int,
        layers: int,
        memory_size: int,
        attention: str,
        input_feeding: bool,
        dropout: float,
        bridge: str,
        bidirectional_encoder: bool,
        encoder_layers: int,
    ) -> None:
        super().__init__()
        self.embedding = embedding
        self.cell_type = cell
        self.hidden_size = hidden_size
        self.layers = layers
        self.input_feeding = input_feeding
        self.encoder_layers = encoder_layers
        input_size = embedding.embedding_dim + (hidden_size if input_feeding else 0)
        rnn_cls = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn_cls(
            input_size, hidden_size, num_layers=layers,
            dropout=dropout if layers > 1 else 0.0, batch_first=True,
        )
        self.bridge = Bridge(bridge, hidden_size, bidirectional_encoder)
        self.attention = None if attention == "none" else RNNAttention(attention, hidden_size, memory_size)
        # the attentional layer; without attention h~_t is simply h_t (the plain seq2seq)
        self.combine = (
            nn.Linear(memory_size + hidden_size, hidden_size, bias=False) if self.attention else None
        )
        self.dropout = nn.Dropout(dropout)
        self.output_size = hidden_size

    def _initial(self, final: Tensor | None, batch: int, like: Tensor) -> Tensor:
        """Encoder final states -> decoder initial states, matching the decoder's layer count."""
        if final is None:
            return like.new_zeros(self.layers, batch, self.hidden_size)
        merged = self.bridge(final)  # (encoder_layers, batch, hidden)
        if merged.size(0) >= self.layers:
            return merged[-self.layers :].contiguous()  # the top layers carry the sentence
        pad = merged.new_zeros(self.layers - merged.size(0), batch, self.hidden_size)
        return torch.cat([merged, pad], dim=0)

    def init_state(self, enc: EncoderOutput, max_len: int = 0) -> RNNState:
        batch = enc.memory.size(0)
        hidden = self._initial(enc.final_hidden, batch, enc.memory)
        cell = self._initial(enc.final_cell, batch, enc.memory) if self.cell_type == "lstm" else None
        return RNNState(
            hidden=hidden,
            cell=cell,
            input_feed=enc.memory.new_zeros(batch, self.hidden_size),
            memory=enc.memory,
            keys=self.attention.keys(enc.memory) if self.attention else None,
            src_mask=enc.src_mask,
        )

    def _attend(self, h: Tensor, state: RNNState) -> tuple[Tensor, Tensor | None]:
        """h (batch, tgt_len, hidden) -> h~ (batch, tgt_len, hidden), weights (batch, tgt_len, src_len)."""
        if self.attention is None:
            return h, None
        context, weights = self.attention(h, state.keys, state.memory, state.src_mask)
        h_tilde = torch.tanh(self.combine(torch.cat([context, h], dim=-1)))
        return self.dropout(h_tilde), weights

    def _run_rnn(self, inputs: Tensor, state: RNNState) -> tuple[Tensor, RNNState]:
        if self.cell_type == "lstm":
            out, (hidden, cell) = self.rnn(inputs, (state.hidden, state.cell))
        else:
            out, hidden = self.rnn(inputs, state.hidden)
            cell = None
        return out, RNNState(hidden, cell, state.input_feed, state.memory, state.keys, state.src_mask)

    def step(self, prev_tokens: Tensor, state: RNNState) -> tuple[Tensor, Tensor | None, RNNState]:
        emb = self.dropout(self.embedding(prev_tokens)).unsqueeze(1)  # (batch, 1, embed)
        if self.input_feeding:
            emb = torch.cat([emb, state.input_feed.unsqueeze(1)], dim=-1)  # input feeding
        out, state = self._run_rnn(emb, state)  # out: (batch, 1, hidden)
        h_tilde, weights = self._attend(out, state)
        state.input_feed = h_tilde.squeeze(1)
        return h_tilde.squeeze(1), None if weights is None else weights.squeeze(1), state

    def forward(self, tgt_in: Tensor, enc: EncoderOutput) -> tuple[Tensor, Tensor | None]:
        """Teacher forcing: the gold previous tokens tgt_in (batch, tgt_len) are the inputs."""
        state = self.init_state(enc)
        if not self.input_feeding:
            # without input feeding the RNN needs no attention output: one call for all steps
            emb = self.dropout(self.embedding(tgt_in))  # (batch, tgt_len, embed)
            out, _ = self._run_rnn(emb, state)
            return self._attend(out, state)
        outputs, attentions = [], []
        for t in range(tgt_in.size(1)):
            h_tilde, weights, state = self.step(tgt_in[:, t], state)
            outputs.append(h_tilde)
            attentions.append(weights)
        attn = None if attentions[0] is None else torch.stack(attentions, dim=1)
        return torch.stack(outputs, dim=1), attn  # (batch, tgt_len, hidden), (batch, tgt_len, src_len)
