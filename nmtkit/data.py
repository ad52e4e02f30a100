"""Data pipeline: validated parallel text -> subwords -> memory-mapped ids -> padded batches.

`prepare` turns the configured text files into a self-contained folder:

    meta.json                      fingerprint, split counts, tokenizer file names
    spm.model | src.model, tgt.model
    {split}.{src,tgt}.bin          token ids of all kept pairs, concatenated (no BOS/EOS)
    {split}.{src,tgt}.idx          offsets into .bin, N+1 of them
    {valid,test}.{src,tgt}.txt     the raw lines of the kept pairs (BLEU needs untokenized refs)

Every .bin and .idx file starts with a header (magic, format version, item size, count), and
loading checks it against the file's size, the offsets against the ids, and the ids against the
vocabulary, so a truncated or damaged file is caught rather than trained on. `prepare` streams:
the corpus is read, validated and binarized line by line and in chunks, so its memory does not
grow with the corpus (sentencepiece samples at most vocab.max_sentences lines).

Training then reads ids through `BinarizedCorpus` (memory-mapped, so RAM does not grow with the
corpus either), groups them with `TokenBatchSampler` and pads them with `collate`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice, zip_longest
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from nmtkit.config import DataConfig, VocabConfig
from nmtkit.errors import NMTKitError, NMTKitWarning
from nmtkit.files import check_input_file, naming, remove_stale, temp_folder
from nmtkit.vocabulary import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, train_sentencepiece

FORMAT_VERSION = 2
META_FILE = "meta.json"
SIDES = ("src", "tgt")
SPLITS = ("train", "valid", "test")
CHUNK_LINES = 20_000  # lines encoded and written at a time: bounds prepare's memory

# The length-ratio filter only looks at pairs whose longer side has at least this many tokens:
# subword counts of short phrases ("Yes." / "Oui, bien sûr.") vary too much for a ratio to mean
# anything, and such pairs are cheap anyway.
RATIO_MIN_TOKENS = 8


class DamagedData(NMTKitError):
    """A prepared data file that fails its checks: `prepare` rebuilds the folder."""


# ---------------------------------------------------------------------------------------------
# Reading text


def read_lines(path: Path, what: str = "data file") -> Iterator[str]:
    """The lines of a UTF-8 file, stripped of surrounding whitespace (a Windows "\\r" too),
    streamed. Lines end at "\\n" only (a lone "\\r" or U+2028 inside a line does not split it);
    a byte-order mark is not part of the first line. NMTKitError names the file and line."""
    path = check_input_file(Path(path), what)
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise NMTKitError(f"{path}: line {n} is not valid UTF-8") from None
            yield (line.removeprefix("\ufeff") if n == 1 else line).strip()


def read_pairs(src: Path | None, tgt: Path) -> Iterator[tuple[str, str]]:
    """The aligned lines of a source and a target file, streamed; files of unequal length end
    with an error that gives both line counts. Without a source file (a language model's text),
    every source is empty."""
    if src is None:
        yield from (("", t) for t in read_lines(tgt))
        return
    n = 0
    src_lines, tgt_lines = read_lines(src), read_lines(tgt)
    for s, t in zip_longest(src_lines, tgt_lines):
        if s is None or t is None:
            more_src = n + (s is not None) + sum(1 for _ in src_lines)
            more_tgt = n + (t is not None) + sum(1 for _ in tgt_lines)
            raise NMTKitError(f"{src} has {more_src} lines but {tgt} has {more_tgt} lines")
        n += 1
        yield s, t


def read_parallel(src: Path, tgt: Path) -> tuple[list[str], list[str]]:
    """All aligned lines of two files, checked (they exist, are UTF-8 and align)."""
    src_lines: list[str] = []
    tgt_lines: list[str] = []
    for s, t in read_pairs(Path(src), Path(tgt)):
        src_lines.append(s)
        tgt_lines.append(t)
    return src_lines, tgt_lines


# ---------------------------------------------------------------------------------------------
# Binarized splits: a header, then a flat array

_HEADER = struct.Struct("<8sIIQQ")  # magic, format version, item size, count, reserved: 32 bytes
_MAGIC = {"ids": b"NMTKIDS\0", "offsets": b"NMTKOFF\0"}
_DTYPE = {"ids": np.dtype("<i4"), "offsets": np.dtype("<i8")}


class _ArrayWriter:
    """Appends to one flat array file; the header's count is written when it is closed."""

    def __init__(self, path: Path, kind: str) -> None:
        self.kind, self.count = kind, 0
        self.file: BinaryIO = open(path, "wb")  # noqa: SIM115
        self.file.write(bytes(_HEADER.size))

    def write(self, values: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(values, dtype=_DTYPE[self.kind]).tobytes())
        self.count += len(values)

    def close(self) -> None:
        self.file.seek(0)
        self.file.write(_HEADER.pack(_MAGIC[self.kind], FORMAT_VERSION,
                                     _DTYPE[self.kind].itemsize, self.count, 0))
        self.file.close()


def _map(path: Path, kind: str) -> np.ndarray:
    """Memory-map a flat array file after checking its header against its size."""
    if not path.is_file():
        raise DamagedData(f"{path}: missing from the prepared data folder; run `nmtkit prepare` again")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise DamagedData(f"{path}: truncated (no header); run `nmtkit prepare` again")
    magic, version, itemsize, count, _ = _HEADER.unpack(head)
    dtype = _DTYPE[kind]
    if magic != _MAGIC[kind] or version != FORMAT_VERSION or itemsize != dtype.itemsize:
        raise DamagedData(f"{path}: not an nmtkit {kind} file of format {FORMAT_VERSION}; "
                          "run `nmtkit prepare` again")
    if size != _HEADER.size + count * itemsize:
        raise DamagedData(f"{path}: damaged or truncated ({size} bytes, its header says "
                          f"{_HEADER.size + count * itemsize}); run `nmtkit prepare` again")
    if count == 0:
        return np.zeros(0, dtype=dtype)  # np.memmap refuses an empty map
    return np.memmap(path, dtype=dtype, mode="r", offset=_HEADER.size, shape=(count,))


class BinarizedCorpus:
    """One prepared split, read through memory maps; examples are (src_ids, tgt_ids) arrays.

    Opening it checks every file: headers against sizes, offsets that start at 0, never fall
    and end at the number of ids, and (given the vocabulary sizes) ids within the vocabulary."""

    def __init__(self, dir: Path, split: str, vocab_sizes: tuple[int, int] | None = None) -> None:
        self.dir = Path(dir)
        self.split = split
        self._ids: dict[str, np.ndarray] = {}
        self._offsets: dict[str, np.ndarray] = {}
        lengths = {}
        for k, side in enumerate(SIDES):
            prefix = self.dir / f"{split}.{side}"
            ids = _map(Path(f"{prefix}.bin"), "ids")
            offsets = _map(Path(f"{prefix}.idx"), "offsets")
            lengths[side] = np.diff(offsets)  # (N,) int64
            if len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(ids) or \
                    (lengths[side] < 0).any():
                raise DamagedData(f"{prefix}.idx: its offsets do not match {prefix}.bin; "
                                  "run `nmtkit prepare` again")
            if vocab_sizes is not None and len(ids) and \
                    (int(ids.min()) < 0 or int(ids.max()) >= vocab_sizes[k]):
                raise DamagedData(f"{prefix}.bin: ids outside the vocabulary of "
                                  f"{vocab_sizes[k]}; run `nmtkit prepare` again")
            self._ids[side], self._offsets[side] = ids, offsets
        if len(lengths["src"]) != len(lengths["tgt"]):
            raise DamagedData(f"{self.dir}: {split}.src.idx and {split}.tgt.idx disagree; "
                              "run `nmtkit prepare` again")
        self.src_lengths: np.ndarray = lengths["src"]
        self.tgt_lengths: np.ndarray = lengths["tgt"]

    def __len__(self) -> int:
        return len(self.src_lengths)

    def _get(self, side: str, i: int) -> np.ndarray:
        off = self._offsets[side]
        return np.asarray(self._ids[side][off[i] : off[i + 1]])

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.split}: index {i} out of range for {len(self)} examples")
        i = i % len(self)
        return self._get("src", i), self._get("tgt", i)

    def raw_text(self, side: str) -> list[str] | None:
        """The raw lines of the kept pairs (valid/test only; None for train)."""
        if side not in SIDES:
            raise ValueError(f"side must be 'src' or 'tgt', not {side!r}")
        path = self.dir / f"{self.split}.{side}.txt"
        if not path.is_file():
            return None
        lines = path.read_text(encoding="utf-8").split("\n")
        return lines[:-1] if lines and lines[-1] == "" else lines


# ---------------------------------------------------------------------------------------------
# Preparing a folder


@dataclass
class PrepareReport:
    """How many pairs each split kept and why the others were dropped."""

    kept: dict[str, int]
    dropped_empty: dict[str, int]
    dropped_too_long: dict[str, int]
    dropped_ratio: dict[str, int]


class PreparedData:
    """A prepared folder: tokenizers + binarized splits + meta.json."""

    def __init__(
        self, dir: Path, src_tokenizer: Tokenizer, tgt_tokenizer: Tokenizer, meta: dict[str, Any]
    ) -> None:
        self.dir = Path(dir)
        self.src_tokenizer = src_tokenizer
        self.tgt_tokenizer = tgt_tokenizer  # the same object when the vocabulary is joint
        self.meta = meta

    @classmethod
    def load(cls, dir: Path) -> PreparedData:
        dir = Path(dir)
        meta_path = dir / META_FILE
        if not meta_path.is_file():
            raise NMTKitError(f"{dir} is not a prepared data folder (no {META_FILE}); run prepare")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DamagedData(f"{meta_path}: unreadable ({err}); run `nmtkit prepare` again") from None
        keys = ("joint", "src_model", "tgt_model", "splits")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION or \
                not all(k in meta for k in keys) or not isinstance(meta["splits"], dict):
            raise DamagedData(
                f"{meta_path}: not a prepared data folder of format {FORMAT_VERSION}; "
                "run `nmtkit prepare` again"
            )
        src_tok = Tokenizer(dir / meta["src_model"])
        tgt_tok = src_tok if meta["joint"] else Tokenizer(dir / meta["tgt_model"])
        return cls(dir, src_tok, tgt_tok, meta)

    @property
    def joint(self) -> bool:
        return bool(self.meta["joint"])

    def split_names(self) -> list[str]:
        return list(self.meta["splits"])

    def split(self, name: str) -> BinarizedCorpus:
        if name not in self.meta["splits"]:
            have = ", ".join(self.meta["splits"])
            raise NMTKitError(f"{self.dir}: no '{name}' split (it has: {have})")
        corpus = BinarizedCorpus(self.dir, name, (len(self.src_tokenizer), len(self.tgt_tokenizer)))
        if len(corpus) != self.meta["splits"][name]["kept"]:
            raise DamagedData(f"{self.dir}: the {name} split has {len(corpus)} pairs, meta.json "
                              f"says {self.meta['splits'][name]['kept']}; run `nmtkit prepare` again")
        return corpus

    def verify(self) -> None:
        """Open every split (which checks its files); DamagedData if one fails."""
        for name in self.split_names():
            self.split(name)

    @property
    def report(self) -> PrepareReport:
        splits = self.meta["splits"]
        return PrepareReport(
            kept={k: v["kept"] for k, v in splits.items()},
            dropped_empty={k: v["dropped_empty"] for k, v in splits.items()},
            dropped_too_long={k: v["dropped_too_long"] for k, v in splits.items()},
            dropped_ratio={k: v["dropped_ratio"] for k, v in splits.items()},
        )


def drop_reason(
    src_len: int, tgt_len: int, max_len: int, max_len_ratio: float, train: bool,
    monolingual: bool = False,
) -> str | None:
    """Why a pair of encoded lengths is dropped ('empty', 'too_long', 'ratio'), or None to keep.

    Every split drops empty pairs and pairs longer than max_len (the model cannot be trained or
    validated on what does not fit); only the training split is filtered by length ratio (a
    filter for misaligned pairs), so valid/test scores compare across settings. A language
    model's text (monolingual) has empty sources and no ratio.
    """
    if (src_len == 0 and not monolingual) or tgt_len == 0:
        return "empty"
    if src_len > max_len or tgt_len > max_len:
        return "too_long"
    if not train or monolingual:
        return None
    longer, shorter = max(src_len, tgt_len), min(src_len, tgt_len)
    if longer >= RATIO_MIN_TOKENS and longer / max(1, shorter) > max_len_ratio:
        return "ratio"
    return None


def _digest(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digests(data: DataConfig) -> dict[str, dict[str, Any]]:
    """{split.side: {path, size, sha1}} of every input file: what a run was trained on."""
    return {
        f"{split}.{side}": {"path": str(path), "size": Path(path).stat().st_size,
                            "sha1": _digest(Path(path))}
        for split, pair in split_files(data).items()
        for side, path in zip(SIDES, pair, strict=True) if path is not None
    }


def split_files(data: DataConfig) -> dict[str, tuple[Path | None, Path]]:
    """{split: (src file, tgt file)}, each checked to be a readable file; a language model's
    text has no source file (None)."""
    if data.monolingual:
        files: dict[str, tuple[Path | None, Path]] = {"train": (None, data.train),
                                                      "valid": (None, data.valid)}
        if data.test is not None:
            files["test"] = (None, data.test)
        for _, path in files.values():
            check_input_file(Path(path), "data file")
        return files
    if (data.test_src is None) != (data.test_tgt is None):
        given, missing = (
            ("data.test_src", "data.test_tgt")
            if data.test_src is not None
            else ("data.test_tgt", "data.test_src")
        )
        raise NMTKitError(f"{given} is set but {missing} is not; set both or neither")
    files = {"train": (data.train_src, data.train_tgt), "valid": (data.valid_src, data.valid_tgt)}
    if data.test_src is not None and data.test_tgt is not None:
        files["test"] = (data.test_src, data.test_tgt)
    for pair in files.values():
        for path in pair:
            check_input_file(Path(path), "data file")
    return files


def _fingerprint(data: DataConfig, vocab: VocabConfig, inputs: dict[str, Any],
                 tokenizers: tuple[Tokenizer, Tokenizer] | None) -> str:
    """Changes whenever the config sections, an input file's bytes or given tokenizers change."""
    blob = json.dumps(
        {
            "format": FORMAT_VERSION,
            "data": data.model_dump(mode="json"),
            "vocab": vocab.model_dump(mode="json"),
            "inputs": inputs,
            "tokenizers": None if tokenizers is None else
            [hashlib.sha1(t.to_bytes()).hexdigest() for t in tokenizers],
        },
        sort_keys=True,
    )
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()


def _existing_fingerprint(out_dir: Path) -> str | None:
    """The fingerprint of a prepared folder at out_dir, or None if there is none.

    Refuses to go on if out_dir is some other non-empty folder: `prepare` replaces out_dir as a
    whole, and must never delete a user's unrelated files.
    """
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        raise NMTKitError(f"data.out_dir {out_dir} exists and is not a folder")
    meta_path = out_dir / META_FILE
    if not meta_path.is_file():
        if any(out_dir.iterdir()):
            raise NMTKitError(
                f"data.out_dir {out_dir} is a non-empty folder that prepare did not write "
                f"(no {META_FILE}); choose another data.out_dir or remove it"
            )
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        meta = None
    # meta.json is written last, atomically: one that is not ours means the folder is not ours
    if not isinstance(meta, dict) or not {"format", "fingerprint", "splits"} <= meta.keys():
        raise NMTKitError(f"data.out_dir {out_dir}: its {META_FILE} was not written by nmtkit "
                          "prepare; choose another data.out_dir or remove the folder")
    foreign = sorted(p.name for p in out_dir.iterdir() if not _PREPARED_NAME.match(p.name))
    if foreign:
        raise NMTKitError(f"data.out_dir {out_dir} holds files prepare did not write "
                          f"({', '.join(foreign[:3])}); move them out or choose another data.out_dir")
    return str(meta["fingerprint"])


# every name prepare writes into data.out_dir (and its own temp files)
_PREPARED_NAME = re.compile(r"^(meta\.json|(spm|src|tgt)\.(model|vocab)|(train|valid|test)\.(src|tgt)\."
                            r"(bin|idx|txt)|\.spm-input\.(src|tgt)\.txt|\..*-\d+-.*)$")


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Swap the finished temp folder in. A crash leaves either the old or the new folder
    (or, between the two renames, none), never a half-written one."""
    old: Path | None = None
    if out_dir.exists():
        old = temp_folder(out_dir, "old")
        os.replace(out_dir, old / out_dir.name)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def prepare(
    data: DataConfig, vocab: VocabConfig, log: Callable[[str], None] = print,
    tokenizers: tuple[Tokenizer, Tokenizer] | None = None,
) -> PreparedData:
    """Validate the text, learn subwords on the training data (or use `tokenizers`, a
    checkpoint's, to continue training or fine-tune it), filter, binarize, write meta.json.

    Reuses `data.out_dir` when it was prepared from the same config sections and the same input
    bytes (sha1 of every file) and its files pass their checks, so re-running a pipeline is
    cheap; a damaged folder is prepared again.
    """
    out_dir = Path(data.out_dir)
    remove_stale(out_dir)  # temp folders of a prepare that was killed
    files = split_files(data)
    inputs = file_digests(data)
    fingerprint = _fingerprint(data, vocab, inputs, tokenizers)
    existing = _existing_fingerprint(out_dir)
    # resuming with a checkpoint's tokenizers: a folder prepared from the same config and inputs
    # that learnt those very subword models serves as it is (several runs may share it)
    plain = tokenizers is not None and existing == _fingerprint(data, vocab, inputs, None)
    if existing == fingerprint or plain:
        try:
            prepared = PreparedData.load(out_dir)
            prepared.verify()
            if not plain or [t.to_bytes() for t in tokenizers] == \
                    [prepared.src_tokenizer.to_bytes(), prepared.tgt_tokenizer.to_bytes()]:
                log(f"prepare: {out_dir} is up to date (same config and inputs); reusing it")
                return prepared
            log(f"prepare: {out_dir} has other subword models than the checkpoint's; preparing it "
                "again with the checkpoint's")
        except DamagedData as err:
            log(f"prepare: {out_dir} is damaged ({err}); preparing it again")

    # read and validate the small splits before spending time on the training text
    for split in ("valid", "test"):
        if split in files and not any((s or data.monolingual) and t for s, t in read_pairs(*files[split])):
            raise NMTKitError(f"data.{split}_src / data.{split}_tgt ({files[split][0]}): no pair "
                              f"with both sides non-empty; the {split} set cannot be empty")
    tmp = temp_folder(out_dir)
    try:
        spm_inputs = _training_text(files["train"], tmp, data.monolingual)
        if tokenizers is None:
            src_tok, tgt_tok, models = _learn_vocab(spm_inputs, vocab, tmp)
        else:
            src_tok, tgt_tok, models = _given_vocab(tokenizers, tmp)
        splits: dict[str, dict[str, int]] = {}
        chars: dict[str, Counter] = {side: Counter() for side in SIDES}
        for split, (src, tgt) in files.items():
            counts = _binarize_split(split, read_pairs(src, tgt), src_tok, tgt_tok, data, tmp,
                                     chars)
            splits[split] = counts
            log(_split_report(split, counts, data))
        if splits["train"]["kept"] == 0:
            raise NMTKitError(
                f"{data.train_src or data.train}: no training pair survived filtering "
                "(check data.max_len / data.max_len_ratio)"
            )
        _check_filtering(splits, files, data)
        for side, tok in (("src", src_tok), ("tgt", tgt_tok)):
            line = _coverage_report(side, chars[side], tok)
            if line:
                log(line)
        meta = {
            "format": FORMAT_VERSION,
            "fingerprint": fingerprint,
            "joint": models[0] == models[1],
            "src_model": models[0],
            "tgt_model": models[1],
            "src_vocab_size": len(src_tok),
            "tgt_vocab_size": len(tgt_tok),
            "splits": splits,
            "inputs": inputs,
            "config": {
                "data": data.model_dump(mode="json"),
                "vocab": vocab.model_dump(mode="json"),
            },
            "vocabulary_from": "given" if tokenizers is not None else "learned",
        }
        # meta.json last: its presence marks a complete folder
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _replace_dir(tmp, out_dir)
    except OSError as err:  # a full disk: name the folder being written
        shutil.rmtree(tmp, ignore_errors=True)
        raise naming(err, out_dir) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"prepare: wrote {out_dir} (vocab {len(src_tok)} src / {len(tgt_tok)} tgt)")
    return PreparedData.load(out_dir)


RATIO_WARN = 0.05  # a larger share of training pairs dropped by length ratio is worth a warning


def _check_filtering(splits: dict[str, dict[str, Any]], files: dict[str, tuple[Path | None, Path]],
                     data: DataConfig) -> None:
    """Stop before training when filtering left a valid or test set empty (the first validation
    would fail much later); warn when the length-ratio filter drops more than a few percent of
    the training pairs (it is meant for misaligned pairs, and a char vocabulary or a language
    pair with very different word lengths trips it)."""
    for split in ("valid", "test"):
        counts = splits.get(split)
        if counts is not None and counts["kept"] == 0:
            raise NMTKitError(
                f"data.{split}_src / data.{split}_tgt ({files[split][0] or files[split][1]}): no pair is "
                f"left after filtering ({counts['dropped_too_long']} longer than data.max_len = "
                f"{data.max_len} subword tokens, {counts['dropped_empty']} empty); raise data.max_len")
    train = splits["train"]
    example = train.pop("ratio_example", None)  # not for the folder's meta.json
    total = sum(train[k] for k in ("kept", "dropped_empty", "dropped_too_long", "dropped_ratio"))
    if total and train["dropped_ratio"] > RATIO_WARN * total:
        src, tgt, n_src, n_tgt = example
        warnings.warn(NMTKitWarning(
            f"data.max_len_ratio = {data.max_len_ratio:g} dropped {train['dropped_ratio']:,} of {total:,} "
            f"training pairs ({train['dropped_ratio'] / total:.0%}); the first, line "
            f"{train['first_ratio']}: {src!r} ({n_src} tokens) / {tgt!r} ({n_tgt} tokens); raise "
            "data.max_len_ratio to keep such pairs"), stacklevel=3)


def _split_report(split: str, counts: dict[str, Any], data: DataConfig) -> str:
    line = (f"prepare: {split}: kept {counts['kept']} pairs; dropped {counts['dropped_empty']} "
            f"empty, {counts['dropped_too_long']} too long (> {data.max_len} tokens)")
    if counts.get("first_too_long"):
        line += f" (first at line {counts['first_too_long']})"
    if split == "train":
        line += f", {counts['dropped_ratio']} bad length ratio (> {data.max_len_ratio})"
    return line


def _training_text(train: tuple[Path | None, Path], dir: Path, monolingual: bool) -> dict[str, Path]:
    """Stream the training pairs with both sides non-empty into one text file per side, for
    sentencepiece to learn from (and to sample at most vocab.max_sentences lines of); a
    language model's text is all target side."""
    paths = {side: dir / f".spm-input.{side}.txt" for side in SIDES}
    kept = 0
    with open(paths["src"], "w", encoding="utf-8") as fs, open(paths["tgt"], "w", encoding="utf-8") as ft:
        for s, t in read_pairs(*train):
            if (s or monolingual) and t:
                fs.write(s + "\n" if s else "")
                ft.write(t + "\n")
                kept += 1
    if not kept:
        raise NMTKitError(f"{train[0] or train[1]}: the training data has no pair with both sides non-empty")
    if monolingual:
        del paths["src"]
    return paths


def _learn_vocab(
    texts: dict[str, Path], vocab: VocabConfig, dir: Path
) -> tuple[Tokenizer, Tokenizer, tuple[str, str]]:
    """Train the subword model(s) on the training text; returns tokenizers and the model file
    names (relative to dir)."""
    try:
        if vocab.joint:
            model = train_sentencepiece([texts[side] for side in SIDES if side in texts], dir / "spm", vocab)
            tok = Tokenizer(model)
            return tok, tok, (model.name, model.name)
        src_model = train_sentencepiece([texts["src"]], dir / "src", vocab)
        tgt_model = train_sentencepiece([texts["tgt"]], dir / "tgt", vocab)
        return Tokenizer(src_model), Tokenizer(tgt_model), (src_model.name, tgt_model.name)
    finally:
        for path in texts.values():
            path.unlink(missing_ok=True)


def _given_vocab(
    tokenizers: tuple[Tokenizer, Tokenizer], dir: Path
) -> tuple[Tokenizer, Tokenizer, tuple[str, str]]:
    """Write given subword models (a checkpoint's) into the folder, as learned ones would be."""
    src, tgt = tokenizers
    for path in dir.glob(".spm-input.*"):
        path.unlink()
    if src.to_bytes() == tgt.to_bytes():
        (dir / "spm.model").write_bytes(src.to_bytes())
        return src, src, ("spm.model", "spm.model")
    (dir / "src.model").write_bytes(src.to_bytes())
    (dir / "tgt.model").write_bytes(tgt.to_bytes())
    return src, tgt, ("src.model", "tgt.model")


def _chunks(pairs: Iterable[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    it = iter(pairs)
    while chunk := list(islice(it, size)):
        yield chunk


def _binarize_split(
    split: str,
    pairs: Iterable[tuple[str, str]],
    src_tok: Tokenizer,
    tgt_tok: Tokenizer,
    data: DataConfig,
    dir: Path,
    chars: dict[str, Counter],
) -> dict[str, Any]:
    """Encode, filter and write one split, a chunk of lines at a time; returns its counts.
    Also counts the characters of every kept line into `chars`."""
    counts: dict[str, Any] = {"kept": 0, "dropped_empty": 0, "dropped_too_long": 0, "dropped_ratio": 0,
                              "first_too_long": 0, "first_ratio": 0}
    ids = {side: _ArrayWriter(dir / f"{split}.{side}.bin", "ids") for side in SIDES}
    offsets = {side: _ArrayWriter(dir / f"{split}.{side}.idx", "offsets") for side in SIDES}
    for side in SIDES:
        offsets[side].write(np.zeros(1))
    ends = {side: 0 for side in SIDES}
    text = None
    if split != "train":
        text = {side: open(dir / f"{split}.{side}.txt", "w", encoding="utf-8", newline="\n")  # noqa: SIM115
                for side in SIDES}
    line = 0
    try:
        for chunk in _chunks(pairs, CHUNK_LINES):
            src_ids = src_tok.encode_batch([s for s, _ in chunk])
            tgt_ids = tgt_tok.encode_batch([t for _, t in chunk])
            keep = []
            for i, (s, t) in enumerate(zip(src_ids, tgt_ids, strict=True)):
                line += 1
                # an empty line encodes to no ids; so may a line of characters normalization removes
                reason = drop_reason(len(s), len(t), data.max_len, data.max_len_ratio, split == "train",
                                     data.monolingual)
                if reason is None:
                    keep.append(i)
                else:
                    counts[f"dropped_{reason}"] += 1
                    if reason in ("too_long", "ratio") and not counts[f"first_{reason}"]:
                        counts[f"first_{reason}"] = line
                        if reason == "ratio":  # the first example, for the warning
                            counts["ratio_example"] = [chunk[i][0][:80], chunk[i][1][:80], len(s), len(t)]
            counts["kept"] += len(keep)
            for side, seqs, k in (("src", src_ids, 0), ("tgt", tgt_ids, 1)):
                kept_seqs = [seqs[i] for i in keep]
                lengths = np.fromiter((len(x) for x in kept_seqs), dtype=np.int64, count=len(keep))
                ids[side].write(np.fromiter((t for x in kept_seqs for t in x), dtype=np.int32,
                                            count=int(lengths.sum())))
                offsets[side].write(ends[side] + np.cumsum(lengths))
                ends[side] += int(lengths.sum())
                lines = [chunk[i][k] for i in keep]
                chars[side].update("".join(lines))
                if text is not None:
                    text[side].write("".join(x + "\n" for x in lines))
    finally:
        for writer in (*ids.values(), *offsets.values()):
            writer.close()
        for f in (text or {}).values():
            f.close()
    return counts


def _coverage_report(side: str, chars: Counter, tok: Tokenizer) -> str:
    """A line naming the characters of the text that the vocabulary has no piece for: spelled
    as bytes (byte fallback) or, without it, turned into <unk>. Empty if it covers them all."""
    bytes_only: Counter = Counter()
    unknown: Counter = Counter()
    for ch, n in chars.items():
        if ch.isspace():
            continue
        pieces = tok.sp.encode(ch, out_type=str)
        if any(p.startswith("<0x") for p in pieces):
            bytes_only[ch] = n
        elif UNK_ID in tok.sp.encode(ch, out_type=int):
            unknown[ch] = n
    parts = []
    for what, found in (("only through byte fallback (as UTF-8 bytes)", bytes_only),
                        ("not at all (they become <unk>)", unknown)):
        if found:
            shown = " ".join(ch for ch, _ in found.most_common(8))
            parts.append(f"{len(found)} characters ({sum(found.values())} occurrences) "
                         f"{what}, e.g. {shown}")
    if not parts:
        return ""
    return f"prepare: the {side} vocabulary covers " + "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# Batching


class TokenBatchSampler:
    """Length-bucketed batches of corpus indices, bounded by padded token count (fairseq's
    --max-tokens).

    A batch's cost is its padded size as `collate` builds it: n_sentences * max(max_src_len + 1,
    max_tgt_len + 1) (the source gets EOS appended, the target BOS or EOS). It never exceeds
    max_tokens, except that a single example costing more forms a batch of its own
    (`prepare`'s data.max_len normally prevents that).

    With shuffle, each epoch's batches are derived from (seed, epoch) only: sort by cost with
    random tie-breaking, cut greedily, shuffle the batch order. Every process of a multi-process
    run thus builds the same list and takes every num_shards-th batch; the list is padded by
    repeating from its start so every shard has the same number of steps (DDP needs that).
    Without shuffle the order is sorted by cost and never changes.

    Resuming: `state_dict()` records the epoch and how many of this shard's batches were already
    handed out; after `load_state_dict()` iteration continues with the next one. `set_epoch` with
    the epoch already current keeps the position (so a resumed epoch is not restarted); a new
    epoch starts at 0. Once a pass has run to its end, the next `iter()` starts the epoch again.
    """

    def __init__(
        self,
        src_lengths: Sequence[int] | np.ndarray,
        tgt_lengths: Sequence[int] | np.ndarray,
        max_tokens: int,
        shuffle: bool,
        seed: int,
        num_shards: int = 1,
        shard_id: int = 0,
    ) -> None:
        src = np.asarray(src_lengths, dtype=np.int64)
        tgt = np.asarray(tgt_lengths, dtype=np.int64)
        if src.shape != tgt.shape or src.ndim != 1:
            raise ValueError(f"length arrays differ: {src.shape} vs {tgt.shape}")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"shard_id {shard_id} not in [0, {num_shards})")
        self.cost = np.maximum(src + 1, tgt + 1)  # (N,) padded length of each example
        self.max_tokens = max_tokens
        self.shuffle = shuffle
        self.seed = seed
        self.num_shards = num_shards
        self.shard_id = shard_id
        self.epoch = 1
        self.position = 0
        self._finished = False
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self.position = 0
            self._finished = False

    def _cut(self, order: np.ndarray) -> list[list[int]]:
        """Greedy cut of an order sorted by ascending cost (so the newest example is the max)."""
        batches: list[list[int]] = []
        current: list[int] = []
        for i, c in zip(order.tolist(), self.cost[order].tolist(), strict=True):
            if current and (len(current) + 1) * c > self.max_tokens:
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        return batches

    def _epoch_batches(self) -> list[list[int]]:
        """This shard's batches for the current epoch (cached)."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        n = len(self.cost)
        if self.shuffle:
            rng = np.random.default_rng([self.seed % 2**63, self.epoch % 2**63])
            order = np.lexsort((rng.random(n), self.cost))  # by cost, random among equals
            batches = self._cut(order)
            batches = [batches[k] for k in rng.permutation(len(batches))]
        else:
            batches = self._cut(np.argsort(self.cost, kind="stable"))
        if self.num_shards > 1 and batches:
            total = -(-len(batches) // self.num_shards) * self.num_shards
            batches = [batches[k % len(batches)] for k in range(total)]
            batches = batches[self.shard_id :: self.num_shards]
        self._cache = (self.epoch, batches)
        return batches

    def __len__(self) -> int:
        return len(self._epoch_batches())

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._epoch_batches()
        if self._finished:
            self.position = 0
            self._finished = False
        return self._iterate(batches)

    def _iterate(self, batches: list[list[int]]) -> Iterator[list[int]]:
        while self.position < len(batches):
            batch = batches[self.position]
            self.position += 1  # counted as consumed once handed out
            yield list(batch)
        self._finished = True

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._finished = False


# ---------------------------------------------------------------------------------------------
# Padding


@dataclass
class Batch:
    """Padded tensors for one training/validation step."""

    src: torch.Tensor  # (batch, src_len) long: x + [EOS], PAD_ID-padded
    src_lengths: torch.Tensor  # (batch,) long, counting the EOS
    tgt_in: torch.Tensor  # (batch, tgt_len) long: [BOS] + y, padded (teacher-forcing input)
    tgt_out: torch.Tensor  # (batch, tgt_len) long: y + [EOS], padded (what the model predicts)
    indices: list[int]  # corpus indices, to restore input order

    @property
    def n_tgt_tokens(self) -> int:
        """Non-pad target tokens: the normalizer for the loss."""
        return int((self.tgt_out != PAD_ID).sum())

    def __len__(self) -> int:
        return len(self.indices)

    def to(self, device: torch.device | str) -> Batch:
        non_blocking = torch.device(device).type == "cuda"
        return Batch(
            src=self.src.to(device, non_blocking=non_blocking),
            src_lengths=self.src_lengths.to(device, non_blocking=non_blocking),
            tgt_in=self.tgt_in.to(device, non_blocking=non_blocking),
            tgt_out=self.tgt_out.to(device, non_blocking=non_blocking),
            indices=self.indices,
        )


def _pad(
    seqs: Sequence[Sequence[int] | np.ndarray], prefix: int | None, suffix: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, max_len) long tensor of [prefix] + seq + [suffix], PAD_ID-padded, and lengths."""
    extra = (prefix is not None) + (suffix is not None)
    lengths = torch.tensor([len(s) + extra for s in seqs], dtype=torch.long)  # (batch,)
    width = int(lengths.max()) if len(seqs) else 0
    out = torch.full((len(seqs), width), PAD_ID, dtype=torch.long)  # (batch, width)
    for row, seq in enumerate(seqs):
        start = 0
        if prefix is not None:
            out[row, 0] = prefix
            start = 1
        n = len(seq)
        if n:
            out[row, start : start + n] = torch.as_tensor(np.asarray(seq, dtype=np.int64))
        if suffix is not None:
            out[row, start + n] = suffix
    return out, lengths


def collate_source(src_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad sources for inference: (src (batch, src_len), src_lengths (batch,)).

    Every source gets EOS appended, exactly as in `collate`, so that an empty input line is still
    a valid length-1 sequence and the encoder sees the same end marker as in training.
    """
    return _pad(list(src_ids), prefix=None, suffix=EOS_ID)


def collate(examples: list[tuple[np.ndarray, np.ndarray]], indices: list[int]) -> Batch:
    """Pad (src_ids, tgt_ids) pairs into a Batch: src = x + [EOS], tgt_in = [BOS] + y,
    tgt_out = y + [EOS]."""
    if len(examples) != len(indices):
        raise ValueError(f"{len(examples)} examples but {len(indices)} indices")
    src, src_lengths = _pad([e[0] for e in examples], prefix=None, suffix=EOS_ID)
    tgt_in, _ = _pad([e[1] for e in examples], prefix=BOS_ID, suffix=None)
    tgt_out, _ = _pad([e[1] for e in examples], prefix=None, suffix=EOS_ID)
    return Batch(src, src_lengths, tgt_in, tgt_out, list(indices))
