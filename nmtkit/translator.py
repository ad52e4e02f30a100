"""The Python API: load a checkpoint (or several, as an ensemble) once, translate lists of sentences.

    from nmtkit import Translator
    t = Translator.load("runs/demo/best")
    t.translate(["four thousand seventy-one"])             # -> ["사천칠십일"]
    t.translate(["..."], beam=5)                           # beam search
    t.translate(["..."], beam=5, nbest=3, return_details=True)[0].nbest   # 3 best, with scores
    t.translate(["..."], sample=True, top_p=0.9, seed=1)   # sampling
    t.translate(["A man"], prefix=["Ein Ma"])              # must begin so: "Ein Mann ..."
    t.translate(["A dog"], constraints=[["Hund"]])         # must contain the word "Hund"
    t.translate(["..."], constraints=[[{"any": ["Hund", "Hunde"]}]])   # one of them
    t.alternatives("A man sleeps.", prefix="Ein ", k=5)    # the 5 likeliest next words
    t.score(["A man."], ["Ein Mann."])                     # log-probabilities of given translations
    Translator.load(["runs/a/best", "runs/b/best"])        # an ensemble
    Translator.load("runs/demo/best", quantize="int8")     # int8 linear layers (CPU)

Inputs are grouped into batches of similar length (at most `batch_tokens` source tokens each,
padding included), so little work is spent on padding; results come back in input order.
Attention weights (for the details, alignments, heatmaps) come from one teacher-forced pass over
the finished translations, which gives exactly the weights search saw, for any layer and head.

On the CPU a Translator also prepacks the fp32 linear layers for oneDNN (`quantize.pack_linears`)
where that pays (not on Intel CPUs, whose MKL is as fast: `cpu.packing_pays`), and tells
glibc's malloc to keep freed memory (`keep_freed_memory`).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from nmtkit.alignment import align, replace_unknown
from nmtkit.checkpoint import Checkpoint, load_checkpoint, resolve_checkpoint
from nmtkit.constraints import Constraints, boundary_pieces, phrase_alternatives
from nmtkit.cpu import keep_freed_memory, packing_pays
from nmtkit.data import TokenBatchSampler, collate, collate_source
from nmtkit.errors import NMTKitError, NMTKitWarning
from nmtkit.quantize import pack_linears
from nmtkit.search import (
    EnsembleModel,
    Hypothesis,
    Steering,
    beam_search,
    greedy_search,
    left_to_spell,
    length_limits,
    spelling_pieces,
)
from nmtkit.search import sample as sample_search  # `sample` is translate's flag
from nmtkit.seq2seq import Seq2Seq
from nmtkit.vocabulary import EOS_ID, PAD_ID, UNK, UNK_ID, WORD_START, check_text

MAX_BEAM = 256  # a larger beam or n-best would only be a mistake (and hold the memory hostage)


@dataclass(repr=False)
class Translation:
    """One sentence's translation, with what search knows about it.

    text              the translation, detokenized
    tokens            its target subword pieces (no </s>)
    source_tokens     the source's subword pieces, then "</s>": the attention's columns
    score             what search ranked by: the log-probability, divided by the length penalty
                      in beam search
    attention         (len(tokens) + 1) x len(source_tokens) weights of one decoder layer and
                      head (default: the last layer, the mean of its heads), a row per target
                      piece and one for the final </s>; None unless asked for (or without
                      attention)
    attention_layers  with all_attention: every layer's every head, [layer][head][row][column]
    alignment         with alignment: (source word, target word) pairs, see nmtkit.alignment
    nbest             with nbest > 1: the n best Translations, best first (this one first)
    """

    text: str
    tokens: list[str]
    source_tokens: list[str]
    score: float
    attention: list[list[float]] | None
    nbest: list[Translation] = field(default_factory=list)
    attention_layers: list[list[list[list[float]]]] | None = None
    alignment: list[tuple[int, int]] | None = None

    def __repr__(self) -> str:
        attention = "None" if self.attention is None else \
            f"{len(self.attention)}x{len(self.attention[0]) if self.attention else 0}"
        return (f"Translation(text={self.text!r}, score={self.score:.4f}, tokens={len(self.tokens)}, "
                f"source_tokens={len(self.source_tokens)}, attention={attention}, nbest={len(self.nbest)})")


@dataclass
class Alternative:
    """A word the model would put at a position, after a given prefix."""

    word: str  # the whole word (a word typed in part, completed)
    probability: float  # the model's probability of its pieces, one after the other
    translation: str  # the best translation that begins with `prefix`
    prefix: str  # the given prefix with this word in place and a space after it (the word is
    # finished): pass it on to continue from here


class Prefix(NamedTuple):
    """A prefix as search takes it."""

    ids: list[int]  # the forced target ids: its complete words
    partial: str  # the piece text of a last word typed in part ("\u2581Ma"), or ""
    new_word: bool  # it ends in a space: the next piece begins a new word


@dataclass
class Score:
    """How likely the model finds a given translation of a source."""

    log_prob: float  # the sum over the target pieces and </s>
    normalized: float  # per piece: log_prob / (pieces + 1)
    tokens: list[str]  # the target pieces, then "</s>"
    token_scores: list[float]  # the log-probability of each
    truncated: bool = False  # the target had more pieces than longest_output: only those were scored
    unknown: int = 0  # target pieces the vocabulary cannot spell (<unk>): the score says little


class Translator:
    def __init__(
        self,
        checkpoints: Checkpoint | Sequence[Checkpoint],
        device: str | torch.device = "cpu",
        quantize: str | None = None,
        keep_memory: bool = True,
        pack: bool | None = None,
    ) -> None:
        """keep_memory: on the CPU, call keep_freed_memory() (see there; a process-wide
        setting). pack: on the CPU, without quantize, pack the linear layers for oneDNN (see
        quantize.pack_linears); None packs where it pays (cpu.packing_pays)."""
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
        elif self.device.type == "cpu" and (packing_pays()[0] if pack is None else pack):
            for m in models:
                pack_linears(m)
        self.ckpt = ckpts[0]
        self.checkpoints = ckpts
        self.members = models
        # one checkpoint decodes as itself; several through the ensemble wrapper
        self.model: Seq2Seq | EnsembleModel = models[0] if len(models) == 1 else EnsembleModel(models)
        self.src_tok = self.ckpt.src_tokenizer
        self.tgt_tok = self.ckpt.tgt_tokenizer
        self.tgt_pieces = tuple(self.tgt_tok.vocab())
        self.boundary = boundary_pieces(self.tgt_pieces)  # what may follow a constraint's phrase
        self.decoding = self.ckpt.config.decoding  # defaults: the first checkpoint's config
        # the longest input: what the config says, else the longest the model was trained on,
        # never past the positions of any member (their source and their output)
        limit = self.decoding.max_input_len or max(c.config.data.max_len for c in ckpts)
        self.max_input_tokens = min([limit] + [m.max_source for m in models if m.max_source is not None])
        self.max_output_tokens = min([m.max_steps - 1 for m in models if m.max_steps is not None],
                                     default=None)
        self.last_too_long: list[int] = []  # inputs of the last call past max_input_tokens
        # inputs far past the longest training source still translate, with a warning: models
        # rarely generalise to lengths they never saw (0: unknown, no warning)
        self.longest_train_source = max(c.info.get("longest_train_source", 0) for c in ckpts)

    @classmethod
    def load(
        cls,
        path: str | Path | Sequence[str | Path],
        device: str | torch.device = "cpu",
        quantize: str | None = None,
        keep_memory: bool = True,
        pack: bool | None = None,
    ) -> Translator:
        """One checkpoint folder (or a run folder: its best), or a list of them to decode as an
        ensemble."""
        paths = [path] if isinstance(path, str | Path) else list(path)
        device = _device(device)
        return cls([load_checkpoint(resolve_checkpoint(p), device) for p in paths], device, quantize,
                   keep_memory, pack)

    @property
    def longest_output(self) -> int:
        """The most target pieces a prefix or a scored target may have: the decoder's positions,
        or for the RNN (which has none) twice the longest input."""
        return self.max_output_tokens or 2 * self.max_input_tokens

    @property
    def decoder_layers(self) -> int:
        """Layers of attention the details can show (1 for the RNN)."""
        return self.members[0].attention_shape[0]

    @property
    def heads(self) -> int:
        return self.members[0].attention_shape[1]

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
        sentences: Sequence[str],
        batch_tokens: int | None = None,
        return_details: bool = False,
        *,
        prefix: Sequence[str] | None = None,
        attention: bool = True,
        attention_layer: int | None = None,
        attention_head: int | None = None,
        all_attention: bool = False,
        alignment: bool = False,
        alignment_layer: int | None = None,
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
        no_repeat_ngram_size: int = 0,
        repetition_penalty: float = 1.0,
        replace_unk: bool = False,
        constraints: Sequence[Sequence[str | dict]] | None = None,
    ) -> list[str] | list[Translation]:
        """Translate in input order; an empty (or blank) sentence gives an empty translation.

        beam, length_penalty, max_len_a/b and batch_tokens default to the checkpoint's decoding
        config. beam 1 is greedy search. With sample=True each token is drawn at random
        (temperature, top_k, top_p) from a generator seeded by `seed` (an int, or a
        torch.Generator to continue across calls); nbest then draws that many samples.

        prefix: per sentence, text the translation must begin with (forced decoding); search
        continues from its end. A prefix that ends in a space ends with a finished word: the
        next piece begins a new word ("Ein " -> "Ein Mann ...", never "Eine ..."). One that
        does not ends with a word typed in part: the continuation completes it ("Ein Ma" ->
        "Ein Mann ..."). A prefix the model cannot produce (a word its vocabulary cannot spell,
        or more pieces than `longest_output`) raises NMTKitError. no_repeat_ngram_size,
        repetition_penalty: CTranslate2's repetition controls (see search.Steering).
        replace_unk: let <unk> be produced, and replace each by the source word it attends to
        most (in the alignment layer).

        An output has at most `longest_output` pieces, whatever max_len_a/b allow.

        constraints: per sentence, a list of target phrases that must each appear in the
        translation as whole words ("Ball" is not met by "Balls"); a phrase may be
        {"any": [phrase, ...]}: one of them must appear. Beam search (any beam, also 1) then
        uses dynamic beam allocation (see nmtkit.constraints); sentences with an empty list
        decode exactly as without constraints. A phrase the target vocabulary cannot spell,
        or constraints longer than a sentence's output may be, raise NMTKitError.

        An input longer than `max_input_tokens` subword tokens is handled by `too_long`
        (default: the config's decoding.too_long): "truncate" it (a warning says how many and
        which), "skip" it (an empty translation, and a warning) or stop with an "error"; the
        indices of such inputs are in `last_too_long` after the call.

        Returns strings, or with return_details a Translation per sentence: tokens, score, the
        n-best list when nbest > 1, and unless attention=False the attention of one decoder
        layer and head (attention_layer, attention_head; default the last layer and the mean of
        its heads), all of them with all_attention, and word alignments with alignment
        (alignment_layer; default the second-to-last layer of a Transformer)."""
        _check_sentences(sentences)
        self._check_translates()
        d = self.decoding
        beam = d.beam if beam is None else beam
        length_penalty = d.length_penalty if length_penalty is None else length_penalty
        max_len_a = d.max_len_a if max_len_a is None else max_len_a
        max_len_b = d.max_len_b if max_len_b is None else max_len_b
        batch_tokens = d.batch_tokens if batch_tokens is None else batch_tokens
        _check_options(beam, nbest, sample, temperature, top_k, top_p, length_penalty, max_len_a,
                       max_len_b, batch_tokens)
        _check_steering(no_repeat_ngram_size, repetition_penalty)
        if seed is not None and not isinstance(seed, torch.Generator) and \
                (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
            raise NMTKitError(f"seed must be a whole number from 0 to 2**63 - 1 or a torch.Generator, "
                              f"not {seed!r}")
        layers = self._layers(attention_layer, attention_head, alignment_layer)
        _check_asked_for(return_details, attention_layer, attention_head, all_attention, alignment,
                         alignment_layer)
        prefixes = _check_prefixes(prefix, len(sentences))
        search = self._search_function(beam, nbest, length_penalty, sample, temperature, top_k,
                                       top_p, seed, max_len_a, max_len_b)
        ids = self._encode(sentences, too_long or d.too_long)
        forced = [self._prefix(p) for p in prefixes]
        wanted = self._constraints(constraints, ids, forced, max_len_a, max_len_b, sample,
                                   [not s.strip() for s in sentences])
        hyps: list[Hypothesis | None] = [None] * len(sentences)
        for indices in self._batches(ids, batch_tokens):
            src, lengths = collate_source([ids[i] for i in indices])
            steering = Steering(
                len(indices), prefix=[forced[i].ids for i in indices],
                partial=[forced[i].partial for i in indices], pieces=self.tgt_pieces,
                no_repeat_ngram_size=no_repeat_ngram_size, repetition_penalty=repetition_penalty,
                allow_unk=replace_unk, new_word=[forced[i].new_word for i in indices],
                longest=self.longest_output, device=self.device)
            kept = Constraints([wanted[i] for i in indices], self.boundary, self.device) \
                if wanted is not None else None
            for i, hyp in zip(indices, search(src.to(self.device), lengths.to(self.device), steering,
                                              kept), strict=True):
                hyps[i] = hyp
        needs_attention = (return_details and (attention or all_attention)) or alignment or replace_unk
        maps = self._attention_maps(ids, hyps, nbest) if needs_attention else {}
        results = []
        for i, hyp in enumerate(hyps):
            if hyp is None:  # an empty input: an empty output (and n empty alternatives)
                results.append("" if not return_details else self._empty(nbest))
                continue
            candidates = hyp.nbest[:nbest] if nbest > 1 else [hyp]
            texts = [self._render(sentences[i], ids[i], h, maps[i][j] if i in maps else None,
                                  layers[2], replace_unk) for j, h in enumerate(candidates)]
            if not return_details:
                results.append(texts[0])
                continue
            details = [self._details(ids[i], h, text, maps[i][j] if i in maps else None, layers,
                                     attention, all_attention, alignment)
                       for j, (h, text) in enumerate(zip(candidates, texts, strict=True))]
            best = details[0]
            best.score = hyp.score
            if nbest > 1:
                best.nbest = details
            results.append(best)
        return results

    def _encode(self, sentences: Sequence[str], too_long: str) -> list[list[int]]:
        """Subword ids of each sentence, over-long ones handled by the `too_long` policy."""
        if too_long not in ("truncate", "skip", "error"):
            raise NMTKitError(f"too_long must be truncate, skip or error, not {too_long!r}")
        ids = [self.src_tok.encode(s) if s.strip() else [] for s in sentences]
        limit = self.max_input_tokens
        self.last_too_long = [i for i, x in enumerate(ids) if len(x) > limit]
        longest = self.longest_train_source
        far = max(int(1.5 * longest), longest + 10)  # "far longer": half as long again, 10 at least
        unusual = [i for i, x in enumerate(ids) if far < len(x) <= limit] if longest else []
        if unusual:
            warnings.warn(NMTKitWarning(
                f"{len(unusual)} input(s) far longer than any training source (the longest had {longest} "
                f"subword tokens; input {unusual[0] + 1} has {len(ids[unusual[0]])}): expect worse "
                "translations of them (often cut short or repeating)"), stacklevel=3)
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
    ) -> Callable[[Tensor, Tensor, Steering, Constraints | None], list[Hypothesis]]:
        """(src, src_lengths, steering, constraints) -> one hypothesis per sentence, every option
        bound. With constraints, beam 1 is beam search with one beam (not greedy search)."""
        model = self.model
        limits = {"max_len_a": max_len_a, "max_len_b": max_len_b}
        if do_sample:
            if isinstance(seed, torch.Generator):
                generator = seed
            else:
                generator = torch.Generator(self.device)
                if seed is None:
                    generator.seed()  # a fresh random seed
                else:
                    generator.manual_seed(seed)
            return lambda src, lengths, steering, constraints=None: sample_search(
                model, src, lengths, temperature, top_k, top_p, generator, nbest, **limits,
                steering=steering)

        def search(src: Tensor, lengths: Tensor, steering: Steering,
                   constraints: Constraints | None = None) -> list[Hypothesis]:
            if beam == 1 and (constraints is None or not constraints.any):
                return greedy_search(model, src, lengths, **limits, steering=steering)
            return beam_search(model, src, lengths, beam, alpha, nbest=nbest, **limits,
                               steering=steering, constraints=constraints)

        return search

    def _render(self, sentence: str, src_ids: list[int], hyp: Hypothesis, weights: Tensor | None,
                layer: int, replace_unk: bool) -> str:
        """The text of a hypothesis; with replace_unk, each <unk> becomes the source word it
        attends to most."""
        if not (replace_unk and UNK_ID in hyp.tokens and weights is not None):
            return self.tgt_tok.decode(hyp.tokens)
        src_pieces = self.src_tok.pieces(src_ids)
        pieces = replace_unknown(self.tgt_tok.pieces(hyp.tokens), UNK, weights[layer].mean(dim=0),
                                 src_pieces, _source_words(sentence, src_pieces))
        # runs of the vocabulary's pieces are decoded by sentencepiece; a source word put in
        # place of <unk> (no piece of the target vocabulary) is copied as it is
        words, run = [], []
        for piece, token in zip(pieces, hyp.tokens, strict=True):
            if token == UNK_ID:
                words += [self.tgt_tok.sp.decode_pieces(run), piece.removeprefix(WORD_START)]
                run = []
            else:
                run.append(piece)
        words.append(self.tgt_tok.sp.decode_pieces(run))
        return " ".join(w for w in words if w)

    def _details(self, src_ids: list[int], hyp: Hypothesis, text: str, weights: Tensor | None,
                 layers: tuple[int, int | None, int], attention: bool, all_attention: bool,
                 alignment: bool) -> Translation:
        layer, head, alignment_layer = layers
        src_pieces, tgt_pieces = self.src_tok.pieces(src_ids), self.tgt_tok.pieces(hyp.tokens)
        chosen = None
        if attention and weights is not None:
            w = weights[layer]  # (heads, T, S)
            chosen = (w.mean(dim=0) if head is None else w[head]).tolist()
        return Translation(
            text=text, tokens=tgt_pieces, source_tokens=src_pieces + ["</s>"], score=hyp.score,
            attention=chosen,
            attention_layers=weights.tolist() if all_attention and weights is not None else None,
            alignment=align(weights[alignment_layer].mean(dim=0), src_pieces, tgt_pieces)
            if alignment and weights is not None else None,
        )

    @staticmethod
    def _empty(nbest: int) -> Translation:
        empty = Translation("", [], ["</s>"], 0.0, None)
        return Translation("", [], ["</s>"], 0.0, None, [empty] * nbest if nbest > 1 else [])

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str] = ("",), max_len: int = 50, *, beam: int = 1,
                 sample: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int | torch.Generator | None = None, num: int = 1) -> list[list[str]]:
        """A language model's continuations of each prompt (which they begin with): `num` per
        prompt (samples, or the n best of a beam), up to `max_len` tokens."""
        if not self.ckpt.config.data.monolingual:
            raise NMTKitError(f"{self.ckpt.path} translates; generate continues text with a language "
                              "model (model.type: decoder_only trained on data.train, one language)")
        _check_sentences(prompts, "generate", "prompts")
        if isinstance(num, bool) or not isinstance(num, int) or not 1 <= num <= MAX_BEAM:
            raise NMTKitError(f"num must be a whole number from 1 to {MAX_BEAM}, not {num!r}")
        _check_options(max(beam, num) if not sample else beam, num, sample, temperature, top_k, top_p,
                       max_len_b=max_len)
        cap = self.max_output_tokens
        if cap is not None and max_len > cap:
            warnings.warn(NMTKitWarning(
                f"max_len {max_len} is more than this model's positions allow: outputs stop at {cap} "
                f"pieces (model.max_positions {cap + 1})"), stacklevel=2)
        search = self._search_function(max(beam, num) if not sample else 1, num, 0.0, sample,
                                       temperature, top_k, top_p, seed, 0.0, max_len)
        src, lengths = collate_source([[] for _ in prompts])  # no source: just </s>
        forced = [self._prefix(p) for p in prompts]
        steering = Steering(len(prompts), prefix=[f.ids for f in forced],
                            partial=[f.partial for f in forced], pieces=self.tgt_pieces,
                            new_word=[f.new_word for f in forced], device=self.device)
        hyps = search(src.to(self.device), lengths.to(self.device), steering)
        return [[self.tgt_tok.decode(h.tokens) for h in (hyp.nbest[:num] if num > 1 else [hyp])]
                for hyp in hyps]

    def _check_translates(self) -> None:
        if self.ckpt.config.data.monolingual:
            raise NMTKitError(f"{self.ckpt.path} is a language model (one language, no source): it "
                              "continues text with `nmtkit generate`; it does not translate or score pairs")

    # ---- steering ----
    def _prefix(self, text: str) -> Prefix:
        """A prefix as forced target ids: its complete words, then either the piece text of a
        last word typed in part, or (after a final space) the rule that a new word comes next."""
        check_text(text, "prefix")
        if not text.strip():
            return Prefix([], "", False)
        if text[-1].isspace():
            return Prefix(self._forced(text, self.tgt_tok.encode(text.strip())), "", True)
        head, last = _split_last_word(text)
        forced = self.tgt_tok.encode(head) if head.strip() else []
        whole = self._forced(text, forced + self.tgt_tok.encode(last))  # can it spell the last word?
        partial = WORD_START + last
        if not any(p.startswith(partial) or partial.startswith(p)
                   for p in self.tgt_pieces if p and not p.startswith("<")):
            return Prefix(whole, "", False)  # nothing spells it: force its pieces
        return Prefix(forced, partial, False)

    def _constraints(self, constraints: Sequence[Sequence[str | dict]] | None, ids: list[list[int]],
                     forced: list[tuple[list[int], str]], max_len_a: float, max_len_b: int,
                     sampling: bool, blank: list[bool]) -> list[list[list[list[int]]]] | None:
        """Each sentence's constraints as alternatives of target ids, checked: spelled by the
        vocabulary, and short enough for the sentence's output (after its prefix)."""
        if constraints is None:
            return None
        if isinstance(constraints, str | bytes | dict) or not isinstance(constraints, Sequence):
            raise TypeError("constraints takes one list of phrases per sentence (a list of lists), or None")
        if len(constraints) != len(ids):
            raise NMTKitError(f"{len(constraints)} constraint lists for {len(ids)} sentences")
        if sampling and any(constraints):
            raise NMTKitError("constraints need beam search, not sampling (sample=False)")
        out = []
        for i, wanted in enumerate(constraints):
            if isinstance(wanted, str | bytes | dict) or not isinstance(wanted, Sequence):
                raise NMTKitError(f"constraints of sentence {i + 1}: a list of phrases, not {wanted!r}"[:120])
            phrases = [[self.constraint_ids(p, f"constraint {j + 1} of sentence {i + 1}")
                        for p in phrase_alternatives(c, f"constraint {j + 1} of sentence {i + 1}")]
                       for j, c in enumerate(wanted)]
            # a constraint given twice is met by one occurrence: keep it once (else the length
            # check below would count its pieces twice and refuse what fits)
            seen: set[tuple[tuple[int, ...], ...]] = set()
            phrases = [c for c in phrases
                       if (key := tuple(sorted(map(tuple, c)))) not in seen and not seen.add(key)]
            if phrases and blank[i]:  # its translation is empty: the constraints cannot appear
                raise NMTKitError(f"sentence {i + 1}: it is empty, so its translation is empty and "
                                  "cannot hold its constraints")
            if phrases and ids[i]:
                prefix, partial = forced[i].ids, forced[i].partial
                limit = int(length_limits(self.model, torch.tensor([len(ids[i]) + 1]), max_len_a, max_len_b,
                                          torch.tensor([len(prefix) + len(partial) + 1]))[0])
                needed = len(prefix) + sum(min(len(p) for p in c) for c in phrases)
                if needed > limit:
                    raise NMTKitError(
                        f"sentence {i + 1}: its constraints{' and prefix' if prefix else ''} need "
                        f"{needed} target pieces, more than its output may have ({limit}: max_len_a * "
                        "source length + max_len_b, within the model's positions); raise max_len_b "
                        "or drop a constraint")
            out.append(phrases if ids[i] else [])
        return out

    def check_constraints(self, source: str, constraints: Sequence[str | dict], prefix: str = "",
                          max_len_a: float | None = None, max_len_b: int | None = None) -> None:
        """Raise NMTKitError for constraints that `translate` would refuse for this sentence and
        prefix: a phrase the vocabulary cannot spell, or more pieces than its output may have
        (max_len_a/b default to the decoding config's). A service checks each request's
        constraints before they join a batch, so that one request's mistake is not its
        neighbours'; the CLI checks each line's, so that the error names the line."""
        ids = self.src_tok.encode(source)[: self.max_input_tokens] if source.strip() else []
        d = self.decoding
        a = d.max_len_a if max_len_a is None else max_len_a
        b = d.max_len_b if max_len_b is None else max_len_b
        try:
            self._constraints([constraints], [ids], [self._prefix(prefix)], a, b, False, [not source.strip()])
        except NMTKitError as err:  # the caller names the sentence
            raise NMTKitError(str(err).removeprefix("sentence 1: ")) from None

    def constraint_ids(self, phrase: str, where: str = "constraint") -> list[int]:
        """A constraint's phrase as target ids, or NMTKitError if the vocabulary cannot spell it
        (a service checks each request's constraints before they join a batch)."""
        check_text(phrase, where)  # a lone surrogate ("\ud800" from JSON) would fail in sentencepiece
        ids = self.tgt_tok.encode(phrase)
        if UNK_ID in ids:
            word = next((w for w in phrase.split() if UNK_ID in self.tgt_tok.encode(w)), phrase)
            raise NMTKitError(f"{where} {phrase[:60]!r}: the target vocabulary cannot spell {word[:40]!r} "
                              "(its characters are not in it, and it has no byte fallback)")
        if not ids or not self.tgt_pieces[ids[0]].startswith(WORD_START):
            raise NMTKitError(f"{where} {phrase[:60]!r}: its pieces do not start a word")
        return ids

    def check_prefix(self, text: str) -> None:
        """Raise NMTKitError for a prefix this model cannot produce (a service checks each
        request's prefixes before they join a batch with other requests)."""
        self._prefix(text)

    def _forced(self, text: str, ids: list[int]) -> list[int]:
        """A prefix's forced ids, if the model can produce them: no piece the vocabulary lacks
        (search never emits <unk>), and room left for the output's longest length."""
        if UNK_ID in ids:
            word = next((w for w in text.split() if UNK_ID in self.tgt_tok.encode(w)), text)
            raise NMTKitError(f"prefix {text[:60]!r}: the target vocabulary cannot spell {word[:40]!r} "
                              "(its characters are not in it, and it has no byte fallback)")
        if len(ids) >= self.longest_output:
            raise NMTKitError(f"prefix {text[:60]!r}... is {len(ids)} pieces; this model's outputs are at "
                              f"most {self.longest_output} pieces")
        return ids

    def alternatives(self, source: str, prefix: str = "", k: int = 5, *, candidates: int = 0,
                     max_word_pieces: int = 12, translations: bool = True,
                     constraints: Sequence[str | dict] | None = None,
                     **options: object) -> list[Alternative]:
        """The k likeliest next words after `prefix` in the translation of `source`, each with
        its probability and the best translation that begins with prefix + that word
        (CTranslate2's return_alternatives, but words, not subword pieces).

        The model's next pieces are the candidates (those that start a word, or, after a word
        typed in part, those that go on spelling it; the `candidates` likeliest, default 4k or
        at least 20); each is completed into a word by greedy continuation of its pieces, the
        word's probability being the product of its pieces'. Words reached twice add up. The
        translations come from one call of `translate(prefix=...)` with the rest of `options`,
        so choosing alternative j and translating with its `prefix` gives its `translation`. That
        prefix ends in a space, so the translation goes on with a new word after it.
        translations=False leaves them empty. constraints: the sentence's constraints (a list of
        phrases), which those translations meet. Many requests at once: alternatives_batch."""
        (out,) = self.alternatives_batch([(source, prefix, k)], candidates=candidates,
                                         max_word_pieces=max_word_pieces, translations=translations,
                                         constraints=[constraints] if constraints else None, **options)
        assert not isinstance(out, Exception)  # errors="raise"
        return out

    @torch.inference_mode()
    def alternatives_batch(self, requests: Sequence[tuple[str, str, int]], *, candidates: int = 0,
                           max_word_pieces: int = 12, translations: bool = True,
                           constraints: Sequence[Sequence[str | dict] | None] | None = None,
                           errors: str = "raise",
                           **options: object) -> list[list[Alternative] | NMTKitError]:
        """`alternatives` for many (source, prefix, k) requests, as a service gets them from
        different users: the candidate words of all of them come from one encoder call and
        shared decoder steps, and their translations from one `translate` call, so each gets
        what it would get alone. errors="return": a request's own mistake (its source too
        long under too_long: error, a prefix the model cannot produce) is its answer, in its
        place, and the others go on."""
        self._check_translates()
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', not {errors!r}")
        if constraints is not None and len(constraints) != len(requests):
            raise NMTKitError(f"{len(constraints)} constraint lists for {len(requests)} requests")
        too_long = str(options.pop("too_long", None) or self.decoding.too_long)
        results: list[list[Alternative] | NMTKitError] = [[] for _ in requests]
        asked: list[tuple[int, list[int], Prefix, int]] = []  # (request, source ids, prefix, k)
        for i, (source, prefix, k) in enumerate(requests):
            if not isinstance(source, str) or not isinstance(prefix, str):
                raise TypeError("alternatives takes one source sentence and one prefix, as str")
            try:
                check_text(source, "source")
                if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_BEAM:
                    raise NMTKitError(f"k must be a whole number from 1 to {MAX_BEAM}, not {k!r}")
                if not source.strip():
                    continue
                (src_ids,) = self._encode([source], too_long)
                forced = self._prefix(prefix)
            except NMTKitError as err:
                if errors == "raise":
                    raise
                results[i] = err
                continue
            if src_ids:
                asked.append((i, src_ids, forced, k))
        words = self._next_words([(ids, forced, candidates or max(4 * k, 20)) for _, ids, forced, k in asked],
                                 max_word_pieces) if asked else []
        found: list[tuple[int, list[tuple[str, float]], list[str]]] = []
        for (i, _, forced, k), candidates_of in zip(asked, words, strict=True):
            merged: dict[str, float] = {}
            for word, p in candidates_of:
                if word:
                    merged[word] = merged.get(word, 0.0) + p
            ranked = sorted(merged.items(), key=lambda item: -item[1])[:k]
            prefix = requests[i][1]
            head = prefix.rstrip() if not forced.partial else _split_last_word(prefix)[0]
            # each word is whole: the space after it makes the translation go on with a new word
            starts = [f"{head} {word} " if head.strip() else f"{word} " for word, _ in ranked]
            found.append((i, ranked, starts))
        sources = [requests[i][0] for i, _, starts in found for _ in starts]
        starts = [s for _, _, ss in found for s in ss]
        wanted = [list((constraints[i] if constraints is not None else None) or [])
                  for i, _, ss in found for _ in ss]  # each translation keeps its sentence's
        texts = iter(self.translate(sources, prefix=starts, constraints=wanted if any(wanted) else None,
                                    too_long=too_long, **options)
                     if starts and translations else [""] * len(starts))
        for i, ranked, ss in found:
            results[i] = [Alternative(word, p, next(texts), start)
                          for (word, p), start in zip(ranked, ss, strict=True)]
        return results

    def _next_words(self, asked: list[tuple[list[int], Prefix, int]],
                    max_pieces: int) -> list[list[tuple[str, float]]]:
        """Each request's candidate words: (source ids, prefix, how many first pieces), in
        decoder steps that all requests share. A request has one row while its prefix is
        teacher-forced; at the position after it, the row branches into its likeliest first
        pieces (those that start a word, or go on spelling a word typed in part), and each is
        continued greedily until the next piece would start a new word (or be </s>), when it
        leaves the batch. The words, with the product of their pieces' probabilities."""
        model, device = self.model, self.device
        src, lengths = collate_source([ids for ids, _, _ in asked])
        enc = model.encode(src.to(device), lengths.to(device))
        state = model.init_state(enc, max(len(p.ids) for _, p, _ in asked) + max_pieces + 2)
        pieces: list[list[list[str]]] = [[] for _ in asked]  # per request, per candidate
        rest: list[list[str]] = [[] for _ in asked]  # what each must still spell of a typed word
        log_prob: list[Tensor] = [torch.zeros(0) for _ in asked]
        steps = [0] * len(asked)  # completion steps taken, per request
        rows = [(r, -1) for r in range(len(asked))]  # (request, candidate; -1 while forcing)
        prev = torch.full((len(asked),), model.start_token, dtype=torch.long, device=device)
        t = 0  # the target position that the next step predicts
        while rows:
            scores, state = model.step(prev, state)
            log_probs = F.log_softmax(scores, dim=-1)  # (rows, vocab)
            # never a candidate nor a continuation: search does not emit them (no piece of a
            # word starts with them, so the branching rows lose nothing)
            log_probs[:, [PAD_ID, UNK_ID]] = float("-inf")
            if any(j >= 0 for _, j in rows):
                nxt = log_probs.argmax(dim=-1).tolist()
            keep: list[int] = []
            tokens: list[int] = []
            new_rows: list[tuple[int, int]] = []
            for row, (r, j) in enumerate(rows):
                forced = asked[r][1]
                if j < 0 and t < len(forced.ids):  # the prefix, teacher-forced
                    keep.append(row), tokens.append(forced.ids[t]), new_rows.append((r, -1))
                    continue
                if j < 0:  # the position after the prefix: branch into the candidates
                    allowed = self._word_starts(forced.partial)
                    first_lp, pick = log_probs[row, allowed].topk(min(asked[r][2], allowed.numel()))
                    first = allowed[pick].tolist()
                    pieces[r] = [[self.tgt_pieces[i]] for i in first]
                    rest[r] = [left_to_spell(forced.partial, p[0]) for p in pieces[r]]
                    log_prob[r] = first_lp.clone()
                    if max_pieces > 1:
                        for c, token in enumerate(first):
                            keep.append(row), tokens.append(token), new_rows.append((r, c))
                    continue
                token = nxt[row]
                if rest[r][j]:  # must go on spelling the typed word
                    allowed = spelling_pieces(rest[r][j], self.tgt_pieces).to(device)
                    if not allowed.numel():
                        continue
                    token = int(allowed[log_probs[row, allowed].argmax()])
                piece = self.tgt_pieces[token]
                if not rest[r][j] and (token == EOS_ID or piece.startswith(WORD_START)):
                    continue  # the next piece starts another word: this one is whole
                pieces[r][j].append(piece)
                rest[r][j] = left_to_spell(rest[r][j], piece)
                log_prob[r][j] += log_probs[row, token]
                keep.append(row), tokens.append(token), new_rows.append((r, j))
            branched = {r for r, j in rows if j >= 0}
            for r in branched:  # a completion step taken
                steps[r] += 1
            done = {r for r in branched if steps[r] >= max_pieces - 1}
            kept = [(row, token, owner) for row, token, owner in zip(keep, tokens, new_rows, strict=True)
                    if owner[0] not in done]
            rows = [owner for _, _, owner in kept]
            if not rows:
                break
            index = torch.tensor([row for row, _, _ in kept], dtype=torch.long, device=device)
            if not torch.equal(index, torch.arange(len(scores), device=device)):
                state = state.select(index)
            prev = torch.tensor([token for _, token, _ in kept], dtype=torch.long, device=device)
            t += 1
        return [[("".join(p).replace(WORD_START, " ").strip(), math.exp(lp))
                 for p, lp in zip(pieces[r], log_prob[r].tolist(), strict=True)] for r in range(len(asked))]

    def _word_starts(self, partial: str) -> Tensor:
        """The ids of the pieces that may come next: the start of a new word, or, after a word
        typed in part, the pieces that go on spelling it."""
        if partial:
            return spelling_pieces(partial, self.tgt_pieces).to(self.device)
        ok = [i for i, p in enumerate(self.tgt_pieces) if p.startswith(WORD_START)]
        return torch.tensor(ok, dtype=torch.long, device=self.device)

    # ---- scoring ----
    @torch.inference_mode()
    def score(self, sources: Sequence[str], targets: Sequence[str], batch_tokens: int | None = None,
              too_long: str | None = None) -> list[Score]:
        """The model's log-probability of each given translation (a teacher-forced pass, batched
        like training): per sentence, its sum, its per-piece mean and each piece's. Uses:
        filtering noisy corpora, reranking n-best lists, checking a reference.

        A target with more pieces than `longest_output` is cut to them (Score.truncated) with a
        warning, or refused with too_long="error"; one the vocabulary cannot spell is scored
        with <unk> pieces (Score.unknown counts them) and a warning."""
        _check_sentences(sources, "score", "sources")
        self._check_translates()
        _check_sentences(targets, "score", "targets")
        if len(sources) != len(targets):
            raise NMTKitError(f"{len(sources)} sources but {len(targets)} targets")
        batch_tokens = self.decoding.batch_tokens if batch_tokens is None else batch_tokens
        _check_options(1, 1, False, 1.0, 0, 1.0, batch_tokens=batch_tokens)
        policy = too_long or self.decoding.too_long
        src_ids = self._encode(sources, policy)
        tgt_ids = [self.tgt_tok.encode(t) if t.strip() else [] for t in targets]
        # targets are bounded too (a 20,000-piece target would run for minutes): by the
        # positions, or for the RNN by twice the input limit; cut (with a warning) unless
        # too_long is error
        limit = self.longest_output
        unknown = [i for i, t in enumerate(tgt_ids) if UNK_ID in t]
        if unknown:
            first = targets[unknown[0]]
            word = next((w for w in first.split() if UNK_ID in self.tgt_tok.encode(w)), first)
            warnings.warn(NMTKitWarning(
                f"{len(unknown)} target(s) hold characters the target vocabulary cannot spell, scored "
                f"as <unk>, which says little about them (the first: target {unknown[0] + 1}, "
                f"{word[:40]!r}); Score.unknown counts them"), stacklevel=2)
        over = [i for i, t in enumerate(tgt_ids) if len(t) > limit]
        if over and policy == "error":
            raise NMTKitError(f"target {over[0] + 1} has {len(tgt_ids[over[0]])} subword tokens, more "
                              f"than the limit of {limit} (too_long: error)")
        if over:
            warnings.warn(NMTKitWarning(
                f"{len(over)} target(s) longer than {limit} subword tokens were scored on their first "
                f"{limit} (the first: target {over[0] + 1}); Score.truncated marks them"), stacklevel=2)
        cut = set(over)
        tgt_ids = [t[:limit] for t in tgt_ids]
        cost = [max(len(s), len(t)) + 1 for s, t in zip(src_ids, tgt_ids, strict=True)]
        sampler = TokenBatchSampler(cost, cost, batch_tokens, shuffle=False, seed=0)
        results: list[Score | None] = [None] * len(sources)
        for indices in sampler:
            batch = collate([(src_ids[i], tgt_ids[i]) for i in indices], indices).to(self.device)
            log_probs = self.model(batch.src, batch.src_lengths, batch.tgt_in)  # (batch, T, vocab)
            gold = log_probs.gather(2, batch.tgt_out.unsqueeze(2)).squeeze(2)  # (batch, T)
            for row, i in enumerate(indices):
                n = len(tgt_ids[i]) + 1
                token_scores = gold[row, :n].tolist()
                total = sum(token_scores)
                results[i] = Score(total, total / n, self.tgt_tok.pieces(tgt_ids[i]) + ["</s>"],
                                   token_scores, i in cut, tgt_ids[i].count(UNK_ID))
        return results  # type: ignore[return-value]

    # ---- attention ----
    def _layers(self, attention_layer: int | None, attention_head: int | None,
                alignment_layer: int | None) -> tuple[int, int | None, int]:
        """The attention layer, head (None: their mean) and the alignment layer, checked."""
        n, heads = self.decoder_layers, self.heads
        for name, value in (("attention_layer", attention_layer), ("alignment_layer", alignment_layer)):
            if value is not None and not -n <= value < n:
                raise NMTKitError(f"{name} {value}: the decoder has layers 0..{n - 1}")
        if attention_head is not None and not 0 <= attention_head < heads:
            raise NMTKitError(f"attention_head {attention_head}: the decoder has heads 0..{heads - 1}")
        default_alignment = n - 2 if n >= 2 else 0  # Garg et al. 2019: the second-to-last layer
        return (n - 1 if attention_layer is None else attention_layer % n, attention_head,
                default_alignment if alignment_layer is None else alignment_layer % n)

    def _attention_maps(self, ids: list[list[int]], hyps: list[Hypothesis | None],
                        nbest: int) -> dict[int, list[Tensor]]:
        """For each sentence, each returned hypothesis's cross-attention (layers, heads,
        len(tokens) + 1, len(source) + 1), from teacher-forced passes (a batch per chunk)."""
        rows = [(i, h) for i, hyp in enumerate(hyps) if hyp is not None
                for h in (hyp.nbest[:nbest] if nbest > 1 else [hyp])]
        maps: dict[int, list[Tensor]] = {}
        for start in range(0, len(rows), 64):
            chunk = rows[start : start + 64]
            batch = collate([(ids[i], h.tokens) for i, h in chunk], list(range(len(chunk))))
            members = [m.attention(batch.src.to(self.device), batch.src_lengths.to(self.device),
                                   batch.tgt_in.to(self.device)) for m in self.members]
            if any(a is None for a in members):
                return {}
            if len({a.shape for a in members}) > 1:  # members of other shapes: their last layers
                members = [a[-1:].mean(dim=2, keepdim=True) for a in members]
            weights = torch.stack(members).mean(dim=0).float().cpu()  # (layers, batch, heads, T, S)
            for row, (i, h) in enumerate(chunk):
                maps.setdefault(i, []).append(weights[:, row, :, : len(h.tokens) + 1, : len(ids[i]) + 1])
        return maps


def _split_last_word(text: str) -> tuple[str, str]:
    """'Ein kleiner Ma' -> ('Ein kleiner', 'Ma')."""
    match = re.match(r"^(.*?)\s*(\S+)$", text, re.DOTALL)
    return (match.group(1), match.group(2)) if match else ("", text.strip())


def _source_words(sentence: str, src_pieces: list[str]) -> list[str]:
    """The surface words of a source sentence, one per word of its pieces (the text's own
    words when they line up, so that replaced words keep their spelling)."""
    words = sentence.split()
    n = sum(1 for i, p in enumerate(src_pieces) if i == 0 or p.startswith(WORD_START))
    if len(words) == n:
        return words
    return "".join(src_pieces).replace(WORD_START, " ").split()


def _check_prefixes(prefix: Sequence[str] | None, n: int) -> list[str]:
    if prefix is None:
        return [""] * n
    if isinstance(prefix, str | bytes) or not isinstance(prefix, Sequence):
        raise TypeError("prefix takes one string per sentence (a list), or None")
    if len(prefix) != n:
        raise NMTKitError(f"{len(prefix)} prefixes for {n} sentences")
    for i, p in enumerate(prefix):
        if not isinstance(p, str):
            raise TypeError(f"prefix {i} is a {type(p).__name__}, not a str")
        check_text(p, f"prefix[{i}]")
    return list(prefix)


def _check_asked_for(return_details: bool, attention_layer: int | None, attention_head: int | None,
                     all_attention: bool, alignment: bool, alignment_layer: int | None) -> None:
    """Options whose results only a Translation holds (or that only choose among them) are
    refused where they would be silently dropped."""
    if alignment_layer is not None and not alignment:
        raise NMTKitError(f"alignment_layer={alignment_layer} needs alignment=True")
    if return_details:
        return
    asked = [name for name, value in (("alignment", alignment), ("all_attention", all_attention),
                                      ("attention_layer", attention_layer is not None),
                                      ("attention_head", attention_head is not None)) if value]
    if asked:
        raise NMTKitError(f"{asked[0]} needs return_details=True: plain strings have no room for it "
                          "(the results are then Translations, with .alignment and .attention)")


def _check_steering(no_repeat_ngram_size: int, repetition_penalty: float) -> None:
    if isinstance(no_repeat_ngram_size, bool) or not isinstance(no_repeat_ngram_size, int) or \
            no_repeat_ngram_size < 0:
        raise NMTKitError(f"no_repeat_ngram_size must be a whole number >= 0, not {no_repeat_ngram_size!r}")
    if isinstance(repetition_penalty, bool) or not isinstance(repetition_penalty, int | float) or \
            not math.isfinite(repetition_penalty) or repetition_penalty <= 0:
        raise NMTKitError(f"repetition_penalty must be a finite number > 0, not {repetition_penalty!r}")


def _check_sentences(sentences: object, caller: str = "translate", what: str = "sentences") -> None:
    """A list of strings: a plain string would be translated character by character."""
    if isinstance(sentences, str | bytes):
        raise TypeError(f"{caller} takes a list of {what}; for one, pass [{sentences[:30]!r}]")
    if not isinstance(sentences, Sequence):
        raise TypeError(f"{caller} takes a list of {what}, not {type(sentences).__name__}")
    for i, s in enumerate(sentences):
        if not isinstance(s, str):
            raise TypeError(f"sentence {i} is a {type(s).__name__}, not a str")
        check_text(s, f"{what}[{i}]")


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
