"""`build_model`: the one place that turns a model config into a model, by `model.type`."""

from __future__ import annotations

from torch import nn

from nmtkit.config import DecoderOnlyConfig, RNNConfig, TransformerConfig
from nmtkit.decoder_only import DecoderOnly, build_decoder_only
from nmtkit.rnn import build_rnn
from nmtkit.seq2seq import Seq2Seq
from nmtkit.transformer import build_transformer

Model = Seq2Seq | DecoderOnly  # what training and search take: the step interface, and forward


def build_model(cfg: RNNConfig | TransformerConfig | DecoderOnlyConfig, src_vocab: int,
                tgt_vocab: int, monolingual: bool = False) -> Model:
    """monolingual: a language model (data.monolingual), which has no source."""
    if cfg.type == "rnn":
        return build_rnn(cfg, src_vocab, tgt_vocab)
    if cfg.type == "decoder_only":
        return build_decoder_only(cfg, src_vocab, tgt_vocab, language_model=monolingual)
    return build_transformer(cfg, src_vocab, tgt_vocab)


def count_parameters(model: nn.Module) -> int:
    """Trainable numbers, a tied or shared tensor counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
