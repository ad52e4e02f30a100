"""Import a pretrained Marian model (OPUS-MT) from a Hugging Face `MarianMTModel` folder.

A Hugging Face Marian folder holds `config.json`, the weights (`model.safetensors`, or the older
pickled `pytorch_model.bin`), the two sentencepiece models `source.spm` and `target.spm`, and
`vocab.json`: the one vocabulary both sides share, mapping each piece to its id. Those ids are
not sentencepiece's own (Marian puts `</s>` at 0, `<unk>` at 1 and `<pad>` last), and nmtkit's
four special ids are fixed (`vocabulary.PAD_ID` ...). So the import renumbers:

    nmtkit id 0 <pad>, 1 <unk>, 2 <s>, 3 </s>, then Marian's other entries in Marian's order

and rewrites each sentencepiece model so that its own ids are these. A piece of vocab.json that a
side's sentencepiece model lacks is added as UNUSED (segmentation never produces it, as before);
every piece keeps its score, so segmentation does not change. Marian starts the decoder with
`<pad>`; nmtkit feeds `<s>`, so `<s>` gets a copy of `<pad>`'s embedding, and an output bias of
-1e4 keeps it out of the softmax (search never picks `<pad>` or `<s>` anyway).

Marian's architecture is nmtkit's Transformer with options (all in `TransformerConfig`):
post-norm without a final layer norm (`norm: post`), swish (`activation`), sines then cosines
(`sinusoids: halves`), `scale_embeddings`, one shared embedding table, and the final logits bias
(the output layer's bias). Anything else in config.json that changes the computation is refused,
by name.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from sentencepiece import sentencepiece_model_pb2 as spm_pb2

from nmtkit.checkpoint import save_checkpoint
from nmtkit.config import Config, DataConfig, TransformerConfig
from nmtkit.errors import NMTKitError
from nmtkit.files import remove_stale
from nmtkit.transformer import build_transformer
from nmtkit.vocabulary import BOS, EOS, PAD, UNK, Tokenizer

NEVER_BIAS = -1e4  # the output bias of <s>: exp(-1e4) is 0 in float32, so it leaves the softmax

# config.json keys that must hold these values: the variants nmtkit's Transformer does not have
_REQUIRED = {
    "normalize_before": False,  # pre-norm Marian (a final layer norm per stack)
    "normalize_embedding": False,  # a layer norm on the embeddings
    "add_final_layer_norm": False,
    "static_position_embeddings": True,  # learned positions
    "share_encoder_decoder_embeddings": True,  # separate source and target vocabularies
}
_ACTIVATIONS = {"swish": "swish", "silu": "swish", "gelu": "gelu", "relu": "relu"}


def _read_config(src: Path) -> dict[str, Any]:
    path = src / "config.json"
    if not path.is_file():
        raise NMTKitError(f"{src}: not a Hugging Face Marian folder (no config.json)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise NMTKitError(f"{path}: not JSON ({err})") from None
    if not isinstance(cfg, dict) or cfg.get("model_type") != "marian":
        kind = cfg.get("model_type") if isinstance(cfg, dict) else None
        raise NMTKitError(f"{path}: model_type is {kind!r}, not 'marian': not a Marian model")
    for name in ("source.spm", "target.spm", "vocab.json"):
        if not (src / name).is_file():
            raise NMTKitError(f"{src}: not a complete Marian folder ({name} is missing)")
    return cfg


def transformer_config(cfg: dict[str, Any], path: Path) -> TransformerConfig:
    """The nmtkit Transformer that computes what config.json describes, or an error naming the
    option nmtkit does not have."""
    for key, value in _REQUIRED.items():
        if key in cfg and cfg[key] != value:
            raise NMTKitError(f"{path}: {key}: {cfg[key]!r} is not supported (nmtkit imports "
                              f"Marian models with {key}: {json.dumps(value)})")
    for enc, dec in (("encoder_attention_heads", "decoder_attention_heads"),
                     ("encoder_ffn_dim", "decoder_ffn_dim")):
        if cfg.get(enc) != cfg.get(dec):
            raise NMTKitError(f"{path}: {enc} ({cfg.get(enc)}) differs from {dec} "
                              f"({cfg.get(dec)}): not supported")
    activation = cfg.get("activation_function", "swish")
    if activation not in _ACTIVATIONS:
        raise NMTKitError(f"{path}: activation_function: {activation!r} is not supported "
                          f"(supported: {', '.join(_ACTIVATIONS)})")
    try:
        return TransformerConfig(
            d_model=cfg["d_model"], heads=cfg["encoder_attention_heads"],
            ff_size=cfg["encoder_ffn_dim"], encoder_layers=cfg["encoder_layers"],
            decoder_layers=cfg["decoder_layers"], norm="post", positional="sinusoidal",
            sinusoids="halves", max_positions=cfg.get("max_position_embeddings", 512),
            activation=_ACTIVATIONS[activation],
            scale_embeddings=bool(cfg.get("scale_embedding", False)),
            dropout=cfg.get("dropout", 0.1), attention_dropout=cfg.get("attention_dropout", 0.0),
            activation_dropout=cfg.get("activation_dropout", 0.0), share_embeddings=True,
            tie_output=bool(cfg.get("tie_word_embeddings", True)),
        )
    except KeyError as err:
        raise NMTKitError(f"{path}: {err.args[0]} is missing") from None
    except ValueError as err:  # pydantic's ValidationError spans lines: one line per field
        why = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()) \
            if hasattr(err, "errors") else str(err)
        raise NMTKitError(f"{path}: not a model nmtkit can build ({why})") from None


def _read_weights(src: Path) -> dict[str, torch.Tensor]:
    """The state dict, from safetensors, else from pytorch_model.bin with torch's weights-only
    unpickler (which refuses to run code)."""
    if (src / "model.safetensors").is_file():
        try:
            return load_file(str(src / "model.safetensors"))
        except (SafetensorError, OSError) as err:
            raise NMTKitError(f"{src / 'model.safetensors'}: unreadable ({err})") from None
    binary = src / "pytorch_model.bin"
    if not binary.is_file():
        raise NMTKitError(f"{src}: no model.safetensors or pytorch_model.bin")
    print(f"nmtkit: reading {binary}, a pickle, with torch.load(weights_only=True): tensors "
          "only, no code is run", file=sys.stderr)
    try:
        weights = torch.load(binary, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, ... for refused pickles
        why = next((line.strip().split(". Please")[0] for line in str(err).splitlines()
                    if "Unsupported global" in line), "it holds more than tensors, or is no pickle")
        raise NMTKitError(f"{binary}: torch refuses to load it as plain tensors ({why}); "
                          "nmtkit never unpickles arbitrary objects: convert it to "
                          "model.safetensors where you trust it") from None
    if not isinstance(weights, dict):
        raise NMTKitError(f"{binary}: not a state dict")
    return weights


def _read_vocab(path: Path) -> list[str]:
    """vocab.json as a list of pieces in Marian's id order."""
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise NMTKitError(f"{path}: not JSON ({err})") from None
    if not isinstance(mapping, dict) or sorted(mapping.values()) != list(range(len(mapping))):
        raise NMTKitError(f"{path}: not a vocabulary (an object of pieces to ids 0 .. n-1)")
    pieces = [""] * len(mapping)
    for piece, i in mapping.items():
        pieces[i] = piece
    for special in (EOS, UNK, PAD):
        if special not in mapping:
            raise NMTKitError(f"{path}: has no {special}")
    return pieces


def renumbering(marian_pieces: list[str]) -> list[int]:
    """For each nmtkit id, the Marian id whose row it takes (<s> takes <pad>'s)."""
    index = {piece: i for i, piece in enumerate(marian_pieces)}
    specials = [index[PAD], index[UNK], index[PAD], index[EOS]]  # <pad> <unk> <s> </s>
    rest = [i for i, p in enumerate(marian_pieces) if p not in (PAD, UNK, BOS, EOS)]
    return specials + rest


def _renumbered_spm(path: Path, pieces: list[str]) -> Tokenizer:
    """The sentencepiece model at `path`, rewritten so that piece `pieces[i]` has id i."""
    proto = spm_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as err:  # protobuf's DecodeError
        raise NMTKitError(f"{path}: not a sentencepiece model ({err})") from None
    own = {p.piece: p for p in proto.pieces}
    if not any(p in own for p in pieces[4:]):  # e.g. a few stray bytes parse as an empty model
        raise NMTKitError(f"{path}: not a sentencepiece model of this vocab.json (none of its "
                          "pieces is in vocab.json)")
    kind = spm_pb2.ModelProto.SentencePiece
    new = []
    for i, piece in enumerate(pieces):
        entry = kind(piece=piece, score=0.0)
        if i == 1:
            entry.type = kind.UNKNOWN
        elif i in (0, 2, 3):
            entry.type = kind.CONTROL
        elif piece in own and own[piece].type in (kind.NORMAL, kind.USER_DEFINED, kind.BYTE):
            entry.type, entry.score = own[piece].type, own[piece].score
        else:  # only the other side's piece: never produced by this side's segmentation
            entry.type = kind.UNUSED
        new.append(entry)
    del proto.pieces[:]
    proto.pieces.extend(new)
    spec = proto.trainer_spec
    spec.pad_id, spec.unk_id, spec.bos_id, spec.eos_id = 0, 1, 2, 3
    spec.pad_piece, spec.unk_piece, spec.bos_piece, spec.eos_piece = PAD, UNK, BOS, EOS
    spec.vocab_size = len(new)
    return Tokenizer.from_bytes(proto.SerializeToString())


def _weights(hf: dict[str, torch.Tensor], model_cfg: TransformerConfig, order: list[int],
             path: Path) -> dict[str, torch.Tensor]:
    """Hugging Face Marian's tensors under nmtkit's names, rows in nmtkit's vocabulary order."""
    hf = {k.removeprefix("model."): v for k, v in hf.items()}

    def get(name: str) -> torch.Tensor:
        if name not in hf:
            raise NMTKitError(f"{path}: the weights lack {name}")
        return hf[name].float()

    shared_name = next((n for n in ("shared.weight", "encoder.embed_tokens.weight",
                                    "decoder.embed_tokens.weight") if n in hf), "shared.weight")
    rows = torch.tensor(order)
    embedding = get(shared_name)[rows]  # (nmtkit vocab, d_model)
    bias = hf.get("final_logits_bias", torch.zeros(1, len(order) - 1)).float().reshape(-1)[rows]
    bias[2] = NEVER_BIAS  # <s>: fed, never predicted
    out = {"encoder.embedding.weight": embedding, "decoder.embedding.weight": embedding,
           "generator.bias": bias}
    out["generator.weight"] = embedding if model_cfg.tie_output else get("lm_head.weight")[rows]

    def attention(ours: str, theirs: str, fused_from: str) -> None:
        q, k, v = (f"{theirs}.{x}_proj" for x in "qkv")
        parts = [q, k, v] if fused_from == "qkv" else [k, v]
        for kind in ("weight", "bias"):
            fused = torch.cat([get(f"{p}.{kind}") for p in parts])
            out[f"{ours}.{'qkv' if fused_from == 'qkv' else 'kv'}_proj.{kind}"] = fused
            if fused_from == "kv":
                out[f"{ours}.q_proj.{kind}"] = get(f"{q}.{kind}")
            out[f"{ours}.out_proj.{kind}"] = get(f"{theirs}.out_proj.{kind}")

    def copy(ours: str, theirs: str) -> None:
        for kind in ("weight", "bias"):
            out[f"{ours}.{kind}"] = get(f"{theirs}.{kind}")

    for side, layers in (("encoder", model_cfg.encoder_layers), ("decoder", model_cfg.decoder_layers)):
        for i in range(layers):
            ours, theirs = f"{side}.layers.{i}", f"{side}.layers.{i}"
            attention(f"{ours}.self_attn", f"{theirs}.self_attn", "qkv")
            copy(f"{ours}.self_attn_residual.norm", f"{theirs}.self_attn_layer_norm")
            if side == "decoder":
                attention(f"{ours}.cross_attn", f"{theirs}.encoder_attn", "kv")
                copy(f"{ours}.cross_attn_residual.norm", f"{theirs}.encoder_attn_layer_norm")
            copy(f"{ours}.ff.up", f"{theirs}.fc1")
            copy(f"{ours}.ff.down", f"{theirs}.fc2")
            copy(f"{ours}.ff_residual.norm", f"{theirs}.final_layer_norm")
    return out


def import_marian(src: Path, out: Path) -> Path:
    """Read the Hugging Face Marian folder `src`; write an nmtkit checkpoint folder `out`."""
    src, out = Path(src), Path(out)
    if out.exists():
        raise NMTKitError(f"{out} already exists: choose a new folder for the checkpoint")
    if not src.is_dir():
        raise NMTKitError(f"{src}: not a folder")
    hf_cfg = _read_config(src)
    model_cfg = transformer_config(hf_cfg, src / "config.json")
    marian_pieces = _read_vocab(src / "vocab.json")
    order = renumbering(marian_pieces)
    pieces = [PAD, UNK, BOS, EOS] + [marian_pieces[i] for i in order[4:]]
    src_tok = _renumbered_spm(src / "source.spm", pieces)
    tgt_tok = _renumbered_spm(src / "target.spm", pieces)
    hf = _read_weights(src)
    shared = hf.get("model.shared.weight", hf.get("shared.weight"))
    if shared is not None and shared.size(0) != len(marian_pieces):
        raise NMTKitError(f"{src}: vocab.json has {len(marian_pieces)} entries, the embedding "
                          f"{shared.size(0)} rows")
    model = build_transformer(model_cfg, len(pieces), len(pieces))
    state = _weights(hf, model_cfg, order, src)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if state[name].shape != tensor.shape:
                raise NMTKitError(f"{src}: {name} has shape {tuple(state[name].shape)}, "
                                  f"config.json implies {tuple(tensor.shape)}")
            tensor.copy_(state[name])
    max_len = max(1, min(250, model_cfg.max_positions - 2))
    config = Config(
        data=DataConfig(train_src=Path("train.src"), train_tgt=Path("train.tgt"),
                        valid_src=Path("valid.src"), valid_tgt=Path("valid.tgt"), max_len=max_len),
        model=model_cfg,
    )
    info = {"imported_from": {"format": "huggingface-marian", "folder": src.name}}
    remove_stale(out)  # what an earlier import killed with SIGKILL left beside it
    return save_checkpoint(out, model, config, src_tok, tgt_tok, info)
