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
from nmtkit.errors import NMTKitError
from nmtkit.quantize import PackedLinear, can_pack, pack_linears, quantize_int8
from nmtkit.training import train
from nmtkit.translator import Translator

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


@pytest.mark.parametrize("family", ["rnn", "transformer"])
def test_int8_quantized_translation(tiny_config, family) -> None:
    path = train_run(tiny_config, family, family)
    sentences = some_sources(tiny_config)
    t = Translator.load(path, quantize="int8")
    assert not any(type(m) is torch.nn.Linear for m in t.model.modules())  # all replaced
    out = t.translate(sentences, beam=3)
    assert len(out) == len(sentences) and all(isinstance(s, str) for s in out)
    assert out[3] == "" and out[7] == ""


@pytest.mark.parametrize("family", ["rnn", "transformer"])
def test_packed_linear_layers_translate_as_plain_ones(tiny_config, family) -> None:
    path = train_run(tiny_config, f"{family}-pack", family)
    sentences = some_sources(tiny_config)
    plain = Translator.load(path, pack=False)
    packed = Translator.load(path)
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
    ("삼십", "translate takes a list of sentences; for one sentence, pass \\['삼십'\\]"),
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
                             ({"nbest": 10**6, "beam": 10**6}, "at most 256"), ({"too_long": "crop"}, "too_long")):
        with pytest.raises(NMTKitError, match=message):
            t.translate(["삼십"], **options)


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


def test_translation_prints_politely(tiny_config) -> None:
    t = Translator.load(train_run(tiny_config, "repr", max_steps=1))
    (r,) = t.translate(["삼십 사"], beam=2, nbest=2, return_details=True)
    text = repr(r)
    assert text.startswith("Translation(text=") and "nbest=2" in text and "attention=" in text
    assert len(text) < 200  # no wall of floats
