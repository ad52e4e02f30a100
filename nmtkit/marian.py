"""Import a pretrained Marian model (OPUS-MT): a Hugging Face `MarianMTModel` folder, or the
original Marian release (`*.npz`, `decoder.yml`, the vocabulary yml, the spm models).

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

The original release holds the same model under Marian's own names: its options are the yaml in
the npz entry `special:model.yml`, its matrices are stored (in, out), and its vocabulary yml lacks
`<pad>` (Marian starts the decoder from a zero embedding instead). The import reads it into the
Hugging Face layout the converter of transformers produces (`<pad>` appended, a zero row), then
goes on as for a Hugging Face folder. It loads the npz with `allow_pickle=False`.
"""

from __future__ import annotations

import json
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file
from sentencepiece import sentencepiece_model_pb2 as spm_pb2

from nmtkit.checkpoint import save_checkpoint
from nmtkit.config import Config, DataConfig, TransformerConfig
from nmtkit.errors import NMTKitError
from nmtkit.files import check_new_folder, remove_stale
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
    if path.is_dir():
        _check_file(path)  # says it is a folder
    if not path.is_file():
        raise NMTKitError(f"{src}: not a Hugging Face Marian folder (no config.json) nor a "
                          "Marian release (no *.npz)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise NMTKitError(f"{path}: not JSON ({err})") from None
    if not isinstance(cfg, dict) or cfg.get("model_type") != "marian":
        kind = cfg.get("model_type") if isinstance(cfg, dict) else None
        raise NMTKitError(f"{path}: model_type is {kind!r}, not 'marian': not a Marian model")
    for name in ("source.spm", "target.spm", "vocab.json"):
        _check_file(src / name)
    return cfg


def _check_file(path: Path) -> Path:
    """`path`, or an error that says why it cannot be read: missing, or a folder."""
    if path.is_dir():
        raise NMTKitError(f"{path} is a folder, not a file: not a complete Marian folder")
    if not path.is_file():
        raise NMTKitError(f"{path.parent}: not a complete Marian folder ({path.name} is missing)")
    return path


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


# --- the original Marian release: *.npz, decoder.yml, the vocabulary yml, the spm models ---

# special:model.yml options that must hold these values: the variants nmtkit's Transformer lacks
_MARIAN_REQUIRED: dict[str, Any] = {
    "type": "transformer",  # not the RNN models (s2s, amun, nematus) nor transformer-lm
    "transformer-preprocess": "",  # pre-norm
    "transformer-postprocess": "dan",  # post-norm: dropout, add, normalize
    "transformer-postprocess-top": "",  # a final layer norm per stack
    "transformer-ffn-depth": 2,
    "transformer-decoder-autoreg": "self-attention",  # average-attention, rnn
    "transformer-train-position-embeddings": False,  # learned positions
    "transformer-no-projection": False,
    "transformer-tied-layers": [],
    "right-left": False,  # a model that translates right to left
}
# Marian's gelu is x * sigmoid(1.702 x), not the exact gelu nmtkit has: refused, not approximated
_MARIAN_ACTIVATIONS = ("swish", "relu")
_CONFIG_ENTRY = "special:model.yml"


@dataclass
class _Loaded:
    """A Marian model read from either layout, in the Hugging Face layout."""

    model_cfg: TransformerConfig
    pieces: list[str]  # the shared vocabulary, in Marian's id order, <pad> last
    weights: dict[str, torch.Tensor]  # Hugging Face MarianMTModel names
    source_spm: Path
    target_spm: Path
    fmt: str


def _marian_layer_names(side: str, i: int) -> dict[str, str]:
    """Marian's weight names of layer i (from 0) -> Hugging Face's."""
    m, h = f"{side}_l{i + 1}_", f"{side}.layers.{i}."
    blocks = [("self", "self_attn", "self_attn_layer_norm")]
    if side == "decoder":
        blocks.append(("context", "encoder_attn", "encoder_attn_layer_norm"))
    names = {}
    for block, attn, norm in blocks:
        for x, proj in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "out_proj")):
            names[f"{m}{block}_W{x}"] = f"{h}{attn}.{proj}.weight"
            names[f"{m}{block}_b{x}"] = f"{h}{attn}.{proj}.bias"
        names[f"{m}{block}_Wo_ln_scale"] = f"{h}{norm}.weight"
        names[f"{m}{block}_Wo_ln_bias"] = f"{h}{norm}.bias"
    for k in "12":
        names[f"{m}ffn_W{k}"] = f"{h}fc{k}.weight"
        names[f"{m}ffn_b{k}"] = f"{h}fc{k}.bias"
    names[f"{m}ffn_ffn_ln_scale"] = f"{h}final_layer_norm.weight"
    names[f"{m}ffn_ffn_ln_bias"] = f"{h}final_layer_norm.bias"
    return names


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(_check_file(path).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise NMTKitError(f"{path}: not YAML ({str(err).splitlines()[0]})") from None


def _npz_and_vocab(src: Path) -> tuple[Path, Path]:
    """The weights and the vocabulary yml decoder.yml names, else the folder's only ones."""
    decoder = _read_yaml(src / "decoder.yml") if (src / "decoder.yml").exists() else {}
    if not isinstance(decoder, dict):
        raise NMTKitError(f"{src / 'decoder.yml'}: not a Marian decoder config (no mapping)")
    models, vocabs = decoder.get("models"), decoder.get("vocabs")
    if models:
        if not isinstance(models, list) or len(models) != 1:
            raise NMTKitError(f"{src / 'decoder.yml'}: models: {models!r}: nmtkit imports one "
                              "model, not an ensemble")
        npz = src / Path(str(models[0])).name
    else:
        found = sorted(src.glob("*.npz"))
        if len(found) != 1:
            raise NMTKitError(f"{src}: {len(found)} .npz files and no decoder.yml naming one")
        npz = found[0]
    if vocabs:
        names = {Path(str(v)).name for v in vocabs} if isinstance(vocabs, list) else {str(vocabs)}
        if len(names) != 1:
            raise NMTKitError(f"{src / 'decoder.yml'}: vocabs: {sorted(names)}: separate source "
                              "and target vocabularies are not supported")
        vocab = src / names.pop()
        if vocab.suffix not in (".yml", ".yaml"):
            raise NMTKitError(f"{src / 'decoder.yml'}: vocabs: {vocab.name}: a sentencepiece "
                              "vocabulary is not supported (nmtkit reads a vocabulary yml)")
    else:
        found = sorted(src.glob("*vocab.yml"))
        if any(p.name.endswith((".src.vocab.yml", ".trg.vocab.yml")) for p in found):
            raise NMTKitError(f"{src}: separate source and target vocabularies "
                              "(*.src.vocab.yml, *.trg.vocab.yml) are not supported")
        if len(found) != 1:
            raise NMTKitError(f"{src}: not a complete Marian release ({len(found)} *vocab.yml "
                              "files and no decoder.yml naming one)")
        vocab = found[0]
    return _check_file(npz), _check_file(vocab)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of the npz, refusing pickled objects (np.load's allow_pickle=False)."""
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise NMTKitError(f"{path}: not an npz archive ({err})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise NMTKitError(f"{path}: one array, not an npz archive of Marian weights")
    arrays = {}
    with npz:
        for name in npz.files:
            try:
                arrays[name] = npz[name]
            except ValueError:  # "Object arrays cannot be loaded when allow_pickle=False"
                raise NMTKitError(f"{path}: {name} holds pickled Python objects; nmtkit loads "
                                  "plain arrays only (allow_pickle=False)") from None
            except (OSError, zipfile.BadZipFile, EOFError) as err:
                raise NMTKitError(f"{path}: {name} is unreadable ({err})") from None
    return arrays


def _marian_options(arrays: dict[str, np.ndarray], path: Path) -> dict[str, Any]:
    """The model options Marian stored in the npz: yaml text as bytes, a trailing NUL."""
    entry = arrays.get(_CONFIG_ENTRY)
    if entry is None or entry.dtype.itemsize != 1:  # Marian writes int8
        raise NMTKitError(f"{path}: no {_CONFIG_ENTRY} entry: not a Marian model file")
    try:
        options = yaml.safe_load(entry.tobytes().rstrip(b"\0").decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise NMTKitError(f"{path}: {_CONFIG_ENTRY} is not YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(options, dict):
        raise NMTKitError(f"{path}: {_CONFIG_ENTRY} is not a mapping of options")
    return options


def marian_transformer_config(opt: dict[str, Any], where: str, untied_output: bool) -> TransformerConfig:
    """The nmtkit Transformer that computes what Marian's options describe, or an error naming
    the option nmtkit does not have (by Marian's name)."""
    for key, value in _MARIAN_REQUIRED.items():
        if key in opt and opt[key] != value and not (value == [] and opt[key] is None):
            raise NMTKitError(f"{where}: {key}: {opt[key]!r} is not supported (nmtkit imports "
                              f"Marian models with {key}: {json.dumps(value)})")
    if opt.get("transformer-postprocess-emb", "d") not in ("d", ""):  # "n": a layer norm
        raise NMTKitError(f"{where}: transformer-postprocess-emb: "
                          f"{opt['transformer-postprocess-emb']!r} is not supported (nmtkit "
                          "imports Marian models with transformer-postprocess-emb: d)")
    if not (opt.get("tied-embeddings-all") or opt.get("tied-embeddings-src")):
        raise NMTKitError(f"{where}: tied-embeddings-all and tied-embeddings-src are false: "
                          "separate source and target embeddings are not supported")
    ints = {}
    for key in ("dim-emb", "enc-depth", "dec-depth", "transformer-heads", "transformer-dim-ffn"):
        if not isinstance(opt.get(key), int) or isinstance(opt.get(key), bool):
            raise NMTKitError(f"{where}: {key}: {opt.get(key)!r}: expected a whole number")
        ints[key] = opt[key]
    for key, same_as in (("transformer-decoder-dim-ffn", "transformer-dim-ffn"),
                         ("transformer-decoder-ffn-depth", "transformer-ffn-depth")):
        if opt.get(key) not in (None, 0, opt.get(same_as, 2)):
            raise NMTKitError(f"{where}: {key}: {opt[key]!r} differs from {same_as}: not supported")
    activation = opt.get("transformer-ffn-activation", "swish")
    if activation not in _MARIAN_ACTIVATIONS:
        raise NMTKitError(f"{where}: transformer-ffn-activation: {activation!r} is not supported "
                          f"(supported: {', '.join(_MARIAN_ACTIVATIONS)}; Marian's gelu is "
                          "x*sigmoid(1.702x), not the exact gelu)")
    dropout = opt.get("transformer-dropout", 0.1)
    return transformer_config({
        "d_model": ints["dim-emb"], "encoder_layers": ints["enc-depth"],
        "decoder_layers": ints["dec-depth"], "encoder_attention_heads": ints["transformer-heads"],
        "decoder_attention_heads": ints["transformer-heads"],
        "encoder_ffn_dim": ints["transformer-dim-ffn"], "decoder_ffn_dim": ints["transformer-dim-ffn"],
        "activation_function": activation, "scale_embedding": True,
        "max_position_embeddings": 512, "dropout": dropout,
        "attention_dropout": opt.get("transformer-dropout-attention", 0.0),
        "activation_dropout": opt.get("transformer-dropout-ffn", 0.0),
        "tie_word_embeddings": not untied_output,
    }, Path(where))


def _read_vocab_yml(path: Path) -> list[str]:
    """The vocabulary yml (piece: id) as a list of pieces in Marian's id order, <pad> appended
    as Hugging Face's converter does. BaseLoader keeps every key a string ("yes", "1", "null")."""
    loader = getattr(yaml, "CBaseLoader", yaml.BaseLoader)  # libyaml's, where built: 32k lines
    try:
        mapping = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise NMTKitError(f"{path}: not YAML ({str(err).splitlines()[0]})") from None
    try:
        ids = {piece: int(i) for piece, i in mapping.items()}
    except (AttributeError, TypeError, ValueError):
        ids = None
    if not ids:
        raise NMTKitError(f"{path}: not a Marian vocabulary (a mapping of pieces to ids 0 .. n-1)")
    if sorted(ids.values()) != list(range(len(ids))):
        gap = min(set(range(len(ids) + 1)) - set(ids.values()))
        raise NMTKitError(f"{path}: not a Marian vocabulary of ids 0 .. n-1 ({len(ids)} pieces, "
                          f"no piece has id {gap})")
    pieces = [""] * len(ids)
    for piece, i in ids.items():
        pieces[i] = piece
    for special in (EOS, UNK):
        if special not in ids:
            raise NMTKitError(f"{path}: has no {special}")
    if PAD in ids:  # its row would not be the zero embedding Marian starts the decoder from
        raise NMTKitError(f"{path}: has a {PAD} entry (id {ids[PAD]}); Marian's vocabularies "
                          "have none: not supported")
    return pieces + [PAD]


def _hf_weights_from_npz(arrays: dict[str, np.ndarray], cfg: TransformerConfig, vocab_size: int,
                         path: Path) -> dict[str, torch.Tensor]:
    """Marian's arrays under Hugging Face's names: matrices transposed to (out, in), a zero
    <pad> row appended to the embedding (Marian's decoder starts from a zero embedding) and a
    zero to the logits bias."""
    names = {}
    for side, layers in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers)):
        for i in range(layers):
            names.update(_marian_layer_names(side, i))
    known = {*names, _CONFIG_ENTRY, "Wemb", "decoder_ff_logit_out_b", "decoder_ff_logit_out_W",
             "decoder_ff_logit_out_Wt"}
    extra = sorted(n for n in arrays if n not in known and not n.startswith("special:"))
    if extra:
        raise NMTKitError(f"{path}: holds {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}, "
                          "which nmtkit does not map (an option it lacks, or more layers than "
                          f"{_CONFIG_ENTRY} says)")
    for name in [*names, "Wemb"]:
        if name not in arrays:
            raise NMTKitError(f"{path}: the weights lack {name}")
        if arrays[name].dtype.kind != "f":
            raise NMTKitError(f"{path}: {name} is {arrays[name].dtype}, not floating point")

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(arrays[name], dtype=np.float32))

    out = {}
    for marian, hf in names.items():
        value = tensor(marian)
        out[hf] = value.T.contiguous() if marian.split("_")[-1].startswith("W") else value.reshape(-1)
    embedding = tensor("Wemb")  # (Marian vocab, d_model)
    if embedding.size(0) != vocab_size - 1:
        raise NMTKitError(f"{path}: Wemb has {embedding.size(0)} rows, the vocabulary yml "
                          f"{vocab_size - 1} entries")
    zero = torch.zeros(1, embedding.size(1))
    out["shared.weight"] = torch.cat([embedding, zero])
    if "decoder_ff_logit_out_b" in arrays:
        out["final_logits_bias"] = torch.cat([tensor("decoder_ff_logit_out_b").reshape(1, -1),
                                              torch.zeros(1, 1)], 1)
    if "decoder_ff_logit_out_W" in arrays:  # untied output layer, stored (d_model, vocab)
        out["lm_head.weight"] = torch.cat([tensor("decoder_ff_logit_out_W").T, zero])
    elif "decoder_ff_logit_out_Wt" in arrays:  # the same, stored (vocab, d_model)
        out["lm_head.weight"] = torch.cat([tensor("decoder_ff_logit_out_Wt"), zero])
    return out


def _spm_pair(src: Path) -> tuple[Path, Path]:
    """source.spm and target.spm, or the release's one sentencepiece model for both sides."""
    if (src / "source.spm").exists() or (src / "target.spm").exists():
        return _check_file(src / "source.spm"), _check_file(src / "target.spm")
    found = sorted(src.glob("*.spm"))
    if len(found) != 1:
        raise NMTKitError(f"{src}: not a complete Marian release (source.spm and target.spm "
                          "are missing)")
    return _check_file(found[0]), found[0]


def _load_npz_release(src: Path) -> _Loaded:
    npz, vocab = _npz_and_vocab(src)
    source_spm, target_spm = _spm_pair(src)
    arrays = _read_npz(npz)
    untied = "decoder_ff_logit_out_W" in arrays or "decoder_ff_logit_out_Wt" in arrays
    model_cfg = marian_transformer_config(_marian_options(arrays, npz), f"{npz}: {_CONFIG_ENTRY}",
                                          untied)
    pieces = _read_vocab_yml(vocab)
    weights = _hf_weights_from_npz(arrays, model_cfg, len(pieces), npz)
    return _Loaded(model_cfg, pieces, weights, source_spm, target_spm, "marian-npz")


def _load_hf_folder(src: Path) -> _Loaded:
    hf_cfg = _read_config(src)
    model_cfg = transformer_config(hf_cfg, src / "config.json")
    pieces = _read_vocab(src / "vocab.json")
    return _Loaded(model_cfg, pieces, _read_weights(src), src / "source.spm", src / "target.spm",
                   "huggingface-marian")


def import_marian(src: Path, out: Path) -> Path:
    """Read the Marian model in `src` (a Hugging Face folder, or the original release with an
    npz); write an nmtkit checkpoint folder `out`."""
    src, out = Path(src), Path(out)
    check_new_folder(out, "checkpoint")
    if not src.is_dir():
        raise NMTKitError(f"{src}: not a folder")
    if (src / "config.json").exists() or not any(src.glob("*.npz")):
        loaded = _load_hf_folder(src)
    else:
        loaded = _load_npz_release(src)
    model_cfg, marian_pieces = loaded.model_cfg, loaded.pieces
    order = renumbering(marian_pieces)
    pieces = [PAD, UNK, BOS, EOS] + [marian_pieces[i] for i in order[4:]]
    src_tok = _renumbered_spm(loaded.source_spm, pieces)
    tgt_tok = _renumbered_spm(loaded.target_spm, pieces)
    hf = loaded.weights
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
                                  f"the model's options imply {tuple(tensor.shape)}")
            tensor.copy_(state[name])
    max_len = max(1, min(250, model_cfg.max_positions - 2))
    config = Config(
        data=DataConfig(train_src=Path("train.src"), train_tgt=Path("train.tgt"),
                        valid_src=Path("valid.src"), valid_tgt=Path("valid.tgt"), max_len=max_len),
        model=model_cfg,
    )
    info = {"imported_from": {"format": loaded.fmt, "folder": src.name}}
    remove_stale(out)  # what an earlier import killed with SIGKILL left beside it
    return save_checkpoint(out, model, config, src_tok, tgt_tok, info)
