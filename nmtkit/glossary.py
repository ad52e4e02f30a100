"""Glossaries: `source term<TAB>target term` lines; a source term found in a sentence (as whole
words) makes its target term one of that sentence's constraints (see nmtkit.constraints).

Several lines with the same source term give one disjunctive constraint ({"any": [...]}: one of
their target terms must appear). A sentence is read left to right: at each place the longest
term that starts there wins ("red ball" before "ball"), and its words are not matched again. A
term found twice in a sentence gives one constraint. Blank lines and lines starting with "#" are
skipped.

Terms and sentences are compared in Unicode NFC, so text in decomposed form (macOS writes Hangul
as jamo, and "é" as "e" and a combining accent) still matches; with ignore_case, after
case-folding both (str.casefold).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from nmtkit.errors import NMTKitError


@dataclass
class Glossary:
    terms: dict[str, list[str]]  # source term (source_form) -> its target terms
    ignore_case: bool = False

    def __post_init__(self) -> None:
        # longest first, so that the alternation prefers "red ball" to "ball" at the same place
        ordered = sorted(self.terms, key=len, reverse=True)
        body = "|".join(re.escape(t) for t in ordered)
        # not re.IGNORECASE: it matches letters whose casefold() differs ("ı" for "i"), which
        # then were no key; the sentence is case-folded instead, as the keys are
        self.pattern = re.compile(rf"(?<!\w)(?:{body})(?!\w)") if ordered else None

    def constraints(self, sentence: str) -> list[str | dict[str, list[str]]]:
        """The constraints this glossary puts on the translation of `sentence`."""
        if self.pattern is None:
            return []
        out: list[str | dict[str, list[str]]] = []
        for match in self.pattern.finditer(source_form(sentence, self.ignore_case)):
            targets = self.terms[match.group(0)]
            constraint = targets[0] if len(targets) == 1 else {"any": list(targets)}
            if constraint not in out:
                out.append(constraint)
        return out


def source_form(text: str, ignore_case: bool) -> str:
    """A source term or sentence as the glossary compares them: NFC, one space between words,
    case-folded with ignore_case (str.casefold: "Straße" and "STRASSE" are one)."""
    text = " ".join(unicodedata.normalize("NFC", text).split())
    return text.casefold() if ignore_case else text


def read_glossary(path: Path, ignore_case: bool = False) -> Glossary:
    """A TSV glossary file, checked: every line names its two terms; errors name the line."""
    try:
        text = path.read_bytes().removeprefix(b"\xef\xbb\xbf")  # an editor's UTF-8 BOM
    except FileNotFoundError:
        raise NMTKitError(f"--glossary {path}: no such file") from None
    except IsADirectoryError:
        raise NMTKitError(f"--glossary {path}: is a folder, not a file") from None
    terms: dict[str, list[str]] = {}
    for n, raw in enumerate(text.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8").removesuffix("\r")
        except UnicodeDecodeError:
            raise NMTKitError(f"--glossary {path} line {n}: not valid UTF-8") from None
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
            raise NMTKitError(f"--glossary {path} line {n}: expected 'source term<TAB>target term', "
                              f"got {line[:60]!r}")
        key, target = source_form(fields[0], ignore_case), " ".join(fields[1].split())
        if target not in terms.setdefault(key, []):
            terms[key].append(target)
    return Glossary(terms, ignore_case)


def merge(glossary: Glossary | None, sentences: list[str],
          given: list[list] | None) -> list[list] | None:
    """Each sentence's own constraints (given, or none) followed by the glossary's."""
    if glossary is None:
        return given
    own = given if given is not None else [[] for _ in sentences]
    out = []
    for sentence, constraints in zip(sentences, own, strict=True):
        extra = [c for c in glossary.constraints(sentence) if c not in constraints]
        out.append(list(constraints) + extra)
    return out
