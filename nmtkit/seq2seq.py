"""The encoder-decoder and the step interface: the seam between the models and search.

Every model nmtkit translates with offers

    encode(src, src_lengths) -> EncoderOutput          read the source once
    init_state(enc, max_len) -> DecoderState           the state before the first target token
    step(prev_tokens, state) -> scores, state          one target token at a time

and a `DecoderState` whose `select(index)` picks batch rows, which is all search needs to expand
sentences into beams, reorder beams and drop finished sentences. Training instead runs
`forward` over the whole gold target at once (teacher forcing).

`Seq2Seq` wires an encoder and a decoder (RNN or Transformer) to the generator, the output
layer over the target vocabulary. The decoder-only model (`decoder_only.py`) implements the
same three methods itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmtkit.loss import label_smoothed_nll, output_layer_loss
from nmtkit.vocabulary import BOS_ID


@dataclass
class EncoderOutput:
    memory: Tensor  # (batch, src_len, memory_size): one vector per source token
    src_mask: Tensor  # (batch, src_len) bool, True at real tokens
    final_hidden: Tensor | None = None  # RNN: (layers * directions, batch, hidden)
    final_cell: Tensor | None = None  # LSTM only


class DecoderState:
    """Per-sentence decoding state; every tensor in it has the batch on a known dimension."""

    def select(self, index: Tensor) -> DecoderState:
        raise NotImplementedError


class Decoder(nn.Module):
    """What search needs from a decoder; both encoder-decoder families implement it."""

    output_size: int
    max_steps: int | None = None  # longest target the decoder can handle (position tables)

    def init_state(self, enc: EncoderOutput, max_len: int = 0) -> DecoderState:
        """The state before the first target token; max_len, if known, is the most steps that
        will follow (room to set aside)."""
        raise NotImplementedError

    def step(self, prev_tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """prev_tokens (batch,) -> output (batch, output_size), state."""
        raise NotImplementedError

    def forward(self, tgt_in: Tensor, enc: EncoderOutput) -> Tensor:
        """Teacher forcing: output (batch, tgt_len, output_size)."""
        raise NotImplementedError

    def cross_attention(self, tgt_in: Tensor, enc: EncoderOutput) -> Tensor | None:
        """The attention over the source in a teacher-forced pass: (layers, batch, heads,
        tgt_len, src_len), or None for a decoder without attention."""
        raise NotImplementedError

    @property
    def attention_shape(self) -> tuple[int, int]:
        """(layers, heads) of what cross_attention returns."""
        raise NotImplementedError


class Seq2Seq(nn.Module):
    """encoder -> decoder -> generator (linear + log_softmax over the target vocabulary)."""

    start_token = BOS_ID  # what search feeds as the first previous token

    def __init__(self, encoder: nn.Module, decoder: Decoder, tgt_vocab_size: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.generator = nn.Linear(decoder.output_size, tgt_vocab_size)

    @property
    def max_steps(self) -> int | None:
        return self.decoder.max_steps

    @property
    def max_source(self) -> int | None:
        """The longest source (in tokens, without </s>) the encoder's positions hold."""
        positions = getattr(self.encoder, "positions", None)
        return None if positions is None or positions.table is None else positions.max_positions - 1

    def encode(self, src: Tensor, src_lengths: Tensor) -> EncoderOutput:
        return self.encoder(src, src_lengths)

    def init_state(self, enc: EncoderOutput, max_len: int = 0) -> DecoderState:
        return self.decoder.init_state(enc, max_len)

    def step(self, prev_tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """One target position: prev_tokens (batch,) -> scores (batch, vocab), state. The
        scores are logits: search normalises them (after the rules a user may add)."""
        out, state = self.decoder.step(prev_tokens, state)
        return self.generator(out).float(), state

    def forward(
        self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor, teacher_forcing_ratio: float = 1.0,
        target: Tensor | None = None, smoothing: float = 0.0,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """log_probs (batch, tgt_len, vocab). With target (batch, tgt_len), the training loss
        instead: (loss sum, nll sum), label-smoothed by `smoothing`, the output layer and
        the loss computed together (loss.output_layer_loss: the scores never exist whole)."""
        enc = self.encode(src, src_lengths)
        if teacher_forcing_ratio >= 1.0:
            out = self.decoder(tgt_in, enc)  # teacher forcing: gold inputs
            if target is not None:
                return output_layer_loss(out, self.generator, target, smoothing)
            return F.log_softmax(self.generator(out).float(), dim=-1)
        log_probs = self._forward_with_own_predictions(enc, tgt_in, teacher_forcing_ratio)
        return log_probs if target is None else label_smoothed_nll(log_probs, target, smoothing)

    def attention(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> Tensor | None:
        """Cross-attention weights over a teacher-forced pass of tgt_in: (layers, batch, heads,
        tgt_len, src_len); None for a model without attention."""
        return self.decoder.cross_attention(tgt_in, self.encode(src, src_lengths))

    def _forward_with_own_predictions(self, enc: EncoderOutput, tgt_in: Tensor, ratio: float) -> Tensor:
        return feed_own_predictions(self, enc, tgt_in, ratio)

    @property
    def attention_shape(self) -> tuple[int, int]:
        """(layers, heads) of what `attention` returns."""
        return self.decoder.attention_shape


def feed_own_predictions(model: nn.Module, enc: object, tgt_in: Tensor, ratio: float) -> Tensor:
    """Scheduled sampling (Bengio et al. 2015), for any model with the step interface: at each
    position the gold previous token is fed with probability `ratio`, and otherwise a token
    sampled from the model's own distribution at the step before (what it would have fed itself
    at inference). Returns log_probs (batch, tgt_len, vocab)."""
    state = model.init_state(enc)
    prev = torch.full_like(tgt_in[:, 0], model.start_token)
    log_probs = []
    for t in range(tgt_in.size(1)):
        logits, state = model.step(prev, state)
        lp = F.log_softmax(logits, dim=-1)
        log_probs.append(lp)
        if t + 1 < tgt_in.size(1):
            gold = tgt_in[:, t + 1]
            use_gold = torch.rand(gold.shape, device=gold.device) < ratio
            own = torch.multinomial(lp.detach().exp(), 1).squeeze(1)  # (batch,)
            prev = torch.where(use_gold, gold, own)
    return torch.stack(log_probs, dim=1)
