"""Lexically constrained beam search: target phrases that must appear in the output.

A sentence may have constraints, each a phrase of target pieces, or several (disjunctive: one
of them must appear). Beam search asks this module three things per step, through the same
step interface as plain search, for every row of the batch at once:

    mask        no </s> before every constraint is met (unless at the length limit)
    select      which 2k extensions of a sentence's beams to consider, in what order: dynamic
                beam allocation (Post & Vilar 2018), vectorised over the batch (Hu et al. 2019)
    advance     the chosen rows' progress after their new token

Progress is tracked per row and phrase with the shift-and string matcher: matched[r, p, l] says
that the last l + 1 tokens of row r are the first l + 1 pieces of phrase p. One tensor
operation per step updates every row and phrase, and overlapping starts ("a a b" in
"a a a b") are not lost.

Whole words: a phrase's first piece starts a word (sentencepiece encodes it with the word-start
mark), and a phrase counts as met only once the token after it is a boundary: a piece that
starts a new word, one that begins with punctuation, or </s>. "Ball" is met by "Ball ." and
"Ball." but not by "Balls".

Dynamic beam allocation: the candidates of a sentence are its 2k best extensions, plus for each
beam its best token, the tokens that start or continue an unmet phrase, and its best boundary
token after a phrase just spelled out. Each candidate falls in a bank by its progress (the
pieces of constraints met or under way), and the beam is filled bank by bank in turn: the best
of every bank (highest progress first), then the second best of every bank, and so on. A
hypothesis that makes progress thus keeps a place even when the model finds it unlikely, and
the k best of the rest keep theirs. A sentence without constraints has one bank: its order is
the plain search's, and it decodes exactly as plain beam search does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from nmtkit.errors import NMTKitError
from nmtkit.vocabulary import EOS_ID

NEG_INF = float("-inf")
WORD_START = "\u2581"

# per sentence: a list of constraints, each a list of alternative phrases, each a list of ids
SentenceConstraints = Sequence[Sequence[Sequence[int]]]


def boundary_pieces(pieces: Sequence[str]) -> Tensor:
    """(vocab,) bool: the pieces that may follow a met phrase: a word start, a piece that begins
    with punctuation (not a letter or digit), and </s>. Specials and byte pieces ("<0xE2>") are
    not boundaries."""
    ok = [p.startswith(WORD_START) or (bool(p) and not p.startswith("<") and not p[0].isalnum())
          for p in pieces]
    ok[EOS_ID] = True
    return torch.tensor(ok, dtype=torch.bool)


class Constraints:
    """The constraints of a batch of sentences, and the progress of every search row on them.

    sentences: per sentence, its constraints (an empty list: none), each a list of alternative
    phrases of target ids. boundary: boundary_pieces of the target vocabulary."""

    def __init__(self, sentences: Sequence[SentenceConstraints], boundary: Tensor,
                 device: torch.device | str = "cpu") -> None:
        batch = len(sentences)
        n_phrases = max((sum(len(c) for c in s) for s in sentences), default=0) or 1
        n_constraints = max((len(s) for s in sentences), default=0) or 1
        width = max((len(p) for s in sentences for c in s for p in c), default=0) or 1
        self.tokens = torch.full((batch, n_phrases, width), -1, dtype=torch.long)  # -1: no piece
        self.length = torch.ones(batch, n_phrases, dtype=torch.long)  # (1 where no phrase)
        self.owner = torch.zeros(batch, n_phrases, dtype=torch.long)  # the constraint of a phrase
        self.valid = torch.zeros(batch, n_phrases, dtype=torch.bool)
        self.used = torch.zeros(batch, n_constraints, dtype=torch.bool)
        self.weight = torch.zeros(batch, n_constraints, dtype=torch.long)  # a met one's progress
        for s, constraints in enumerate(sentences):
            p = 0
            for c, phrases in enumerate(constraints):
                self.used[s, c] = True
                self.weight[s, c] = max(len(x) for x in phrases) + 1  # + 1: the boundary after it
                for phrase in phrases:
                    self.tokens[s, p, : len(phrase)] = torch.tensor(phrase, dtype=torch.long)
                    self.length[s, p], self.owner[s, p], self.valid[s, p] = len(phrase), c, True
                    p += 1
        self.tokens, self.length, self.owner, self.valid, self.used, self.weight = (
            x.to(device) for x in (self.tokens, self.length, self.owner, self.valid, self.used,
                                   self.weight))
        self.constrained = self.used.any(dim=1)  # (batch,)
        self.any = bool(self.constrained.any())
        self.banks = int(self.weight.sum(dim=1).max()) + 1
        self.boundary = boundary.to(device)
        self.positions = torch.arange(1, width + 1, device=device)  # match lengths
        # per row, set by start/advance
        self.sentence = torch.empty(0, dtype=torch.long, device=device)
        self.matched = torch.empty(0, n_phrases, width, dtype=torch.bool, device=device)
        self.met = torch.empty(0, n_constraints, dtype=torch.bool, device=device)

    # ---- per-row state ----
    def start(self, rows_sentence: Tensor) -> None:
        """The rows of step 0 (nothing produced yet): row r decodes sentence rows_sentence[r]."""
        self.sentence = rows_sentence
        self.matched = torch.zeros(rows_sentence.size(0), *self.tokens.shape[1:], dtype=torch.bool,
                                   device=rows_sentence.device)
        self.met = ~self.used.index_select(0, rows_sentence)  # a constraint that is not there: met

    def advance(self, parents: Tensor, tokens: Tensor, rows_sentence: Tensor) -> None:
        """After a step: new row r continues row parents[r] with token tokens[r]."""
        self.matched, self.met = self._step(rows_sentence, self.matched.index_select(0, parents),
                                            self.met.index_select(0, parents), tokens)
        self.sentence = rows_sentence

    def _step(self, sentence: Tensor, matched: Tensor, met: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Shift-and: rows (R,) of these sentences, with matched (R, P, L) and met (R, C), take
        tokens (R,). A phrase spelled out before a boundary token meets its constraint."""
        pending = self._pending(sentence, matched)  # (R, P)
        newly = pending & self.boundary[tokens].unsqueeze(1)  # (R, P)
        owner = F.one_hot(self.owner.index_select(0, sentence), met.size(1)).bool()  # (R, P, C)
        met = met | (newly.unsqueeze(2) & owner).any(dim=1)
        grown = torch.cat([torch.ones_like(matched[:, :, :1]), matched[:, :, :-1]], dim=2)
        matched = grown & (self.tokens.index_select(0, sentence) == tokens.view(-1, 1, 1))
        return matched, met

    def _pending(self, sentence: Tensor, matched: Tensor) -> Tensor:
        """(R, P): whether the row has just spelled out the whole phrase (awaiting a boundary)."""
        last = (self.length.index_select(0, sentence) - 1).unsqueeze(2)  # (R, P, 1)
        return matched.gather(2, last).squeeze(2) & self.valid.index_select(0, sentence)

    def _partial(self, matched: Tensor) -> Tensor:
        """(R, P): the longest match under way of each phrase (0: none)."""
        return (matched * self.positions).amax(dim=2)

    def _progress(self, sentence: Tensor, matched: Tensor, met: Tensor) -> Tensor:
        """(R,): the bank of a row: the weight of the constraints met, plus the pieces of the
        longest match under way of each constraint not met yet."""
        partial = self._partial(matched)  # (R, P)
        owner = F.one_hot(self.owner.index_select(0, sentence), met.size(1))  # (R, P, C)
        under_way = (partial.unsqueeze(2) * owner).amax(dim=1)  # (R, C)
        weight = self.weight.index_select(0, sentence)
        return torch.where(met, weight, under_way).masked_fill(~self.used.index_select(0, sentence), 0).sum(1)

    def satisfied(self) -> Tensor:
        """(R,): whether each row would meet every constraint if it ended now (</s> is a
        boundary, so a phrase just spelled out counts)."""
        pending = self._pending(self.sentence, self.matched)  # (R, P)
        owner = F.one_hot(self.owner.index_select(0, self.sentence), self.met.size(1)).bool()
        return (self.met | (pending.unsqueeze(2) & owner).any(dim=1)).all(dim=1)

    # ---- what beam search asks ----
    def mask(self, log_probs: Tensor, limits: Tensor, t: int) -> None:
        """In place: no </s> for a row that has constraints left to meet, unless at its limit."""
        allowed = self.satisfied() | (limits <= t)
        log_probs[:, EOS_ID] = torch.where(allowed, log_probs[:, EOS_ID], NEG_INF)

    def select(self, log_probs: Tensor, beam_scores: Tensor, active: Tensor, top_scores: Tensor,
               top_tokens: Tensor, parents: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The 2k extensions per sentence that beam search goes on with: for sentences with
        constraints, chosen by dynamic beam allocation; for the others, the plain search's own
        (top_scores, top_tokens, parents, each (n, 2k), as top_extensions found them).

        log_probs (n * beams, vocab) of the rows, beam_scores (n, beams), active (n,) the
        sentences. Returns new (scores, tokens, parent rows), (n, 2k) each."""
        n, beams = beam_scores.shape
        count = top_scores.size(1)
        rows = log_probs.size(0)
        sentence = self.sentence
        partial = self._partial(self.matched)  # (R, P)
        length = self.length.index_select(0, sentence)
        phrases = self.tokens.index_select(0, sentence)  # (R, P, L)
        unmet = self.valid.index_select(0, sentence) & \
            ~self.met.gather(1, self.owner.index_select(0, sentence))  # (R, P)
        starts = phrases[:, :, 0]  # (R, P)
        goes_on = (partial > 0) & (partial < length) & unmet
        nexts = phrases.gather(2, partial.clamp(max=phrases.size(2) - 1).unsqueeze(2)).squeeze(2)
        pending = (self._pending(sentence, self.matched) & unmet).any(dim=1)  # (R,)
        best_boundary = torch.zeros_like(pending, dtype=torch.long)  # (R,): only where pending
        waiting = pending.nonzero().squeeze(1)
        if waiting.numel():  # a pass over the vocabulary for the few rows that need it
            best_boundary[waiting] = log_probs[waiting].masked_fill(~self.boundary, NEG_INF).argmax(dim=1)
        extra = torch.cat([log_probs.argmax(dim=1, keepdim=True), starts.clamp(min=0),
                           nexts.clamp(min=0), best_boundary.unsqueeze(1)], dim=1)  # (R, 2P + 2)
        ok = torch.cat([torch.ones_like(pending).unsqueeze(1), unmet, goes_on, pending.unsqueeze(1)], 1)
        extra_scores = beam_scores.view(-1, 1) + log_probs.gather(1, extra)
        extra_scores = extra_scores.masked_fill(~ok, NEG_INF)
        row_ids = torch.arange(rows, device=log_probs.device).unsqueeze(1).expand_as(extra)
        scores = torch.cat([top_scores, extra_scores.reshape(n, -1)], dim=1)  # (n, M)
        tokens = torch.cat([top_tokens, extra.reshape(n, -1)], dim=1)
        parent = torch.cat([parents, row_ids.reshape(n, -1)], dim=1)
        scores = _drop_duplicates(scores, parent * log_probs.size(1) + tokens)
        # each candidate's bank: its progress once it has taken its token
        flat_parent = parent.reshape(-1)
        matched, met = self._step(sentence.index_select(0, flat_parent),
                                  self.matched.index_select(0, flat_parent),
                                  self.met.index_select(0, flat_parent), tokens.reshape(-1))
        bank = self._progress(sentence.index_select(0, flat_parent), matched, met).view(n, -1)
        order = _allocate(scores, bank, self.banks)[:, :count]  # (n, 2k)
        chosen = [x.gather(1, order) for x in (scores, tokens, parent)]
        use = self.constrained.index_select(0, active).unsqueeze(1)  # (n, 1)
        return tuple(torch.where(use, new, old)  # type: ignore[return-value]
                     for new, old in zip(chosen, (top_scores, top_tokens, parents), strict=True))


def _drop_duplicates(scores: Tensor, keys: Tensor) -> Tensor:
    """scores (n, M) with every candidate whose key (n, M) an earlier one has set to -inf."""
    sorted_keys, order = keys.sort(dim=1, stable=True)
    repeat = torch.zeros_like(sorted_keys, dtype=torch.bool)
    repeat[:, 1:] = sorted_keys[:, 1:] == sorted_keys[:, :-1]
    duplicate = torch.zeros_like(repeat).scatter(1, order, repeat)
    return scores.masked_fill(duplicate, NEG_INF)


def _allocate(scores: Tensor, bank: Tensor, banks: int) -> Tensor:
    """Dynamic beam allocation: an order of the candidates (n, M) that takes the best of every
    bank (the highest bank first), then the second best of every bank, and so on; candidates
    scoring -inf last. Returns indices (n, M)."""
    by_score = scores.argsort(dim=1, descending=True, stable=True)
    bank = bank.gather(1, by_score)
    in_bank = F.one_hot(bank, banks)  # (n, M, banks)
    rank = (in_bank.cumsum(dim=1) * in_bank).sum(dim=2) - 1  # (n, M): place within its bank
    key = rank * banks + (banks - 1 - bank)
    key = key.masked_fill(~scores.gather(1, by_score).isfinite(), torch.iinfo(torch.long).max)
    return by_score.gather(1, key.argsort(dim=1, stable=True))


def phrase_alternatives(constraint: object, where: str) -> list[str]:
    """A constraint as the user gives it -> its alternative phrases: "Hund" -> ["Hund"],
    {"any": ["Hund", "Hunde"]} -> ["Hund", "Hunde"]. `where` names it in errors."""
    if isinstance(constraint, str):
        phrases = [constraint]
    elif isinstance(constraint, dict) and set(constraint) == {"any"} and \
            isinstance(constraint["any"], list | tuple) and constraint["any"]:
        phrases = list(constraint["any"])
    else:
        raise NMTKitError(f"{where}: a constraint is a phrase (a string) or {{\"any\": [phrases]}}, "
                          f"not {str(constraint)[:60]!r}")
    for phrase in phrases:
        if not isinstance(phrase, str) or not phrase.strip():
            raise NMTKitError(f"{where}: a constraint's phrase must be a non-blank string, not {phrase!r}")
    return [" ".join(p.split()) for p in phrases]
