"""The Python API: load a checkpoint (or several, as an ensemble) once, translate lists of sentences.

    from nmtkit import Translator
    t = Translator.load("runs/demo/best")
    t.translate(["four thousand seventy-one"])             # -> ["사천칠십일"]
    t.translate(["..."], beam=5)                           # beam search
    t.translate(["..."], beam=5, nbest=3, return_details=True)[0].nbest   # 3 best, with scores
    t.translate(["..."], sample=True, top_p=0.9, seed=1)   # sampling
    Translator.load(["runs/a/best", "runs/b/best"])        # an ensemble
    Translator.load("runs/demo/best", quantize="int8")     # int8 linear layers (CPU)

Inputs are grouped into batches of similar length (at most `batch_tokens` source tokens each,
padding included), so little work is spent on padding; results come back in input order.

On the CPU a Translator also prepacks the fp32 linear layers for oneDNN (`quantize.pack_linears`)
and tells glibc's malloc to keep freed memory (`keep_freed_memory`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from nmtkit.checkpoint import Checkpoint, load_checkpoint
from nmtkit.cpu import keep_freed_memory
from nmtkit.data import TokenBatchSampler, collate_source
from nmtkit.errors import NMTKitError, NMTKitWarning
from nmtkit.quantize import pack_linears
from nmtkit.search import EnsembleModel, Hypothesis, beam_search, greedy_search
from nmtkit.search import sample as sample_search  # `sample` is translate's flag
from nmtkit.seq2seq import Seq2Seq

MAX_BEAM = 256  # a larger beam or n-best would only be a mistake (and hold the memory hostage)


@dataclass(repr=False)
class Translation:
    """One sentence's translation, with what search knows about it.

    text           the translation, detokenized
    tokens         its target subword pieces (no </s>)
    source_tokens  the source's subword pieces, then "</s>": the attention's columns
    score          what search ranked by: the log-probability, divided by the length penalty
                   in beam search
    attention      (len(tokens) + 1) x len(source_tokens) weights, a row per target piece and
                   one for the final </s>; None unless asked for (or without attention)
    nbest          with nbest > 1: the n best Translations, best first (this one first)
    """

    text: str
    tokens: list[str]
    source_tokens: list[str]
    score: float
    attention: list[list[float]] | None
    nbest: list[Translation] = field(default_factory=list)

    def __repr__(self) -> str:
        attention = "None" if self.attention is None else \
            f"{len(self.attention)}x{len(self.attention[0]) if self.attention else 0}"
        return (f"Translation(text={self.text!r}, score={self.score:.4f}, tokens={len(self.tokens)}, "
                f"source_tokens={len(self.source_tokens)}, attention={attention}, nbest={len(self.nbest)})")


class Translator:
    def __init__(
        self,
        checkpoints: Checkpoint | Sequence[Checkpoint],
        device: str | torch.device = "cpu",
        quantize: str | None = None,
        keep_memory: bool = True,
        pack: bool = True,
    ) -> None:
        """keep_memory: on the CPU, call keep_freed_memory() (see there; a process-wide
        setting). pack: on the CPU, without quantize, pack the linear layers for oneDNN (see
        quantize.pack_linears)."""
        ckpts = [checkpoints] if isinstance(checkpoints, Checkpoint) else list(checkpoints)
        if not ckpts:
            raise NMTKitError("no checkpoint given")
        _check_same_vocabularies(ckpts)
        self.device = _device(device)
        if keep_memory and self.device.type == "cpu":
            keep_freed_memory()
        models = [ckpt.model.to(self.device).eval() for ckpt in ckpts]
        if quantize is not None:
            models = [_quantized(m, quantize, self.device) for m in models]
        elif pack and self.device.type == "cpu":
            for m in models:
                pack_linears(m)
        self.ckpt = ckpts[0]
        self.checkpoints = ckpts
        # one checkpoint decodes as itself; several through the ensemble wrapper
        self.model: Seq2Seq | EnsembleModel = models[0] if len(models) == 1 else EnsembleModel(models)
        self.src_tok = self.ckpt.src_tokenizer
        self.tgt_tok = self.ckpt.tgt_tokenizer
        self.decoding = self.ckpt.config.decoding  # defaults: the first checkpoint's config
        # the longest input: what the config says, else the longest the model was trained on,
        # never past the positions of any member (their source and their output)
        limit = self.decoding.max_input_len or max(c.config.data.max_len for c in ckpts)
        caps = [getattr(c.config.model, "max_positions", None) for c in ckpts]
        self.max_input_tokens = min([limit] + [cap - 1 for cap in caps if cap is not None])
        self.last_too_long: list[int] = []  # inputs of the last call past max_input_tokens

    @classmethod
    def load(
        cls,
        path: str | Path | Sequence[str | Path],
        device: str | torch.device = "cpu",
        quantize: str | None = None,
        keep_memory: bool = True,
        pack: bool = True,
    ) -> Translator:
        """One checkpoint folder, or a list of them to decode as an ensemble."""
        paths = [path] if isinstance(path, str | Path) else list(path)
        device = _device(device)
        return cls([load_checkpoint(p, device) for p in paths], device, quantize, keep_memory, pack)

    def _batches(self, ids: list[list[int]], batch_tokens: int) -> list[list[int]]:
        """Indices of non-empty inputs grouped by similar length, each group within batch_tokens
        (the training batcher, unshuffled, over source lengths)."""
        kept = [i for i, x in enumerate(ids) if x]
        lengths = [len(ids[i]) for i in kept]
        sampler = TokenBatchSampler(lengths, lengths, batch_tokens, shuffle=False, seed=0)
        return [[kept[j] for j in batch] for batch in sampler]

    @torch.inference_mode()
    def translate(
        self,
        sentences: list[str],
        batch_tokens: int | None = None,
        return_details: bool = False,
        *,
        attention: bool = True,
        beam: int | None = None,
        nbest: int = 1,
        length_penalty: float | None = None,
        sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | torch.Generator | None = None,
        max_len_a: float | None = None,
        max_len_b: int | None = None,
        too_long: str | None = None,
    ) -> list[str] | list[Translation]:
        """Translate in input order; an empty (or blank) sentence gives an empty translation.

        beam, length_penalty, max_len_a/b and batch_tokens default to the checkpoint's decoding
        config. beam 1 is greedy search. With sample=True each token is drawn at random
        (temperature, top_k, top_p) from a generator seeded by `seed` (an int, or a
        torch.Generator to continue across calls); nbest then draws that many samples.
        An input longer than `max_input_tokens` subword tokens is handled by `too_long`
        (default: the config's decoding.too_long): "truncate" it (a warning says how many and
        which), "skip" it (an empty translation, and a warning) or stop with an "error"; the
        indices of such inputs are in `last_too_long` after the call.
        Returns strings, or with return_details a Translation per sentence (tokens, score,
        attention unless attention=False, and the n-best list when nbest > 1)."""
        _check_sentences(sentences)
        d = self.decoding
        beam = d.beam if beam is None else beam
        length_penalty = d.length_penalty if length_penalty is None else length_penalty
        max_len_a = d.max_len_a if max_len_a is None else max_len_a
        max_len_b = d.max_len_b if max_len_b is None else max_len_b
        batch_tokens = d.batch_tokens if batch_tokens is None else batch_tokens
        _check_options(beam, nbest, sample, temperature, top_k, top_p, length_penalty, max_len_a,
                       max_len_b, batch_tokens)
        search = self._search_function(beam, nbest, length_penalty, sample, temperature, top_k,
                                       top_p, seed, max_len_a, max_len_b, return_details and attention)
        ids = self._encode(sentences, too_long or d.too_long)
        hyps: list[Hypothesis | None] = [None] * len(sentences)
        for indices in self._batches(ids, batch_tokens):
            src, lengths = collate_source([ids[i] for i in indices])
            for i, hyp in zip(indices, search(src.to(self.device), lengths.to(self.device)), strict=True):
                hyps[i] = hyp
        if not return_details:
            return [self.tgt_tok.decode(h.tokens) if h else "" for h in hyps]
        return [self._details(ids[i], h, nbest) for i, h in enumerate(hyps)]

    def _encode(self, sentences: list[str], too_long: str) -> list[list[int]]:
        """Subword ids of each sentence, over-long ones handled by the `too_long` policy."""
        if too_long not in ("truncate", "skip", "error"):
            raise NMTKitError(f"too_long must be truncate, skip or error, not {too_long!r}")
        ids = [self.src_tok.encode(s) if s.strip() else [] for s in sentences]
        limit = self.max_input_tokens
        self.last_too_long = [i for i, x in enumerate(ids) if len(x) > limit]
        if not self.last_too_long:
            return ids
        first = self.last_too_long[0]
        if too_long == "error":
            raise NMTKitError(f"input {first + 1} has {len(ids[first])} subword tokens, more than "
                              f"the limit of {limit} (decoding.max_input_len; too_long: error)")
        for i in self.last_too_long:
            ids[i] = ids[i][:limit] if too_long == "truncate" else []
        warnings.warn(NMTKitWarning(
            f"{len(self.last_too_long)} input(s) longer than {limit} subword tokens were "
            f"{'truncated' if too_long == 'truncate' else 'skipped (empty translation)'} "
            f"(the first: input {first + 1})"), stacklevel=3)
        return ids

    def _search_function(
        self, beam: int, nbest: int, alpha: float, do_sample: bool, temperature: float, top_k: int,
        top_p: float, seed: int | torch.Generator | None, max_len_a: float, max_len_b: int,
        with_attention: bool,
    ) -> Callable[[Tensor, Tensor], list[Hypothesis]]:
        """(src, src_lengths) -> one hypothesis per sentence, with every search option bound."""
        model = self.model
        limits = {"max_len_a": max_len_a, "max_len_b": max_len_b, "return_attention": with_attention}
        if do_sample:
            if isinstance(seed, torch.Generator):
                generator = seed
            else:
                generator = torch.Generator(self.device)
                if seed is None:
                    generator.seed()  # a fresh random seed
                else:
                    generator.manual_seed(seed)
            return lambda src, lengths: sample_search(
                model, src, lengths, temperature, top_k, top_p, generator, nbest, **limits)
        if beam == 1:
            return lambda src, lengths: greedy_search(model, src, lengths, **limits)
        return lambda src, lengths: beam_search(model, src, lengths, beam, alpha, nbest=nbest, **limits)

    def _details(self, src_ids: list[int], hyp: Hypothesis | None, nbest: int) -> Translation:
        source_tokens = self.src_tok.pieces(src_ids) + ["</s>"]
        if hyp is None:  # an empty input: empty output, and n empty alternatives
            empty = Translation("", [], source_tokens[-1:], 0.0, None)
            return Translation("", [], source_tokens[-1:], 0.0, None, [empty] * nbest if nbest > 1 else [])

        def one(h: Hypothesis) -> Translation:
            attention = None if h.attention is None else h.attention[:, : len(src_ids) + 1].tolist()
            return Translation(
                text=self.tgt_tok.decode(h.tokens),
                tokens=self.tgt_tok.pieces(h.tokens),
                source_tokens=source_tokens,
                score=h.score,
                attention=attention,
            )

        best = one(hyp)
        if nbest > 1:
            best.nbest = [one(h) for h in hyp.nbest[:nbest]]
        return best


def _check_sentences(sentences: object) -> None:
    """A list of strings: a plain string would be translated character by character."""
    if isinstance(sentences, str | bytes):
        raise TypeError("translate takes a list of sentences; for one sentence, pass "
                        f"[{sentences[:30]!r}]")
    if not isinstance(sentences, Sequence):
        raise TypeError(f"translate takes a list of sentences, not {type(sentences).__name__}")
    for i, s in enumerate(sentences):
        if not isinstance(s, str):
            raise TypeError(f"sentence {i} is a {type(s).__name__}, not a str")


def _check_options(beam: int, nbest: int, do_sample: bool, temperature: float, top_k: int,
                   top_p: float, length_penalty: float = 0.0, max_len_a: float = 0.0,
                   max_len_b: int = 0, batch_tokens: int = 1) -> None:
    def whole(name: str, value: object, low: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise NMTKitError(f"{name} must be a whole number >= {low}, not {value!r}")

    def number(name: str, value: object, low: float, strict: bool = False) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or \
                not math.isfinite(value) or value < low or (strict and value == low):
            raise NMTKitError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, "
                              f"not {value!r}")

    whole("beam", beam, 1)
    whole("nbest", nbest, 1)
    whole("top_k", top_k, 0)
    whole("max_len_b", max_len_b, 0)
    whole("batch_tokens", batch_tokens, 1)
    number("temperature", temperature, 0.0, strict=True)
    number("top_p", top_p, 0.0, strict=True)
    number("length_penalty", length_penalty, 0.0)
    number("max_len_a", max_len_a, 0.0)
    if top_p > 1:
        raise NMTKitError(f"top_p must be in (0, 1], not {top_p!r}")
    if not do_sample and nbest > beam:
        raise NMTKitError(f"nbest ({nbest}) cannot exceed the beam size ({beam}): raise --beam")
    if beam > MAX_BEAM or nbest > MAX_BEAM:
        raise NMTKitError(f"beam and nbest are at most {MAX_BEAM} (got {beam}, {nbest})")


def _device(device: str | torch.device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise NMTKitError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NMTKitError("device 'cuda' asked for, but no CUDA device is available (use --device cpu)")
    if device.type not in ("cpu", "cuda"):
        raise NMTKitError(f"device {device} is not supported (use cpu or cuda)")
    return device


def _check_same_vocabularies(ckpts: list[Checkpoint]) -> None:
    """An ensemble averages distributions token by token: every member needs the same ids."""
    first = ckpts[0]
    for other in ckpts[1:]:
        for side, a, b in (("source", first.src_tokenizer, other.src_tokenizer),
                           ("target", first.tgt_tokenizer, other.tgt_tokenizer)):
            if a.vocab() != b.vocab():
                raise NMTKitError(
                    f"cannot ensemble {first.path} and {other.path}: their {side} vocabularies "
                    "differ (ensemble members must share the same sentencepiece models)"
                )


def _quantized(model: Seq2Seq, kind: str, device: torch.device) -> Seq2Seq:
    from nmtkit.quantize import QUANTIZE_CHOICES, quantize_int8

    if kind not in QUANTIZE_CHOICES:
        raise NMTKitError(f"unknown quantization {kind!r} (choose from {', '.join(QUANTIZE_CHOICES)})")
    if device.type != "cpu":
        raise NMTKitError(f"int8 quantization runs on the CPU only (device is {device})")
    return quantize_int8(model)
