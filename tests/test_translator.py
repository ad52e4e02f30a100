"""The Python API and `nmtkit translate` on tiny trained checkpoints of both model families."""

import copy
import io
import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from nmtkit.cli import main
from nmtkit.config import Config, TransformerConfig
from nmtkit.errors import NMTKitError, NMTKitWarning
from nmtkit.quantize import PackedLinear, can_pack, pack_linears, quantize_int8
from nmtkit.training import train
from nmtkit.translator import Translator
from tests.conftest import train_on_numbers

REPO = Path(__file__).resolve().parents[1]
TRANSFORMER = TransformerConfig(d_model=32, heads=2, ff_size=64, encoder_layers=1, decoder_layers=1)


def train_run(cfg: Config, name: str, family: str = "rnn", **training) -> Path:
    """A checkpoint trained for one short epoch, in its own run folder."""
    update: dict = {"training": cfg.training.model_copy(
        update={"out_dir": cfg.training.out_dir.parent / name, **training})}
    if family == "transformer":
        update["model"] = TRANSFORMER
    return train(cfg.model_copy(update=update)) / "best"


def some_sources(cfg: Config, n: int = 10) -> list[str]:
    lines = cfg.data.test_src.read_text(encoding="utf-8").splitlines()[:n]
    return lines[:3] + [""] + lines[3:6] + ["   "] + lines[6:]  # blank lines among them


@pytest.mark.parametrize("family", ["rnn", "transformer"])
def test_translate_beam_nbest_batching_and_details(tiny_config, family) -> None:
    t = Translator.load(train_run(tiny_config, family, family))
    sentences = some_sources(tiny_config)
    out = t.translate(sentences, beam=5)
    assert len(out) == len(sentences) and all(isinstance(s, str) for s in out)
    assert out[3] == "" and out[7] == ""
    # one sentence per batch, or all in one: the same translations, in input order
    assert t.translate(sentences, batch_tokens=1, beam=5) == out
    assert t.translate(sentences, batch_tokens=1) == t.translate(sentences, batch_tokens=100_000)
    details = t.translate(sentences, beam=5, nbest=3, return_details=True)
    assert [d.text for d in details] == out
    for d, source in zip(details, sentences, strict=True):
        assert len(d.nbest) == 3
        if not source.strip():
            assert d.text == "" and d.tokens == [] and all(alt.text == "" for alt in d.nbest)
            continue
        scores = [alt.score for alt in d.nbest]
        assert scores == sorted(scores, reverse=True) and d.nbest[0].score == d.score
        assert len({tuple(alt.tokens) for alt in d.nbest}) == 3
        assert len(d.attention) == len(d.tokens) + 1  # target tokens + </s>
        assert all(len(row) == len(d.source_tokens) for row in d.attention)
    # sampling: the same seed gives the same samples
    assert t.translate(sentences, sample=True, seed=7) == t.translate(sentences, sample=True, seed=7)
    with pytest.raises(NMTKitError, match="nbest"):
        t.translate(sentences, beam=2, nbest=3)


def test_ensembles(tiny_config) -> None:
    rnn = train_run(tiny_config, "rnn")
    transformer = train_run(tiny_config, "transformer", "transformer")  # same data, same vocab
    sentences = some_sources(tiny_config)
    for path in (rnn, transformer):  # an ensemble of one is the checkpoint alone
        alone = Translator.load(path).translate(sentences, beam=4, return_details=True)
        ensemble = Translator.load([path]).translate(sentences, beam=4, return_details=True)
        assert [(d.tokens, d.score) for d in ensemble] == [(d.tokens, d.score) for d in alone]
    pair = Translator.load([rnn, transformer])
    both = pair.translate(sentences, beam=4, return_details=True)
    assert [d.text for d in both][3] == ""
    for path in (rnn, transformer):
        alone = Translator.load(path).translate(sentences, beam=4, return_details=True)
        assert all(b.score != a.score for a, b in zip(alone, both, strict=True) if a.tokens)
    other_vocab = train_run(tiny_config.model_copy(update={
        "vocab": tiny_config.vocab.model_copy(update={"size": 50}),
        "data": tiny_config.data.model_copy(update={"out_dir": tiny_config.data.out_dir.parent / "bin50"}),
    }), "other")
    with pytest.raises(NMTKitError, match="vocabularies differ") as err:
        Translator.load([rnn, other_vocab])
    assert str(rnn) in str(err.value) and str(other_vocab) in str(err.value)


@pytest.mark.avx2
@pytest.mark.parametrize("family", ["rnn", "transformer"])
def test_int8_quantized_translation(tiny_config, family) -> None:
    path = train_run(tiny_config, family, family)
    sentences = some_sources(tiny_config)
    t = Translator.load(path, quantize="int8")
    assert not any(type(m) is torch.nn.Linear for m in t.model.modules())  # all replaced
    out = t.translate(sentences, beam=3)
    assert len(out) == len(sentences) and all(isinstance(s, str) for s in out)
    assert out[3] == "" and out[7] == ""


@pytest.mark.avx2
@pytest.mark.parametrize("family", ["rnn", "transformer"])
def test_packed_linear_layers_translate_as_plain_ones(tiny_config, family) -> None:
    path = train_run(tiny_config, f"{family}-pack", family)
    sentences = some_sources(tiny_config)
    plain = Translator.load(path, pack=False)
    packed = Translator.load(path, pack=True)  # forced: correct on every CPU, fast where it pays
    linears = [m for m in plain.model.modules() if type(m) is torch.nn.Linear]
    if not can_pack():
        pytest.skip("this PyTorch build has no oneDNN")
    assert linears and not any(type(m) is torch.nn.Linear for m in packed.model.modules())
    assert sum(isinstance(m, PackedLinear) for m in packed.model.modules()) == len(linears)
    assert packed.model.state_dict().keys() == plain.model.state_dict().keys()
    for beam in (1, 3):
        expected = plain.translate(sentences, beam=beam, return_details=True)
        got = packed.translate(sentences, beam=beam, return_details=True)
        assert [t.text for t in got] == [t.text for t in expected]
        assert [t.score for t in got] == pytest.approx([t.score for t in expected], abs=1e-4)


@pytest.mark.avx2
def test_packed_linear_shares_its_parameters_and_follows_their_changes() -> None:
    if not can_pack():
        pytest.skip("this PyTorch build has no oneDNN")
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(50, 16)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 50))
    model[2].weight = embedding.weight  # tied, as model.tie_output does
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        expected = model(x)
        assert pack_linears(model) == 2
        assert model[2].weight is embedding.weight  # the tie survives
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
        embedding.weight.mul_(2)  # an in-place update (an optimizer step): packed again
        doubled = model(x)
    torch.testing.assert_close(doubled - model[2].bias, 2 * (expected - model[2].bias), atol=1e-4,
                               rtol=1e-4)
    model(x).sum().backward()  # with autograd on, the plain path: gradients reach the weights
    assert model[0].weight.grad is not None and embedding.weight.grad.abs().sum() > 0
    copied = copy.deepcopy(model)  # packed afresh: the oneDNN copy itself cannot be copied
    assert copied[2].weight is not model[2].weight
    with torch.no_grad():
        torch.testing.assert_close(copied(x), model(x), atol=1e-5, rtol=1e-5)
        copied[2].weight.zero_()
        assert torch.equal(copied(x), copied[2].bias.expand(3, 5, 50))


@pytest.mark.avx2
def test_packed_layers_quantize_and_pack_in_inference_mode_and_under_autocast() -> None:
    if not can_pack():
        pytest.skip("this PyTorch build has no oneDNN")
    with torch.inference_mode():  # parameters made here are inference tensors
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4, bias=False))
        x = torch.randn(3, 8)
        expected = model(x)
    assert pack_linears(model) == 2
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
        with torch.autocast("cpu", torch.bfloat16):
            assert model(x).dtype == torch.bfloat16  # as nn.Linear under autocast
    quantized = quantize_int8(model)  # packed layers are quantized, not skipped
    int8 = torch.ao.nn.quantized.dynamic.Linear
    assert [type(m) for m in quantized] == [int8, int8]
    assert all(isinstance(m, PackedLinear) for m in model)  # the original keeps its layers

    layer = PackedLinear(torch.nn.Linear(8, 4))
    with torch.no_grad():
        layer.weight.data.zero_()  # a change autograd cannot see: repack() picks it up
        layer.repack()
        torch.testing.assert_close(layer(x), layer.bias.expand(3, 4))


def run_main(monkeypatch, capsys, stdin: str, *args: str) -> str:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    capsys.readouterr()  # drop what came before (training logs)
    assert main(["translate", *args]) == 0
    return capsys.readouterr().out


def test_cli_translate_formats(tiny_config, monkeypatch, capsys) -> None:
    ckpt = str(train_run(tiny_config, "rnn"))
    sentences = some_sources(tiny_config, 6)
    stdin = "".join(s + "\n" for s in sentences)
    n = len(sentences)
    text = run_main(monkeypatch, capsys, stdin, "--checkpoint", ckpt, "--beam", "3")
    assert text.split("\n")[:-1] == Translator.load(ckpt).translate(sentences, beam=3)
    lines = run_main(monkeypatch, capsys, stdin, "--checkpoint", ckpt, "--beam", "3", "--nbest", "2",
                     "--length-penalty", "0").split("\n")[:-1]
    assert len(lines) == 2 * n and lines[6:8] == ["", ""]  # 2 lines per input, input 3 is empty
    records = [json.loads(line) for line in run_main(
        monkeypatch, capsys, stdin, "--checkpoint", ckpt, "--beam", "3", "--nbest", "2",
        "--output-format", "jsonl").splitlines()]
    assert len(records) == n and records[3]["translation"] == "" and records[3]["tokens"] == []
    assert [r["translation"] for r in records] == [r["nbest"][0]["translation"] for r in records]
    assert all(len(r["nbest"]) == 2 and isinstance(r["score"], float) for r in records)
    # two copies of one checkpoint (an ensemble) translate as the checkpoint does
    assert run_main(monkeypatch, capsys, stdin, "--checkpoint", ckpt, "--checkpoint", ckpt,
                    "--beam", "3") == text
    sampled = [run_main(monkeypatch, capsys, stdin, "--checkpoint", ckpt, "--sample", "--seed", "3",
                        "--top-p", "0.9", "--temperature", "1.5") for _ in range(2)]
    assert sampled[0] == sampled[1] and sampled[0].count("\n") == n
    quantized = run_main(monkeypatch, capsys, stdin, "--checkpoint", ckpt, "--quantize", "int8")
    assert quantized.count("\n") == n


def test_cli_answers_each_line_before_the_next(tiny_config) -> None:
    """A program that writes a line and waits for its translation must get it (no read-ahead
    that waits for a full chunk)."""
    ckpt = str(train_run(tiny_config, "rnn"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "nmtkit.cli", "translate", "--checkpoint", ckpt],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    answers: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [answers.put(line) for line in proc.stdout], daemon=True).start()
    try:
        for sentence in ["삼십", "", "칠백"]:
            proc.stdin.write(sentence + "\n")
            proc.stdin.flush()
            answer = answers.get(timeout=30)  # stdin is still open: the answer came on its own
            assert (answer == "\n") == (sentence == "")
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()




@pytest.mark.parametrize("bad, error", [
    ("삼십", "translate takes a list of sentences; for one, pass \\['삼십'\\]"),
    (None, "not NoneType"),
    (["삼십", 3], "sentence 1 is a int, not a str"),
    ([b"x"], "sentence 0 is a bytes"),
])
def test_api_refuses_what_is_not_a_list_of_strings(tiny_config, bad, error) -> None:
    t = Translator.load(train_run(tiny_config, "api", max_steps=1))
    with pytest.raises(TypeError, match=error):
        t.translate(bad)
    for options, message in (({"beam": 0}, "beam must be"), ({"temperature": float("nan"), "sample": True},
                             "temperature must be a finite"), ({"length_penalty": -1}, "length_penalty must"),
                             ({"nbest": 10**6, "beam": 10**6}, "at most 256"), ({"too_long": "crop"}, "too_long"),
                             ({"sample": True, "seed": "x"}, "seed must be"),
                             ({"sample": True, "seed": 2**64}, "seed must be")):
        with pytest.raises(NMTKitError, match=message):
            t.translate(["삼십"], **options)
    # what only a Translation can hold is not silently dropped from plain strings
    for options, message in (({"alignment": True}, "alignment needs return_details=True"),
                             ({"all_attention": True}, "all_attention needs return_details"),
                             ({"attention_layer": 0}, "attention_layer needs return_details"),
                             ({"alignment_layer": 0}, "alignment_layer=0 needs alignment=True"),
                             ({"alignment_layer": 0, "return_details": True}, "needs alignment=True")):
        with pytest.raises(NMTKitError, match=message):
            t.translate(["삼십"], **options)
    (details,) = t.translate(["삼십"], alignment=True, return_details=True)
    assert details.alignment is not None
    # a lone surrogate is not text (sentencepiece would fail with a C++ cast error): every entry
    with pytest.raises(NMTKitError, match=r"sentences\[1\] holds a lone surrogate \(\\ud800 at character 3"):
        t.translate(["삼십", "ab\ud800"])
    with pytest.raises(NMTKitError, match=r"prefix\[0\] holds a lone surrogate"):
        t.translate(["삼십"], prefix=["\udc00 "])
    with pytest.raises(NMTKitError, match=r"targets\[0\] holds a lone surrogate"):
        t.score(["삼십"], ["\ud800"])
    with pytest.raises(NMTKitError, match="source holds a lone surrogate"):
        t.alternatives("\ud800", "")


@pytest.mark.parametrize("family", ["rnn", "transformer"])
def test_translations_never_depend_on_the_rest_of_the_batch(tiny_config, family) -> None:
    import random

    t = Translator.load(train_run(tiny_config, f"b-{family}", family, max_steps=20, valid_bleu=False))
    words = tiny_config.data.train_src.read_text(encoding="utf-8").split()
    rng = random.Random(0)
    sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(200)]
    for beam in (1, 5):
        batched = t.translate(sentences, beam=beam, return_details=True, attention=False)
        alone = [t.translate([s], beam=beam, return_details=True, attention=False)[0] for s in sentences]
        assert [b.tokens for b in batched] == [a.tokens for a in alone]
        assert [b.score for b in batched] == pytest.approx([a.score for a in alone], abs=1e-4)


def test_inputs_past_the_limit_are_truncated_with_a_warning_for_the_rnn_too(tiny_config) -> None:
    from nmtkit.errors import NMTKitWarning

    t = Translator.load(train_run(tiny_config, "long", max_steps=1))
    long = " ".join(["삼십사만"] * 3000)  # the RNN has no positions to run out of: still capped
    with pytest.warns(NMTKitWarning, match="1 input\\(s\\) longer than 40 subword tokens were truncated"):
        out = t.translate(["삼십", long])
    assert len(out) == 2 and t.last_too_long == [1]
    with pytest.raises(NMTKitError, match="input 2 has"):
        t.translate(["삼십", long], too_long="error")


def test_inputs_far_longer_than_any_training_source_translate_with_a_warning(tiny_config) -> None:
    import warnings

    from nmtkit.errors import NMTKitWarning

    t = Translator.load(train_run(tiny_config, "unusual", max_steps=1))
    longest = t.longest_train_source
    assert 0 < longest < 20 and t.max_input_tokens == 40
    words = []
    while len(t.src_tok.encode(" ".join(words))) <= max(int(1.5 * longest), longest + 10):
        words.append("삼십사")
    with pytest.warns(NMTKitWarning, match=f"1 input\\(s\\) far longer than any training source \\(the "
                      f"longest had {longest} subword tokens; input 2 has"):
        out = t.translate(["삼십", " ".join(words)])
    assert len(out) == 2 and t.last_too_long == []  # translated whole, not truncated
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t.translate(["삼십", " ".join(words[:-1])])  # at the threshold: no warning


def test_translation_prints_politely(tiny_config) -> None:
    t = Translator.load(train_run(tiny_config, "repr", max_steps=1))
    (r,) = t.translate(["삼십 사"], beam=2, nbest=2, return_details=True)
    text = repr(r)
    assert text.startswith("Translation(text=") and "nbest=2" in text and "attention=" in text
    assert len(text) < 200  # no wall of floats


NUMBERS = ["삼십사만 오천육백칠십팔", "구십칠만 삼천이백일", "사천칠십일", "육만 팔천구백십오"]


@pytest.mark.parametrize("options", [{"beam": 1}, {"beam": 5}, {"sample": True, "seed": 3}])
def test_translations_begin_with_the_prefix_even_mid_word(numbers_checkpoint, options) -> None:
    t = Translator.load(numbers_checkpoint)
    plain = t.translate(NUMBERS, **options)
    assert t.translate(NUMBERS, prefix=[""] * 4, **options) == plain  # empty prefix: plain
    prefixes = ["three hundred ", "nine hundred sev", "four thou", "sixty-"]
    out = t.translate(NUMBERS, prefix=prefixes, **options)
    for text, prefix in zip(out, prefixes, strict=True):
        assert text.startswith(prefix), (text, prefix)
    assert out[1].startswith("nine hundred seventy")  # the word typed in part was completed
    assert out[2].startswith("four thousand")
    forced = t.translate(["사천칠십일"], prefix=["eight hundred "], **options)[0]
    assert forced.startswith("eight hundred ") and forced != plain[2]  # even an unlikely prefix


@pytest.mark.parametrize("options", [{"beam": 1}, {"beam": 3}, {"sample": True, "seed": 1}])
def test_a_prefix_the_model_cannot_produce_is_one_clear_error(numbers_checkpoint, options) -> None:
    t = Translator.load(numbers_checkpoint)
    with pytest.raises(NMTKitError, match="cannot spell '☃'"):
        t.translate(["삼십 사"], prefix=["thirty ☃ "], **options)
    with pytest.raises(NMTKitError, match="cannot spell"):
        t.alternatives("삼십 사", prefix="☃", k=3)
    assert t.max_output_tokens is None and t.longest_output == 2 * t.max_input_tokens  # an RNN
    for prefix in ("one " * t.longest_output, "one " * 400, "one " * t.longest_output + "tw"):
        with pytest.raises(NMTKitError, match="pieces; this model's outputs are at most"):
            t.translate(["삼십 사"], prefix=[prefix], **options)
        with pytest.raises(NMTKitError, match="pieces; this model's outputs are at most"):
            t.alternatives("삼십 사", prefix=prefix, k=2)


def test_a_prefix_and_its_continuation_score_as_forced_decoding(numbers_checkpoint) -> None:
    t = Translator.load(numbers_checkpoint)
    prefixes = ["three hundred forty ", "nine hundred ", "", "sixty-eight thousand nine "]
    found = t.translate(NUMBERS, beam=5, length_penalty=0.0, prefix=prefixes, return_details=True)
    scored = t.score(NUMBERS, [f.text for f in found])
    for f, s in zip(found, scored, strict=True):
        assert t.tgt_tok.pieces(t.tgt_tok.encode(f.text)) == f.tokens  # the same pieces
        assert f.score == pytest.approx(s.log_prob, abs=1e-4)  # alpha 0: the score is the log-prob


def test_score_is_minus_the_cross_entropy_and_batching_changes_nothing(numbers_checkpoint) -> None:
    from nmtkit.data import collate

    t = Translator.load(numbers_checkpoint)
    targets = ["three hundred forty-five thousand six hundred seventy-eight", "nine hundred", "",
               "sixty-eight thousand nine hundred fifteen"]
    scores = t.score(NUMBERS, targets)
    alone = [t.score([s], [r])[0] for s, r in zip(NUMBERS, targets, strict=True)]
    for s, a, ref in zip(scores, alone, targets, strict=True):
        src, tgt = t.src_tok.encode(s_ := NUMBERS[targets.index(ref)]), t.tgt_tok.encode(ref)
        batch = collate([(src, tgt)], [0])
        with torch.no_grad():
            log_probs = t.model(batch.src, batch.src_lengths, batch.tgt_in)
        ce = torch.nn.functional.cross_entropy(log_probs[0], batch.tgt_out[0], reduction="sum")
        assert s.log_prob == pytest.approx(-ce.item(), abs=1e-4), s_
        assert s.log_prob == pytest.approx(a.log_prob, abs=1e-5)
        assert s.tokens[-1] == "</s>" and len(s.token_scores) == len(s.tokens) == len(tgt) + 1
        assert s.normalized == pytest.approx(s.log_prob / len(s.tokens))
    assert scores[0].log_prob > scores[1].log_prob  # the right translation is the likelier one
    with pytest.raises(NMTKitError, match="4 sources but 3 targets"):
        t.score(NUMBERS, targets[:3])
    # an endless target is cut at a bound (with a warning), or refused with too_long: error
    endless = " ".join(["nine"] * 5000)
    limit = t.max_output_tokens or 2 * t.max_input_tokens
    with pytest.warns(NMTKitWarning, match=f"scored on their first {limit}"):
        (cut,) = t.score([NUMBERS[0]], [endless])
    assert len(cut.tokens) == limit + 1 and cut.truncated and not cut.unknown
    with pytest.raises(NMTKitError, match="target 1 has 5000 subword tokens"):
        t.score([NUMBERS[0]], [endless], too_long="error")
    # a target the vocabulary cannot spell is scored as <unk> pieces: a warning, and a count
    with pytest.warns(NMTKitWarning, match="1 target\\(s\\) hold characters the target vocabulary "
                      "cannot spell.*target 2, '三百'"):
        plain, unspellable = t.score(NUMBERS[:2], ["three hundred", "three 三百"])
    assert plain.unknown == 0 and not plain.truncated
    assert unspellable.unknown == unspellable.tokens.count("<unk>") >= 1


def test_alternatives_are_words_with_probabilities_and_their_translations(numbers_checkpoint) -> None:
    t = Translator.load(numbers_checkpoint)
    for prefix in ("three hundred ", "", "three hundred fo"):
        alts = t.alternatives(NUMBERS[0], prefix=prefix, k=5, beam=3)
        assert 1 <= len(alts) <= 5
        probabilities = [a.probability for a in alts]
        assert probabilities == sorted(probabilities, reverse=True)
        assert all(0 < p <= 1 for p in probabilities) and sum(probabilities) <= 1 + 1e-6
        assert len({a.word for a in alts}) == len(alts) and all(" " not in a.word for a in alts)
        for a in alts:  # choosing one and translating with its prefix gives its translation
            assert a.translation == a.prefix.strip() or a.translation.startswith(a.prefix)
            assert t.translate([NUMBERS[0]], prefix=[a.prefix], beam=3)[0] == a.translation
    best = t.alternatives(NUMBERS[0], prefix="three hundred ", k=3)
    assert best[0].word == "forty-five" and best[0].probability > 0.5
    assert all(a.word.startswith("fo") for a in t.alternatives(NUMBERS[0], prefix="three hundred fo", k=3))


def test_no_repeat_ngrams_and_the_repetition_penalty_break_loops(numbers_checkpoint) -> None:
    t = Translator.load(numbers_checkpoint)
    looping = ["칠백 칠백 칠백 칠백 칠백 칠백"]  # a model trained on single numbers repeats itself here
    for beam in (1, 4):
        out = t.translate(looping, beam=beam, no_repeat_ngram_size=2, max_len_b=30)[0].split()
        bigrams = list(zip(out, out[1:], strict=False))
        assert len(bigrams) == len(set(bigrams)), out
    plain = t.translate(looping, max_len_b=30, return_details=True)[0].tokens
    penalised = t.translate(looping, max_len_b=30, repetition_penalty=5.0, return_details=True)[0].tokens
    assert len(penalised) - len(set(penalised)) < len(plain) - len(set(plain))


def test_replace_unk_puts_the_attended_source_word_in_place_of_unk(numbers_checkpoint) -> None:
    t = Translator.load(numbers_checkpoint)
    from nmtkit.vocabulary import UNK_ID

    generator = t.model.generator
    with torch.no_grad():  # make <unk> the model's favourite output
        generator.bias[UNK_ID] += 30.0
    if hasattr(generator, "repack"):
        generator.repack()
    assert "⁇" not in t.translate(NUMBERS)[0]  # search never produces <unk> by default
    replaced = t.translate(NUMBERS, replace_unk=True, max_len_b=3)
    for text, source in zip(replaced, NUMBERS, strict=True):
        assert text and "⁇" not in text
        assert set(text.split()) <= set(source.split()), (text, source)


@pytest.fixture(scope="module")
def both_families(tmp_path_factory, numbers_checkpoint) -> dict[str, Path]:
    """The numbers RNN, and a Transformer trained for one short epoch on the same kind of data."""
    ckpt, _, _ = train_on_numbers(tmp_path_factory.mktemp("numbers_transformer"), TRANSFORMER.model_dump(),
                                  seed=5, n_train=600, n_valid=20, n_test=20, vocab_size=120,
                                  max_steps=40, max_tokens=1500, lr=0.003)
    return {"rnn": numbers_checkpoint, "transformer": ckpt}


def prefixes_of(sentences: list[str]) -> list[tuple[str, str]]:
    """Every word boundary of each sentence as a prefix ending in a space ("three hundred "),
    and the next word typed in part ("three hundred fo")."""
    pairs = []
    for sentence in sentences:
        words = sentence.split()
        for k in range(1, len(words)):
            head = " ".join(words[:k])
            pairs.append((f"{head} ", f"{head} {words[k][: max(1, len(words[k]) // 2)]}"))
    return pairs


@pytest.mark.parametrize("family", ["rnn", "transformer"])
def test_after_a_prefix_that_ends_in_a_space_a_new_word_begins(both_families, family) -> None:
    """"zero " must not go on as "zero-------": the piece after a finished word starts a word,
    in greedy, beam and sampling search; a word typed in part is still completed."""
    from nmtkit.democorpus import make_demo_corpus
    from nmtkit.vocabulary import WORD_START

    t = Translator.load(both_families[family])
    files = make_demo_corpus(Path(t.ckpt.path).parent / "prefix_corpus", seed=11, n_train=1, n_valid=1,
                             n_test=12)
    english = files["test"][0].read_text(encoding="utf-8").splitlines()
    korean = files["test"][1].read_text(encoding="utf-8").splitlines()
    cases = [(src, pair) for src, tgt in zip(korean, english, strict=True) for pair in prefixes_of([tgt])]
    cases += [(k, ("zero ", "zero")) for k in korean[:3]] + [(k, ("twenty-five ", "twenty-fiv")) for k in korean[:3]]
    sources = [src for src, _ in cases]
    finished = [p for _, (p, _) in cases]
    typed = [p for _, (_, p) in cases]
    assert len(cases) >= 40
    for options in ({"beam": 1}, {"beam": 4}, {"sample": True, "seed": 2, "temperature": 1.5}):
        out = t.translate(sources, prefix=finished, return_details=True, **options)
        for prefix, result in zip(finished, out, strict=True):
            n = len(t.tgt_tok.encode(prefix.strip()))
            assert "".join(result.tokens[:n]) == "".join(t.tgt_tok.pieces(t.tgt_tok.encode(prefix.strip())))
            assert len(result.tokens) == n or result.tokens[n].startswith(WORD_START), (prefix, result.tokens)
            assert result.text == prefix.strip() or result.text.startswith(prefix), (prefix, result.text)
        for prefix, text in zip(typed, t.translate(sources, prefix=typed, **options), strict=True):
            assert text.startswith(prefix), (prefix, text)  # completed, maybe past the typed letters
    for source, prefix in zip(sources[:8], finished[:8], strict=True):
        for a in t.alternatives(source, prefix=prefix, k=3, beam=2):
            assert a.prefix == f"{prefix}{a.word} " and " " not in a.word
            assert a.translation == a.prefix.strip() or a.translation.startswith(a.prefix), a


def test_an_rnn_output_stops_at_the_longest_output_whatever_max_len_asks(numbers_checkpoint) -> None:
    """The RNN has no positions to stop it: a model that never ends would decode max_len_b = 10**9
    steps (a hang); its outputs stop at longest_output, as its prefixes and scored targets do."""
    from nmtkit.vocabulary import EOS_ID

    t = Translator.load(numbers_checkpoint)
    generator = t.model.generator
    with torch.no_grad():  # a model that never ends a sentence
        generator.bias[EOS_ID] -= 1e4
    if hasattr(generator, "repack"):
        generator.repack()
    for options in ({"beam": 1}, {"beam": 3}, {"sample": True, "seed": 1}):
        (out,) = t.translate(["사천칠십일"], max_len_b=10**9, return_details=True, **options)
        assert len(out.tokens) == t.longest_output, options


@pytest.mark.parametrize("family", ["rnn", "transformer"])
def test_alternatives_batch_gives_each_request_what_it_gets_alone(both_families, family) -> None:
    """Requests with different sources (padding) and prefixes of different lengths, typed in
    part or not, decoded in shared steps: each gets its own words, translations and prefixes."""
    t = Translator.load(both_families[family])
    asks = [(NUMBERS[0], "", 3), (NUMBERS[1], "four thousand ", 2), (NUMBERS[2], "nine hundred sev", 4),
            (NUMBERS[0], "three", 3), ("", "", 2), (NUMBERS[1], "", 1)]
    alone = [t.alternatives(s, p, k, beam=2) for s, p, k in asks]
    together = t.alternatives_batch(asks, beam=2)
    assert [[(a.word, a.translation, a.prefix) for a in alts] for alts in together] == \
        [[(a.word, a.translation, a.prefix) for a in alts] for alts in alone]
    assert [[a.probability for a in alts] for alts in together] == \
        [[pytest.approx(a.probability, rel=1e-5, abs=1e-9) for a in alts] for alts in alone]
    assert alone[4] == [] and all(alone[i] for i in (0, 1, 2, 3, 5))
    # errors="return": a request's own mistake is its answer, the others go on
    mixed = t.alternatives_batch([(NUMBERS[0], "", 3), (NUMBERS[1], "☃", 2)], beam=2, errors="return")
    assert isinstance(mixed[1], NMTKitError) and mixed[0] == alone[0]
    with pytest.raises(NMTKitError, match="prefix"):
        t.alternatives_batch([(NUMBERS[0], "", 3), (NUMBERS[1], "☃", 2)])
