from pathlib import Path

import pytest

from nmtkit.democorpus import make_demo_corpus, number_to_english, number_to_korean


@pytest.mark.parametrize(
    "n, en, ko",
    [
        (0, "zero", "영"),
        (7, "seven", "칠"),
        (10, "ten", "십"),
        (15, "fifteen", "십오"),
        (71, "seventy-one", "칠십일"),
        (100, "one hundred", "백"),
        (1000, "one thousand", "천"),
        (4071, "four thousand seventy-one", "사천칠십일"),
        (10000, "ten thousand", "만"),
        (11000, "eleven thousand", "만 천"),
        (20001, "twenty thousand one", "이만 일"),
        (345678, "three hundred forty-five thousand six hundred seventy-eight", "삼십사만 오천육백칠십팔"),
        (999999, "nine hundred ninety-nine thousand nine hundred ninety-nine", "구십구만 구천구백구십구"),
    ],
)
def test_known_numbers(n: int, en: str, ko: str) -> None:
    assert number_to_english(n) == en
    assert number_to_korean(n) == ko


def test_out_of_range() -> None:
    with pytest.raises(ValueError):
        number_to_english(1_000_000)
    with pytest.raises(ValueError):
        number_to_korean(-1)


def test_words_are_unique_per_number() -> None:
    # The mapping must be invertible, or the task has no single right answer.
    numbers = range(0, 120_000, 7)
    assert len({number_to_english(n) for n in numbers}) == len(numbers)
    assert len({number_to_korean(n) for n in numbers}) == len(numbers)


def test_corpus_splits_disjoint_and_deterministic(tmp_path) -> None:
    files = make_demo_corpus(tmp_path / "a", seed=3, n_train=300, n_valid=50, n_test=50)
    again = make_demo_corpus(tmp_path / "b", seed=3, n_train=300, n_valid=50, n_test=50)
    other = make_demo_corpus(tmp_path / "c", seed=4, n_train=300, n_valid=50, n_test=50)
    lines = {s: files[s][0].read_text().splitlines() for s in files}
    assert [len(lines[s]) for s in ("train", "valid", "test")] == [300, 50, 50]
    assert not set(lines["train"]) & set(lines["test"])
    assert not set(lines["train"]) & set(lines["valid"])
    assert not set(lines["valid"]) & set(lines["test"])
    assert files["train"][1].read_text() == again["train"][1].read_text()
    assert files["train"][0].read_text() != other["train"][0].read_text()
    # aligned line by line: each Korean line is the translation of the English line beside it
    english_to_number = {number_to_english(n): n for n in range(1_000_000)}
    ko = files["train"][1].read_text().splitlines()
    for en_line, ko_line in zip(lines["train"], ko, strict=True):
        assert number_to_korean(english_to_number[en_line]) == ko_line


def test_training_split_holds_the_small_numbers(tmp_path) -> None:
    files = make_demo_corpus(tmp_path, seed=1, n_train=3000, n_valid=100, n_test=100)
    train = set(files["train"][0].read_text().splitlines())
    assert {number_to_english(n) for n in range(100)} <= train  # every 1- and 2-digit number
    english_to_number = {number_to_english(n): n for n in range(1_000_000)}
    for split in ("valid", "test"):
        held_out = [english_to_number[s] for s in files[split][0].read_text().splitlines()]
        assert min(held_out) >= 1000


def test_the_demo_replaces_only_an_earlier_demo_run(tmp_path: Path) -> None:
    import json

    from nmtkit.demo import _is_demo_run

    corpus = Path("demo-data/corpus")

    def run(name: str, train_src: str, extra: str | None = None) -> Path:
        folder = tmp_path / name
        (folder / "ckpt-00000010").mkdir(parents=True)
        (folder / "ckpt-00000010" / "checkpoint.json").write_text(
            json.dumps({"config": {"data": {"train_src": train_src}}}))
        (folder / "log.jsonl").write_text('{"type": "train", "step": 10}\n')
        if extra:
            (folder / extra).write_text("mine")
        return folder

    assert _is_demo_run(run("demo", "demo-data/corpus/train.ko"), corpus)
    assert not _is_demo_run(run("mine", "data/train.en"), corpus)  # the user's own run
    assert not _is_demo_run(run("noted", "demo-data/corpus/train.ko", "NOTES.txt"), corpus)
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "log.jsonl").write_text("{}\n")
    (logs / "app.py").write_text("print(1)\n")
    assert not _is_demo_run(logs, corpus)  # a folder that merely holds a log.jsonl
    (tmp_path / "empty").mkdir()
    assert _is_demo_run(tmp_path / "empty", corpus)
