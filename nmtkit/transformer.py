"""The Transformer (Vaswani et al. 2017): an encoder and a decoder built from attention alone.

    x      = dropout(embedding(tokens) * sqrt(d_model) + positions)
    encoder layer:  self-attention over the source, then a position-wise feed-forward network
    decoder layer:  masked self-attention over the target prefix, attention over the encoder
                    memory (cross-attention), then a feed-forward network

Every sublayer sits in a residual connection with a layer norm before it (`pre`) or after it
(`post`). The layers themselves are in `transformer_layers.py`, shared with the decoder-only
model and the Vision Transformer; this module stacks them into the encoder-decoder.

Search feeds the decoder one token at a time. Rather than re-running the whole prefix at every
step, the decoder keeps each layer's self-attention keys and values of the tokens so far (the
key/value cache, `KVCache`, written in place) and computes the cross-attention keys and values
of the source once per sentence, shared by the sentence's beams; both live in
`TransformerState`. Training (`forward`) runs the very same code on the whole target at once,
with a causal mask in place of the cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nmtkit.config import TransformerConfig
from nmtkit.dropout import Dropout
from nmtkit.embeddings import PositionalEncoding, check_sharing, token_embedding
from nmtkit.seq2seq import Decoder, DecoderState, EncoderOutput, Seq2Seq
from nmtkit.transformer_layers import DecoderLayer, EncoderLayer, KeyValue, KVCache, init_weights
from nmtkit.vocabulary import PAD_ID


class TransformerEncoder(nn.Module):
    """Token embeddings plus positions, then a stack of encoder layers."""

    def __init__(self, embedding: nn.Embedding, cfg: TransformerConfig) -> None:
        super().__init__()
        self.embedding = embedding  # shared with the decoder when model.share_embeddings
        self.scale = math.sqrt(cfg.d_model) if cfg.scale_embeddings else 1.0
        self.positions = PositionalEncoding(cfg.positional, cfg.d_model, cfg.max_positions, cfg.sinusoids)
        self.dropout = Dropout(cfg.dropout)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.final_norm = nn.LayerNorm(cfg.d_model) if cfg.norm == "pre" else nn.Identity()
        self.output_size = cfg.d_model

    def forward(self, src: Tensor, src_lengths: Tensor) -> EncoderOutput:
        """src (batch, src_len) padded with PAD_ID; the mask comes from the padding itself, so
        src_lengths is not needed."""
        src_mask = src != PAD_ID  # (batch, src_len)
        x = self.dropout(self.positions(self.embedding(src) * self.scale))  # (batch, src_len, d)
        key_mask = src_mask[:, None, None, :]  # (batch, 1, 1, src_len): no one attends to padding
        for layer in self.layers:
            x, _ = layer(x, key_mask)
        return EncoderOutput(self.final_norm(x), src_mask)


class TransformerDecoder(Decoder):
    """Token embeddings plus positions, then a stack of decoder layers.

    `cross_attention` returns every layer's cross-attention weights, per head, for a whole
    target at once; `forward` and `step` compute no weights (the fused kernel runs instead)."""

    def __init__(self, embedding: nn.Embedding, cfg: TransformerConfig) -> None:
        super().__init__()
        self.embedding = embedding  # shared with the generator when model.tie_output
        self.scale = math.sqrt(cfg.d_model) if cfg.scale_embeddings else 1.0
        self.positions = PositionalEncoding(cfg.positional, cfg.d_model, cfg.max_positions, cfg.sinusoids)
        self.max_steps = cfg.max_positions if cfg.positional != "none" else None
        self.dropout = Dropout(cfg.dropout)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.final_norm = nn.LayerNorm(cfg.d_model) if cfg.norm == "pre" else nn.Identity()
        self.output_size = cfg.d_model

    def init_state(self, enc: EncoderOutput, max_len: int = 0) -> TransformerState:
        cross_kv = [layer.cross_attn.memory_kv(enc.memory) for layer in self.layers]
        caches = [KVCache(reserve=max_len) for _ in self.layers]
        return TransformerState(position=0, self_kv=caches,
                                cross_kv=cross_kv, src_mask=enc.src_mask)

    def forward(self, tgt_in: Tensor, enc: EncoderOutput) -> Tensor:
        """Teacher forcing: all gold previous tokens tgt_in (batch, tgt_len) in one pass.
        Returns output (batch, tgt_len, d_model)."""
        out, _, _ = self._run(tgt_in, self.init_state(enc), use_cache=False)
        return out

    @property
    def attention_shape(self) -> tuple[int, int]:
        return len(self.layers), self.layers[0].cross_attn.heads

    def cross_attention(self, tgt_in: Tensor, enc: EncoderOutput) -> Tensor:
        """Every layer's cross-attention over a teacher-forced pass: (layers, batch, heads,
        tgt_len, src_len)."""
        _, weights, _ = self._run(tgt_in, self.init_state(enc), use_cache=False, need_weights=True)
        return torch.stack(weights)

    def step(self, prev_tokens: Tensor, state: TransformerState) -> tuple[Tensor, TransformerState]:
        """One new position: prev_tokens (batch,) -> output (batch, d_model), and the state
        with this position's keys/values cached."""
        out, _, state = self._run(prev_tokens.unsqueeze(1), state, use_cache=True)
        return out.squeeze(1), state

    def _run(
        self, tokens: Tensor, state: TransformerState, use_cache: bool, need_weights: bool = False
    ) -> tuple[Tensor, list[Tensor], TransformerState]:
        """Feed tokens (batch, new_len) that follow the state's prefix of `state.position`.
        Without `use_cache` (teacher forcing: the whole target at once) nothing is cached."""
        start, new_len = state.position, tokens.size(1)
        x = self.embedding(tokens) * self.scale
        x = self.dropout(self.positions(x, start))  # (batch, new_len, d_model)
        # New token i, at position start + i, may see positions 0 .. start + i. A single new token
        # (a search step) may see the whole cache, so it needs no mask. Target padding needs none
        # either: it comes after the real tokens, which never look ahead.
        causal_mask = None
        if new_len > 1:
            causal_mask = torch.ones(
                new_len, start + new_len, dtype=torch.bool, device=tokens.device
            ).tril(diagonal=start)  # (new_len, start + new_len)
        self_kv, weights = [], []
        for i, layer in enumerate(self.layers):
            cache = state.self_kv[i] if use_cache else None
            x, cache, layer_weights = layer(
                x, cache, causal_mask, state.cross_kv[i], state.src_mask, need_weights, state.group
            )
            self_kv.append(cache if cache is not None else KVCache())
            weights.append(layer_weights)
        state = TransformerState(start + new_len, self_kv, state.cross_kv, state.src_mask,
                                 state.group)
        return self.final_norm(x), weights, state


@dataclass
class TransformerState(DecoderState):
    """What a search step needs, per decoder layer: the self-attention keys/values of every
    target position so far (the cache, one position longer after each step) and the
    cross-attention keys/values of the source (computed once per sentence, and kept once per
    sentence while its rows, its beams, sit side by side).

    A step writes the new position into the cache's storage (see KVCache): decode from a state
    once."""

    position: int  # target tokens fed so far: the position of the next one
    self_kv: list[KVCache]  # per layer, holding `position` positions
    cross_kv: list[KeyValue]  # per layer, each (sentences, heads, src_len, head_dim)
    src_mask: Tensor  # (sentences, src_len)
    group: int = 1  # rows per sentence, side by side: row r decodes sentence r // group

    def select(self, index: Tensor) -> TransformerState:
        rows, cross_kv, src_mask, group = index.size(0), self.cross_kv, self.src_mask, 1
        ids = index // self.group  # the sentence (row of cross_kv) of each new row
        sentences = torch.unique_consecutive(ids)
        if rows and torch.equal(ids, sentences.repeat_interleave(rows // sentences.size(0))):
            # each sentence's rows side by side, as many for each (beams): the source side needs
            # no copy per row, only dropping the sentences that left
            group = rows // sentences.size(0)
            if not torch.equal(sentences, torch.arange(src_mask.size(0), device=ids.device)):
                cross_kv = [(k.index_select(0, sentences), v.index_select(0, sentences))
                            for k, v in cross_kv]
                src_mask = src_mask.index_select(0, sentences)
        else:  # any other order: one copy of the source side per row
            cross_kv = [(k.index_select(0, ids), v.index_select(0, ids)) for k, v in cross_kv]
            src_mask = src_mask.index_select(0, ids)
        changed = None
        if self.self_kv and rows <= self.self_kv[0].rows:  # (all layers hold the same rows)
            changed = (index != torch.arange(rows, device=index.device)).nonzero().squeeze(1)
        return TransformerState(
            position=self.position,
            self_kv=[cache.select(index, changed) for cache in self.self_kv],
            cross_kv=cross_kv,
            src_mask=src_mask,
            group=group,
        )


def build_transformer(cfg: TransformerConfig, src_vocab: int, tgt_vocab: int) -> Seq2Seq:
    check_sharing(cfg.share_embeddings, cfg.tie_output, src_vocab, tgt_vocab, cfg.d_model, cfg.d_model)
    src_embed = token_embedding(src_vocab, cfg.d_model)
    tgt_embed = src_embed if cfg.share_embeddings else token_embedding(tgt_vocab, cfg.d_model)
    model = Seq2Seq(
        TransformerEncoder(src_embed, cfg), TransformerDecoder(tgt_embed, cfg), tgt_vocab
    )
    init_weights(model, cfg.d_model)
    if cfg.tie_output:
        model.generator.weight = tgt_embed.weight  # one tensor: the embedding scores the output
    return model
