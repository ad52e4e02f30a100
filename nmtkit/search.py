"""Search: turn a trained model into output sentences, using only the decoder's step interface.

    greedy_search   the most probable token at each step
    beam_search     the k most probable prefixes at each step, with a length penalty and n-best
    sample          a random token at each step (temperature, top-k, top-p), seeded
    EnsembleModel   several models that decode as one: every search above runs it unchanged

Every search runs all sentences of a batch, and all their beams, in one tensor pass per step.
A sentence that has finished leaves the active set (its rows are dropped from the state with
`select`), so the work per step shrinks. The bookkeeping per step is tensor operations whose
cost does not grow with the number of beams in Python; lists are built once, at the end.

Lengths, counted in target tokens without EOS: a sentence of src_len tokens may produce at most
`max_len_a * src_len + max_len_b` (at its limit only EOS is allowed), and with `min_len` no EOS
before that many tokens (the benchmark uses min_len = limit to force a fixed output length).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmtkit.errors import NMTKitError
from nmtkit.seq2seq import DecoderState, EncoderOutput, Seq2Seq
from nmtkit.vocabulary import BOS_ID, EOS_ID, PAD_ID, UNK_ID

NEG_INF = float("-inf")


@dataclass
class Hypothesis:
    tokens: list[int]  # target ids without BOS/EOS
    score: float  # what search ranks by: log_prob, divided by the length penalty in beam search
    attention: Tensor | None = None  # (len(tokens) + 1, src_len): rows include the EOS step
    nbest: list[Hypothesis] = field(default_factory=list)  # beam/samples: best first, self first
    log_prob: float = 0.0  # sum of the model's log-probabilities of tokens + EOS


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
    member's log-probabilities exactly. The attention is the members' mean.
    """

    def __init__(self, models: list[Seq2Seq]) -> None:
        super().__init__()
        self.models = nn.ModuleList(models)

    @property
    def max_steps(self) -> int | None:
        caps = [m.max_steps for m in self.models if m.max_steps is not None]
        return min(caps) if caps else None

    def encode(self, src: Tensor, src_lengths: Tensor) -> list[EncoderOutput]:
        return [m.encode(src, src_lengths) for m in self.models]

    def init_state(self, encs: list[EncoderOutput], max_len: int = 0) -> EnsembleState:
        members = zip(self.models, encs, strict=True)
        return EnsembleState([m.init_state(enc, max_len) for m, enc in members])

    def step(self, prev_tokens: Tensor, state: EnsembleState) -> tuple[Tensor, Tensor | None, EnsembleState]:
        outputs = [m.step(prev_tokens, s) for m, s in zip(self.models, state.states, strict=True)]
        new_state = EnsembleState([s for _, _, s in outputs])
        if len(outputs) == 1:
            return outputs[0][0], outputs[0][1], new_state
        log_probs = torch.stack([lp for lp, _, _ in outputs])  # (members, batch, vocab)
        log_probs = torch.logsumexp(log_probs, dim=0) - math.log(len(outputs))
        attentions = [a for _, a, _ in outputs if a is not None]
        attention = torch.stack(attentions).mean(dim=0) if attentions else None
        return log_probs, attention, new_state


StepModel = Seq2Seq | EnsembleModel  # anything with encode / init_state / step


# ---- what every search shares ----


def max_lengths(src_lengths: Tensor, max_len_a: float, max_len_b: int) -> Tensor:
    """The longest output allowed per sentence: a * src_len + b target tokens (EOS excluded)."""
    return (src_lengths.float() * max_len_a + max_len_b).long().clamp(min=1)


def length_limits(model: StepModel, src_lengths: Tensor, max_len_a: float, max_len_b: int) -> Tensor:
    """max_lengths, capped where the decoder has a fixed number of positions."""
    limits = max_lengths(src_lengths, max_len_a, max_len_b)
    cap = model.max_steps
    return limits if cap is None else limits.clamp(max=cap - 1)


def length_penalty(steps: int | Tensor, alpha: float) -> float | Tensor:
    """GNMT's lp = ((5 + |Y|) / 6)^alpha, |Y| counting the tokens and EOS; alpha = 0: lp = 1.

    Log-probabilities only fall as a hypothesis grows, so without a penalty beam search prefers
    short outputs; dividing by lp evens that out (Wu et al. 2016)."""
    return ((5.0 + steps) / 6.0) ** alpha


def _step_rules(log_probs: Tensor, t: int, limits: Tensor, min_len: int, allow_unk: bool) -> None:
    """In place, for step t (t tokens so far) of rows with these limits (rows,): never `<pad>`,
    `<bos>` or (unless allowed) `<unk>`; no EOS before min_len tokens; only EOS once a row has
    reached its limit (with its own log-probability)."""
    if t == 0 and bool(log_probs.isnan().any()):
        raise NMTKitError("the model's output is not a number (NaN): its weights are not finite "
                          "(a diverged training run?); use an earlier checkpoint")
    log_probs.index_fill_(1, _never(allow_unk, log_probs.device), NEG_INF)
    eos = log_probs[:, EOS_ID].clone()
    if t < min_len:
        log_probs[:, EOS_ID] = NEG_INF
    at_limit = limits <= t  # (rows,)
    if bool(at_limit.any()):
        log_probs.masked_fill_(at_limit.unsqueeze(1), NEG_INF)
        log_probs[:, EOS_ID] = torch.where(at_limit, eos, log_probs[:, EOS_ID])


def _never(allow_unk: bool, device: torch.device) -> Tensor:
    """The ids search never produces: no target holds <pad> or <bos>, and <unk> means nothing
    to a reader (with byte fallback the vocabulary spells any character)."""
    return torch.tensor([PAD_ID, BOS_ID] if allow_unk else [PAD_ID, BOS_ID, UNK_ID], device=device)


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
    return_attention: bool,
    copies: int = 1,
    allow_unk: bool = False,
) -> list[list[Hypothesis]]:
    """The loop greedy search and sampling share: each step, `pick` turns log_probs (rows, vocab)
    into one token per row; a row's score is the model's log-probability of what was picked.
    `copies` rows per sentence (independent samples) share one encoder pass."""
    batch = src.size(0)
    enc = model.encode(src, src_lengths)
    sentence = torch.arange(batch, device=src.device).repeat_interleave(copies)  # (rows,)
    limits = length_limits(model, src_lengths, max_len_a, max_len_b).index_select(0, sentence)
    rows, max_steps = sentence.size(0), int(limits.max()) + 1  # + 1: the EOS step
    state = model.init_state(enc, max_steps)
    state = state.select(sentence) if copies > 1 else state
    tokens = src.new_full((rows, max_steps), PAD_ID)  # what each row picked, EOS included
    log_prob = torch.zeros(rows, device=src.device)
    steps = torch.zeros(rows, dtype=torch.long, device=src.device)  # tokens + EOS per row
    attention: Tensor | None = None  # (rows, max_steps, src_len), filled when asked for
    active = torch.arange(rows, device=src.device)  # which rows are still decoding
    prev = torch.full((rows,), BOS_ID, dtype=torch.long, device=src.device)
    for t in range(max_steps):
        log_probs, attn, state = model.step(prev, state)  # (active, vocab)
        _step_rules(log_probs, t, limits.index_select(0, active), min_len, allow_unk)
        best = pick(log_probs)  # (active,)
        tokens[active, t] = best
        log_prob[active] += log_probs.gather(1, best.unsqueeze(1)).squeeze(1)
        steps[active] = t + 1
        if return_attention and attn is not None:
            if attention is None:
                attention = attn.new_zeros(rows, max_steps, attn.size(-1), dtype=torch.float)
            attention[active, t] = attn.float()
        done = best == EOS_ID
        if bool(done.all()):
            break
        if bool(done.any()):  # finished rows leave: the state shrinks to the active rows
            keep = _remaining(done)
            active, state, best = active[keep], state.select(keep), best[keep]
        prev = best
    # one conversion to Python at the end, not one per step
    hyps = [
        Hypothesis(tokens=ids[: n - 1], score=lp, log_prob=lp,
                   attention=None if attention is None else attention[i, :n].cpu())
        for i, (ids, lp, n) in enumerate(zip(tokens.tolist(), log_prob.tolist(), steps.tolist(),
                                            strict=True))
    ]
    return [hyps[i * copies : (i + 1) * copies] for i in range(batch)]


@torch.inference_mode()
def greedy_search(
    model: StepModel,
    src: Tensor,
    src_lengths: Tensor,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    return_attention: bool = False,
    min_len: int = 0,
    allow_unk: bool = False,
) -> list[Hypothesis]:
    """Pick the most probable token at each step. src (batch, src_len) -> one hypothesis each."""
    results = _one_path(model, src, src_lengths, lambda log_probs: log_probs.argmax(dim=-1),
                        max_len_a, max_len_b, min_len, return_attention, allow_unk=allow_unk)
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
    return_attention: bool = False,
    min_len: int = 0,
    allow_unk: bool = False,
) -> list[Hypothesis]:
    """Draw each token at random from the model's distribution, reshaped by temperature, top_k
    (0 = all tokens) and top_p (1 = all). With num_samples > 1, each hypothesis's nbest holds
    that many independent samples, most probable first. Scores are the model's log-probability
    of the sample (before temperature and filtering). The same generator state gives the same
    samples."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    pick = _sampler(temperature, top_k, top_p, generator)
    results = _one_path(model, src, src_lengths, pick, max_len_a, max_len_b, min_len,
                        return_attention, copies=num_samples, allow_unk=allow_unk)
    out = []
    for samples in results:
        ranked = sorted(samples, key=lambda h: h.score, reverse=True)
        best = ranked[0]
        out.append(Hypothesis(best.tokens, best.score, best.attention,
                              ranked if num_samples > 1 else [], best.log_prob))
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
    return_attention: bool = False,
    min_len: int = 0,
    allow_unk: bool = False,
) -> list[Hypothesis]:
    """Keep the beam_size most probable prefixes of every sentence at each step.

    Each step scores every (beam, next token) pair by the prefix's log-probability plus the
    token's, and takes the 2k best per sentence: those ending in EOS among the first k become
    finished hypotheses, and the k best that do not end continue. A sentence is done once k
    hypotheses have finished (or at its length limit), and leaves the batch. Finished
    hypotheses are ranked by log_prob / length_penalty(len + 1); the best is returned, with
    the `nbest` best (distinct, best first) in its .nbest. With beam_size 1 this is greedy search.
    """
    if not 1 <= nbest <= beam_size:
        raise ValueError(f"nbest must be between 1 and the beam size ({beam_size}), got {nbest}")
    k, batch, device = beam_size, src.size(0), src.device
    enc = model.encode(src, src_lengths)  # once per sentence, not once per beam
    limits = length_limits(model, src_lengths, max_len_a, max_len_b)  # (batch,)
    # Step 0 has one beam per sentence (BOS alone), and the k beams branch from its best
    # tokens; from then on row r of the state is beam r % k of sentence r // k.
    state = model.init_state(enc, int(limits.max()) + 1)  # + 1: the EOS step
    beam_scores = torch.zeros(batch, 1, device=device)  # (sentences, beams) log-probs
    active = torch.arange(batch, device=device)  # the original index of each active sentence
    prefixes = torch.empty(batch, 0, dtype=torch.long, device=device)  # (rows, t)
    prefix_attention: Tensor | None = None  # (rows, t, src_len), when asked for
    n_finished = torch.zeros(batch, dtype=torch.long, device=device)
    # per step: (sentence, log_prob, tokens (n, t), attention (n, t + 1, src_len) or None)
    finished: list[tuple[Tensor, Tensor, Tensor, Tensor | None]] = []
    prev = torch.full((batch,), BOS_ID, dtype=torch.long, device=device)
    for t in range(int(limits.max()) + 1):
        log_probs, attn, state = model.step(prev, state)  # (n * beams, vocab)
        (n, beams), vocab = beam_scores.shape, log_probs.size(-1)
        sentence_limits = limits.index_select(0, active)  # (n,)
        _step_rules(log_probs, t, sentence_limits.repeat_interleave(beams), min_len, allow_unk)
        # the 2k best extensions per sentence: even if k of them end in EOS, k remain to continue
        top_scores, extension = top_extensions(log_probs, beam_scores, 2 * k)  # (n, 2k)
        top_tokens = extension % vocab
        parents = extension // vocab + torch.arange(n, device=device).unsqueeze(1) * beams  # rows
        if attn is not None and return_attention:
            step_attention = attn.float().unsqueeze(1)  # (n * beams, 1, src_len)
            prefix_attention = (step_attention if prefix_attention is None
                                else torch.cat([prefix_attention, step_attention], dim=1))
        is_eos = (top_tokens == EOS_ID) & top_scores.isfinite()
        # EOS among the k best finishes a hypothesis (one further down lost to k live beams)
        ends = is_eos[:, :k]
        if bool(ends.any()):
            s, j = ends.nonzero(as_tuple=True)
            rows = parents[s, j]
            finished.append((
                active[s], top_scores[s, j], prefixes[rows],
                None if prefix_attention is None else prefix_attention[rows],
            ))
            n_finished[active] += ends.sum(dim=1)
        # the next beams: the k best candidates that do not end (EOS ones are moved last)
        order = torch.arange(2 * k, device=device) + is_eos * (2 * k)  # (n, 2k)
        keep_beams = order.topk(k, dim=1, largest=False).indices  # (n, k)
        # the beams' order means nothing to the search: let most stay in their parent's row
        keep_beams = keep_beams.gather(1, _rows_kept(parents.gather(1, keep_beams) % beams))
        beam_scores = top_scores.gather(1, keep_beams)
        rows = parents.gather(1, keep_beams)  # (n, k)
        prev = top_tokens.gather(1, keep_beams)  # (n, k)
        # done sentences leave: k hypotheses have finished, or the limit is reached
        done = (n_finished.index_select(0, active) >= k) | (sentence_limits <= t)
        if bool(done.all()):
            break
        if bool(done.any()):
            keep = _remaining(done)
            active, beam_scores, rows, prev = active[keep], beam_scores[keep], rows[keep], prev[keep]
        rows, prev = rows.view(-1), prev.view(-1)  # (n' * k,)
        # reorder (and shrink) everything per row to the surviving beams: one select per step
        state = state.select(rows)
        prefixes = torch.cat([prefixes.index_select(0, rows), prev.unsqueeze(1)], dim=1)
        if prefix_attention is not None:
            prefix_attention = prefix_attention.index_select(0, rows)
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
    finished: list[tuple[Tensor, Tensor, Tensor, Tensor | None]], batch: int, alpha: float, nbest: int
) -> list[Hypothesis]:
    """Finished hypotheses, collected step by step -> per sentence the best, with its n-best."""
    per_sentence: list[list[Hypothesis]] = [[] for _ in range(batch)]
    for sentences, log_probs, tokens, attention in finished:
        lp = length_penalty(tokens.size(1) + 1, alpha)  # + 1: the EOS step
        for i, (s, log_prob, ids) in enumerate(zip(sentences.tolist(), log_probs.tolist(),
                                                   tokens.tolist(), strict=True)):
            att = None if attention is None else attention[i].cpu()
            per_sentence[s].append(Hypothesis(ids, log_prob / lp, att, [], log_prob))
    results = []
    for hyps in per_sentence:
        ranked = sorted(hyps, key=lambda h: h.score, reverse=True)[:nbest]
        best = ranked[0]
        results.append(Hypothesis(best.tokens, best.score, best.attention, ranked, best.log_prob))
    return results
