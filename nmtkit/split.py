"""Split one parallel corpus into train / valid / test: seeded, disjoint, duplicates kept together.

Corpora such as Tatoeba hold the same source sentence many times (with different or identical
translations). Split line by line, copies of a sentence land in training and in the test set,
and the test score measures memory, not translation. So pairs are grouped by their source
sentence, and a group goes to one split as a whole.

Which groups go where is decided by a keyed hash of the source sentence (the seed is the key):
the groups with the smallest hashes fill the test set, the next ones the valid set, the rest
is training. The same seed gives the same split on any machine, and the memory needed is one
hash per line (two passes over the files, nothing else kept).
"""

from __future__ import annotations

import hashlib
import shutil
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nmtkit.data import read_pairs
from nmtkit.errors import NMTKitError
from nmtkit.files import check_input_file, naming, os_error, temp_folder

SPLITS = ("train", "valid", "test")


@dataclass
class SplitReport:
    pairs: dict[str, int]  # per split
    files: dict[str, tuple[Path, Path]]  # per split: (source file, target file)
    duplicates: int  # pairs whose source sentence occurs more than once in the corpus


def _key(text: str, seed: int, by_line: int | None) -> int:
    """A 63-bit hash of the source sentence (or of the line number), keyed by the seed."""
    data = text.encode("utf-8") if by_line is None else by_line.to_bytes(8, "little")
    digest = hashlib.blake2b(data, digest_size=8, key=seed.to_bytes(8, "little", signed=True))
    return int.from_bytes(digest.digest(), "little") >> 1


def split_corpus(src: Path, tgt: Path, out_dir: Path, valid: int, test: int, seed: int = 1,
                 group_duplicates: bool = True) -> SplitReport:
    """Write {train,valid,test}.{ext} into out_dir (a new or empty folder), where ext is each
    file's suffix ('src'/'tgt' when the two suffixes are missing or equal). valid and test are
    the numbers of pairs wanted; a group of duplicates may make a split a few pairs larger.
    Pairs with an empty side are left out (nothing to learn or score)."""
    src, tgt, out_dir = Path(src), Path(tgt), Path(out_dir)
    if valid < 0 or test < 0:
        raise NMTKitError(f"--valid and --test must be >= 0 (got {valid}, {test})")
    if not -(2**63) <= seed < 2**63:  # the hash key is 8 bytes
        raise NMTKitError(f"--seed {seed} is out of range: give a whole number from -2**63 to 2**63 - 1")
    check_input_file(src, "source file")
    check_input_file(tgt, "target file")
    if src.samefile(tgt):
        raise NMTKitError(f"{src} and {tgt} are the same file: give the sources and their translations, "
                          "one file each")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise NMTKitError(f"--out {out_dir} exists and is not an empty folder: choose a new one")
    parent = next((p for p in out_dir.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise NMTKitError(f"--out {out_dir}: {parent} is a file, not a folder")
    exts = (src.suffix.lstrip("."), tgt.suffix.lstrip("."))
    if not all(exts) or exts[0] == exts[1]:
        exts = ("src", "tgt")

    # pass 1: a key per usable pair
    keys_list: list[int] = []
    for n, (s, t) in enumerate(read_pairs(src, tgt)):
        keys_list.append(_key(s, seed, None if group_duplicates else n) if s and t else -1)
    keys = np.array(keys_list, dtype=np.int64)
    usable = keys >= 0
    groups, sizes = np.unique(keys[usable], return_counts=True)  # sorted by key: a seeded order
    if valid + test >= int(usable.sum()):
        raise NMTKitError(f"{src}: {int(usable.sum())} usable pairs, not enough for {valid} valid "
                          f"and {test} test pairs and a training set")
    # the smallest keys fill test, then valid: thresholds on the key
    filled = np.cumsum(sizes)
    test_end = int(np.searchsorted(filled, test)) if test else -1  # last group in test
    valid_end = int(np.searchsorted(filled, (filled[test_end] if test else 0) + valid)) if valid else test_end
    test_max = groups[test_end] if test else -1
    valid_max = groups[valid_end] if valid else test_max

    # pass 2: write every pair to its split, into a temp folder renamed into place
    tmp = temp_folder(out_dir)
    files = {split: (out_dir / f"{split}.{exts[0]}", out_dir / f"{split}.{exts[1]}") for split in SPLITS}
    counts = dict.fromkeys(SPLITS, 0)
    try:
        with ExitStack() as stack:
            handles = {split: [stack.enter_context(open(tmp / p.name, "w", encoding="utf-8", newline="\n"))
                               for p in pair] for split, pair in files.items()}
            for key, (s, t) in zip(keys.tolist(), read_pairs(src, tgt), strict=True):
                if key < 0:
                    continue
                split = "test" if key <= test_max else "valid" if key <= valid_max else "train"
                handles[split][0].write(s + "\n")
                handles[split][1].write(t + "\n")
                counts[split] += 1
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        tmp.rename(out_dir)
    except OSError as err:  # a full disk...: name what was being written
        shutil.rmtree(tmp, ignore_errors=True)
        raise os_error(naming(err, out_dir), "split") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    duplicates = int(sizes[sizes > 1].sum()) if group_duplicates else 0
    return SplitReport(counts, files, duplicates)
