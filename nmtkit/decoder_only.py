"""The decoder-only Transformer (the seed notes: GPT and DALL-E use only the decoder): one stack
of masked self-attention + feed-forward layers over one sequence, each position predicting the
next token.

    language model   </s> w_1 ... w_n </s>                 (the text of one language)
    translation      x_1 ... x_m </s> y_1 ... y_n </s>      the loss on the target tokens only

The layers are the Transformer decoder's (`transformer_layers.DecoderLayer`) without
cross-attention; there is no encoder. With `prefix_lm` the source positions attend to each other
both ways (a prefix language model) while every target position sees the whole source and the
target before it; without it every position sees only what comes before it (causal).

For search the model has the step interface of the encoder-decoder models, so greedy, beam,
sampling, ensembles and the Translator run it unchanged: `encode` keeps the source,
`init_state` runs it through the stack once (filling each layer's key/value cache), and `step`
feeds one target token. The first token search feeds (`start_token`) is the separator </s>:
the prediction of y_1 comes from its position. A language model is the same with an empty source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmtkit.config import DecoderOnlyConfig
from nmtkit.dropout import Dropout
from nmtkit.embeddings import PositionalEncoding, token_embedding
from nmtkit.errors import NMTKitError
from nmtkit.loss import label_smoothed_nll, output_layer_loss
from nmtkit.seq2seq import DecoderState, feed_own_predictions
from nmtkit.transformer_layers import DecoderLayer, KVCache, init_weights
from nmtkit.vocabulary import EOS_ID, PAD_ID


@dataclass
class Source:
    """What `encode` keeps: the source tokens, to be run through the stack by `init_state`."""

    tokens: Tensor  # (batch, width): x + [EOS], PAD-padded, as collate_source makes them
    lengths: Tensor  # (batch,): the source words, without EOS


@dataclass
class DecoderOnlyState(DecoderState):
    self_kv: list[KVCache]  # per layer: the source's positions, then the target's so far
    key_valid: Tensor  # (batch, source width): False at a shorter source's padding slots
    lengths: Tensor  # (batch,): source words per row: a row's next position is lengths + position
    position: int  # target tokens fed so far

    def select(self, index: Tensor) -> DecoderOnlyState:
        changed = None
        if self.self_kv and index.size(0) <= self.self_kv[0].rows:
            changed = (index != torch.arange(index.size(0), device=index.device)).nonzero().squeeze(1)
        return DecoderOnlyState([cache.select(index, changed) for cache in self.self_kv],
                                self.key_valid.index_select(0, index), self.lengths.index_select(0, index),
                                self.position)


class DecoderOnly(nn.Module):
    """Embedding + positions -> decoder layers without cross-attention -> final norm ->
    the output layer (tied to the embedding)."""

    start_token = EOS_ID  # the separator between source and target; a sentence's start for a LM

    def __init__(self, cfg: DecoderOnlyConfig, vocab_size: int, language_model: bool = False) -> None:
        """language_model: one language, no source (data.monolingual): the text has every
        position; a translation model's source and target get half each."""
        super().__init__()
        self.embedding = token_embedding(vocab_size, cfg.d_model)
        self.scale = math.sqrt(cfg.d_model)
        self.positions = PositionalEncoding(cfg.positional, cfg.d_model, cfg.max_positions, cfg.sinusoids)
        self.dropout = Dropout(cfg.dropout)
        self.layers = nn.ModuleList(DecoderLayer(cfg, cross_attention=False) for _ in range(cfg.layers))
        self.final_norm = nn.LayerNorm(cfg.d_model) if cfg.norm == "pre" else nn.Identity()
        self.generator = nn.Linear(cfg.d_model, vocab_size)
        self.prefix_lm = cfg.prefix_lm
        self.heads = cfg.heads
        # source and target share the positions: each gets half (a language model's text, all)
        limited = cfg.positional != "none"
        self.max_positions = cfg.max_positions if limited else None
        text_positions = cfg.max_positions if language_model else cfg.max_positions // 2
        self.max_steps = text_positions if limited else None
        self.max_source = cfg.max_positions // 2 - 1 if limited else None

    @property
    def attention_shape(self) -> tuple[int, int]:
        return len(self.layers), self.heads

    # ---- training: source and target as one sequence ----
    def _sequence(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> Tensor:
        """x </s> y per row, right-padded: (batch, len). src is x + [EOS] (src_lengths counts
        the EOS), tgt_in is [BOS] + y."""
        width = int((src_lengths + (tgt_in != PAD_ID).sum(1) - 1).max())
        idx = torch.arange(width, device=src.device).unsqueeze(0)  # (1, len)
        in_source = idx < src_lengths.unsqueeze(1)  # (batch, len)
        from_target = idx - src_lengths.unsqueeze(1) + 1  # the index into tgt_in (0 is its BOS)
        target_tokens = tgt_in.gather(1, from_target.clamp(0, tgt_in.size(1) - 1))
        source_tokens = src.gather(1, idx.clamp(max=src.size(1) - 1).expand(src.size(0), -1))
        return torch.where(in_source, source_tokens, torch.where(from_target >= 1, target_tokens, PAD_ID))

    def _mask(self, length: int, source: Tensor) -> Tensor:
        """Which positions a position may see: the causal mask (length, length), or with
        prefix_lm also the source words (source: (batch,) their count) both ways (batch, 1,
        length, length)."""
        causal = torch.ones(length, length, dtype=torch.bool, device=source.device).tril()
        if not self.prefix_lm:
            return causal
        idx = torch.arange(length, device=source.device)
        in_source = idx.unsqueeze(0) < source.unsqueeze(1)  # (batch, length)
        both_ways = in_source.unsqueeze(2) & in_source.unsqueeze(1)  # (batch, length, length)
        return (causal | both_ways).unsqueeze(1)

    def _run(self, tokens: Tensor, source: Tensor, need_weights: bool = False) -> tuple[Tensor, list]:
        x = self.dropout(self.positions(self.embedding(tokens) * self.scale))  # (batch, len, d)
        mask = self._mask(tokens.size(1), source)
        weights = []
        for layer in self.layers:
            x, _, w = layer(x, None, mask, need_weights=need_weights)
            weights.append(w)
        return self.final_norm(x), weights

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor, teacher_forcing_ratio: float = 1.0,
                target: Tensor | None = None, smoothing: float = 0.0) -> Tensor | tuple[Tensor, Tensor]:
        """log_probs (batch, tgt_len, vocab) of the target tokens y + [EOS], as Seq2Seq gives
        them (with target: the training loss, as Seq2Seq gives it)."""
        if teacher_forcing_ratio < 1.0:
            enc = self.encode(src, src_lengths)
            log_probs = feed_own_predictions(self, enc, tgt_in, teacher_forcing_ratio)
            return log_probs if target is None else label_smoothed_nll(log_probs, target, smoothing)
        out, _ = self._run(self._sequence(src, src_lengths, tgt_in), src_lengths - 1)
        rows = self._target_rows(out, src_lengths, tgt_in.size(1))  # (batch, tgt_len, d)
        if target is not None:
            return output_layer_loss(rows, self.generator, target, smoothing)
        return F.log_softmax(self.generator(rows).float(), dim=-1)

    @staticmethod
    def _target_rows(out: Tensor, src_lengths: Tensor, tgt_len: int) -> Tensor:
        """The outputs that predict the target: from the source's EOS on, (batch, tgt_len, d)."""
        rows = src_lengths.unsqueeze(1) - 1 + torch.arange(tgt_len, device=out.device)
        rows = rows.clamp(max=out.size(1) - 1)
        return out.gather(1, rows.unsqueeze(2).expand(-1, -1, out.size(2)))

    def attention(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> Tensor:
        """The target positions' self-attention over the source positions (x and its </s>), per
        layer and head: (layers, batch, heads, tgt_len, src_len), as the encoder-decoders'
        cross-attention. (The rest of each row's weight is on the target before it.)"""
        _, weights = self._run(self._sequence(src, src_lengths, tgt_in), src_lengths - 1, need_weights=True)
        tgt_len, src_len = tgt_in.size(1), src.size(1)
        rows = (src_lengths.unsqueeze(1) - 1 + torch.arange(tgt_len, device=src.device))
        maps = []
        for w in weights:  # (batch, heads, len, len)
            w = w[:, :, :, :src_len]
            index = rows.clamp(max=w.size(2) - 1)[:, None, :, None].expand(-1, w.size(1), -1, w.size(3))
            maps.append(w.gather(2, index))
        return torch.stack(maps)

    # ---- search ----
    def encode(self, src: Tensor, src_lengths: Tensor) -> Source:
        return Source(src, src_lengths - 1)

    def init_state(self, source: Source, max_len: int = 0) -> DecoderOnlyState:
        """Run the source words (without their EOS, which search feeds first) through the stack,
        filling the caches with room for `max_len` target positions more."""
        width = int(source.lengths.max()) if source.lengths.numel() else 0
        caches = [KVCache(reserve=width + max_len + 1) for _ in self.layers]
        slots = torch.arange(width, device=source.tokens.device).unsqueeze(0)
        key_valid = slots < source.lengths.unsqueeze(1)
        if width:
            tokens = source.tokens[:, :width].masked_fill(~key_valid, PAD_ID)
            x = self.dropout(self.positions(self.embedding(tokens) * self.scale))
            mask = self._mask(width, source.lengths)  # padding slots are later masked as keys
            for i, layer in enumerate(self.layers):
                x, caches[i], _ = layer(x, caches[i], mask)
        return DecoderOnlyState(caches, key_valid, source.lengths, 0)

    def step(self, prev_tokens: Tensor, state: DecoderOnlyState) -> tuple[Tensor, DecoderOnlyState]:
        """One target token per row, at its position (its source's length + targets so far)."""
        start = state.lengths + state.position  # (batch,)
        if self.max_positions is not None and int(start.max()) + 1 > self.max_positions:
            raise NMTKitError("source and target together are longer than model.max_positions")
        x = self.positions(self.embedding(prev_tokens).unsqueeze(1) * self.scale, start)
        mask = None
        if not bool(state.key_valid.all()):  # some rows have padding slots in their source part
            seen = torch.ones(state.key_valid.size(0), state.position + 1, dtype=torch.bool,
                              device=state.key_valid.device)
            mask = torch.cat([state.key_valid, seen], dim=1)[:, None, None, :]
        caches = []
        for layer, cache in zip(self.layers, state.self_kv, strict=True):
            x, cache, _ = layer(x, cache, mask)
            caches.append(cache)
        logits = self.generator(self.final_norm(x)).squeeze(1).float()
        return logits, DecoderOnlyState(caches, state.key_valid, state.lengths, state.position + 1)


def build_decoder_only(cfg: DecoderOnlyConfig, src_vocab: int, tgt_vocab: int,
                       language_model: bool = False) -> DecoderOnly:
    if src_vocab != tgt_vocab:
        raise NMTKitError("a decoder-only model needs one (joint) vocabulary: set vocab.joint: true")
    model = DecoderOnly(cfg, tgt_vocab, language_model)
    init_weights(model, cfg.d_model)
    if cfg.tie_output:
        model.generator.weight = model.embedding.weight
    return model
