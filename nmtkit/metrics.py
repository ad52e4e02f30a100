"""Scores of translations against references, computed by sacreBLEU (never re-implemented).

Besides the usual cased BLEU on detokenized text, `score` reports lowercased BLEU: most
published results on small benchmarks such as Multi30k score lowercased (and tokenized) text,
so this is the number to put next to them. With `tokenize="moses"` both sides are first
tokenized by the Moses tokenizer (sacremoses, the optional extra `nmtkit[moses]`) and scored as
they are, as multi-bleu.perl scored the papers' Multi30k and WMT tables: sacreBLEU's 13a splits
a tokenized French reference differently from the Moses tokenization it was made with ("l'
herbe", `&apos;`), and scores it against itself at 82.5-87.0 BLEU.
"""

from __future__ import annotations

from dataclasses import dataclass

import sacrebleu

from nmtkit.errors import NMTKitError


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


def moses_tokenized(lines: list[str], lang: str) -> list[str]:
    """Lines as the Moses tokenizer splits them for language `lang`. Each is detokenized first
    (which also reads its XML escapes, `&apos;` `&quot;`, back as characters), so text that is
    already Moses-tokenized, as Multi30k's references ship, comes out as it went in: tokenizing
    it again would split French "l' herbe" into "l ' herbe"."""
    try:
        from sacremoses import MosesDetokenizer, MosesTokenizer
    except ImportError:
        raise NMTKitError("--tokenize moses needs sacremoses: pip install 'nmtkit[moses]'") from None
    tokenizer, detokenizer = MosesTokenizer(lang=lang), MosesDetokenizer(lang=lang)
    return [tokenizer.tokenize(detokenizer.detokenize(line.split()), return_str=True, escape=False)
            for line in lines]


def score(hypotheses: list[str], references: list[str], tokenize: str | None = None,
          lang: str = "en") -> Scores:
    """Corpus BLEU (cased, and lowercased) and chrF with their sacreBLEU signatures
    (tokenize=None: sacreBLEU's 13a; "moses": BLEU of Moses-tokenized text in language `lang`,
    chrF of the text as it is)."""
    options = {"tokenize": tokenize} if tokenize else {}
    tok_hyps, tok_refs = hypotheses, references
    if tokenize == "moses":
        options = {"tokenize": "none", "force": True}  # tokenized text, knowingly
        tok_hyps, tok_refs = moses_tokenized(hypotheses, lang), moses_tokenized(references, lang)
    bleu = sacrebleu.metrics.BLEU(**options)
    lower = sacrebleu.metrics.BLEU(lowercase=True, **options)
    chrf = sacrebleu.metrics.CHRF()
    b = bleu.corpus_score(tok_hyps, [tok_refs])
    low = lower.corpus_score(tok_hyps, [tok_refs])
    c = chrf.corpus_score(hypotheses, [references])

    def signature(metric: sacrebleu.metrics.BLEU) -> str:
        sig = str(metric.get_signature())
        return sig.replace("tok:none", f"tok:moses-{lang}") if tokenize == "moses" else sig

    return Scores(b.score, c.score, signature(bleu), str(chrf.get_signature()), low.score,
                  signature(lower))
