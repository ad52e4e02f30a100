"""The Python API: load a checkpoint once, translate lists of sentences.

    from nmtkit import Translator
    t = Translator.load("runs/demo/best")
    t.translate(["four thousand seventy-one"])   # -> ["사천칠십일"]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from nmtkit.checkpoint import Checkpoint, load_checkpoint
from nmtkit.data import collate_source
from nmtkit.search import Hypothesis, greedy_search


@dataclass
class Translation:
    text: str
    tokens: list[str]  # target subword pieces
    source_tokens: list[str]  # source subword pieces (+ </s>), the attention's columns
    score: float
    attention: list[list[float]] | None  # (target tokens + </s>) x (source tokens + </s>)


class Translator:
    def __init__(self, checkpoint: Checkpoint, device: str | torch.device = "cpu") -> None:
        self.ckpt = checkpoint
        self.model = checkpoint.model.to(device).eval()
        self.device = torch.device(device)
        self.src_tok = checkpoint.src_tokenizer
        self.tgt_tok = checkpoint.tgt_tokenizer
        self.decoding = checkpoint.config.decoding

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Translator:
        return cls(load_checkpoint(path, device), device)

    def _batches(self, ids: list[list[int]], batch_tokens: int) -> list[list[int]]:
        """Indices of non-empty inputs grouped by similar length, each group within batch_tokens."""
        order = sorted((i for i, x in enumerate(ids) if x), key=lambda i: len(ids[i]))
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0
        for i in order:
            longest_if_added = max(longest, len(ids[i]) + 1)
            if current and longest_if_added * (len(current) + 1) > batch_tokens:
                batches.append(current)
                current, longest_if_added = [], len(ids[i]) + 1
            current.append(i)
            longest = longest_if_added
        if current:
            batches.append(current)
        return batches

    @torch.inference_mode()
    def translate(
        self,
        sentences: list[str],
        batch_tokens: int | None = None,
        return_details: bool = False,
    ) -> list[str] | list[Translation]:
        """Translate in input order; an empty (or blank) sentence gives an empty translation."""
        batch_tokens = batch_tokens or self.decoding.batch_tokens
        ids = [self.src_tok.encode(s) if s.strip() else [] for s in sentences]
        hyps: list[Hypothesis | None] = [None] * len(sentences)
        for indices in self._batches(ids, batch_tokens):
            src, lengths = collate_source([ids[i] for i in indices])
            results = greedy_search(
                self.model, src.to(self.device), lengths.to(self.device),
                self.decoding.max_len_a, self.decoding.max_len_b, return_attention=return_details,
            )
            for i, hyp in zip(indices, results, strict=True):
                hyps[i] = hyp
        if not return_details:
            return [self.tgt_tok.decode(h.tokens) if h else "" for h in hyps]
        return [self._details(ids[i], h) for i, h in enumerate(hyps)]

    def _details(self, src_ids: list[int], hyp: Hypothesis | None) -> Translation:
        if hyp is None:
            return Translation("", [], [], 0.0, None)
        attention = None
        if hyp.attention is not None:
            attention = hyp.attention[:, : len(src_ids) + 1].tolist()
        return Translation(
            text=self.tgt_tok.decode(hyp.tokens),
            tokens=self.tgt_tok.pieces(hyp.tokens),
            source_tokens=self.src_tok.pieces(src_ids) + ["</s>"],
            score=hyp.score,
            attention=attention,
        )
