"""Lexically constrained beam search: exactness without constraints, usage with them (whole words,
disjunctive, with a prefix, n-best, int8), both model families, and the errors."""

import pytest
import torch

from nmtkit.constraints import Constraints, boundary_pieces, phrase_alternatives
from nmtkit.data import collate_source
from nmtkit.errors import NMTKitError
from nmtkit.quantize import quantize_int8
from nmtkit.search import Steering, beam_search
from nmtkit.translator import Translator
from nmtkit.vocabulary import EOS_ID
from tests.test_search import FAMILIES, VOCAB, make_model, sources

# the tiny models' vocabulary as pieces: even ids start a word, odd ids go on one
PIECES = ["<pad>", "<unk>", "<s>", "</s>"] + [f"\u2581w{i}" if i % 2 == 0 else f"x{i}" for i in range(4, VOCAB)]
BOUNDARY = boundary_pieces(PIECES)
NUMBERS = ["삼십사만 오천육백칠십팔", "사천칠십일", "구십칠만 삼천이백일"]


@pytest.fixture(scope="module")
def trained():
    return {family: make_model(family, seed=1, train_steps=30) for family in FAMILIES}


def contains_word(tokens: list[int], phrase: list[int]) -> bool:
    """Whether phrase occurs in tokens followed by a boundary piece (or the end)."""
    n = len(phrase)
    return any(tokens[i : i + n] == phrase and (i + n == len(tokens) or bool(BOUNDARY[tokens[i + n]]))
               for i in range(len(tokens) - n + 1))


# each sentence's constraints: phrases of word-start pieces and word-continuing ones
WANTED = [[[[6, 7]]], [], [[[8]], [[10, 11, 12]]], [], [[[14], [16, 17]]], [], [[[20]], [[22]], [[5]]], []]


@pytest.mark.parametrize("family", FAMILIES)
def test_unconstrained_sentences_decode_as_plain_search_and_every_constraint_appears(trained, family) -> None:
    model = trained[family]
    src, lengths = collate_source(sources(len(WANTED)))
    plain = beam_search(model, src, lengths, beam_size=4, nbest=2)
    out = beam_search(model, src, lengths, beam_size=4, nbest=2, constraints=Constraints(WANTED, BOUNDARY))
    for p, o, wanted in zip(plain, out, WANTED, strict=True):
        if not wanted:  # token for token, scores and n-best included
            assert o.tokens == p.tokens and o.score == pytest.approx(p.score, abs=1e-6)
            assert [h.tokens for h in o.nbest] == [h.tokens for h in p.nbest]
            continue
        for hyp in o.nbest:  # every constraint met, as whole words, in every one of the n best
            assert all(any(contains_word(hyp.tokens, alt) for alt in c) for c in wanted), (hyp.tokens, wanted)
    # the constraints changed what the model would have said (the test is not empty)
    assert any(o.tokens != p.tokens for o, p, w in zip(out, plain, WANTED, strict=True) if w)


def test_whole_words_and_disjunction() -> None:
    c = Constraints([[[[6]]], [[[6], [8, 9]]]], BOUNDARY)
    c.start(torch.tensor([0, 0, 1, 1]))
    # rows: w6 then x7 (a longer word: not met); w6 then w8 (met); x9; w8 x9 then </s> (met)
    for tokens in ([6, 6, 5, 8], [7, 8, 9, 9]):
        assert not c.satisfied().all()
        c.advance(torch.arange(4), torch.tensor(tokens), c.sentence)
    assert c.satisfied().tolist() == [False, True, False, True]
    assert c.met.tolist() == [[False], [True], [False], [False]]  # row 3: met once </s> comes
    log_probs = torch.zeros(4, VOCAB)
    c.mask(log_probs, torch.tensor([10, 10, 2, 10]), t=2)  # no </s> before constraints, unless at the limit
    assert torch.isinf(log_probs[:, EOS_ID]).tolist() == [True, False, False, False]


@pytest.mark.parametrize("family", FAMILIES)
def test_with_a_prefix_and_int8(trained, family) -> None:
    model = quantize_int8(trained[family]) if family == "transformer" else trained[family]
    src, lengths = collate_source(sources(4, seed=9))
    prefix = [[4, 6], [], [12], []]
    wanted = [[[[8]]], [[[10, 11]]], [], [[[18]], [[20]]]]
    steering = Steering(4, prefix=prefix)
    out = beam_search(model, src, lengths, beam_size=3, steering=steering, constraints=Constraints(wanted, BOUNDARY))
    plain = beam_search(model, src, lengths, beam_size=3, steering=Steering(4, prefix=prefix))
    for hyp, p, forced, w in zip(out, plain, prefix, wanted, strict=True):
        assert hyp.tokens[: len(forced)] == forced
        assert all(any(contains_word(hyp.tokens, alt) for alt in c) for c in w)
        if not w:
            assert hyp.tokens == p.tokens


def test_phrase_alternatives_are_checked() -> None:
    assert phrase_alternatives({"any": ["Hund", " Hunde "]}, "x") == ["Hund", "Hunde"]
    for bad in ["  ", {"any": []}, {"all": ["a"]}, 3, {"any": ["a", 4]}]:
        with pytest.raises(NMTKitError, match="constraint 2"):
            phrase_alternatives(bad, "constraint 2")


def test_translator_constraints_nbest_and_errors(numbers_checkpoint) -> None:
    t = Translator.load(numbers_checkpoint)
    plain = t.translate(NUMBERS, beam=5)
    wanted = [["seventy"], [], ["two thousand", {"any": ["nine", "eight"]}]]
    out = t.translate(NUMBERS, beam=5, nbest=2, constraints=wanted, return_details=True)
    assert out[1].text == plain[1]
    assert "seventy" in out[0].text.replace("-", " ").split()  # punctuation ends a word
    for d in out[2].nbest:
        words = d.text.split()
        assert "two thousand" in d.text and ("nine" in words or "eight" in words)
    assert "two thousand" not in plain[2]  # the constraint made a difference
    # with a prefix, and beam 1
    (text,) = t.translate(NUMBERS[:1], beam=1, prefix=["three hundred "], constraints=[["two"]])
    assert text.startswith("three hundred ") and "two" in text.split()
    # whole words: "four" is not met by "fourteen"
    (text,) = t.translate(["사천칠십일"], beam=5, constraints=[["four"]])
    assert "four" in text.split()
    with pytest.raises(NMTKitError, match="cannot spell 'Hund'"):
        t.translate(NUMBERS[:1], constraints=[["Hund"]])
    with pytest.raises(NMTKitError, match="sentence 1: its constraints need"):
        t.translate(NUMBERS[:1], max_len_a=0, max_len_b=3, constraints=[["two thousand", "nine hundred"]])
    with pytest.raises(NMTKitError, match="2 constraint lists for 1 sentences"):
        t.translate(NUMBERS[:1], constraints=[[], []])
    with pytest.raises(NMTKitError, match="not sampling"):
        t.translate(NUMBERS[:1], sample=True, constraints=[["two"]])


def test_glossary_terms_whole_words_case_and_errors(tmp_path) -> None:
    from nmtkit.glossary import merge, read_glossary

    path = tmp_path / "g.tsv"
    path.write_text("# a comment\nred ball\troter Ball\nball\tBall\ndog\tHund\ndog\tHunde\n\n", encoding="utf-8")
    g = read_glossary(path)
    assert g.constraints("A red ball and a dog.") == ["roter Ball", {"any": ["Hund", "Hunde"]}]
    assert g.constraints("Balls, dogs, a Dog") == []  # whole words, case-sensitive
    assert read_glossary(path, ignore_case=True).constraints("A Dog.") == [{"any": ["Hund", "Hunde"]}]
    assert merge(g, ["a ball", "x"], [["Spiel"], []]) == [["Spiel", "Ball"], []]
    for text, line in (("a\tb\nno tab here\n", 2), ("a\tb\tc\n", 1), ("\tb\n", 1)):
        path.write_text(text, encoding="utf-8")
        with pytest.raises(NMTKitError, match=f"line {line}: expected 'source term<TAB>target term'"):
            read_glossary(path)
    path.write_bytes(b"a\tb\n\xff\tc\n")
    with pytest.raises(NMTKitError, match="line 2: not valid UTF-8"):
        read_glossary(path)


def test_cli_glossary_jsonl_constraints_and_the_service(numbers_checkpoint, tmp_path, capsys) -> None:
    import json

    from fastapi.testclient import TestClient

    from nmtkit.cli import main
    from nmtkit.glossary import read_glossary
    from nmtkit.server import ServeSettings, create_app

    glossary = tmp_path / "g.tsv"
    glossary.write_text("사천칠십일\tfour thousand\n", encoding="utf-8")
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        {"source": NUMBERS[0], "constraints": [{"any": ["two", "nine"]}]}, {"source": NUMBERS[1]}]) + "\n",
        encoding="utf-8")
    ckpt = str(numbers_checkpoint)
    assert main(["translate", "--checkpoint", ckpt, "--input", str(inputs), "--input-format", "jsonl",
                 "--glossary", str(glossary), "--beam", "4"]) == 0
    first, second = capsys.readouterr().out.splitlines()
    assert {"two", "nine"} & set(first.split()) and second.startswith("four thousand")
    glossary.write_text("a\tb\nbroken\n", encoding="utf-8")
    assert main(["translate", "--checkpoint", ckpt, "--input", str(inputs), "--glossary", str(glossary)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "line 2: expected 'source term<TAB>target term'" in err
    inputs.write_text(json.dumps({"source": NUMBERS[0], "constraints": ["Hund"]}) + "\n", encoding="utf-8")
    assert main(["translate", "--checkpoint", ckpt, "--input", str(inputs), "--input-format", "jsonl"]) == 2
    assert "line 1: constraint 1 'Hund': the target vocabulary cannot spell" in capsys.readouterr().err

    glossary.write_text("사천칠십일\tfour thousand\n", encoding="utf-8")
    src, ref, out = tmp_path / "src.txt", tmp_path / "ref.txt", tmp_path / "out.txt"
    src.write_text(NUMBERS[1] + "\n", encoding="utf-8")
    ref.write_text("four thousand seventy-one\n", encoding="utf-8")
    assert main(["evaluate", "--checkpoint", ckpt, "--src", str(src), "--ref", str(ref), "--output", str(out),
                 "--glossary", str(glossary)]) == 0
    assert out.read_text(encoding="utf-8").startswith("four thousand")
    glossary.write_text("사천칠십일\tvier Hund\n", encoding="utf-8")
    assert main(["evaluate", "--checkpoint", ckpt, "--src", str(src), "--ref", str(ref),
                 "--glossary", str(glossary)]) == 2
    assert f"{src} line 1: constraint 1 'vier Hund': the target vocabulary cannot spell" in capsys.readouterr().err
    glossary.write_text("사천칠십일\tfour thousand\n", encoding="utf-8")
    t = Translator.load(numbers_checkpoint)
    with TestClient(create_app(t, ServeSettings(), read_glossary(glossary))) as client:
        r = client.post("/translate", json={"text": NUMBERS[:2], "constraints": [[{"any": ["two", "nine"]}], []]})
        first, second = (x["text"] for x in r.json()["translations"])
        assert {"two", "nine"} & set(first.split()) and second.startswith("four thousand")
        r = client.post("/translate", json={"text": NUMBERS[:1], "constraints": [["Hund"]]})
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "constraints[0][0]"
        r = client.post("/translate", json={"text": NUMBERS[:1], "constraints": [[], []]})
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "constraints"


def test_glossary_with_a_utf8_bom_matches_its_first_term(tmp_path):
    """Windows editors save a BOM: it must not become part of line 1's source term."""
    from nmtkit.glossary import read_glossary
    path = tmp_path / "g.tsv"
    path.write_bytes("\ufeffball\tBall\r\nred\trot\r\n".encode("utf-8"))
    assert read_glossary(path).constraints("a red ball") == ["rot", "Ball"]


def test_service_checks_constraints_that_cannot_fit_or_are_not_text(numbers_checkpoint) -> None:
    """A lone surrogate (a JSON escape) in a constraint, or constraints longer than the output may
    be, is a 422 naming the field before the request joins a batch; and where a batch still fails
    for one request, its neighbours get their own answers."""
    from fastapi.testclient import TestClient

    from nmtkit.server import Batcher, ServeSettings, _Job, _Metrics, create_app

    t = Translator.load(numbers_checkpoint)
    with pytest.raises(NMTKitError, match="lone surrogate"):
        t.translate(NUMBERS[:1], constraints=[["\ud800"]])
    too_long = " ".join(["two"] * 300)
    with TestClient(create_app(t, ServeSettings())) as client:
        r = client.post("/translate", content=b'{"text": ["x"], "constraints": [["\\ud800"]]}',
                        headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "constraints[0][0]", r.text
        r = client.post("/translate", json={"text": NUMBERS[:2], "constraints": [[], [too_long]]})
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["field"] == "constraints[1]" and "300 target pieces" in r.text
        r = client.post("/alternatives", json={"source": NUMBERS[0], "constraints": [too_long]})
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "constraints[0]", r.text
    # two jobs taken together, one of them with constraints that cannot fit (as the alternatives'
    # longer prefixes can make them): the other is answered
    batcher = Batcher(t, ServeSettings(), _Metrics())
    options = {"beam": 2, "nbest": 1, "all_attention": False, "attention": False, "alignment": False}
    jobs = [_Job("translate", ("translate",), {"sources": NUMBERS[:1], "prefix": [""], "options": options,
                                              "constraints": c}, 5) for c in ([[too_long]], None)]
    batcher.pending.extend(jobs)
    batcher.start()
    with pytest.raises(NMTKitError, match="300 target pieces"):
        jobs[0].future.result(60)
    (translation, _), = jobs[1].future.result(60)
    assert translation.text == t.translate(NUMBERS[:1], beam=2)[0]
    assert batcher.model_calls >= 2
    batcher.stop()


def test_glossary_matches_decomposed_text_and_folds_case_without_failing(tmp_path):
    """Text in NFD (macOS: Hangul as jamo, "e" + a combining accent) meets its NFC glossary term;
    with ignore-case, letters that re.IGNORECASE matched but lower() did not map ("ı", "ſ", "İ")
    raised KeyError, and "STRASSE" missed "straße"."""
    import unicodedata

    from nmtkit.glossary import read_glossary
    path = tmp_path / "g.tsv"
    path.write_text("사천칠십일\tfour thousand\ncafé\tCafé\n", encoding="utf-8")
    nfd = unicodedata.normalize("NFD", "사천칠십일 au café")
    assert nfd != unicodedata.normalize("NFC", nfd)
    assert read_glossary(path).constraints(nfd) == ["four thousand", "Café"]
    path.write_text("dig\tgraben\nsun\tSonne\nistanbul\tIstanbul\nstraße\tStraße\n", encoding="utf-8")
    g = read_glossary(path, ignore_case=True)
    assert g.constraints("DıG İstanbul") == []  # other letters than i, not an error
    assert g.constraints("ſun STRASSE") == ["Sonne", "Straße"]


def test_cli_names_the_line_whose_glossary_constraints_cannot_fit(numbers_checkpoint, tmp_path, capsys):
    """A glossary that puts more on a sentence than its output may hold: one line naming the
    input line (it named "sentence 1", its place in the chunk being translated)."""
    from nmtkit.cli import main

    glossary, src = tmp_path / "g.tsv", tmp_path / "in.txt"
    glossary.write_text("사천칠십일\t" + " ".join(["two"] * 18) + "\n", encoding="utf-8")
    src.write_text(f"{NUMBERS[0]}\n{NUMBERS[2]}\n{NUMBERS[1]}\n", encoding="utf-8")
    ckpt = str(numbers_checkpoint)
    assert main(["translate", "--checkpoint", ckpt, "--input", str(src), "--glossary", str(glossary),
                 "--chunk-lines", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{src} line 3: its constraints need 18 target pieces" in err, err
    ref = tmp_path / "ref.txt"
    ref.write_text("x\n" * 3, encoding="utf-8")
    assert main(["evaluate", "--checkpoint", ckpt, "--src", str(src), "--ref", str(ref),
                 "--glossary", str(glossary)]) == 2
    assert f"{src} line 3: its constraints need 18" in capsys.readouterr().err
    # --max-len-b raises the limit: the same line then translates with its constraint
    assert main(["translate", "--checkpoint", ckpt, "--input", str(src), "--glossary", str(glossary),
                 "--max-len-b", "40"]) == 0
    assert capsys.readouterr().out.splitlines()[2].replace("-", " ").split().count("two") >= 18


def test_constraints_on_an_empty_sentence_are_an_error_not_dropped(numbers_checkpoint) -> None:
    """An empty sentence translates to "", which cannot hold a constraint: the constraint was
    dropped without a word (200 and "" from the service)."""
    from fastapi.testclient import TestClient

    from nmtkit.server import ServeSettings, create_app

    t = Translator.load(numbers_checkpoint)
    with pytest.raises(NMTKitError, match="sentence 2: it is empty"):
        t.translate([NUMBERS[0], "  "], constraints=[[], ["two"]])
    assert t.translate([NUMBERS[0], ""], constraints=[["two"], []])[1] == ""  # none asked: fine
    with TestClient(create_app(t, ServeSettings())) as client:
        r = client.post("/translate", json={"text": [""], "constraints": [["two"]]})
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "constraints[0]", r.text


def test_a_constraint_given_twice_counts_once(numbers_checkpoint) -> None:
    """One occurrence meets a constraint given twice (or an "any" with the same phrases in
    another order), so its pieces count once against the output's length: before, a pair that
    fits was refused as needing twice the pieces."""
    t = Translator.load(numbers_checkpoint)
    pieces = len(t.constraint_ids("two thousand"))
    limit = {"max_len_a": 0, "max_len_b": pieces + 1}
    (once,) = t.translate(NUMBERS[:1], beam=5, constraints=[["two thousand"]], **limit)
    (twice,) = t.translate(NUMBERS[:1], beam=5, constraints=[["two thousand", "two thousand"]], **limit)
    assert twice == once and "two thousand" in twice
    either = [{"any": ["nine", "eight"]}, {"any": ["eight", "nine"]}]
    (text,) = t.translate(NUMBERS[:1], beam=5, constraints=[either], max_len_a=0,
                          max_len_b=len(t.constraint_ids("nine")) + 1)
    assert {"nine", "eight"} & set(text.split())
