"""Data pipeline: validated parallel text -> subwords -> memory-mapped ids -> padded batches.

`prepare` turns the configured text files into a self-contained folder:

    meta.json                      fingerprint, split counts, tokenizer file names
    spm.model | src.model, tgt.model
    {split}.{src,tgt}.bin          np.int32 token ids of all kept pairs, concatenated (no BOS/EOS)
    {split}.{src,tgt}.idx          np.int64 offsets into .bin, length N+1
    {valid,test}.{src,tgt}.txt     the raw lines of the kept pairs (BLEU needs untokenized refs)

Training then reads ids through `BinarizedCorpus` (memory-mapped, so RAM does not grow with the
corpus), groups them with `TokenBatchSampler` and pads them with `collate`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nmtkit.config import DataConfig, VocabConfig
from nmtkit.errors import NMTKitError
from nmtkit.vocabulary import BOS_ID, EOS_ID, PAD_ID, Tokenizer, train_sentencepiece

FORMAT_VERSION = 1
META_FILE = "meta.json"
SIDES = ("src", "tgt")
SPLITS = ("train", "valid", "test")

# The length-ratio filter only looks at pairs whose longer side has at least this many tokens:
# subword counts of short phrases ("Yes." / "Oui, bien sûr.") vary too much for a ratio to mean
# anything, and such pairs are cheap anyway.
RATIO_MIN_TOKENS = 8


# ---------------------------------------------------------------------------------------------
# Reading text


def _read_lines(path: Path) -> list[str]:
    """All lines of a UTF-8 file, stripped; NMTKitError names the file and the bad line."""
    if not path.is_file():
        raise NMTKitError(f"data file not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise NMTKitError(f"{path}: line {line} is not valid UTF-8") from None
    text = text.removeprefix("\ufeff")  # a byte-order mark is not part of the first sentence
    # split on "\n" only (str.splitlines would also split on U+2028 etc. and shift line counts)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline does not start another line
    return [line.strip() for line in lines]


def read_parallel(src: Path, tgt: Path) -> tuple[list[str], list[str]]:
    """Read a sentence-aligned pair of files, checking that they exist, are UTF-8 and align.

    Lines are stripped of surrounding whitespace (including a Windows "\\r").
    """
    src, tgt = Path(src), Path(tgt)
    src_lines = _read_lines(src)
    tgt_lines = _read_lines(tgt)
    if len(src_lines) != len(tgt_lines):
        raise NMTKitError(f"{src} has {len(src_lines)} lines but {tgt} has {len(tgt_lines)} lines")
    return src_lines, tgt_lines


# ---------------------------------------------------------------------------------------------
# Binarized splits


def _write_ids(prefix: Path, seqs: list[list[int]]) -> None:
    """Write `{prefix}.bin` (int32 ids) and `{prefix}.idx` (int64 offsets, N+1)."""
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int32, count=int(offsets[-1]))
    with open(f"{prefix}.bin", "wb") as f:
        f.write(ids.tobytes())
    with open(f"{prefix}.idx", "wb") as f:
        f.write(offsets.tobytes())


def _map(path: Path, dtype: type[np.generic]) -> np.ndarray:
    """Memory-map a flat binary array (np.memmap refuses empty files, so handle those here)."""
    if not path.is_file():
        raise NMTKitError(f"missing file in prepared data folder: {path}")
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


class BinarizedCorpus:
    """One prepared split, read through memory maps; examples are (src_ids, tgt_ids) arrays."""

    def __init__(self, dir: Path, split: str) -> None:
        self.dir = Path(dir)
        self.split = split
        self._ids: dict[str, np.ndarray] = {}
        self._offsets: dict[str, np.ndarray] = {}
        for side in SIDES:
            prefix = self.dir / f"{split}.{side}"
            self._ids[side] = _map(Path(f"{prefix}.bin"), np.int32)
            self._offsets[side] = _map(Path(f"{prefix}.idx"), np.int64)
        n_src, n_tgt = len(self._offsets["src"]) - 1, len(self._offsets["tgt"]) - 1
        if n_src != n_tgt or n_src < 0:
            raise NMTKitError(f"{self.dir}: {split}.src.idx and {split}.tgt.idx disagree")
        self.src_lengths: np.ndarray = np.diff(self._offsets["src"])  # (N,) int64
        self.tgt_lengths: np.ndarray = np.diff(self._offsets["tgt"])  # (N,) int64

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
            raise NMTKitError(f"{meta_path}: unreadable ({err})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
            raise NMTKitError(
                f"{meta_path}: not a prepared data folder of format {FORMAT_VERSION}; "
                "run prepare again"
            )
        src_tok = Tokenizer(dir / meta["src_model"])
        if meta["joint"]:
            tgt_tok = src_tok
        else:
            tgt_tok = Tokenizer(dir / meta["tgt_model"])
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
        return BinarizedCorpus(self.dir, name)

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
    src_len: int, tgt_len: int, max_len: int, max_len_ratio: float, train: bool
) -> str | None:
    """Why a pair of encoded lengths is dropped ('empty', 'too_long', 'ratio'), or None to keep.

    Only the training split is filtered by length and ratio; valid/test keep every non-empty
    pair so that scores are comparable across settings.
    """
    if src_len == 0 or tgt_len == 0:
        return "empty"
    if not train:
        return None
    if src_len > max_len or tgt_len > max_len:
        return "too_long"
    longer, shorter = max(src_len, tgt_len), min(src_len, tgt_len)
    if longer >= RATIO_MIN_TOKENS and longer / max(1, shorter) > max_len_ratio:
        return "ratio"
    return None


def _file_digest(path: Path) -> dict[str, Any]:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"path": str(path), "size": path.stat().st_size, "sha1": h.hexdigest()}


def _split_files(data: DataConfig) -> dict[str, tuple[Path, Path]]:
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
    return files


def _fingerprint(
    data: DataConfig, vocab: VocabConfig, files: dict[str, tuple[Path, Path]]
) -> tuple[str, dict[str, dict[str, Any]]]:
    """(hash, inputs): changes whenever the config sections or any input file's bytes change."""
    for src, tgt in files.values():
        for path in (src, tgt):
            if not Path(path).is_file():
                raise NMTKitError(f"data file not found: {path}")
    inputs = {
        f"{split}.{side}": _file_digest(Path(path))
        for split, pair in files.items()
        for side, path in zip(SIDES, pair, strict=True)
    }
    blob = json.dumps(
        {
            "format": FORMAT_VERSION,
            "data": data.model_dump(mode="json"),
            "vocab": vocab.model_dump(mode="json"),
            "inputs": inputs,
        },
        sort_keys=True,
    )
    return hashlib.sha1(blob.encode("utf-8")).hexdigest(), inputs


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
        return ""  # ours but damaged: redo it
    return meta.get("fingerprint", "") if isinstance(meta, dict) else ""


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Swap the finished temp folder in. A crash leaves either the old or the new folder
    (or, between the two renames, none), never a half-written one."""
    old: Path | None = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        old.rmdir()
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def prepare(
    data: DataConfig, vocab: VocabConfig, log: Callable[[str], None] = print
) -> PreparedData:
    """Validate the text, learn subwords on the training data, filter, binarize, write meta.json.

    Reuses `data.out_dir` when it was prepared from the same config sections and the same input
    bytes (sha1 of every file), so re-running a pipeline is cheap.
    """
    out_dir = Path(data.out_dir)
    files = _split_files(data)
    fingerprint, inputs = _fingerprint(data, vocab, files)
    if _existing_fingerprint(out_dir) == fingerprint:
        log(f"prepare: {out_dir} is up to date (same config and inputs); reusing it")
        return PreparedData.load(out_dir)

    # read and validate every split before spending time on training sentencepiece
    texts = {split: read_parallel(src, tgt) for split, (src, tgt) in files.items()}

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        src_tok, tgt_tok, models = _learn_vocab(texts["train"], vocab, tmp)
        splits: dict[str, dict[str, int]] = {}
        for split, (src_lines, tgt_lines) in texts.items():
            counts = _binarize_split(split, src_lines, tgt_lines, src_tok, tgt_tok, data, tmp)
            splits[split] = counts
            log(
                f"prepare: {split}: kept {counts['kept']} pairs; dropped "
                f"{counts['dropped_empty']} empty, {counts['dropped_too_long']} too long "
                f"(> {data.max_len} tokens), {counts['dropped_ratio']} bad length ratio "
                f"(> {data.max_len_ratio})"
            )
        if splits["train"]["kept"] == 0:
            raise NMTKitError(
                f"{data.train_src}: no training pair survived filtering "
                "(check data.max_len / data.max_len_ratio)"
            )
        meta = {
            "format": FORMAT_VERSION,
            "fingerprint": fingerprint,
            "joint": vocab.joint,
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
        }
        # meta.json last: its presence marks a complete folder
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"prepare: wrote {out_dir} (vocab {len(src_tok)} src / {len(tgt_tok)} tgt)")
    return PreparedData.load(out_dir)


def _learn_vocab(
    train: tuple[list[str], list[str]], vocab: VocabConfig, dir: Path
) -> tuple[Tokenizer, Tokenizer, tuple[str, str]]:
    """Train the subword model(s) on the non-empty training pairs; returns tokenizers and the
    model file names (relative to dir)."""
    pairs = [(s, t) for s, t in zip(*train, strict=True) if s and t]
    if not pairs:
        raise NMTKitError("the training data has no pair with both sides non-empty")
    text_files = {}
    for k, side in enumerate(SIDES):
        text_files[side] = dir / f".spm-input.{side}.txt"
        _write_lines(text_files[side], [p[k] for p in pairs])
    try:
        if vocab.joint:
            model = train_sentencepiece([text_files["src"], text_files["tgt"]], dir / "spm", vocab)
            tok = Tokenizer(model)
            return tok, tok, (model.name, model.name)
        src_model = train_sentencepiece([text_files["src"]], dir / "src", vocab)
        tgt_model = train_sentencepiece([text_files["tgt"]], dir / "tgt", vocab)
        return Tokenizer(src_model), Tokenizer(tgt_model), (src_model.name, tgt_model.name)
    finally:
        for path in text_files.values():
            path.unlink(missing_ok=True)


def _binarize_split(
    split: str,
    src_lines: list[str],
    tgt_lines: list[str],
    src_tok: Tokenizer,
    tgt_tok: Tokenizer,
    data: DataConfig,
    dir: Path,
) -> dict[str, int]:
    """Encode, filter and write one split; returns its counts."""
    src_ids = src_tok.encode_batch(src_lines)
    tgt_ids = tgt_tok.encode_batch(tgt_lines)
    counts = {"kept": 0, "dropped_empty": 0, "dropped_too_long": 0, "dropped_ratio": 0}
    keep: list[int] = []
    for i, (s, t) in enumerate(zip(src_ids, tgt_ids, strict=True)):
        # an empty line encodes to no ids; so may a line of characters normalization removes
        reason = drop_reason(len(s), len(t), data.max_len, data.max_len_ratio, split == "train")
        if reason is None:
            keep.append(i)
        else:
            counts[f"dropped_{reason}"] += 1
    counts["kept"] = len(keep)
    _write_ids(dir / f"{split}.src", [src_ids[i] for i in keep])
    _write_ids(dir / f"{split}.tgt", [tgt_ids[i] for i in keep])
    if split != "train":
        _write_lines(dir / f"{split}.src.txt", [src_lines[i] for i in keep])
        _write_lines(dir / f"{split}.tgt.txt", [tgt_lines[i] for i in keep])
    return counts


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
