"""Reading, preparing, memory-mapped splits, token-bucketed batching and collation."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nmtkit.config import DataConfig, VocabConfig
from nmtkit.data import (
    RATIO_MIN_TOKENS,
    BinarizedCorpus,
    PreparedData,
    TokenBatchSampler,
    collate,
    collate_source,
    drop_reason,
    prepare,
    read_parallel,
)
from nmtkit.errors import NMTKitError
from nmtkit.vocabulary import BOS_ID, EOS_ID, PAD_ID

SRC_WORDS = ["kalo", "mibe", "dufa", "gonek", "lemi", "fabado", "kid", "mala", "bega", "hilo"]
TGT_WORDS = ["TUR", "PASO", "WEX", "ZORI", "QUA", "VEMIT", "SOX", "ROP", "TEN", "WUVA"]


def synth_pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Word-for-word 'translations' of 1-6 words: lengths of the two sides stay close."""
    rng = random.Random(seed)
    src, tgt = [], []
    for _ in range(n):
        idx = [rng.randrange(len(SRC_WORDS)) for _ in range(rng.randint(1, 6))]
        src.append(" ".join(SRC_WORDS[i] for i in idx))
        tgt.append(" ".join(TGT_WORDS[i] for i in reversed(idx)))
    return src, tgt


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# special train pairs, each dropped for one reason (words are >= 1 token each, so 50 words are
# > max_len=40 tokens, and 1 word vs 30 words is a ratio far above 3)
TRAIN_EXTRA_SRC = ["", "kalo mibe", " ".join(["kalo"] * 50), "kid"]
TRAIN_EXTRA_TGT = ["TUR", "   ", " ".join(["TUR"] * 50), " ".join(["SOX"] * 30)]
VALID_EXTRA_SRC = ["", " ".join(["hilo"] * 50)]  # the long pair (line 2) is skipped in valid too
VALID_EXTRA_TGT = ["WUVA", " ".join(["WUVA"] * 50)]


def make_config(tmp_path: Path, *, test: bool = True, **data_kw) -> DataConfig:
    src, tgt = synth_pairs(300, seed=1)
    vsrc, vtgt = synth_pairs(20, seed=2)
    tsrc, ttgt = synth_pairs(10, seed=3)
    raw = tmp_path / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    files = {
        "train_src": write(raw / "train.src", src + TRAIN_EXTRA_SRC),
        "train_tgt": write(raw / "train.tgt", tgt + TRAIN_EXTRA_TGT),
        "valid_src": write(raw / "valid.src", VALID_EXTRA_SRC + vsrc),
        "valid_tgt": write(raw / "valid.tgt", VALID_EXTRA_TGT + vtgt),
    }
    if test:
        files["test_src"] = write(raw / "test.src", tsrc)
        files["test_tgt"] = write(raw / "test.tgt", ttgt)
    kw = {"out_dir": tmp_path / "bin", "max_len": 40, "max_len_ratio": 3.0, **data_kw}
    return DataConfig(**files, **kw)


VOCAB = VocabConfig(type="bpe", size=60, joint=True, byte_fallback=False)


@pytest.fixture(scope="module")
def prepared(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[DataConfig, PreparedData, list[str]]:
    tmp = tmp_path_factory.mktemp("prep")
    cfg = make_config(tmp)
    logs: list[str] = []
    return cfg, prepare(cfg, VOCAB, log=logs.append), logs


# ---------------------------------------------------------------------------------------------
# read_parallel


def test_read_parallel_strips_lines(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes("\ufeffhello  \r\n  wor\rld\u2028!\n\n".encode())
    (tmp_path / "b").write_bytes(b"x\ny\nz")  # no final newline
    src, tgt = read_parallel(tmp_path / "a", tmp_path / "b")
    assert src == ["hello", "wor\rld\u2028!", ""]  # lines end at "\n" only
    assert tgt == ["x", "y", "z"]


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_read_parallel_names_a_folder_or_a_pipe(tmp_path: Path, kind: str) -> None:
    import os

    a = write(tmp_path / "a.src", ["1"])
    b = tmp_path / "b.tgt"
    b.mkdir() if kind == "folder" else os.mkfifo(b)
    with pytest.raises(NMTKitError, match="is a folder, not a file" if kind == "folder" else "not a regular file"):
        read_parallel(a, b)


def test_read_parallel_missing_file(tmp_path: Path) -> None:
    write(tmp_path / "a", ["x"])
    with pytest.raises(NMTKitError, match=r"not found: .*missing\.tgt"):
        read_parallel(tmp_path / "a", tmp_path / "missing.tgt")


def test_read_parallel_unequal_lines(tmp_path: Path) -> None:
    a = write(tmp_path / "a.src", ["1", "2", "3"])
    b = write(tmp_path / "b.tgt", ["1", "2"])
    with pytest.raises(NMTKitError) as err:
        read_parallel(a, b)
    assert str(err.value) == f"{a} has 3 lines but {b} has 2 lines"


def test_read_parallel_bad_utf8(tmp_path: Path) -> None:
    a = write(tmp_path / "a.src", ["1", "2", "3", "4"])
    b = tmp_path / "b.tgt"
    b.write_bytes(b"ok\nfine\nbad \xff\xfe here\nok\n")
    with pytest.raises(NMTKitError) as err:
        read_parallel(a, b)
    assert str(err.value) == f"{b}: line 3 is not valid UTF-8"


# ---------------------------------------------------------------------------------------------
# filtering rules


def test_drop_reason() -> None:
    assert drop_reason(0, 5, 40, 3.0, train=True) == "empty"
    assert drop_reason(5, 0, 40, 3.0, train=False) == "empty"
    assert drop_reason(41, 20, 40, 3.0, train=True) == "too_long"
    assert drop_reason(20, 41, 40, 3.0, train=True) == "too_long"
    assert drop_reason(41, 20, 40, 3.0, train=False) == "too_long"  # valid/test are length-checked too
    assert drop_reason(3, 10, 40, 3.0, train=True) == "ratio"
    assert drop_reason(10, 3, 40, 3.0, train=False) is None
    assert drop_reason(4, 12, 40, 3.0, train=True) is None  # exactly the ratio is kept
    # short pairs are exempt from the ratio rule
    assert drop_reason(1, RATIO_MIN_TOKENS - 1, 40, 3.0, train=True) is None
    assert drop_reason(1, RATIO_MIN_TOKENS, 40, 3.0, train=True) == "ratio"


# ---------------------------------------------------------------------------------------------
# prepare


def test_prepare_counts_and_logs(prepared) -> None:
    _, data, logs = prepared
    rep = data.report
    assert rep.kept == {"train": 300, "valid": 20, "test": 10}
    assert rep.dropped_empty == {"train": 2, "valid": 1, "test": 0}
    assert rep.dropped_too_long == {"train": 1, "valid": 1, "test": 0}
    assert rep.dropped_ratio == {"train": 1, "valid": 0, "test": 0}
    split_logs = [line for line in logs if line.startswith("prepare: train:")]
    assert len(split_logs) == 1
    assert "kept 300" in split_logs[0] and "2 empty" in split_logs[0]
    valid_log = next(line for line in logs if line.startswith("prepare: valid:"))
    assert "1 too long (> 40 tokens) (first at line 2)" in valid_log
    assert any(line.startswith("prepare: test:") for line in logs)


def test_prepare_folder_contents(prepared) -> None:
    cfg, data, _ = prepared
    names = {p.name for p in Path(cfg.out_dir).iterdir()}
    assert "spm.model" in names and "src.model" not in names and "meta.json" in names
    assert "valid.src.txt" in names and "test.tgt.txt" in names and "train.src.txt" not in names
    assert not any(n.startswith(".") for n in names)  # no leftover temp files
    assert not [p for p in Path(cfg.out_dir).parent.iterdir() if p.name.startswith(".bin")]
    assert data.src_tokenizer is data.tgt_tokenizer  # joint vocabulary


def test_memmap_round_trip(prepared) -> None:
    cfg, data, _ = prepared
    src, tgt = read_parallel(cfg.train_src, cfg.train_tgt)
    tok = data.src_tokenizer
    expected = [
        (tok.encode(s), tok.encode(t))
        for s, t in zip(src, tgt, strict=True)
        if drop_reason(len(tok.encode(s)), len(tok.encode(t)), 40, 3.0, train=True) is None
    ]
    corpus = data.split("train")
    assert len(corpus) == len(expected) == 300
    for i, (s, t) in enumerate(expected):
        got_s, got_t = corpus[i]
        assert got_s.dtype == np.int32
        assert got_s.tolist() == s and got_t.tolist() == t
    assert corpus.src_lengths.tolist() == [len(s) for s, _ in expected]
    assert corpus.tgt_lengths.tolist() == [len(t) for _, t in expected]
    assert isinstance(corpus._ids["src"], np.memmap)
    assert corpus.raw_text("src") is None
    with pytest.raises(IndexError):
        corpus[300]


def test_valid_keeps_raw_text(prepared) -> None:
    cfg, data, _ = prepared
    src, tgt = read_parallel(cfg.valid_src, cfg.valid_tgt)
    valid = data.split("valid")
    assert valid.raw_text("src") == src[2:]  # the empty pair and the over-long one are gone
    assert valid.raw_text("tgt") == tgt[2:]
    assert data.tgt_tokenizer.decode(valid[0][1].tolist()) == tgt[2]


def test_load_and_missing_split(prepared, tmp_path: Path) -> None:
    cfg, data, _ = prepared
    again = PreparedData.load(cfg.out_dir)
    assert again.meta == data.meta
    assert again.split("test")[0][0].tolist() == data.split("test")[0][0].tolist()
    with pytest.raises(NMTKitError, match="no 'dev' split"):
        data.split("dev")
    with pytest.raises(NMTKitError, match="not a prepared data folder"):
        PreparedData.load(tmp_path)


def test_prepare_without_test_split(tmp_path: Path) -> None:
    data = prepare(make_config(tmp_path, test=False), VOCAB, log=lambda _: None)
    assert data.split_names() == ["train", "valid"]
    with pytest.raises(NMTKitError, match="no 'test' split"):
        data.split("test")


def test_test_src_without_tgt(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    cfg.test_tgt = None
    with pytest.raises(NMTKitError, match="data.test_src is set but data.test_tgt is not"):
        prepare(cfg, VOCAB, log=lambda _: None)


def test_prepare_reuses_and_redoes(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    logs: list[str] = []
    prepare(cfg, VOCAB, log=logs.append)
    meta_path = Path(cfg.out_dir) / "meta.json"
    first = meta_path.stat().st_mtime_ns
    assert not any("reusing" in line for line in logs)

    logs.clear()
    prepare(cfg, VOCAB, log=logs.append)
    assert any("reusing" in line for line in logs)
    assert meta_path.stat().st_mtime_ns == first

    # same size, different content: the fingerprint must notice
    text = Path(cfg.train_src).read_text(encoding="utf-8")
    Path(cfg.train_src).write_text(text.replace("kalo", "kolo", 1), encoding="utf-8")
    logs.clear()
    data = prepare(cfg, VOCAB, log=logs.append)
    assert not any("reusing" in line for line in logs)
    assert meta_path.stat().st_mtime_ns != first
    assert data.split("train")[0][0].tolist() == data.src_tokenizer.encode(
        text.split("\n")[0].replace("kalo", "kolo", 1)
    )

    # a resumed run brings its checkpoint's subword models: the same ones reuse the folder, which
    # other runs may share; other ones prepare it again with them
    logs.clear()
    prepare(cfg, VOCAB, log=logs.append, tokenizers=(data.src_tokenizer, data.tgt_tokenizer))
    assert any("reusing" in line for line in logs)
    other = prepare(make_config(tmp_path / "other"), VocabConfig(type="bpe", size=70, byte_fallback=False),
                    log=lambda _: None)
    logs.clear()
    again = prepare(cfg, VOCAB, log=logs.append, tokenizers=(other.src_tokenizer, other.tgt_tokenizer))
    assert any("other subword models than the checkpoint's" in line for line in logs)
    assert len(again.src_tokenizer) == len(other.src_tokenizer) != len(data.src_tokenizer)

    # a config change redoes it too
    logs.clear()
    cfg.max_len = 39
    prepare(cfg, VOCAB, log=logs.append)
    assert not any("reusing" in line for line in logs)
    assert json.loads(meta_path.read_text())["config"]["data"]["max_len"] == 39


def test_separate_vocabularies(tmp_path: Path) -> None:
    vocab = VocabConfig(type="bpe", size=50, joint=False, byte_fallback=False)
    data = prepare(make_config(tmp_path), vocab, log=lambda _: None)
    names = {p.name for p in Path(data.dir).iterdir()}
    assert {"src.model", "tgt.model"} <= names and "spm.model" not in names
    assert data.src_tokenizer is not data.tgt_tokenizer
    src_pieces, tgt_pieces = set(data.src_tokenizer.vocab()), set(data.tgt_tokenizer.vocab())
    assert not any(c.isupper() for p in src_pieces for c in p)  # source text is lower case
    assert any(c.isupper() for p in tgt_pieces for c in p)
    assert PreparedData.load(data.dir).tgt_tokenizer.vocab() == data.tgt_tokenizer.vocab()


def test_failed_prepare_keeps_the_old_folder(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    prepare(cfg, VOCAB, log=lambda _: None)
    before = (Path(cfg.out_dir) / "meta.json").read_text()
    write(Path(cfg.valid_tgt), ["only one line"])
    with pytest.raises(NMTKitError, match="has 22 lines but .* has 1 lines"):
        prepare(cfg, VOCAB, log=lambda _: None)
    with pytest.raises(NMTKitError, match="vocab.size"):
        prepare(make_config(tmp_path), VocabConfig(size=8), log=lambda _: None)
    assert (Path(cfg.out_dir) / "meta.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "raw"]  # no temp folders left


def test_refuses_to_replace_a_foreign_folder(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    Path(cfg.out_dir).mkdir()
    (Path(cfg.out_dir) / "notes.txt").write_text("mine")
    with pytest.raises(NMTKitError, match="data.out_dir"):
        prepare(cfg, VOCAB, log=lambda _: None)
    assert (Path(cfg.out_dir) / "notes.txt").read_text() == "mine"


def test_a_meta_json_or_a_file_prepare_did_not_write_keeps_the_folder(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    out = Path(cfg.out_dir)
    out.mkdir()
    (out / "meta.json").write_text('{"mine": 1}')  # a user's meta.json: not prepare's
    (out / "thesis.txt").write_text("mine")
    with pytest.raises(NMTKitError, match="not written by nmtkit prepare"):
        prepare(cfg, VOCAB, log=lambda _: None)
    assert (out / "thesis.txt").read_text() == "mine"

    shutil.rmtree(out)
    prepare(cfg, VOCAB, log=lambda _: None)
    (out / "NOTES.txt").write_text("mine")  # a user's note inside a prepared folder
    cfg.max_len = cfg.max_len - 1  # a rebuild would replace the whole folder
    with pytest.raises(NMTKitError, match=r"files prepare did not write \(NOTES.txt\)"):
        prepare(cfg, VOCAB, log=lambda _: None)
    assert (out / "NOTES.txt").read_text() == "mine"


def test_missing_input_file(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    Path(cfg.valid_src).unlink()
    with pytest.raises(NMTKitError, match=r"not found: .*valid\.src"):
        prepare(cfg, VOCAB, log=lambda _: None)
    assert not Path(cfg.out_dir).exists()


def test_binarized_corpus_empty_split(tmp_path: Path) -> None:
    from nmtkit.data import _ArrayWriter

    for side in ("src", "tgt"):
        _ArrayWriter(tmp_path / f"x.{side}.bin", "ids").close()
        offsets = _ArrayWriter(tmp_path / f"x.{side}.idx", "offsets")
        offsets.write(np.zeros(1))
        offsets.close()
    corpus = BinarizedCorpus(tmp_path, "x")
    assert len(corpus) == 0 and corpus.src_lengths.shape == (0,)


def _damage(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(raw[: len(raw) - 6])
    elif how == "header":
        path.write_bytes(b"junk" + raw[4:])
    elif how == "big id":
        raw[-4:] = np.array([10_000], dtype="<i4").tobytes()
        path.write_bytes(raw)
    elif how == "falling offsets":
        raw[-8:] = np.array([1], dtype="<i8").tobytes()
        path.write_bytes(raw)


@pytest.mark.parametrize("file, how", [("train.src.bin", "truncated"), ("train.tgt.idx", "truncated"),
                                       ("valid.src.bin", "header"), ("train.tgt.bin", "big id"),
                                       ("train.src.idx", "falling offsets")])
def test_damaged_files_are_caught_and_prepare_rebuilds_them(tmp_path: Path, file: str, how: str) -> None:
    from nmtkit.data import DamagedData

    cfg = make_config(tmp_path)
    data = prepare(cfg, VOCAB, log=lambda _: None)
    _damage(Path(cfg.out_dir) / file, how)
    with pytest.raises(DamagedData, match=f"{file}.*run `nmtkit prepare` again"):
        data.split(file.split(".")[0])
    logs: list[str] = []
    again = prepare(cfg, VOCAB, log=logs.append)
    assert any("is damaged" in line and "preparing it again" in line for line in logs)
    again.verify()
    assert len(again.split("train")) == 300


def test_an_empty_valid_set_is_an_error(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    write(Path(cfg.valid_src), ["", "  "])
    write(Path(cfg.valid_tgt), ["x", ""])
    with pytest.raises(NMTKitError, match=r"data.valid_src / data.valid_tgt .*the valid set cannot be empty"):
        prepare(cfg, VOCAB, log=lambda _: None)
    assert not Path(cfg.out_dir).exists()


def test_files_and_folders_follow_the_umask(tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0o022)
    try:
        cfg = make_config(tmp_path)
        prepare(cfg, VOCAB, log=lambda _: None)
    finally:
        os.umask(old)
    out = Path(cfg.out_dir)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o644}


def test_a_killed_prepare_leaves_nothing_the_next_run_keeps(tmp_path: Path) -> None:
    import subprocess
    import sys

    cfg = make_config(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = Path(cfg.out_dir).parent / f".bin.tmp-{dead}-abc"
    stale.mkdir()
    (stale / "train.src.bin").write_bytes(b"half")
    prepare(cfg, VOCAB, log=lambda _: None)
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "raw"]


def test_given_tokenizers_are_used_not_learned(tmp_path: Path, prepared) -> None:
    _, first, _ = prepared
    other = make_config(tmp_path)
    Path(other.train_src).write_text("completely different text\n" * 5, encoding="utf-8")
    Path(other.train_tgt).write_text("GANZ ANDERER TEXT\n" * 5, encoding="utf-8")
    data = prepare(other, VOCAB, log=lambda _: None,
                   tokenizers=(first.src_tokenizer, first.tgt_tokenizer))
    assert data.src_tokenizer.to_bytes() == first.src_tokenizer.to_bytes()
    assert data.joint and data.meta["vocabulary_from"] == "given"
    assert len(data.split("train")) == 5


def test_prepare_reports_characters_the_vocabulary_lacks(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    src = Path(cfg.valid_src).read_text(encoding="utf-8")
    Path(cfg.valid_src).write_text(src.replace("kalo", "kalo 🙂", 2), encoding="utf-8")
    logs: list[str] = []
    prepare(cfg, VOCAB, log=logs.append)  # no byte fallback: the emoji becomes <unk>
    line = next(line for line in logs if "vocabulary covers" in line)
    assert "1 characters (2 occurrences) not at all" in line and "🙂" in line


# ---------------------------------------------------------------------------------------------
# TokenBatchSampler


def lengths(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    src = rng.integers(1, 30, size=n)
    tgt = rng.integers(1, 30, size=n)
    src[:3] = [150, 2, 5]  # one example alone costs more than max_tokens
    return src, tgt


def cost(batch: list[int], src: np.ndarray, tgt: np.ndarray) -> int:
    return len(batch) * max(int(src[batch].max()) + 1, int(tgt[batch].max()) + 1)


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_respect_max_tokens_and_cover_everything(shuffle: bool) -> None:
    src, tgt = lengths()
    sampler = TokenBatchSampler(src, tgt, max_tokens=100, shuffle=shuffle, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    for b in batches:
        assert cost(b, src, tgt) <= 100 or len(b) == 1
    assert [0] in batches  # the oversize example forms its own batch
    assert sorted(i for b in batches for i in b) == list(range(len(src)))
    assert sum(len(b) for b in batches) / len(batches) > 3  # bucketing actually packs


def test_shuffle_is_deterministic_per_epoch() -> None:
    src, tgt = lengths()
    a = TokenBatchSampler(src, tgt, 100, shuffle=True, seed=7)
    b = TokenBatchSampler(src, tgt, 100, shuffle=True, seed=7)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    epoch3 = list(a)
    a.set_epoch(4)
    assert list(a) != epoch3
    c = TokenBatchSampler(src, tgt, 100, shuffle=True, seed=8)
    c.set_epoch(3)
    assert list(c) != epoch3


def test_no_shuffle_is_sorted_and_fixed() -> None:
    src, tgt = lengths()
    s = TokenBatchSampler(src, tgt, 100, shuffle=False, seed=0)
    first = list(s)
    s.set_epoch(2)
    assert list(s) == first
    flat = [i for b in first for i in b]
    costs = np.maximum(src, tgt)[flat]
    assert (np.diff(costs) >= 0).all()


@pytest.mark.parametrize("num_shards", [2, 3, 4])
def test_shards_equal_disjoint_and_covering(num_shards: int) -> None:
    src, tgt = lengths()
    full = list(TokenBatchSampler(src, tgt, 100, shuffle=True, seed=5))
    shards = [
        list(
            TokenBatchSampler(
                src, tgt, 100, shuffle=True, seed=5, num_shards=num_shards, shard_id=k
            )
        )
        for k in range(num_shards)
    ]
    per_shard = -(-len(full) // num_shards)
    assert [len(s) for s in shards] == [per_shard] * num_shards
    padded = full + full[: per_shard * num_shards - len(full)]
    # shard k takes batches k, k + num_shards, ... of the (padded) global list
    for k, shard in enumerate(shards):
        assert shard == padded[k::num_shards]
    seen = [i for shard in shards for b in shard for i in b]
    assert set(seen) == set(range(len(src)))
    # apart from the padding repeats, no example is in two shards
    n_pad = per_shard * num_shards - len(full)
    assert len(seen) - len(src) == sum(len(b) for b in full[:n_pad])


def test_tiny_corpus_still_feeds_every_shard() -> None:
    shards = [
        list(TokenBatchSampler([3], [4], 100, True, 0, num_shards=3, shard_id=k)) for k in range(3)
    ]
    assert shards == [[[0]], [[0]], [[0]]]


def test_resume_yields_exactly_the_remaining_batches() -> None:
    src, tgt = lengths()
    s = TokenBatchSampler(src, tgt, 100, shuffle=True, seed=3, num_shards=2, shard_id=1)
    s.set_epoch(5)
    full = list(s)
    s.set_epoch(6)
    s.set_epoch(5)  # a new epoch starts at 0
    it = iter(s)
    consumed = [next(it) for _ in range(4)]
    assert consumed == full[:4]
    state = s.state_dict()
    assert state == {"epoch": 5, "position": 4}

    r = TokenBatchSampler(src, tgt, 100, shuffle=True, seed=3, num_shards=2, shard_id=1)
    r.load_state_dict(json.loads(json.dumps(state)))
    r.set_epoch(5)  # the trainer's loop calls this again: it must not restart the epoch
    assert list(r) == full[4:]
    assert r.state_dict() == {"epoch": 5, "position": len(full)}
    assert list(r) == full  # after a finished pass, the next pass replays the epoch

    done = TokenBatchSampler(src, tgt, 100, shuffle=True, seed=3, num_shards=2, shard_id=1)
    done.load_state_dict({"epoch": 5, "position": len(full)})
    assert list(done) == []  # that epoch was already finished when saved


def test_sampler_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        TokenBatchSampler([1, 2], [1], 10, False, 0)
    with pytest.raises(ValueError):
        TokenBatchSampler([1], [1], 10, False, 0, num_shards=2, shard_id=2)


# ---------------------------------------------------------------------------------------------
# collate


def test_collate_shapes_and_markers() -> None:
    examples = [
        (np.array([5, 6, 7], dtype=np.int32), np.array([8, 9], dtype=np.int32)),
        (np.array([10], dtype=np.int32), np.array([11, 12, 13, 14], dtype=np.int32)),
    ]
    batch = collate(examples, [4, 9])
    assert batch.indices == [4, 9]
    assert batch.src.dtype == torch.long and batch.src.shape == (2, 4)
    assert batch.src.tolist() == [[5, 6, 7, EOS_ID], [10, EOS_ID, PAD_ID, PAD_ID]]
    assert batch.src_lengths.tolist() == [4, 2]
    assert batch.tgt_in.shape == batch.tgt_out.shape == (2, 5)
    assert batch.tgt_in.tolist() == [[BOS_ID, 8, 9, PAD_ID, PAD_ID], [BOS_ID, 11, 12, 13, 14]]
    assert batch.tgt_out.tolist() == [[8, 9, EOS_ID, PAD_ID, PAD_ID], [11, 12, 13, 14, EOS_ID]]
    assert batch.n_tgt_tokens == 3 + 5
    moved = batch.to("cpu")
    assert torch.equal(moved.tgt_out, batch.tgt_out) and moved.indices == [4, 9]


def test_collate_source_appends_eos() -> None:
    src, lengths_ = collate_source([[7, 8], [], [9]])
    assert src.tolist() == [[7, 8, EOS_ID], [EOS_ID, PAD_ID, PAD_ID], [9, EOS_ID, PAD_ID]]
    assert lengths_.tolist() == [3, 1, 2]


def test_sampler_costs_match_collated_tensors(prepared) -> None:
    _, data, _ = prepared
    corpus = data.split("train")
    sampler = TokenBatchSampler(corpus.src_lengths, corpus.tgt_lengths, 120, True, 0)
    for idx in sampler:
        batch = collate([corpus[i] for i in idx], idx)
        padded = len(idx) * max(batch.src.shape[1], batch.tgt_out.shape[1])
        assert padded <= 120 or len(idx) == 1


def test_streaming_in_small_chunks_gives_the_same_folder(tmp_path: Path, monkeypatch) -> None:
    from nmtkit import data as data_module

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    whole = prepare(make_config(tmp_path / "a"), VOCAB, log=lambda _: None)
    monkeypatch.setattr(data_module, "CHUNK_LINES", 7)
    chunked = prepare(make_config(tmp_path / "b"), VOCAB, log=lambda _: None)
    for split in ("train", "valid", "test"):
        a, b = whole.split(split), chunked.split(split)
        assert len(a) == len(b) and all(np.array_equal(x, y) for i in range(len(a))
                                        for x, y in zip(a[i], b[i], strict=True))
        assert a.raw_text("src") == b.raw_text("src")


def test_a_max_len_that_empties_the_valid_set_stops_before_training(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, max_len=1)  # every valid pair has 2 tokens or more
    with pytest.raises(NMTKitError, match=r"data.valid_src / data.valid_tgt .*: no pair is left after "
                       r"filtering \(\d+ longer than data.max_len = 1 subword tokens, 1 empty\); raise "
                       "data.max_len"):
        prepare(cfg, VOCAB, log=lambda _: None)
    assert not (tmp_path / "bin").exists()  # nothing written halfway


def test_a_length_ratio_that_drops_many_pairs_is_warned_about(tmp_path: Path) -> None:
    import warnings

    from nmtkit.errors import NMTKitWarning

    quiet = make_config(tmp_path / "a")  # 1 pair of 304 dropped by the ratio: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", NMTKitWarning)
        prepare(quiet, VOCAB, log=lambda _: None)
    src, tgt = synth_pairs(300, seed=1)
    lopsided = [f"{s} {s} {s} {s} {s}" for s in src[:40]]  # 40 sources five times too long
    cfg = make_config(tmp_path / "b")
    write(cfg.train_src, lopsided + src[40:])
    write(cfg.train_tgt, tgt)
    with pytest.warns(NMTKitWarning, match=r"data.max_len_ratio = 3 dropped \d+ of 300 training pairs "
                      r"\(\d+%\); the first, line \d+: '.*' \(\d+ tokens\) / '.*' \(\d+ tokens\); raise "
                      "data.max_len_ratio"):
        data = prepare(cfg, VOCAB, log=lambda _: None)
    assert data.report.dropped_ratio["train"] > 15
    assert "ratio_example" not in json.loads((cfg.out_dir / "meta.json").read_text())["splits"]["train"]


def test_a_full_disk_during_prepare_names_the_folder(tmp_path: Path, monkeypatch) -> None:
    import errno

    from nmtkit import data as data_module
    from nmtkit.files import os_error

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write() raises it: no file

    monkeypatch.setattr(data_module, "_binarize_split", full)
    cfg = make_config(tmp_path)
    with pytest.raises(OSError) as caught:
        prepare(cfg, VOCAB, log=lambda _: None)
    assert str(os_error(caught.value)) == f"{cfg.out_dir}: no space left on the device"
    assert not cfg.out_dir.exists() and not list(cfg.out_dir.parent.glob(f".{cfg.out_dir.name}.*"))
