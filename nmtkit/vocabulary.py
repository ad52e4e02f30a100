"""Subword vocabularies: training sentencepiece models and turning text into ids and back.

The four special ids are fixed for every model so that the rest of the toolkit (models, loss,
search) can use the constants below without looking at a tokenizer.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

from nmtkit.config import VocabConfig
from nmtkit.errors import NMTKitError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
WORD_START = "\u2581"  # sentencepiece's mark on a piece that begins a word

_SPECIAL_IDS = frozenset((PAD_ID, BOS_ID, EOS_ID))
_TRAIN_SEED = 1  # sentencepiece samples/shuffles its input; fixed so `prepare` is reproducible
_SPM_MIN_SAMPLE = 101  # sentencepiece rejects input_sentence_size in 1..100


def check_text(text: str, what: str) -> None:
    """Raise NMTKitError for a str that is not text: a lone surrogate ("\\ud800", which a JSON
    escape can make) has no UTF-8 form, and sentencepiece would fail on it with a C++ error."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        code = ord(text[err.start])
        raise NMTKitError(f"{what} holds a lone surrogate (\\u{code:04x} at character {err.start + 1}), "
                          "which is not text: UTF-8 cannot encode it") from None


def _sample_lines(texts: list[Path], k: int, out: Path) -> None:
    """Reservoir-sample k lines of `texts` into `out` (for samples too small for sentencepiece)."""
    rng = random.Random(_TRAIN_SEED)
    sample: list[str] = []
    seen = 0
    for path in texts:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                seen += 1
                if len(sample) < k:
                    sample.append(line)
                else:
                    j = rng.randrange(seen)
                    if j < k:
                        sample[j] = line
    with open(out, "w", encoding="utf-8") as f:
        f.writelines(line if line.endswith("\n") else line + "\n" for line in sample)


def _train_once(texts: list[Path], prefix: Path, cfg: VocabConfig, hard_limit: bool) -> None:
    spm.SentencePieceTrainer.train(
        input=[str(p) for p in texts],
        model_prefix=str(prefix),
        model_type=cfg.type,
        vocab_size=cfg.size,
        character_coverage=cfg.character_coverage,
        input_sentence_size=0 if cfg.max_sentences < _SPM_MIN_SAMPLE else cfg.max_sentences,
        shuffle_input_sentence=True,
        hard_vocab_limit=hard_limit,
        byte_fallback=cfg.byte_fallback and cfg.type in ("bpe", "unigram"),
        split_digits=cfg.split_digits,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_piece=PAD,
        unk_piece=UNK,
        bos_piece=BOS,
        eos_piece=EOS,
        num_threads=max(1, min(os.cpu_count() or 1, 16)),
        minloglevel=2,  # only errors; sentencepiece is very chatty at INFO level
    )


def train_sentencepiece(texts: list[Path], model_prefix: Path, cfg: VocabConfig) -> Path:
    """Train a sentencepiece model on `texts` and return `{model_prefix}.model`.

    A corpus too small for `cfg.size` is retried with a soft size limit (sentencepiece then
    stops at the largest vocabulary it can build). Files appear atomically: training writes into
    a temporary folder next to the target and the results are renamed into place.
    """
    paths = [Path(p) for p in texts]
    for path in paths:
        if not path.is_file():
            raise NMTKitError(f"vocabulary training file not found: {path}")
    model_prefix = Path(model_prefix)
    model_prefix.parent.mkdir(parents=True, exist_ok=True)
    model_path = Path(f"{model_prefix}.model")
    vocab_path = Path(f"{model_prefix}.vocab")
    names = ", ".join(str(p) for p in paths)

    if hasattr(spm, "set_random_generator_seed"):
        spm.set_random_generator_seed(_TRAIN_SEED)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".spm-", dir=model_prefix.parent))
    try:
        tmp_prefix = tmp_dir / "spm"
        inputs = paths
        if cfg.max_sentences < _SPM_MIN_SAMPLE:
            inputs = [tmp_dir / "sample.txt"]
            _sample_lines(paths, cfg.max_sentences, inputs[0])
        try:
            _train_once(inputs, tmp_prefix, cfg, hard_limit=True)
        except RuntimeError:
            try:
                _train_once(inputs, tmp_prefix, cfg, hard_limit=False)
            except RuntimeError as err:
                # drop sentencepiece's source location and failed check, keep its explanation
                msg = str(err).split("] ", 1)[-1].strip() or str(err)
                hint = "lower vocab.size"
                if "smaller than required_chars" in msg:
                    hint = "raise vocab.size or lower vocab.character_coverage"
                    if cfg.byte_fallback and cfg.type in ("bpe", "unigram"):
                        hint += "; byte_fallback needs 256 pieces for the bytes: raise vocab.size " \
                                "or set vocab.byte_fallback: false"
                raise NMTKitError(
                    f"vocab: cannot train a {cfg.type} vocabulary of size {cfg.size} on {names}: "
                    f"{msg} ({hint})"
                ) from None
        _check_written(Path(f"{tmp_prefix}.model"))
        os.replace(f"{tmp_prefix}.vocab", vocab_path)
        os.replace(f"{tmp_prefix}.model", model_path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return model_path


def _check_written(model_file: Path) -> None:
    """sentencepiece reports no write error: a full disk leaves a short model file behind."""
    try:
        spm.SentencePieceProcessor(model_file=str(model_file))
    except (RuntimeError, OSError):
        if shutil.disk_usage(model_file.parent).free < 16 << 20:
            folder = next(p for p in model_file.parents if not p.name.startswith("."))  # not a temp
            raise NMTKitError(f"{folder}: no space left on the device (the vocabulary could not "
                              "be written)") from None
        raise NMTKitError(f"sentencepiece wrote an unreadable model to {model_file.parent}") from None


class Tokenizer:
    """One sentencepiece model: text <-> ids (no BOS/EOS added; the collate functions add them)."""

    def __init__(self, model_file: Path) -> None:
        if not Path(model_file).is_file():
            raise NMTKitError(f"sentencepiece model not found: {model_file}")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        except (RuntimeError, OSError) as err:
            raise NMTKitError(f"{model_file}: not a sentencepiece model ({err})") from None

    @classmethod
    def from_bytes(cls, data: bytes) -> Tokenizer:
        """Rebuild from `to_bytes()`, so a checkpoint can carry its own vocabulary."""
        tok = cls.__new__(cls)
        try:
            tok.sp = spm.SentencePieceProcessor(model_proto=data)
        except RuntimeError as err:
            raise NMTKitError(f"stored tokenizer is not a sentencepiece model ({err})") from None
        return tok

    def to_bytes(self) -> bytes:
        return self.sp.serialized_model_proto()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many lines in one call (sentencepiece's multithreaded path)."""
        if not texts:
            return []
        return self.sp.encode(texts, out_type=int)

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text, stopping at the first EOS and skipping PAD and BOS."""
        kept: list[int] = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i not in _SPECIAL_IDS:
                kept.append(i)
        return self.sp.decode(kept)

    def pieces(self, ids: Sequence[int]) -> list[str]:
        """Subword strings for ids, e.g. to label the axes of an attention plot."""
        return [self.sp.id_to_piece(int(i)) for i in ids]

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def vocab(self) -> list[str]:
        """All pieces in id order."""
        return [self.sp.id_to_piece(i) for i in range(len(self))]
