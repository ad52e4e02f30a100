"""The decoder-only Transformer: the same blocks as the encoder-decoder, arranged as one stack."""

import inspect
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nmtkit import decoder_only, transformer_layers
from nmtkit.config import DecoderOnlyConfig, config_from_dict
from nmtkit.data import collate
from nmtkit.decoder_only import build_decoder_only
from nmtkit.errors import NMTKitError, NMTKitWarning
from nmtkit.vocabulary import EOS_ID

PAIRS = [([5, 6, 7], [8, 9]), ([5], [10, 11, 12, 13]), ([7, 7, 8, 9, 5], [6])]


def model(prefix_lm: bool, positional: str = "sinusoidal"):
    torch.manual_seed(0)
    cfg = DecoderOnlyConfig(d_model=32, heads=4, ff_size=64, layers=2, prefix_lm=prefix_lm,
                            dropout=0.0, positional=positional)
    return build_decoder_only(cfg, 30, 30).eval()


def batch():
    return collate([(torch.tensor(s), torch.tensor(t)) for s, t in PAIRS], [0, 1, 2])


@pytest.mark.parametrize("prefix_lm", [False, True])
def test_cached_steps_equal_the_full_pass(prefix_lm: bool) -> None:
    m, b = model(prefix_lm), batch()
    with torch.no_grad():
        full = m(b.src, b.src_lengths, b.tgt_in)  # (batch, tgt_len, vocab)
        state = m.init_state(m.encode(b.src, b.src_lengths), 10)
        prev = torch.full((3,), EOS_ID)  # the separator is fed first
        for t in range(b.tgt_in.size(1)):
            scores, state = m.step(prev, state)
            real = b.tgt_out[:, t] != 0
            torch.testing.assert_close(F.log_softmax(scores, -1)[real], full[real, t], atol=1e-5, rtol=0)
            prev = b.tgt_out[:, t].clamp(min=4)
        reordered = state.select(torch.tensor([2, 0, 0]))  # beams: reorder and duplicate rows
        scores, _ = m.step(torch.tensor([5, 5, 5]), reordered)
        again, _ = m.step(torch.tensor([5]), state.select(torch.tensor([0])))
    torch.testing.assert_close(scores[1], again[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("prefix_lm", [False, True])
def test_a_later_token_never_changes_an_earlier_target_position(prefix_lm: bool) -> None:
    m, b = model(prefix_lm), batch()
    tokens = m._sequence(b.src, b.src_lengths, b.tgt_in)
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 30
    with torch.no_grad():
        before, _ = m._run(tokens, b.src_lengths - 1)
        after, _ = m._run(changed, b.src_lengths - 1)
    torch.testing.assert_close(before[:, :-1], after[:, :-1], atol=1e-6, rtol=0)
    assert not torch.allclose(before[:, -1], after[:, -1])


def test_the_prefix_lm_mask_is_both_ways_over_the_source_only() -> None:
    source = torch.tensor([3, 1])
    mask = model(True)._mask(5, source)[:, 0]  # (batch, query, key)
    # row 0: positions 0-2 are source, they see each other; 3, 4 are target, causal
    assert mask[0, 0, 2] and mask[0, 2, 0] and mask[0, 3, 2] and not mask[0, 3, 4] and not mask[0, 2, 3]
    assert not mask[1, 0, 1] and mask[1, 1, 0]  # row 1: one source word, the rest causal
    assert not model(False)._mask(5, source)[0, 2]  # the causal model: position 0 never sees 2
    m, b = model(True), batch()
    tokens = m._sequence(b.src, b.src_lengths, b.tgt_in)
    changed = tokens.clone()
    changed[0, 2] = 9  # the last source word of sentence 0
    with torch.no_grad():
        before, _ = m._run(tokens, b.src_lengths - 1)
        after, _ = m._run(changed, b.src_lengths - 1)
    assert not torch.allclose(before[0, 0], after[0, 0])  # an earlier source position sees it
    causal, _ = model(False)._run(tokens, b.src_lengths - 1)
    causal_changed, _ = model(False)._run(changed, b.src_lengths - 1)
    torch.testing.assert_close(causal[0, :2], causal_changed[0, :2])


def test_decoder_only_translation_learns_the_numbers(tmp_path: Path) -> None:
    from nmtkit.democorpus import make_demo_corpus
    from nmtkit.metrics import bleu_score
    from nmtkit.training import train
    from nmtkit.translator import Translator

    files = make_demo_corpus(tmp_path / "c", seed=3, n_train=3000, n_valid=50, n_test=100)
    cfg = config_from_dict({
        "data": {"train_src": str(files["train"][1]), "train_tgt": str(files["train"][0]),
                 "valid_src": str(files["valid"][1]), "valid_tgt": str(files["valid"][0]),
                 "out_dir": str(tmp_path / "bin"), "max_len": 40},
        "vocab": {"size": 300, "byte_fallback": False},
        "model": {"type": "decoder_only", "d_model": 64, "heads": 4, "ff_size": 256, "layers": 2,
                  "dropout": 0.0},
        "training": {"out_dir": str(tmp_path / "run"), "max_steps": 350, "max_tokens": 2500, "lr": 0.004,
                     "schedule": "noam", "warmup_steps": 80, "valid_bleu": False, "valid_every": 10000,
                     "max_epochs": 100}})
    t = Translator.load(train(cfg) / "last")
    sources = Path(files["test"][1]).read_text().splitlines()
    references = Path(files["test"][0]).read_text().splitlines()
    assert bleu_score(t.translate(sources), references) >= 95
    beam = t.translate(sources[:20], beam=4, return_details=True, alignment=True)
    assert all(len(r.alignment) == len(r.text.split()) for r in beam)  # attention over the source


def test_a_language_model_on_one_language_reports_perplexity_and_generates(tmp_path: Path, capsys) -> None:
    import json

    from nmtkit.cli import main
    from nmtkit.democorpus import make_demo_corpus
    from nmtkit.training import load_log, train
    from nmtkit.translator import Translator

    files = make_demo_corpus(tmp_path / "c", seed=4, n_train=2000, n_valid=50, n_test=10)
    cfg = config_from_dict({
        "data": {"train": str(files["train"][0]), "valid": str(files["valid"][0]),
                 "out_dir": str(tmp_path / "bin"), "max_len": 40},
        "vocab": {"size": 200, "byte_fallback": False},
        "model": {"type": "decoder_only", "d_model": 48, "heads": 4, "ff_size": 128, "layers": 2,
                  "dropout": 0.0, "max_positions": 256},
        "training": {"out_dir": str(tmp_path / "lm"), "max_steps": 150, "max_tokens": 2500, "lr": 0.004,
                     "schedule": "noam", "warmup_steps": 50, "valid_every": 75, "max_epochs": 100}})
    run = train(cfg)
    summary = capsys.readouterr().out + capsys.readouterr().err
    assert "best: valid loss " in summary and "BLEU" not in summary  # the number is a loss
    valid = [r for r in load_log(run) if r["type"] == "valid"]
    assert valid[-1]["ppl"] < valid[0]["ppl"] < 200 and valid[-1]["bleu"] is None
    t = Translator.load(run)
    (out,) = t.generate(["three hundred"], max_len=12)
    assert out[0].startswith("three hundred ") and len(out[0].split()) > 2
    samples = t.generate([""], sample=True, seed=1, num=3, max_len=12)[0]
    assert len(samples) == 3 and all(s.strip() for s in samples)
    number_words = set(Path(files["train"][0]).read_text().split())
    assert set(out[0].split()) <= number_words  # it learnt the language of number words
    assert main(["generate", "--checkpoint", str(run), "--prompt", "four", "--max-len", "5"]) == 0
    assert json.loads((run / "last" / "checkpoint.json").read_text())["config"]["data"]["train"]
    for call in (lambda: t.translate(["one"]), lambda: t.score(["one"], ["one"]),
                 lambda: t.alternatives("one", "", k=2)):
        with pytest.raises(NMTKitError, match="is a language model"):  # not an empty translation
            call()
    with pytest.raises(NMTKitError, match="num must be a whole number from 1 to 256"):
        t.generate(["one"], num=10**9)
    # a language model's text has every position (no source to share them with), and a longer
    # max_len is capped with a warning
    assert t.max_output_tokens == 255  # model.max_positions 256, less the start
    prompt = "one " * 200
    with pytest.warns(NMTKitWarning, match="max_len 100000 is more than this model's positions allow: "
                      "outputs stop at 255 pieces"):
        (out,) = t.generate([prompt], max_len=100_000)
    assert out[0].startswith(prompt) and len(t.tgt_tok.encode(out[0])) <= 255
    with pytest.raises(NMTKitError, match="is 300 pieces; this model's outputs are at most 255"):
        t.generate(["one " * 300])


def test_generate_on_a_translation_model_says_what_generate_is_for(numbers_checkpoint) -> None:
    from nmtkit.translator import NMTKitError, Translator

    with pytest.raises(NMTKitError, match="translates; generate continues text"):
        Translator.load(numbers_checkpoint).generate(["one"])


def test_the_three_models_share_one_set_of_blocks() -> None:
    """No second copy of attention, feed-forward, norms or positions: the decoder-only model
    (and the ViT) import the Transformer's layers."""
    from nmtkit import vit

    for module in (decoder_only, vit):
        source = inspect.getsource(module)
        for name in ("MultiHeadAttention", "SelfAttention", "FeedForward", "Residual", "scaled_dot_product"):
            assert f"class {name}" not in source and "scaled_dot_product_attention" not in source
    m = model(False)
    assert all(type(layer) is transformer_layers.DecoderLayer for layer in m.layers)
    assert m.layers[0].cross_attn is None
    assert type(m.positions).__module__ == "nmtkit.embeddings"
