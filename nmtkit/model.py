"""The encoder-decoder model and `build_model`, which turns a model config into one."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmtkit.config import RNNConfig, TransformerConfig
from nmtkit.decoders import Decoder, DecoderState, RNNDecoder
from nmtkit.encoders import EncoderOutput, RNNEncoder
from nmtkit.errors import NMTKitError
from nmtkit.vocabulary import PAD_ID


class Seq2Seq(nn.Module):
    """encoder -> decoder -> generator (linear + log_softmax over the target vocabulary)."""

    def __init__(self, encoder: nn.Module, decoder: Decoder, tgt_vocab_size: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.generator = nn.Linear(decoder.output_size, tgt_vocab_size)

    def encode(self, src: Tensor, src_lengths: Tensor) -> EncoderOutput:
        return self.encoder(src, src_lengths)

    def init_state(self, enc: EncoderOutput, max_len: int = 0) -> DecoderState:
        return self.decoder.init_state(enc, max_len)

    def step(self, prev_tokens: Tensor, state: DecoderState) -> tuple[Tensor, Tensor | None, DecoderState]:
        """One target position: prev_tokens (batch,) -> log_probs (batch, vocab), attention, state."""
        out, attention, state = self.decoder.step(prev_tokens, state)
        return F.log_softmax(self.generator(out).float(), dim=-1), attention, state

    def forward(
        self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor, teacher_forcing_ratio: float = 1.0
    ) -> tuple[Tensor, Tensor | None]:
        """log_probs (batch, tgt_len, vocab) and attention (batch, tgt_len, src_len)."""
        enc = self.encode(src, src_lengths)
        if teacher_forcing_ratio >= 1.0:
            out, attention = self.decoder(tgt_in, enc)  # teacher forcing: gold inputs throughout
            return F.log_softmax(self.generator(out).float(), dim=-1), attention
        return self._forward_with_own_predictions(enc, tgt_in, teacher_forcing_ratio)

    def _forward_with_own_predictions(
        self, enc: EncoderOutput, tgt_in: Tensor, ratio: float
    ) -> tuple[Tensor, Tensor | None]:
        """With probability 1 - ratio per position, the model's own previous prediction is fed
        back instead of the gold token (scheduled sampling, Bengio et al. 2015)."""
        state = self.init_state(enc)
        prev = tgt_in[:, 0]
        log_probs, attentions = [], []
        for t in range(tgt_in.size(1)):
            lp, attention, state = self.step(prev, state)
            log_probs.append(lp)
            attentions.append(attention)
            if t + 1 < tgt_in.size(1):
                gold = tgt_in[:, t + 1]
                use_gold = torch.rand(gold.shape, device=gold.device) < ratio
                prev = torch.where(use_gold, gold, lp.argmax(-1))
        attn = None if attentions[0] is None else torch.stack(attentions, dim=1)
        return torch.stack(log_probs, dim=1), attn


def _embedding(vocab_size: int, dim: int) -> nn.Embedding:
    return nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)


def _check_sharing(cfg: RNNConfig | TransformerConfig, src_vocab: int, tgt_vocab: int,
                   embed_dim: int, output_dim: int) -> None:
    if cfg.share_embeddings and src_vocab != tgt_vocab:
        raise NMTKitError(
            "model.share_embeddings needs one joint vocabulary (set vocab.joint: true): "
            f"source has {src_vocab} entries, target {tgt_vocab}"
        )
    if cfg.tie_output and embed_dim != output_dim:
        raise NMTKitError(
            f"model.tie_output needs the embedding size ({embed_dim}) to equal the decoder "
            f"output size ({output_dim})"
        )


def build_rnn(cfg: RNNConfig, src_vocab: int, tgt_vocab: int) -> Seq2Seq:
    _check_sharing(cfg, src_vocab, tgt_vocab, cfg.embed_size, cfg.hidden_size)
    src_embed = _embedding(src_vocab, cfg.embed_size)
    tgt_embed = src_embed if cfg.share_embeddings else _embedding(tgt_vocab, cfg.embed_size)
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


def build_model(cfg: RNNConfig | TransformerConfig, src_vocab: int, tgt_vocab: int) -> Seq2Seq:
    if cfg.type == "rnn":
        return build_rnn(cfg, src_vocab, tgt_vocab)
    from nmtkit.transformer import build_transformer

    return build_transformer(cfg, src_vocab, tgt_vocab)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
