"""The built-in demo corpus: integers 0..999,999 in English words and in Korean words.

A real translation task with a known answer. Word order differs between the languages only in
the grouping (English groups by thousands, Korean by ten-thousands: 만), so attention has to
learn a non-trivial but learnable alignment, e.g.

    four thousand seventy-one            <->  사천칠십일
    three hundred forty-five thousand six hundred seventy-eight  <->  삼십사만 오천육백칠십팔
"""

from __future__ import annotations

import random
from pathlib import Path

from nmtkit.errors import NMTKitError
from nmtkit.files import write_text_atomic

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
        "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]

KO_DIGITS = ["영", "일", "이", "삼", "사", "오", "육", "칠", "팔", "구"]
KO_UNITS = ["", "십", "백", "천"]  # 10^0 .. 10^3 inside a group of four digits

MAX_NUMBER = 999_999


def _english_below_thousand(n: int) -> list[str]:
    words: list[str] = []
    hundreds, rest = divmod(n, 100)
    if hundreds:
        words += [ONES[hundreds], "hundred"]
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        words.append(TENS[tens] + (f"-{ONES[ones]}" if ones else ""))
    elif rest:
        words.append(ONES[rest])
    return words


def number_to_english(n: int) -> str:
    """American English without "and": 4071 -> "four thousand seventy-one"."""
    if not 0 <= n <= MAX_NUMBER:
        raise ValueError(f"number out of range 0..{MAX_NUMBER}: {n}")
    if n == 0:
        return "zero"
    thousands, rest = divmod(n, 1000)
    words: list[str] = []
    if thousands:
        words += _english_below_thousand(thousands) + ["thousand"]
    words += _english_below_thousand(rest)
    return " ".join(words)


def _korean_group(n: int) -> str:
    """0 < n < 10000 in Sino-Korean; a leading 일 is dropped before 십/백/천 (십, not 일십)."""
    out = []
    for power in (3, 2, 1, 0):
        digit = (n // 10**power) % 10
        if digit == 0:
            continue
        if digit == 1 and power > 0:
            out.append(KO_UNITS[power])
        else:
            out.append(KO_DIGITS[digit] + KO_UNITS[power])
    return "".join(out)


def number_to_korean(n: int) -> str:
    """Sino-Korean words, spaced by 만 units as Korean spelling does.

    345678 -> 삼십사만 오천육백칠십팔
    """
    if not 0 <= n <= MAX_NUMBER:
        raise ValueError(f"number out of range 0..{MAX_NUMBER}: {n}")
    if n == 0:
        return "영"
    man, rest = divmod(n, 10_000)
    parts = []
    if man:
        parts.append(("" if man == 1 else _korean_group(man)) + "만")
    if rest:
        parts.append(_korean_group(rest))
    return " ".join(parts)


def sample_numbers(count: int, rng: random.Random, exclude: set[int], min_digits: int = 1) -> list[int]:
    """Numbers with a uniform number of digits (min_digits..6), so short numbers are not vanishingly
    rare; once a digit count is used up (there are only ten 1-digit numbers) others fill in."""
    chosen: list[int] = []
    seen = set(exclude)
    while len(chosen) < count:
        digits = rng.randint(min_digits, 6)
        n = rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)
        if n not in seen:
            seen.add(n)
            chosen.append(n)
    return chosen


def make_demo_corpus(
    out_dir: Path, seed: int = 1, n_train: int = 30_000, n_valid: int = 500, n_test: int = 1000
) -> dict[str, tuple[Path, Path]]:
    """Write train/valid/test as `{split}.en` / `{split}.ko`; splits never share a number.

    Valid and test hold numbers of 4 to 6 digits that training never sees; training holds numbers
    of every length, so the small numbers (the words every larger number is built from) are all
    there. Deterministic from `seed`; returns {split: (english_file, korean_file)}.
    """
    rng = random.Random(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    used: set[int] = set()
    files = {}
    for split, count in (("test", n_test), ("valid", n_valid), ("train", n_train)):
        numbers = sample_numbers(count, rng, used, min_digits=1 if split == "train" else 4)
        used.update(numbers)
        en_path, ko_path = out_dir / f"{split}.en", out_dir / f"{split}.ko"
        for path, fn in ((en_path, number_to_english), (ko_path, number_to_korean)):
            text = "".join(fn(n) + "\n" for n in numbers)
            if path.exists():
                if path.is_file() and path.read_text(encoding="utf-8", errors="replace") == text:
                    continue  # this corpus, written before
                raise NMTKitError(f"{path} exists and is not this demo corpus: move it, or "
                                  "generate the corpus elsewhere")
            write_text_atomic(path, text)
        files[split] = (en_path, ko_path)
    return files
