"""Search: turn a trained model into output sentences, using only the model's step interface.

    greedy_search   the most probable token at each step
    beam_search     the k most probable prefixes at each step, with a length penalty and n-best
    sample          a random token at each step (temperature, top-k, top-p), seeded
    EnsembleModel   several models that decode as one: every search above runs it unchanged
    Steering        what a user asks beyond the model's preferences: a target prefix (and a
                    partly typed next word), no repeated n-grams, a repetition penalty

Beam search also takes lexical constraints (target phrases that must appear), whose dynamic beam
allocation lives in nmtkit.constraints.

Every search runs all sentences of a batch, and all their beams, in one tensor pass per step.
A sentence that has finished leaves the active set (its rows are dropped from the state with
`select`), so the work per step shrinks. The bookkeeping per step is tensor operations whose
cost does not grow with the number of beams in Python; lists are built once, at the end.

A step turns the model's scores into log-probabilities and applies the rules, in this order:
the repetition penalty (on the scores, as CTranslate2 does), log_softmax, then masks that leave
the log-probabilities of what stays allowed as they are (so a hypothesis's score is the model's
log-probability of it): never <pad>, <s> or <unk>; no repeated n-gram; the length rules; the
forced prefix; the partly typed word; after a prefix that ends in a space, a new word.

Lengths, counted in target tokens without EOS: a sentence of src_len tokens may produce at most
`max_len_a * src_len + max_len_b` (at its limit only EOS is allowed; a longer forced prefix
raises it), and with `min_len` no EOS before that many tokens (the benchmark uses
min_len = limit to force a fixed output length).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmtkit.constraints import Constraints
from nmtkit.errors import NMTKitError
from nmtkit.seq2seq import DecoderState, EncoderOutput, Seq2Seq
from nmtkit.vocabulary import BOS_ID, EOS_ID, PAD_ID, UNK_ID, WORD_START

NEG_INF = float("-inf")


@dataclass
class Hypothesis:
    tokens: list[int]  # target ids without BOS/EOS
    score: float  # what search ranks by: log_prob, divided by the length penalty in beam search
    nbest: list[Hypothesis] = field(default_factory=list)  # beam/samples: best first, self first
    log_prob: float = 0.0  # sum of the (steered) log-probabilities of tokens + EOS


# ---- ensembles: a model made of models ----


@dataclass
class EnsembleState(DecoderState):
    states: list[DecoderState]  # one per member, each with the same batch rows

    def select(self, index: Tensor) -> EnsembleState:
        return EnsembleState([state.select(index) for state in self.states])


class EnsembleModel(nn.Module):
    """Members with the same vocabularies decode together, with Seq2Seq's encode/init_state/step.

    Each step returns the log of the members' mean probability (a mixture):

        log p(y) = log(1/n * sum_i p_i(y)) = logsumexp_i(log p_i(y)) - log n

    It is a distribution as it stands, and a token any member finds likely keeps some mass. (The
    other common choice, the mean of log-probabilities, is a geometric mean that must be
    renormalised and lets one confident member veto a token.) An ensemble of one returns its
    member's scores exactly.
    """

    def __init__(self, models: list[Seq2Seq]) -> None:
        super().__init__()
        self.models = nn.ModuleList(models)
        self.start_token = models[0].start_token

    @property
    def max_steps(self) -> int | None:
        caps = [m.max_steps for m in self.models if m.max_steps is not None]
        return min(caps) if caps else None

    def encode(self, src: Tensor, src_lengths: Tensor) -> list[EncoderOutput]:
        return [m.encode(src, src_lengths) for m in self.models]

    def init_state(self, encs: list[EncoderOutput], max_len: int = 0) -> EnsembleState:
        members = zip(self.models, encs, strict=True)
        return EnsembleState([m.init_state(enc, max_len) for m, enc in members])

    def step(self, prev_tokens: Tensor, state: EnsembleState) -> tuple[Tensor, EnsembleState]:
        outputs = [m.step(prev_tokens, s) for m, s in zip(self.models, state.states, strict=True)]
        new_state = EnsembleState([s for _, s in outputs])
        if len(outputs) == 1:
            return outputs[0][0], new_state
        log_probs = torch.stack([F.log_softmax(scores, dim=-1) for scores, _ in outputs])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(outputs)), new_state

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced log-probabilities of the mixture: (batch, tgt_len, vocab)."""
        log_probs = torch.stack([m(src, src_lengths, tgt_in) for m in self.models])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.models))


StepModel = Seq2Seq | EnsembleModel  # anything with encode / init_state / step


# ---- what every search shares ----


def max_lengths(src_lengths: Tensor, max_len_a: float, max_len_b: int) -> Tensor:
    """The longest output allowed per sentence: a * src_len + b target tokens (EOS excluded)."""
    return (src_lengths.float() * max_len_a + max_len_b).long().clamp(min=1)


def length_limits(model: StepModel, src_lengths: Tensor, max_len_a: float, max_len_b: int,
                  at_least: Tensor | None = None, longest: int | None = None) -> Tensor:
    """max_lengths (at most `longest`, then raised to `at_least`, a forced prefix), capped
    where the decoder has a fixed number of positions."""
    limits = max_lengths(src_lengths, max_len_a, max_len_b)
    if longest is not None:
        limits = limits.clamp(max=longest)
    if at_least is not None:
        limits = torch.maximum(limits, at_least)
    cap = model.max_steps
    return limits if cap is None else limits.clamp(max=cap - 1)


def length_penalty(steps: int | Tensor, alpha: float) -> float | Tensor:
    """GNMT's lp = ((5 + |Y|) / 6)^alpha, |Y| counting the tokens and EOS; alpha = 0: lp = 1.

    Log-probabilities only fall as a hypothesis grows, so without a penalty beam search prefers
    short outputs; dividing by lp evens that out (Wu et al. 2016)."""
    return ((5.0 + steps) / 6.0) ** alpha


class Steering:
    """What a user asks of search beyond the model's own preferences; the defaults ask nothing.

        prefix                per sentence, target ids that must come first (forced decoding)
        partial               per sentence, the start of the word that must come next, as piece
                              text ('\u2581Ma' for a new word "Ma..."): the pieces chosen after the
                              prefix must spell it out, and may go on past it ("Mann")
        pieces                the target vocabulary as piece strings (needed with `partial`)
        no_repeat_ngram_size  no n-gram of this size occurs twice in an output (0: off)
        repetition_penalty    CTranslate2's: the score s of a token already in the output becomes
                              s * penalty if s < 0, else s / penalty (1: off; > 1 discourages)
        new_word              per sentence, whether the prefix ends in a space: its last word is
                              finished, so the first piece after it must begin a new word (a
                              piece that starts with "\u2581") or be </s>
        allow_unk             let search produce <unk> (to replace it by a source word later)
        longest               the most tokens an output may have, for a decoder without positions
                              to bound it (the RNN; None: max_len_a/b alone)

    Search keeps, per row, which sentence it decodes; the partial words' progress is kept per
    row too (`advance` moves it along with the rows).
    """

    def __init__(self, batch: int = 0, prefix: Sequence[Sequence[int]] | None = None,
                 partial: Sequence[str] | None = None, pieces: Sequence[str] | None = None,
                 no_repeat_ngram_size: int = 0, repetition_penalty: float = 1.0,
                 allow_unk: bool = False, new_word: Sequence[bool] | None = None,
                 longest: int | None = None, device: torch.device | str = "cpu") -> None:
        self.no_repeat = no_repeat_ngram_size
        self.penalty = repetition_penalty
        self.allow_unk = allow_unk
        self.longest = longest
        self.never = torch.tensor([PAD_ID, BOS_ID] if allow_unk else [PAD_ID, BOS_ID, UNK_ID],
                                  device=device)
        prefix = [list(p) for p in prefix] if prefix is not None else [[] for _ in range(batch)]
        width = max((len(p) for p in prefix), default=0)
        self.forced = torch.full((len(prefix), max(width, 1)), PAD_ID, dtype=torch.long, device=device)
        for i, p in enumerate(prefix):
            self.forced[i, : len(p)] = torch.tensor(p, dtype=torch.long)
        self.forced_len = torch.tensor([len(p) for p in prefix], dtype=torch.long, device=device)
        self.any_forced = width > 0
        self.partial = list(partial) if partial is not None else [""] * len(prefix)
        self.pieces = tuple(pieces) if pieces is not None else ()
        if any(self.partial) and not self.pieces:
            raise ValueError("partial words need the vocabulary's pieces")
        self.rest: list[str] | None = None  # per row: what of its partial word is still to spell
        self.new_word = torch.tensor(list(new_word) if new_word is not None else [False] * len(prefix),
                                     dtype=torch.bool, device=device)
        self.any_new_word = bool(self.new_word.any())
        if self.any_new_word and not self.pieces:
            raise ValueError("new words need the vocabulary's pieces")
        # (vocab,): the pieces that go on a word (not </s>, and none that starts one)
        self.inside_word = torch.tensor([i != EOS_ID and not p.startswith(WORD_START)
                                         for i, p in enumerate(self.pieces)], dtype=torch.bool,
                                        device=device) if self.any_new_word else None

    @property
    def needs_history(self) -> bool:
        """Whether the rules look at the tokens each row produced so far."""
        return self.penalty != 1.0 or self.no_repeat > 0

    @property
    def min_output(self) -> Tensor:
        """Per sentence, the fewest tokens an output can have: the prefix and the partial word."""
        return self.forced_len + torch.tensor([len(p) for p in self.partial], device=self.forced_len.device)

    def start(self, rows_sentence: Tensor) -> None:
        """The rows of step 0: row r decodes sentence rows_sentence[r]."""
        if any(self.partial):
            self.rest = [self.partial[s] for s in rows_sentence.tolist()]

    def advance(self, parents: Tensor, tokens: Tensor, t: int, rows_sentence: Tensor) -> None:
        """After step t: new row r continues row parents[r] with token tokens[r]."""
        if self.rest is None:
            return
        forced = (self.forced_len.index_select(0, rows_sentence) > t).tolist()
        self.rest = [rest if still_forced else left_to_spell(rest, self.pieces[tok])
                     for rest, tok, still_forced in zip((self.rest[p] for p in parents.tolist()),
                                                        tokens.tolist(), forced, strict=True)]

    def scores_to_log_probs(self, scores: Tensor, t: int, history: Tensor | None) -> Tensor:
        """The repetition penalty on the scores (rows, vocab), then log_softmax."""
        if self.penalty != 1.0 and history is not None and history.size(1):
            previous = scores.gather(1, history)
            scores = scores.scatter(1, history, torch.where(previous < 0, previous * self.penalty,
                                                            previous / self.penalty))
        return F.log_softmax(scores, dim=-1)

    def mask(self, log_probs: Tensor, t: int, rows_sentence: Tensor, history: Tensor | None,
             limits: Tensor, min_len: int) -> None:
        """In place, for step t (t tokens so far) of rows decoding sentences rows_sentence (rows,)
        with these length limits (rows,), history (rows, t) the tokens so far."""
        if t == 0 and bool(log_probs.isnan().any()):
            raise NMTKitError("the model's output is not a number (NaN): its weights are not finite "
                              "(a diverged training run?); use an earlier checkpoint")
        log_probs.index_fill_(1, self.never, NEG_INF)
        if self.no_repeat and history is not None and t >= self.no_repeat - 1:
            _ban_repeated_ngrams(log_probs, history, self.no_repeat)
        eos = log_probs[:, EOS_ID].clone()
        if t < min_len:
            log_probs[:, EOS_ID] = NEG_INF
        at_limit = limits <= t  # (rows,)
        if bool(at_limit.any()):
            log_probs.masked_fill_(at_limit.unsqueeze(1), NEG_INF)
            log_probs[:, EOS_ID] = torch.where(at_limit, eos, log_probs[:, EOS_ID])
        if self.any_forced:
            rows = (self.forced_len.index_select(0, rows_sentence) > t).nonzero().squeeze(1)
            if rows.numel():
                column = self.forced[:, min(t, self.forced.size(1) - 1)]
                token = column.index_select(0, rows_sentence.index_select(0, rows))
                keep = log_probs[rows, token]  # the forced token keeps its own log-probability
                log_probs[rows] = NEG_INF
                log_probs[rows, token] = keep
        if self.rest is not None:
            forced = (self.forced_len.index_select(0, rows_sentence) > t).tolist()
            for row, (rest, still_forced) in enumerate(zip(self.rest, forced, strict=True)):
                if rest and not still_forced:
                    allowed = spelling_pieces(rest, self.pieces).to(log_probs.device)
                    kept = log_probs[row, allowed].clone()
                    log_probs[row] = NEG_INF
                    log_probs[row, allowed] = kept
        if self.inside_word is not None:  # just after a prefix that ends in a space: a new word
            first = (self.forced_len.index_select(0, rows_sentence) == t) & \
                self.new_word.index_select(0, rows_sentence)  # (rows,)
            if bool(first.any()):
                log_probs.masked_fill_(first.unsqueeze(1) & self.inside_word, NEG_INF)


def left_to_spell(rest: str, piece: str) -> str:
    """What of the partial word is left to spell after `piece`."""
    return rest[len(piece):] if rest.startswith(piece) else ""


@lru_cache(maxsize=4096)
def spelling_pieces(rest: str, pieces: tuple[str, ...]) -> Tensor:
    """The ids of the pieces that go on spelling `rest`: a piece that starts with it (and may go
    on past it), or one it starts with. Byte pieces and specials never match."""
    ids = [i for i, p in enumerate(pieces) if p and not p.startswith("<") and
           (p.startswith(rest) or rest.startswith(p))]
    return torch.tensor(ids, dtype=torch.long)


def _ban_repeated_ngrams(log_probs: Tensor, history: Tensor, n: int) -> None:
    """In place: no token that would complete an n-gram already in the row's history (rows, t)."""
    rows, t = history.shape
    if t < n - 1 or t == 0:
        return
    last = history[:, t - n + 1:] if n > 1 else history[:, :0]  # (rows, n - 1): the next n-gram's start
    windows = history.unfold(1, n, 1) if t >= n else history.new_empty(rows, 0, n)  # (rows, t - n + 1, n)
    if windows.size(1) == 0:
        return
    match = (windows[:, :, : n - 1] == last.unsqueeze(1)).all(dim=2)  # (rows, t - n + 1)
    banned = torch.where(match, windows[:, :, n - 1], torch.full_like(windows[:, :, n - 1], PAD_ID))
    log_probs.scatter_(1, banned, NEG_INF)  # (PAD is banned anyway)


# ---- one path per sentence: greedy search and sampling ----


def _remaining(done: Tensor) -> Tensor:
    """Which rows (sentences) go on, given done (n,), in an order that moves few of them: the
    ones after the last place that will be kept fill the places of those that leave, and every
    other stays where it is (a state row that keeps its place needs no copy; the order of the
    sentences in a batch means nothing to the search)."""
    keep = (~done).nonzero().squeeze(1)
    n_keep = keep.size(0)
    order = torch.arange(n_keep, device=done.device)
    order[done[:n_keep]] = keep[keep >= n_keep]  # as many holes as kept rows past the end
    return order


def _one_path(
    model: StepModel,
    src: Tensor,
    src_lengths: Tensor,
    pick: Callable[[Tensor], Tensor],
    max_len_a: float,
    max_len_b: int,
    min_len: int,
    steering: Steering | None,
    copies: int = 1,
) -> list[list[Hypothesis]]:
    """The loop greedy search and sampling share: each step, `pick` turns log_probs (rows, vocab)
    into one token per row; a row's score is the log-probability of what was picked.
    `copies` rows per sentence (independent samples) share one encoder pass."""
    batch = src.size(0)
    steering = steering or Steering(batch, device=src.device)
    enc = model.encode(src, src_lengths)
    sentence = torch.arange(batch, device=src.device).repeat_interleave(copies)  # (rows,)
    limits = length_limits(model, src_lengths, max_len_a, max_len_b, steering.min_output + 1,
                           steering.longest)
    limits = limits.index_select(0, sentence)
    rows, max_steps = sentence.size(0), int(limits.max()) + 1  # + 1: the EOS step
    state = model.init_state(enc, max_steps)
    state = state.select(sentence) if copies > 1 else state
    steering.start(sentence)
    tokens = src.new_full((rows, max_steps), PAD_ID)  # what each row picked, EOS included
    log_prob = torch.zeros(rows, device=src.device)
    steps = torch.zeros(rows, dtype=torch.long, device=src.device)  # tokens + EOS per row
    active = torch.arange(rows, device=src.device)  # which rows are still decoding
    prev = torch.full((rows,), model.start_token, dtype=torch.long, device=src.device)
    for t in range(max_steps):
        scores, state = model.step(prev, state)  # (active, vocab)
        history = tokens.index_select(0, active)[:, :t] if steering.needs_history else None
        log_probs = steering.scores_to_log_probs(scores, t, history)
        steering.mask(log_probs, t, sentence.index_select(0, active), history,
                      limits.index_select(0, active), min_len)
        best = pick(log_probs)  # (active,)
        tokens[active, t] = best
        log_prob[active] += log_probs.gather(1, best.unsqueeze(1)).squeeze(1)
        steps[active] = t + 1
        done = best == EOS_ID
        keep = torch.arange(active.size(0), device=src.device)
        if bool(done.all()):
            break
        if bool(done.any()):  # finished rows leave: the state shrinks to the active rows
            keep = _remaining(done)
            active, state, best = active[keep], state.select(keep), best[keep]
        steering.advance(keep, best, t, sentence.index_select(0, active))
        prev = best
    # one conversion to Python at the end, not one per step
    hyps = [
        Hypothesis(tokens=ids[: n - 1], score=lp, log_prob=lp)
        for ids, lp, n in zip(tokens.tolist(), log_prob.tolist(), steps.tolist(), strict=True)
    ]
    return [hyps[i * copies : (i + 1) * copies] for i in range(batch)]


@torch.inference_mode()
def greedy_search(
    model: StepModel,
    src: Tensor,
    src_lengths: Tensor,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    min_len: int = 0,
    steering: Steering | None = None,
) -> list[Hypothesis]:
    """Pick the most probable token at each step. src (batch, src_len) -> one hypothesis each."""
    results = _one_path(model, src, src_lengths, lambda log_probs: log_probs.argmax(dim=-1),
                        max_len_a, max_len_b, min_len, steering)
    return [hyps[0] for hyps in results]


def _sampler(temperature: float, top_k: int, top_p: float,
             generator: torch.Generator | None) -> Callable[[Tensor], Tensor]:
    """log_probs (rows, vocab) -> one sampled token per row."""

    def pick(log_probs: Tensor) -> Tensor:
        logits = log_probs / temperature  # < 1 sharpens the distribution, > 1 flattens it
        if 0 < top_k < logits.size(-1):  # keep the k most probable tokens
            kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (rows, 1)
            logits = logits.masked_fill(logits < kth, NEG_INF)
        if top_p < 1.0:  # keep the fewest most probable tokens whose mass reaches p (nucleus)
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(dim=-1)
            mass_before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above each
            sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, NEG_INF)  # keeps the first
            logits = torch.full_like(logits, NEG_INF).scatter(1, order, sorted_logits)
        probs = logits.softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    return pick


@torch.inference_mode()
def sample(
    model: StepModel,
    src: Tensor,
    src_lengths: Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    num_samples: int = 1,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    min_len: int = 0,
    steering: Steering | None = None,
) -> list[Hypothesis]:
    """Draw each token at random from the model's distribution, reshaped by temperature, top_k
    (0 = all tokens) and top_p (1 = all). With num_samples > 1, each hypothesis's nbest holds
    that many independent samples, most probable first. Scores are the model's log-probability
    of the sample (before temperature and filtering). The same generator state gives the same
    samples."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    pick = _sampler(temperature, top_k, top_p, generator)
    results = _one_path(model, src, src_lengths, pick, max_len_a, max_len_b, min_len, steering,
                        copies=num_samples)
    out = []
    for samples in results:
        ranked = sorted(samples, key=lambda h: h.score, reverse=True)
        best = ranked[0]
        out.append(Hypothesis(best.tokens, best.score, ranked if num_samples > 1 else [], best.log_prob))
    return out


# ---- beam search ----


def top_extensions(
    log_probs: Tensor, beam_scores: Tensor, count: int, block: int = 64
) -> tuple[Tensor, Tensor]:
    """The `count` best one-token extensions of each sentence's beams: log_probs (n * beams,
    vocab) of the next token, beam_scores (n, beams) of the prefixes. Returns their scores
    beam_scores[b] + log_probs[b, token] (n, count), best first, and which they are, as
    b * vocab + token (n, count).

    The vocabulary is wide and count small, so one pass takes the maximum of every block of
    `block` tokens of a beam, and only the `count` blocks with the highest maximum plus beam
    score are searched: every one of the best extensions lies in one of them. (A quarter of the
    time of a top-k over every row at a vocabulary of 8k.) Among extensions with exactly equal
    scores, which one wins is up to topk."""
    n, beams = beam_scores.shape
    rows, vocab = log_probs.shape
    blocks = -(-vocab // block)  # the last may be partial
    if blocks <= 2 * count:  # too few blocks to gain anything: score every extension
        scores = (beam_scores.unsqueeze(2) + log_probs.view(n, beams, vocab)).view(n, -1)
        if scores.size(1) < count:  # fewer extensions than asked for: pad with dead ones
            scores = F.pad(scores, (0, count - scores.size(1)), value=NEG_INF)
        top_scores, top = scores.topk(count, dim=1)
        return top_scores, top.clamp(max=beams * vocab - 1)  # (a padded one keeps -inf)
    whole = vocab // block
    maxima = log_probs[:, : whole * block].view(rows, whole, block).amax(dim=2)  # (rows, whole)
    if whole < blocks:
        maxima = torch.cat([maxima, log_probs[:, whole * block :].amax(dim=1, keepdim=True)], 1)
    maxima = maxima.view(n, beams, blocks) + beam_scores.unsqueeze(2)
    best = maxima.view(n, beams * blocks).topk(count, dim=1).indices  # (n, count)
    beam = best // blocks  # (n, count)
    tokens = (best % blocks * block).unsqueeze(2) + torch.arange(block, device=best.device)
    row = beam + torch.arange(n, device=best.device).unsqueeze(1) * beams  # (n, count)
    if whole < blocks:  # the partial block's columns past the vocabulary: dead, on the last word
        past = tokens >= vocab
        tokens = tokens.clamp(max=vocab - 1)
    values = log_probs[row.unsqueeze(2), tokens]  # (n, count, block)
    if whole < blocks:
        values.masked_fill_(past, NEG_INF)
    values += beam_scores.gather(1, beam).unsqueeze(2)
    top_scores, top = values.view(n, count * block).topk(count, dim=1)
    extensions = (beam.unsqueeze(2) * vocab + tokens).view(n, count * block)
    return top_scores, extensions.gather(1, top)


@torch.inference_mode()
def beam_search(
    model: StepModel,
    src: Tensor,
    src_lengths: Tensor,
    beam_size: int = 5,
    length_penalty_alpha: float = 1.0,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    nbest: int = 1,
    min_len: int = 0,
    steering: Steering | None = None,
    constraints: Constraints | None = None,
) -> list[Hypothesis]:
    """Keep the beam_size most probable prefixes of every sentence at each step.

    Each step scores every (beam, next token) pair by the prefix's log-probability plus the
    token's, and takes the 2k best per sentence: those ending in EOS among the first k become
    finished hypotheses, and the k best that do not end continue. Finished hypotheses are
    ranked by log_prob / length_penalty(len + 1). A sentence is done (and leaves the batch) at
    its length limit, or once k hypotheses have finished and the best live beam, scored as if
    it ended now, no longer beats the k-th of them (Hugging Face's heuristic; stopping at the
    k-th finished hypothesis alone, as fairseq does, loses the best one when weaker beams end
    first, as they do after a forced prefix).
    The best is returned, with the `nbest` best (distinct, best first) in its .nbest. With
    beam_size 1 this is greedy search. While a forced prefix lasts only one beam of a sentence
    is alive (the others score -inf).

    With `constraints` (see nmtkit.constraints), a sentence that has some ends only once they
    are all met (or at its length limit), and its beams are chosen by dynamic beam allocation;
    finished hypotheses that meet them rank before those that do not. Sentences without
    constraints decode exactly as they would without the argument.
    """
    if not 1 <= nbest <= beam_size:
        raise ValueError(f"nbest must be between 1 and the beam size ({beam_size}), got {nbest}")
    k, batch, device = beam_size, src.size(0), src.device
    steering = steering or Steering(batch, device=device)
    enc = model.encode(src, src_lengths)  # once per sentence, not once per beam
    limits = length_limits(model, src_lengths, max_len_a, max_len_b, steering.min_output + 1,
                           steering.longest)
    # Step 0 has one beam per sentence (BOS alone), and the k beams branch from its best
    # tokens; from then on row r of the state is beam r % k of sentence r // k.
    state = model.init_state(enc, int(limits.max()) + 1)  # + 1: the EOS step
    beam_scores = torch.zeros(batch, 1, device=device)  # (sentences, beams) log-probs
    active = torch.arange(batch, device=device)  # the original index of each active sentence
    steering.start(active)
    constrained = constraints is not None and constraints.any
    if constrained:
        constraints.start(active)
    prefixes = torch.empty(batch, 0, dtype=torch.long, device=device)  # (rows, t)
    kth_finished = torch.full((batch, k), NEG_INF, device=device)  # the k best finished scores
    # per step: (sentence, log_prob, tokens (n, t), whether it meets its constraints)
    finished: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    prev = torch.full((batch,), model.start_token, dtype=torch.long, device=device)
    for t in range(int(limits.max()) + 1):
        scores, state = model.step(prev, state)  # (n * beams, vocab)
        (n, beams), vocab = beam_scores.shape, scores.size(-1)
        sentence_limits = limits.index_select(0, active)  # (n,)
        rows_sentence = active.repeat_interleave(beams)  # (n * beams,)
        log_probs = steering.scores_to_log_probs(scores, t, prefixes)
        steering.mask(log_probs, t, rows_sentence, prefixes, sentence_limits.repeat_interleave(beams),
                      min_len)
        if constrained:
            constraints.mask(log_probs, sentence_limits.repeat_interleave(beams), t)
        # the 2k best extensions per sentence: even if k of them end in EOS, k remain to continue
        top_scores, extension = top_extensions(log_probs, beam_scores, 2 * k)  # (n, 2k)
        top_tokens = extension % vocab
        parents = extension // vocab + torch.arange(n, device=device).unsqueeze(1) * beams  # rows
        if constrained:  # dynamic beam allocation: the 2k in the order of their banks
            top_scores, top_tokens, parents = constraints.select(log_probs, beam_scores, active,
                                                                 top_scores, top_tokens, parents)
        is_eos = (top_tokens == EOS_ID) & top_scores.isfinite()
        # EOS among the k best finishes a hypothesis (one further down lost to k live beams)
        ends = is_eos[:, :k]
        if bool(ends.any()):
            s, j = ends.nonzero(as_tuple=True)
            meets = constraints.satisfied()[parents[s, j]] if constrained else \
                torch.ones_like(s, dtype=torch.bool)
            finished.append((active[s], top_scores[s, j], prefixes[parents[s, j]], meets))
            penalised = torch.where(ends, top_scores[:, :k] / length_penalty(t + 1, length_penalty_alpha),
                                    NEG_INF)
            best = torch.cat([kth_finished.index_select(0, active), penalised], dim=1).topk(k, dim=1)
            kth_finished[active] = best.values
        # the next beams: the k best candidates that do not end (EOS ones are moved last)
        order = torch.arange(2 * k, device=device) + is_eos * (2 * k)  # (n, 2k)
        keep_beams = order.topk(k, dim=1, largest=False).indices  # (n, k)
        # the beams' order means nothing to the search: let most stay in their parent's row
        keep_beams = keep_beams.gather(1, _rows_kept(parents.gather(1, keep_beams) % beams))
        beam_scores = top_scores.gather(1, keep_beams)
        rows = parents.gather(1, keep_beams)  # (n, k)
        prev = top_tokens.gather(1, keep_beams)  # (n, k)
        # done sentences leave: at the limit, or when no live beam can beat the k-th finished
        best_live = beam_scores.max(dim=1).values / length_penalty(t + 2, length_penalty_alpha)
        done = (kth_finished.index_select(0, active)[:, -1] >= best_live) | (sentence_limits <= t)
        if bool(done.all()):
            break
        if bool(done.any()):
            keep = _remaining(done)
            active, beam_scores, rows, prev = active[keep], beam_scores[keep], rows[keep], prev[keep]
        rows, prev = rows.view(-1), prev.view(-1)  # (n' * k,)
        # reorder (and shrink) everything per row to the surviving beams: one select per step
        state = state.select(rows)
        steering.advance(rows, prev, t, active.repeat_interleave(k))
        if constrained:
            constraints.advance(rows, prev, active.repeat_interleave(k))
        prefixes = torch.cat([prefixes.index_select(0, rows), prev.unsqueeze(1)], dim=1)
    return _rank_finished(finished, batch, length_penalty_alpha, nbest)


def _rows_kept(parent: Tensor) -> Tensor:
    """An order of each sentence's next beams, given their parent beams (n, k), in which every
    parent's first child takes the parent's own row and the other children fill the rows of
    parents without one. A beam that keeps its parent's row needs no copy of the decoder state
    (the Transformer's key/value cache is copied row by row): in practice only about one beam in
    six moves. Returns order (n, k): row j of a sentence gets its beam order[:, j]."""
    n, k = parent.shape
    positions = torch.arange(k, device=parent.device)
    children = F.one_hot(parent, k)  # (n, beam, parent row)
    first = (children.cumsum(dim=1) * children).sum(dim=2) == 1  # (n, k): first child of its parent
    # rows of parents without a child, ascending, and the beams that are not first children,
    # in order: the i-th of these beams takes the i-th of those rows
    free_rows = (children.any(dim=1) * k + positions).sort(dim=1).values  # (n, k)
    others = (first * k + positions).argsort(dim=1)  # (n, k)
    moving = positions < (~first).sum(dim=1, keepdim=True)  # (n, k)
    rows = parent.scatter(1, others, torch.where(moving, free_rows, parent.gather(1, others)))
    return rows.argsort(dim=1)


def _rank_finished(
    finished: list[tuple[Tensor, Tensor, Tensor, Tensor]], batch: int, alpha: float, nbest: int
) -> list[Hypothesis]:
    """Finished hypotheses, collected step by step -> per sentence the best, with its n-best
    (those that meet their constraints first)."""
    per_sentence: list[list[tuple[bool, Hypothesis]]] = [[] for _ in range(batch)]
    for sentences, log_probs, tokens, meets in finished:
        lp = length_penalty(tokens.size(1) + 1, alpha)  # + 1: the EOS step
        for s, log_prob, ids, ok in zip(sentences.tolist(), log_probs.tolist(), tokens.tolist(),
                                        meets.tolist(), strict=True):
            per_sentence[s].append((ok, Hypothesis(ids, log_prob / lp, [], log_prob)))
    results = []
    for hyps in per_sentence:
        ranked = [h for _, h in sorted(hyps, key=lambda x: (x[0], x[1].score), reverse=True)[:nbest]]
        best = ranked[0]
        results.append(Hypothesis(best.tokens, best.score, ranked, best.log_prob))
    return results
