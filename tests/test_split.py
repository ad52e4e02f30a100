"""`nmtkit split`: seeded, disjoint, duplicates kept together, never over a user's folder."""

import random
from pathlib import Path

import pytest

from nmtkit.cli import main
from nmtkit.errors import NMTKitError
from nmtkit.split import split_corpus


def corpus(tmp_path: Path, n: int = 3000) -> tuple[Path, Path]:
    """Pairs where many source sentences repeat (as in Tatoeba), with different translations."""
    rng = random.Random(0)
    src, tgt = [], []
    for i in range(n):
        k = rng.randrange(n // 3)  # about three copies of each source sentence
        src.append(f"sentence {k}")
        tgt.append(f"phrase {k} version {i}")
    src[5], tgt[7] = "", ""  # pairs with an empty side are left out
    a, b = tmp_path / "all.en", tmp_path / "all.fr"
    a.write_text("\n".join(src) + "\n", encoding="utf-8")
    b.write_text("\n".join(tgt) + "\n", encoding="utf-8")
    return a, b


def read(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_split_is_seeded_disjoint_and_keeps_duplicates_together(tmp_path: Path) -> None:
    src, tgt = corpus(tmp_path)
    report = split_corpus(src, tgt, tmp_path / "a", valid=200, test=300, seed=1)
    files = report.files
    assert [p.name for p in files["train"]] == ["train.en", "train.fr"]
    sources = {split: read(files[split][0]) for split in files}
    assert sum(len(v) for v in sources.values()) == 2998 == sum(report.pairs.values())
    assert 200 <= report.pairs["valid"] < 210 and 300 <= report.pairs["test"] < 310
    for a in sources:
        for b in sources:
            if a < b:
                assert not set(sources[a]) & set(sources[b]), (a, b)  # no source in two splits
    pairs = {(s, t) for split in files for s, t in zip(read(files[split][0]), read(files[split][1]), strict=True)}
    assert len(pairs) == 2998  # every usable pair exactly once, still aligned
    assert report.duplicates > 2000
    again = split_corpus(src, tgt, tmp_path / "b", valid=200, test=300, seed=1)
    assert all(read(again.files[s][0]) == sources[s] for s in files)  # same seed, same split
    other = split_corpus(src, tgt, tmp_path / "c", valid=200, test=300, seed=2)
    assert read(other.files["test"][0]) != sources["test"]


def test_split_line_by_line_lets_duplicates_cross(tmp_path: Path) -> None:
    src, tgt = corpus(tmp_path)
    report = split_corpus(src, tgt, tmp_path / "x", valid=200, test=300, seed=1, group_duplicates=False)
    train, test = set(read(report.files["train"][0])), set(read(report.files["test"][0]))
    assert report.pairs["test"] == 300 and train & test  # the leak grouping prevents


def test_split_never_writes_into_a_users_folder(tmp_path: Path, capsys) -> None:
    src, tgt = corpus(tmp_path, 300)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(NMTKitError, match="not an empty folder"):
        split_corpus(src, tgt, mine, valid=10, test=10)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    with pytest.raises(NMTKitError, match="not enough for 200 valid and 200 test"):
        split_corpus(src, tgt, tmp_path / "n", valid=200, test=200)
    assert not (tmp_path / "n").exists()
    assert main(["split", str(src), str(tgt), "--valid", "20", "--test", "20", "--out",
                 str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "valid: 2" in out and "test: 2" in out and "train.en" in out
    import yaml

    from nmtkit.config import config_from_dict

    snippet = yaml.safe_load(out[out.index("data:"):])  # what it prints for the config
    cfg = config_from_dict({"data": {**snippet["data"], "out_dir": str(tmp_path / "bin")}})
    assert read(cfg.data.test_tgt) == read(tmp_path / "cli" / "test.fr")


@pytest.mark.parametrize("make_args, message", [
    (lambda a, b, t: [str(a), str(b), "--seed", "99999999999999999999999", "--out", str(t / "o")],
     "--seed 99999999999999999999999 is out of range: give a whole number from -2**63 to 2**63 - 1"),
    (lambda a, b, t: [str(a), str(a), "--out", str(t / "o")], "are the same file"),
    (lambda a, b, t: [str(a), str(b), "--out", str(t / "afile" / "sub" / "o")], "afile is a file, not a folder"),
    (lambda a, b, t: [str(a), str(t / "missing.fr"), "--out", str(t / "o")], "target file not found"),
])
def test_split_mistakes_are_one_line(tmp_path: Path, capsys, make_args, message) -> None:
    a, b = corpus(tmp_path, 300)
    (tmp_path / "afile").write_text("mine\n")
    assert main(["split", *make_args(a, b, tmp_path), "--valid", "10", "--test", "10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nmtkit: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o").exists() and (tmp_path / "afile").read_text() == "mine\n"


def test_a_full_disk_names_the_folder_being_written(tmp_path: Path, monkeypatch, capsys) -> None:
    import builtins
    import errno

    a, b = corpus(tmp_path, 300)
    real_open = builtins.open

    def full_disk_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if "w" in mode:
            def write(text, _f=f):
                raise OSError(errno.ENOSPC, "No space left on device")
            f.write = write
        return f

    monkeypatch.setattr(builtins, "open", full_disk_open)
    assert main(["split", str(a), str(b), "--out", str(tmp_path / "out"), "--valid", "10", "--test", "10"]) == 2
    err = capsys.readouterr().err
    assert err == f"nmtkit: error: split: {tmp_path / 'out'}: no space left on the device\n", err
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
