"""Sentencepiece training and the Tokenizer wrapper."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from nmtkit.config import VocabConfig
from nmtkit.errors import NMTKitError
from nmtkit.vocabulary import (
    BOS,
    BOS_ID,
    EOS,
    EOS_ID,
    PAD,
    PAD_ID,
    UNK,
    UNK_ID,
    Tokenizer,
    train_sentencepiece,
)

WORDS = ["kalo", "mibe", "dufa", "gonek", "lemi", "fabado", "kid", "mala", "bega", "hilo"]


def write_corpus(path: Path, n: int = 300, seed: int = 0) -> Path:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8))) for _ in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    d = tmp_path_factory.mktemp("vocab")
    model = train_sentencepiece([write_corpus(d / "c.txt")], d / "m", VocabConfig(size=40, byte_fallback=False))
    return Tokenizer(model)


def test_special_ids_are_fixed(tok: Tokenizer) -> None:
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    assert tok.vocab()[:4] == [PAD, UNK, BOS, EOS]
    assert len(tok) == 40 == len(tok.vocab())


def test_encode_decode_round_trip(tok: Tokenizer) -> None:
    text = "kalo mibe fabado"
    ids = tok.encode(text)
    assert ids and BOS_ID not in ids and EOS_ID not in ids  # no specials added
    assert tok.decode(ids) == text
    assert tok.encode_batch([text, "hilo", ""]) == [ids, tok.encode("hilo"), []]
    assert "".join(tok.pieces(ids)).replace("\u2581", " ").strip() == text


def test_decode_drops_specials_and_stops_at_eos(tok: Tokenizer) -> None:
    ids = tok.encode("kalo mibe")
    tail = tok.encode("hilo")
    assert tok.decode([BOS_ID, *ids, EOS_ID, *tail, PAD_ID]) == "kalo mibe"
    assert tok.decode([BOS_ID, *ids, PAD_ID, PAD_ID]) == "kalo mibe"
    assert tok.decode([EOS_ID, *ids]) == ""


def test_unknown_characters_map_to_unk(tok: Tokenizer) -> None:
    assert UNK_ID in tok.encode("zzz")


def test_bytes_round_trip(tok: Tokenizer) -> None:
    copy = Tokenizer.from_bytes(tok.to_bytes())
    assert copy.vocab() == tok.vocab()
    assert copy.encode("gonek lemi") == tok.encode("gonek lemi")


def test_bad_bytes_and_missing_model(tmp_path: Path) -> None:
    with pytest.raises(NMTKitError, match="not a sentencepiece model"):
        Tokenizer.from_bytes(b"garbage")
    missing = tmp_path / "nope.model"
    with pytest.raises(NMTKitError, match="nope.model"):
        Tokenizer(missing)
    junk = tmp_path / "junk.model"
    junk.write_text("hello")
    with pytest.raises(NMTKitError, match="junk.model"):
        Tokenizer(junk)


def test_training_leaves_only_the_model_files(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.txt")
    out = tmp_path / "out"
    model = train_sentencepiece([corpus], out / "spm", VocabConfig(type="unigram", size=30, byte_fallback=False))
    assert model == out / "spm.model"
    assert sorted(p.name for p in out.iterdir()) == ["spm.model", "spm.vocab"]


def test_too_large_vocab_falls_back_to_soft_limit(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.txt")
    model = train_sentencepiece([corpus], tmp_path / "m", VocabConfig(type="word", size=5000))
    tok = Tokenizer(model)
    assert 4 + len(WORDS) <= len(tok) < 5000
    assert tok.decode(tok.encode("gonek kid")) == "gonek kid"


def test_impossible_vocab_raises_user_error(tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("abcdefghijklmnopqrstuvwxyz\n" * 20, encoding="utf-8")
    with pytest.raises(NMTKitError, match="vocab.size") as err:
        train_sentencepiece([corpus], tmp_path / "m", VocabConfig(size=8))
    assert "c.txt" in str(err.value)
    assert not list(tmp_path.glob("m.*")) and not list(tmp_path.glob(".spm-*"))


def test_missing_training_file(tmp_path: Path) -> None:
    with pytest.raises(NMTKitError, match="absent.txt"):
        train_sentencepiece([tmp_path / "absent.txt"], tmp_path / "m", VocabConfig(size=40, byte_fallback=False))


def test_max_sentences_samples_the_input(tmp_path: Path) -> None:
    # 1000 distinct one-word lines: a word vocabulary learns exactly the sampled words
    syll = ["ka", "lo", "mi", "be", "du", "fa", "go", "ne", "ri", "su"]
    words = [a + b + c for a in syll for b in syll for c in syll]
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(words) + "\n", encoding="utf-8")

    def size(max_sentences: int) -> int:
        cfg = VocabConfig(type="word", size=5000, max_sentences=max_sentences)
        return len(Tokenizer(train_sentencepiece([corpus], tmp_path / f"m{max_sentences}", cfg)))

    assert size(10**6) == 4 + 1000
    assert size(300) == 4 + 300  # sampled by sentencepiece
    assert size(20) == 4 + 20  # below sentencepiece's minimum sample: sampled by us


def test_byte_fallback_spells_unseen_characters_and_decodes_them_back(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.txt", n=400)
    model = train_sentencepiece([corpus], tmp_path / "m", VocabConfig(size=320))
    tok = Tokenizer(model)
    for text in ("kalo 🙂 mibe", "鬱 fabado ∮ ≠ ±", "ẞ ŋ ǂ 𓀀"):  # none of these is in the corpus
        ids = tok.encode(text)
        assert UNK_ID not in ids
        assert tok.decode(ids) == text
        assert "⁇" not in tok.decode(ids)
    plain = Tokenizer(train_sentencepiece([corpus], tmp_path / "p", VocabConfig(size=60, byte_fallback=False)))
    assert UNK_ID in plain.encode("kalo 🙂")  # without it: <unk>


def test_digits_are_split_into_single_pieces(tmp_path: Path) -> None:
    corpus = tmp_path / "n.txt"
    corpus.write_text("".join(f"item {n} costs {n * 7} won\n" for n in range(300)), encoding="utf-8")
    tok = Tokenizer(train_sentencepiece([corpus], tmp_path / "m", VocabConfig(size=300, byte_fallback=False)))
    pieces = tok.pieces(tok.encode("item 2024 costs 15"))
    digits = [p.removeprefix("\u2581") for p in pieces if any(c.isdigit() for c in p)]
    assert digits == ["2", "0", "2", "4", "1", "5"]
    merged = Tokenizer(train_sentencepiece([corpus], tmp_path / "j",
                                           VocabConfig(size=300, split_digits=False, byte_fallback=False)))
    assert any(sum(c.isdigit() for c in p) > 1 for p in merged.pieces(merged.encode("item 2024 costs 15")))


def test_numbers_never_seen_in_training_are_copied(tmp_path: Path) -> None:
    """A small copy task: with digits split, the model copies numbers it never saw digit by
    digit (without the split, pieces like '95' and '37' would have to be re-spelled)."""
    import random
    import re

    from nmtkit.config import config_from_dict
    from nmtkit.training import train
    from nmtkit.translator import Translator

    rng = random.Random(0)
    phrases = [("the price is", "le prix est"), ("I saw", "j'ai vu"), ("we need", "il nous faut")]
    units = [("euros", "euros"), ("cats", "chats"), ("days", "jours")]

    def write(name: str, n: int, numbers: list[int]) -> None:
        pairs = [(rng.choice(phrases), rng.choice(units), rng.choice(numbers)) for _ in range(n)]
        (tmp_path / f"{name}.en").write_text("".join(f"{a} {k} {c}\n" for (a, _), (c, _), k in pairs))
        (tmp_path / f"{name}.fr").write_text("".join(f"{b} {k} {d}\n" for (_, b), (_, d), k in pairs))

    write("train", 3000, [n for n in range(10000) if n % 7 != 3])
    write("test", 100, [n for n in range(10000) if n % 7 == 3])  # numbers training never saw
    cfg = config_from_dict({
        "data": {"train_src": str(tmp_path / "train.en"), "train_tgt": str(tmp_path / "train.fr"),
                 "valid_src": str(tmp_path / "test.en"), "valid_tgt": str(tmp_path / "test.fr"),
                 "out_dir": str(tmp_path / "bin"), "max_len": 30},
        "vocab": {"size": 600, "byte_fallback": False},  # split_digits is on by default
        "model": {"type": "rnn", "embed_size": 32, "hidden_size": 32, "encoder_layers": 1,
                  "decoder_layers": 1, "dropout": 0.0},
        "training": {"out_dir": str(tmp_path / "run"), "max_steps": 300, "max_tokens": 1500,
                     "lr": 0.01, "valid_bleu": False, "valid_every": 1000, "max_epochs": 100}})
    translator = Translator.load(train(cfg) / "last")
    sources = (tmp_path / "test.en").read_text().splitlines()
    out = translator.translate(sources)
    right = sum(re.findall(r"\d+", o) == re.findall(r"\d+", s) for o, s in zip(out, sources, strict=True))
    assert right >= 95, out[:5]
