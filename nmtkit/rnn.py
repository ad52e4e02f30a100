"""The attentional RNN encoder-decoder (Sutskever et al. 2014; Bahdanau et al. 2015; Luong et
al. 2015), top to bottom: encoder, bridge, decoder state, decoder, `build_rnn`.

    encoder   embedding -> stacked (bi)LSTM/GRU over the source: memory, one vector per token
    bridge    the encoder's final states -> the decoder's initial states
    decoder   one target token at a time, attending to the memory (see RNNDecoder)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from nmtkit.attention import RNNAttention
from nmtkit.config import RNNConfig
from nmtkit.cpu import bf16_emulated
from nmtkit.dropout import Dropout
from nmtkit.embeddings import check_sharing, token_embedding
from nmtkit.seq2seq import Decoder, DecoderState, EncoderOutput, Seq2Seq


def reverse_padded(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse the first lengths[b] positions of each row b; the rest (EOS, padding) stays put."""
    # x: (batch, seq_len, ...) ; lengths: (batch,)
    seq_len = x.size(1)
    positions = torch.arange(seq_len, device=x.device).unsqueeze(0)  # (1, seq_len)
    rev = lengths.unsqueeze(1) - 1 - positions  # (batch, seq_len)
    index = torch.where(rev >= 0, rev, positions)  # positions past the length map to themselves
    if x.dim() > 2:
        index = index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


def run_cells(rnn: nn.RNNBase, inputs: Tensor | PackedSequence, state: Any = None) -> tuple[Any, Any]:
    """rnn(inputs, state), but in fp32 under bf16 autocast on a CPU without native bf16.

    Autocast runs LSTM/GRU through oneDNN's bf16 kernels, which exist only on CPUs with
    AVX512-BF16 or AMX: elsewhere (AVX2) oneDNN cannot build them ("could not create a primitive
    descriptor for the LSTM forward propagation primitive"). There the cells run in fp32 with
    autocast off, as fp32 training would; the layers around them stay in bf16."""
    device = inputs.data.device.type
    if not (torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.bfloat16
            and bf16_emulated(device)):
        return rnn(inputs, state)
    if isinstance(state, tuple):
        state = tuple(s.float() for s in state)
    elif state is not None:
        state = state.float()
    with torch.autocast(device, enabled=False):
        return rnn(inputs.float(), state)


class RNNEncoder(nn.Module):
    """Embedding -> stacked (bi)LSTM/GRU. With `reverse_source` the RNN reads the words backwards
    and then `</s>` (Sutskever et al. 2014: "A B C </s>" is read as "C B A </s>"), so the first
    source words are close to the first target words; memory is flipped back so that position
    i is source token i."""

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
        self.dropout = Dropout(dropout)
        self.reverse_source = reverse_source
        self.output_size = hidden_size * (2 if bidirectional else 1)

    def forward(self, src: Tensor, src_lengths: Tensor) -> EncoderOutput:
        src_mask = src != self.embedding.padding_idx  # (batch, src_len)
        words = src_lengths - 1  # every source ends with EOS, which stays last
        if self.reverse_source:
            src = reverse_padded(src, words)
        emb = self.dropout(self.embedding(src))  # (batch, src_len, embed)
        packed = pack_padded_sequence(emb, src_lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, final = run_cells(self.rnn, packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))
        if self.reverse_source:
            memory = reverse_padded(memory, words)
        hidden, cell = final if isinstance(final, tuple) else (final, None)
        # hidden: (layers * directions, batch, hidden)
        return EncoderOutput(self.dropout(memory), src_mask, hidden, cell)


class Bridge(nn.Module):
    """Turns one kind of encoder final state (hidden, or the LSTM's cell) into the decoder's
    initial state, layer by layer. A bidirectional encoder ends each layer with a forward and a
    backward state, merged by

        concat   W_l [fwd; bwd] + b_l, through tanh for hidden states (the range of an RNN's
                 output); an LSTM cell state is not bounded, so it gets its own bridge, unsquashed
        sum      fwd + bwd
        mean     (fwd + bwd) / 2
        max      the element-wise maximum

    A unidirectional encoder's states pass as they are."""

    def __init__(self, mode: str, hidden_size: int, layers: int, bidirectional: bool,
                 squash: bool) -> None:
        super().__init__()
        self.mode = mode
        self.bidirectional = bidirectional
        self.squash = squash
        self.proj = None
        if bidirectional and mode == "concat":  # one map per layer
            self.proj = nn.ModuleList(nn.Linear(2 * hidden_size, hidden_size) for _ in range(layers))

    def forward(self, final: Tensor) -> Tensor:
        # final: (layers * directions, batch, hidden) -> (layers, batch, hidden)
        if not self.bidirectional:
            return final
        fwd, bwd = final[0::2], final[1::2]  # PyTorch interleaves directions per layer
        if self.mode == "sum":
            return fwd + bwd
        if self.mode == "mean":
            return (fwd + bwd) / 2
        if self.mode == "max":
            return torch.maximum(fwd, bwd)
        both = torch.cat([fwd, bwd], dim=-1)  # (layers, batch, 2 * hidden)
        merged = torch.stack([proj(layer) for proj, layer in zip(self.proj, both, strict=True)])
        return torch.tanh(merged) if self.squash else merged


@dataclass
class RNNState(DecoderState):
    hidden: Tensor  # (layers, batch, hidden): h_{t-1} (s_{t-1} in Bahdanau's notation)
    cell: Tensor | None  # (layers, batch, hidden), LSTM only
    input_feed: Tensor | None  # (batch, hidden): h~_{t-1}, with input feeding only
    memory: Tensor  # (batch, src_len, memory)
    keys: Tensor | None  # (batch, src_len, k): attention keys computed once per sentence
    src_mask: Tensor  # (batch, src_len)

    def select(self, index: Tensor) -> RNNState:
        def rows(t: Tensor | None, dim: int = 0) -> Tensor | None:
            return None if t is None else t.index_select(dim, index)

        return RNNState(rows(self.hidden, 1), rows(self.cell, 1), rows(self.input_feed),
                        rows(self.memory), rows(self.keys), rows(self.src_mask))


class RNNDecoder(Decoder):
    """Stacked LSTM/GRU decoder with attention. Luong et al. (2015) attend after the RNN step,
    with its new state (`dot`, `general`, `concat`):

        input_t = [emb(y_{t-1}); h~_{t-1}]         input feeding (if on)
        h_t     = RNN(input_t, h_{t-1})
        c_t     = attention(h_t, memory)          the context vector
        h~_t    = tanh(W_c [c_t; h_t])            the attentional layer: what the generator reads

    Bahdanau et al. (2015) attend before it, with the previous state, and feed the context in
    (`bahdanau`):

        c_t     = attention(s_{t-1}, memory)
        s_t     = RNN([emb(y_{t-1}); c_t], s_{t-1})
        o_t     = tanh(W_o [s_t; c_t; emb(y_{t-1})])   the deep output (tanh for the paper's maxout)

    Without attention (`none`), the generator reads h_t: the plain encoder-decoder, whose whole
    view of the source is the initial state (Sutskever et al. 2014).
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
        self.bahdanau = attention == "bahdanau"
        self.input_feeding = input_feeding and attention != "none" and not self.bahdanau
        embed = embedding.embedding_dim
        if self.bahdanau:
            input_size = embed + memory_size  # the context c_t is part of the RNN's input
        else:
            input_size = embed + (hidden_size if self.input_feeding else 0)
        rnn_cls = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn_cls(
            input_size, hidden_size, num_layers=layers,
            dropout=dropout if layers > 1 else 0.0, batch_first=True,
        )
        self.hidden_bridge = Bridge(bridge, hidden_size, encoder_layers, bidirectional_encoder, True)
        self.cell_bridge = (Bridge(bridge, hidden_size, encoder_layers, bidirectional_encoder, False)
                            if cell == "lstm" else None)
        self.attention = None if attention == "none" else RNNAttention(attention, hidden_size, memory_size)
        self.combine = None  # the attentional layer W_c (Luong) or the deep output W_o (Bahdanau)
        if self.bahdanau:
            self.combine = nn.Linear(hidden_size + memory_size + embed, hidden_size, bias=False)
        elif self.attention is not None:
            self.combine = nn.Linear(memory_size + hidden_size, hidden_size, bias=False)
        self.dropout = Dropout(dropout)
        self.output_size = hidden_size

    def _initial(self, final: Tensor | None, bridge: Bridge, batch: int, like: Tensor) -> Tensor:
        """Encoder final states -> decoder initial states, matching the decoder's layer count."""
        if final is None:
            return like.new_zeros(self.layers, batch, self.hidden_size)
        merged = bridge(final)  # (encoder_layers, batch, hidden)
        if merged.size(0) >= self.layers:
            return merged[-self.layers :].contiguous()  # the top layers carry the sentence
        pad = merged.new_zeros(self.layers - merged.size(0), batch, self.hidden_size)
        return torch.cat([merged, pad], dim=0)

    def init_state(self, enc: EncoderOutput, max_len: int = 0) -> RNNState:
        batch = enc.memory.size(0)
        hidden = self._initial(enc.final_hidden, self.hidden_bridge, batch, enc.memory)
        cell = None
        if self.cell_bridge is not None:
            cell = self._initial(enc.final_cell, self.cell_bridge, batch, enc.memory)
        return RNNState(
            hidden=hidden,
            cell=cell,
            input_feed=enc.memory.new_zeros(batch, self.hidden_size) if self.input_feeding else None,
            memory=enc.memory,
            keys=self.attention.keys(enc.memory) if self.attention else None,
            src_mask=enc.src_mask,
        )

    def _run_rnn(self, inputs: Tensor, state: RNNState) -> tuple[Tensor, RNNState]:
        if self.cell_type == "lstm":
            out, (hidden, cell) = run_cells(self.rnn, inputs, (state.hidden, state.cell))
        else:
            out, hidden = run_cells(self.rnn, inputs, state.hidden)
            cell = None
        return out, RNNState(hidden, cell, state.input_feed, state.memory, state.keys, state.src_mask)

    def _luong(self, h: Tensor, state: RNNState) -> tuple[Tensor, Tensor | None]:
        """h (batch, tgt_len, hidden) -> h~ (batch, tgt_len, hidden), weights (batch, tgt_len, src_len)."""
        if self.attention is None:
            return h, None
        context, weights = self.attention(h, state.keys, state.memory, state.src_mask)
        h_tilde = torch.tanh(self.combine(torch.cat([context, h], dim=-1)))
        return self.dropout(h_tilde), weights

    def _step(self, prev_tokens: Tensor, state: RNNState) -> tuple[Tensor, Tensor | None, RNNState]:
        """One target position: output (batch, hidden), attention weights (batch, src_len), state."""
        emb = self.dropout(self.embedding(prev_tokens)).unsqueeze(1)  # (batch, 1, embed)
        if self.bahdanau:
            query = state.hidden[-1].unsqueeze(1)  # s_{t-1} of the top layer: (batch, 1, hidden)
            context, weights = self.attention(query, state.keys, state.memory, state.src_mask)
            s, state = self._run_rnn(torch.cat([emb, context], dim=-1), state)  # (batch, 1, hidden)
            out = self.dropout(torch.tanh(self.combine(torch.cat([s, context, emb], dim=-1))))
            return out.squeeze(1), weights.squeeze(1), state
        if self.input_feeding:
            emb = torch.cat([emb, state.input_feed.unsqueeze(1)], dim=-1)  # input feeding
        out, state = self._run_rnn(emb, state)  # out: (batch, 1, hidden)
        h_tilde, weights = self._luong(out, state)
        if self.input_feeding:
            state.input_feed = h_tilde.squeeze(1)
        return h_tilde.squeeze(1), None if weights is None else weights.squeeze(1), state

    def step(self, prev_tokens: Tensor, state: RNNState) -> tuple[Tensor, RNNState]:
        out, _, state = self._step(prev_tokens, state)
        return out, state

    def _teacher_forced(self, tgt_in: Tensor, enc: EncoderOutput) -> tuple[Tensor, Tensor | None]:
        """The gold previous tokens tgt_in (batch, tgt_len) as inputs: output (batch, tgt_len,
        hidden) and attention (batch, tgt_len, src_len)."""
        state = self.init_state(enc)
        if not (self.input_feeding or self.bahdanau):
            # the RNN's inputs do not depend on its attention: one call for all steps
            emb = self.dropout(self.embedding(tgt_in))  # (batch, tgt_len, embed)
            out, _ = self._run_rnn(emb, state)
            return self._luong(out, state)
        outputs, attentions = [], []
        for t in range(tgt_in.size(1)):
            out, weights, state = self._step(tgt_in[:, t], state)
            outputs.append(out)
            attentions.append(weights)
        attn = None if attentions[0] is None else torch.stack(attentions, dim=1)
        return torch.stack(outputs, dim=1), attn

    def forward(self, tgt_in: Tensor, enc: EncoderOutput) -> Tensor:
        """Teacher forcing: output (batch, tgt_len, hidden)."""
        return self._teacher_forced(tgt_in, enc)[0]

    @property
    def attention_shape(self) -> tuple[int, int]:
        return (1, 1)  # one attention, one "head"

    def cross_attention(self, tgt_in: Tensor, enc: EncoderOutput) -> Tensor | None:
        """The attention over a teacher-forced pass, as one layer with one head: (1, batch, 1,
        tgt_len, src_len); None without attention."""
        weights = self._teacher_forced(tgt_in, enc)[1]
        return None if weights is None else weights[None, :, None]


def build_rnn(cfg: RNNConfig, src_vocab: int, tgt_vocab: int) -> Seq2Seq:
    check_sharing(cfg.share_embeddings, cfg.tie_output, src_vocab, tgt_vocab, cfg.embed_size,
                  cfg.hidden_size)
    src_embed = token_embedding(src_vocab, cfg.embed_size)
    tgt_embed = src_embed if cfg.share_embeddings else token_embedding(tgt_vocab, cfg.embed_size)
    encoder = RNNEncoder(
        src_embed, cfg.cell, cfg.hidden_size, cfg.encoder_layers, cfg.bidirectional,
        cfg.dropout, cfg.reverse_source,
    )
    decoder = RNNDecoder(
        tgt_embed, cfg.cell, cfg.hidden_size, cfg.decoder_layers, encoder.output_size,
        cfg.attention, cfg.input_feeding, cfg.dropout, cfg.bridge, cfg.bidirectional,
        cfg.encoder_layers,
    )
    model = Seq2Seq(encoder, decoder, tgt_vocab)
    if cfg.tie_output:
        model.generator.weight = tgt_embed.weight
    return model
