"""Scores of translations against references, computed by sacreBLEU (never re-implemented).

Besides the usual cased BLEU on detokenized text, `score` reports lowercased BLEU: most
published results on small benchmarks such as Multi30k score lowercased (and tokenized) text,
so this is the number to put next to them.
"""

from __future__ import annotations

from dataclasses import dataclass

import sacrebleu


@dataclass
class Scores:
    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str
    bleu_lowercase: float
    bleu_lowercase_signature: str

    def __str__(self) -> str:
        return (
            f"BLEU = {self.bleu:.2f}  ({self.bleu_signature})\n"
            f"BLEU = {self.bleu_lowercase:.2f}  ({self.bleu_lowercase_signature})\n"
            f"chrF = {self.chrf:.2f}  ({self.chrf_signature})"
        )


def bleu_score(hypotheses: list[str], references: list[str], tokenize: str = "13a") -> float:
    return sacrebleu.corpus_bleu(hypotheses, [references], tokenize=tokenize).score


def score(hypotheses: list[str], references: list[str], tokenize: str | None = None) -> Scores:
    """Corpus BLEU (cased, and lowercased) and chrF with their sacreBLEU signatures
    (tokenize=None: sacreBLEU's 13a)."""
    options = {"tokenize": tokenize} if tokenize else {}
    bleu = sacrebleu.metrics.BLEU(**options)
    lower = sacrebleu.metrics.BLEU(lowercase=True, **options)
    chrf = sacrebleu.metrics.CHRF()
    b = bleu.corpus_score(hypotheses, [references])
    low = lower.corpus_score(hypotheses, [references])
    c = chrf.corpus_score(hypotheses, [references])
    return Scores(b.score, c.score, str(bleu.get_signature()), str(chrf.get_signature()),
                  low.score, str(lower.get_signature()))
