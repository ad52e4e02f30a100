"""Export a checkpoint to CTranslate2, the inference engine many deployments use.

CTranslate2's own converter API builds the model: a `ctranslate2.specs` specification is filled
with the checkpoint's tensors, and the converter validates, quantizes and saves it. Only this
module imports ctranslate2, and only when called (`pip install nmtkit[ctranslate2]`).

What the exported folder holds, so that CTranslate2 decodes as nmtkit does:
- `model.bin`, `config.json` (with `add_source_eos`: CTranslate2 appends `</s>` to the source,
  so a user passes the plain pieces of `sentencepiece.encode`), the vocabularies;
- `source.spm`, `target.spm`: the checkpoint's sentencepiece models.

nmtkit's search never produces `<pad>` or `<s>`; CTranslate2 has no such list, so their output
bias becomes -1e4 (their probability, already tiny in a trained model, becomes 0).

The RNN has no CTranslate2 counterpart; nor does the prefix language model (its source
positions attend both ways) or a Transformer without positions.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

from nmtkit.checkpoint import load_checkpoint, resolve_checkpoint
from nmtkit.errors import NMTKitError
from nmtkit.files import check_new_folder, remove_stale, temp_folder
from nmtkit.vocabulary import BOS, BOS_ID, EOS, PAD_ID, UNK

QUANTIZATIONS = ("int8", "int16", "float16")
NEVER_BIAS = -1e4  # exp(-1e4) is 0 in float32: <pad> and <s> leave the softmax


def _linear(spec, layer: nn.Linear) -> None:
    spec.weight = layer.weight.detach().float()
    if layer.bias is not None:
        spec.bias = layer.bias.detach().float()


def _norm(spec, norm: nn.LayerNorm) -> None:
    spec.gamma, spec.beta = norm.weight.detach().float(), norm.bias.detach().float()


def _stack(spec, module: nn.Module) -> None:
    """What the encoder, the decoder and the decoder-only model share: embedding, its scale,
    the position table and (pre-norm) the final layer norm."""
    embeddings = spec.embeddings[0] if isinstance(spec.embeddings, list) else spec.embeddings
    embeddings.weight = module.embedding.weight.detach().float()
    spec.scale_embeddings = float(module.scale)
    spec.position_encodings.encodings = module.positions.table.detach().float()
    if isinstance(module.final_norm, nn.LayerNorm):
        _norm(spec.layer_norm, module.final_norm)


def _self_attention(spec, layer) -> None:
    _linear(spec.self_attention.linear[0], layer.self_attn.qkv_proj)  # q, k, v fused, as ours
    _linear(spec.self_attention.linear[1], layer.self_attn.out_proj)
    _norm(spec.self_attention.layer_norm, layer.self_attn_residual.norm)


def _feed_forward(spec, layer) -> None:
    _linear(spec.ffn.linear_0, layer.ff.up)
    _linear(spec.ffn.linear_1, layer.ff.down)
    _norm(spec.ffn.layer_norm, layer.ff_residual.norm)


def _decoder_layers(spec, layers: nn.ModuleList) -> None:
    for layer_spec, layer in zip(spec.layer, layers, strict=True):
        _self_attention(layer_spec, layer)
        if layer.cross_attn is not None:
            _linear(layer_spec.attention.linear[0], layer.cross_attn.q_proj)
            _linear(layer_spec.attention.linear[1], layer.cross_attn.kv_proj)  # k, v fused
            _linear(layer_spec.attention.linear[2], layer.cross_attn.out_proj)
            _norm(layer_spec.attention.layer_norm, layer.cross_attn_residual.norm)
        _feed_forward(layer_spec, layer)


def _projection(spec, generator: nn.Linear) -> None:
    _linear(spec, generator)
    bias = generator.bias.detach().float().clone() if generator.bias is not None else \
        torch.zeros(generator.weight.size(0))
    bias[[PAD_ID, BOS_ID]] = NEVER_BIAS
    spec.bias = bias


def build_spec(ckpt):
    """The ctranslate2 model specification of a checkpoint's model, weights set."""
    from ctranslate2.specs import common_spec, transformer_spec

    cfg, model = ckpt.config.model, ckpt.model
    where = f"{ckpt.path}: model.type {cfg.type}"
    if cfg.type == "rnn":
        raise NMTKitError(f"{where}: the RNN has no CTranslate2 counterpart (export a Transformer "
                          "or a decoder-only model)")
    if cfg.positional == "none":
        raise NMTKitError(f"{where}: model.positional none has no CTranslate2 counterpart")
    activation = {"relu": common_spec.Activation.RELU, "gelu": common_spec.Activation.GELU,
                  "swish": common_spec.Activation.SWISH}[cfg.activation]
    pre_norm = cfg.norm == "pre"
    if cfg.type == "decoder_only":
        if cfg.prefix_lm:
            raise NMTKitError(f"{where}: model.prefix_lm (source positions attend both ways) "
                              "has no CTranslate2 counterpart")
        spec = transformer_spec.TransformerDecoderModelSpec.from_config(
            cfg.layers, cfg.heads, pre_norm=pre_norm, activation=activation)
        _stack(spec.decoder, model)
        _decoder_layers(spec.decoder, model.layers)
        _projection(spec.decoder.projection, model.generator)
        spec.register_vocabulary(ckpt.tgt_tokenizer.vocab())
        spec.config.unk_token, spec.config.bos_token, spec.config.eos_token = UNK, BOS, EOS
        return spec
    spec = transformer_spec.TransformerSpec.from_config(
        (cfg.encoder_layers, cfg.decoder_layers), cfg.heads, pre_norm=pre_norm,
        activation=activation)
    _stack(spec.encoder, model.encoder)
    for layer_spec, layer in zip(spec.encoder.layer, model.encoder.layers, strict=True):
        _self_attention(layer_spec, layer)
        _feed_forward(layer_spec, layer)
    _stack(spec.decoder, model.decoder)
    _decoder_layers(spec.decoder, model.decoder.layers)
    _projection(spec.decoder.projection, model.generator)
    spec.register_source_vocabulary(ckpt.src_tokenizer.vocab())
    spec.register_target_vocabulary(ckpt.tgt_tokenizer.vocab())
    spec.config.unk_token, spec.config.bos_token, spec.config.eos_token = UNK, BOS, EOS
    spec.config.decoder_start_token = BOS
    spec.config.add_source_eos = True  # as nmtkit's batches: the plain pieces, then </s>
    return spec


def export_ctranslate2(checkpoint: Path, out: Path, quantization: str | None = None) -> Path:
    """Write the checkpoint as a CTranslate2 model folder `out` (which must not exist)."""
    out = Path(out)
    check_new_folder(out, "export")
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise NMTKitError(f"--quantization {quantization}: choose one of {', '.join(QUANTIZATIONS)}")
    try:
        import ctranslate2.converters
    except ImportError:
        raise NMTKitError("export to CTranslate2 needs the ctranslate2 package: "
                          "pip install 'nmtkit[ctranslate2]'") from None
    ckpt = load_checkpoint(resolve_checkpoint(checkpoint))
    spec = build_spec(ckpt)

    class _Converter(ctranslate2.converters.Converter):
        def _load(self):
            return spec

    remove_stale(out)  # what an earlier export killed with SIGKILL left beside it
    tmp = temp_folder(out)
    try:
        _Converter().convert(str(tmp / "model"), quantization=quantization)
        (tmp / "model" / "source.spm").write_bytes(ckpt.src_tokenizer.to_bytes())
        (tmp / "model" / "target.spm").write_bytes(ckpt.tgt_tokenizer.to_bytes())
        (tmp / "model").rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
