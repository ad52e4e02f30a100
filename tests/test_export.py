"""`nmtkit export --format ctranslate2`: CTranslate2 decodes the exported model as nmtkit does."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

ctranslate2 = pytest.importorskip("ctranslate2")

from nmtkit.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from nmtkit.config import RNNConfig  # noqa: E402
from nmtkit.errors import NMTKitError  # noqa: E402
from nmtkit.export import NEVER_BIAS, export_ctranslate2  # noqa: E402
from nmtkit.model import build_model  # noqa: E402
from nmtkit.translator import Translator  # noqa: E402
from nmtkit.vocabulary import BOS_ID, PAD_ID  # noqa: E402
from tests.conftest import train_on_numbers  # noqa: E402


def check_ctranslate2_matches(ckpt: Path, sources: list[str], beam: int, out: Path,
                              max_len: int) -> None:
    """Export `ckpt`; CTranslate2's search (plain pieces in, no length penalty) equals nmtkit's
    token for token, and its scores of nmtkit's outputs equal nmtkit's within 1e-3."""
    folder = export_ctranslate2(ckpt, out)
    assert {"model.bin", "config.json", "source.spm", "target.spm"} <= {p.name for p in folder.iterdir()}
    sp = spm.SentencePieceProcessor(model_file=str(folder / "source.spm"))
    pieces = [sp.encode(s, out_type=str) for s in sources]
    ct2 = ctranslate2.Translator(str(folder), device="cpu", intra_threads=1)
    theirs = ct2.translate_batch(pieces, beam_size=beam, length_penalty=0.0,
                                 max_decoding_length=max_len, disable_unk=True)
    # nmtkit's softmax counts <pad> and <s> (then search skips them); the export takes them out
    # of CTranslate2's (bias -1e4, as it has no list of tokens never to produce). Compare with
    # the checkpoint so changed; a trained model gives them almost no probability anyway.
    same = load_checkpoint(ckpt)
    with torch.no_grad():
        same.model.generator.bias[[PAD_ID, BOS_ID]] = NEVER_BIAS
    translator = Translator(same)
    ours = translator.translate(sources, beam=beam, length_penalty=0.0, max_len_a=0.0,
                                           max_len_b=max_len, attention=False, return_details=True)
    # CTranslate2 never returns an empty translation; nmtkit (and Hugging Face) may
    pairs = [(o.tokens, t.hypotheses[0]) for o, t in zip(ours, theirs, strict=True) if o.tokens]
    assert len(pairs) >= len(sources) // 2
    assert [o for o, _ in pairs] == [t for _, t in pairs]
    kept = [i for i, o in enumerate(ours) if o.tokens]
    nmtkit_scores = translator.score([sources[i] for i in kept], [ours[i].text for i in kept])
    scored = ct2.score_batch([pieces[i] for i in kept], [a.tokens[:-1] for a in nmtkit_scores])
    for a, b in zip(nmtkit_scores, scored, strict=True):
        assert a.tokens == b.tokens
        assert abs(a.log_prob - sum(b.log_probs)) < 1e-3, (a.log_prob, sum(b.log_probs))


@pytest.fixture(scope="module")
def demo_transformer(tmp_path_factory):
    """A small Transformer trained briefly on the numbers corpus (pre-norm, the defaults)."""
    tmp = tmp_path_factory.mktemp("export")
    model = {"type": "transformer", "d_model": 32, "heads": 4, "ff_size": 64,
             "encoder_layers": 2, "decoder_layers": 2, "dropout": 0.0}
    ckpt, files, cfg = train_on_numbers(tmp, model, n_train=1500, n_test=10, vocab_size=120,
                                        max_steps=60, lr=0.003, warmup_steps=10)
    sources = files["valid"][1].read_text(encoding="utf-8").splitlines()[:50]
    references = files["valid"][0].read_text(encoding="utf-8").splitlines()[:50]
    return {"ckpt": ckpt, "sources": sources, "references": references, "tmp": tmp, "cfg": cfg}


@pytest.mark.parametrize("beam", [1, 5])
def test_ctranslate2_export_decodes_as_nmtkit(demo_transformer, beam):
    check_ctranslate2_matches(demo_transformer["ckpt"], demo_transformer["sources"], beam,
                              demo_transformer["tmp"] / f"ct2-{beam}", max_len=30)


def test_int8_export_loads_and_translates(demo_transformer, tmp_path):
    run = subprocess.run([sys.executable, "-m", "nmtkit.cli", "export", str(demo_transformer["ckpt"]),
                          str(tmp_path / "int8"), "--format", "ctranslate2", "--quantization", "int8"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    ct2 = ctranslate2.Translator(str(tmp_path / "int8"), device="cpu", compute_type="int8")
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "int8" / "source.spm"))
    out = ct2.translate_batch([sp.encode(demo_transformer["sources"][0], out_type=str)])
    assert out[0].hypotheses[0]


def test_export_errors(demo_transformer, tmp_path):
    # an untrained RNN checkpoint, with the Transformer's vocabularies
    ckpt = load_checkpoint(demo_transformer["ckpt"])
    cfg = ckpt.config.model_copy(update={"model": RNNConfig(embed_size=8, hidden_size=8)})
    rnn = build_model(cfg.model, len(ckpt.src_tokenizer), len(ckpt.tgt_tokenizer))
    save_checkpoint(tmp_path / "rnn-ckpt", rnn, cfg, ckpt.src_tokenizer, ckpt.tgt_tokenizer, {})
    with pytest.raises(NMTKitError, match="RNN has no CTranslate2"):
        export_ctranslate2(tmp_path / "rnn-ckpt", tmp_path / "rnn")
    (tmp_path / "taken").mkdir()
    run = subprocess.run([sys.executable, "-m", "nmtkit.cli", "export", str(demo_transformer["ckpt"]),
                          str(tmp_path / "taken"), "--format", "ctranslate2"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.startswith("nmtkit: error:") and "already exists" in run.stderr
    assert not (tmp_path / "rnn").exists() and not any((tmp_path / "taken").iterdir())
    (tmp_path / "afile").write_text("mine")  # OUT below a file: the file is named, and kept
    with pytest.raises(NMTKitError, match=r"afile is a file, not a folder"):
        export_ctranslate2(demo_transformer["ckpt"], tmp_path / "afile" / "ct2")
    assert (tmp_path / "afile").read_text() == "mine"


def test_ctranslate2_target_prefix_matches_nmtkit_prefix(demo_transformer):
    folder = export_ctranslate2(demo_transformer["ckpt"], demo_transformer["tmp"] / "ct2-prefix")
    sources = demo_transformer["sources"][:20]
    sp_src = spm.SentencePieceProcessor(model_file=str(folder / "source.spm"))
    sp_tgt = spm.SentencePieceProcessor(model_file=str(folder / "target.spm"))
    forced = sp_tgt.encode("seven hundred", out_type=str)  # whole words: "seven hundred "
    same = load_checkpoint(demo_transformer["ckpt"])
    with torch.no_grad():
        same.model.generator.bias[[PAD_ID, BOS_ID]] = NEVER_BIAS
    ours = Translator(same).translate(sources, beam=5, length_penalty=0.0, max_len_a=0.0,
                                      max_len_b=30, prefix=["seven hundred "] * len(sources),
                                      attention=False, return_details=True)
    ct2 = ctranslate2.Translator(str(folder), device="cpu", intra_threads=1)
    theirs = ct2.translate_batch([sp_src.encode(s, out_type=str) for s in sources], beam_size=5,
                                 length_penalty=0.0, max_decoding_length=30, disable_unk=True,
                                 target_prefix=[forced] * len(sources))
    assert all(o.tokens[: len(forced)] == forced for o in ours)
    # CTranslate2 never ends right after the prefix (as it never returns an empty translation)
    pairs = [(o.tokens, t.hypotheses[0]) for o, t in zip(ours, theirs, strict=True)
             if len(o.tokens) > len(forced)]
    assert len(pairs) >= len(sources) // 2
    assert [o for o, _ in pairs] == [t for _, t in pairs]


def ct2_alternatives(ct2, src_pieces: list[str], prefix_pieces: list[str], vocab: int, k: int,
                     candidates: int, max_word_pieces: int = 12) -> tuple[list, dict[str, float]]:
    """CTranslate2's alternatives at the position after `prefix_pieces`, made into words as
    nmtkit's `alternatives` makes them: the likeliest `candidates` first pieces that start a
    word (return_alternatives expands every piece of the vocabulary, likeliest first), each
    continued greedily (CTranslate2's search after the expansion, beam 1) until a piece starts
    another word; a word's probability is the product of its pieces' (from score_batch), words
    reached twice add up, a lone word-start mark is none. The k likeliest (word, probability), and every word's probability."""
    (expanded,) = ct2.translate_batch(
        [src_pieces], target_prefix=[prefix_pieces], return_alternatives=True, num_hypotheses=vocab,
        beam_size=1, length_penalty=0.0, max_decoding_length=len(prefix_pieces) + max_word_pieces,
        disable_unk=True)
    at = len(prefix_pieces)
    rows = [h for h in expanded.hypotheses if len(h) > at and h[at].startswith("\u2581")][:candidates]
    words = []
    for h in rows:
        end = at + 1
        while end < len(h) and not h[end].startswith("\u2581") and h[end] != "</s>":
            end += 1
        words.append(h[at:end])
    scored = ct2.score_batch([src_pieces] * len(words), [prefix_pieces + w for w in words])
    merged: dict[str, float] = {}
    for w, s in zip(words, scored, strict=True):
        text = "".join(w).replace("\u2581", " ").strip()
        if not text:  # a lone "\u2581" before another word: no word (nmtkit skips it too)
            continue
        merged[text] = merged.get(text, 0.0) + math.exp(sum(s.log_probs[at: at + len(w)]))
    return sorted(merged.items(), key=lambda item: -item[1])[:k], merged


def check_alternatives_match(ckpt: Path, sources: list[str], references: list[str], out: Path,
                             k: int = 5, rel: float = 1e-3) -> int:
    """At the start and after the first one and two words of each source's reference, nmtkit's `alternatives` (words, their order and probabilities) equal CTranslate2's
    return_alternatives made into words (`ct2_alternatives`), probabilities within a relative
    `rel` (log-probabilities within about `rel`, as score_batch's). Two words whose probabilities
    are that close may swap places. Returns the positions compared."""
    folder = export_ctranslate2(ckpt, out)
    sp_src = spm.SentencePieceProcessor(model_file=str(folder / "source.spm"))
    sp_tgt = spm.SentencePieceProcessor(model_file=str(folder / "target.spm"))
    same = load_checkpoint(ckpt)
    with torch.no_grad():  # as check_ctranslate2_matches: <pad> and <s> out of both softmaxes
        same.model.generator.bias[[PAD_ID, BOS_ID]] = NEVER_BIAS
    translator = Translator(same)
    ct2 = ctranslate2.Translator(str(folder), device="cpu", intra_threads=1)
    vocab = len(translator.tgt_pieces)
    compared = 0
    for source, reference in zip(sources, references, strict=True):
        words = reference.split()
        for n in range(min(2, len(words)) + 1):
            prefix = " ".join(words[:n])
            ours = translator.alternatives(source, prefix + " " if n else "", k=k, translations=False)
            theirs, every = ct2_alternatives(ct2, sp_src.encode(source, out_type=str),
                                             sp_tgt.encode(prefix, out_type=str) if n else [], vocab,
                                             k, candidates=max(4 * k, 20))
            assert len(ours) == len(theirs) == k, (source, prefix, ours, theirs)
            for a, (word, p) in zip(ours, theirs, strict=True):
                assert math.isclose(a.probability, p, rel_tol=rel), (source, prefix, a, word, p)
                # the same word, or a near tie: ours has CTranslate2's probability there
                assert a.word == word or math.isclose(every.get(a.word, -1.0), a.probability,
                                                      rel_tol=rel), \
                    (source, prefix, [(x.word, x.probability) for x in ours], theirs)
            compared += 1
    return compared


def test_ctranslate2_alternatives_at_a_position_equal_nmtkit_alternatives(demo_transformer):
    compared = check_alternatives_match(demo_transformer["ckpt"], demo_transformer["sources"][:8],
                                        demo_transformer["references"][:8], demo_transformer["tmp"] / "ct2-alternatives")
    assert compared == 24


@pytest.fixture(scope="module")
def language_model(tmp_path_factory):
    """A small decoder-only language model trained briefly on the numbers' English side."""
    from nmtkit.config import config_from_dict
    from nmtkit.democorpus import make_demo_corpus
    from nmtkit.training import train

    tmp = tmp_path_factory.mktemp("lm")
    files = make_demo_corpus(tmp / "corpus", seed=4, n_train=1000, n_valid=20, n_test=10)
    cfg = config_from_dict({
        "data": {"train": str(files["train"][0]), "valid": str(files["valid"][0]),
                 "out_dir": str(tmp / "bin"), "max_len": 40},
        "vocab": {"size": 100, "byte_fallback": False},
        "model": {"type": "decoder_only", "d_model": 32, "heads": 4, "ff_size": 64, "layers": 2,
                  "dropout": 0.0, "max_positions": 128},
        "training": {"out_dir": str(tmp / "lm"), "max_steps": 40, "max_tokens": 2000, "lr": 0.004,
                     "warmup_steps": 10, "valid_every": 10000, "max_epochs": 100}})
    texts = files["valid"][0].read_text(encoding="utf-8").splitlines()
    return {"ckpt": train(cfg) / "last", "texts": texts, "tmp": tmp}


def test_a_language_model_exports_and_generates_and_scores_as_nmtkit(language_model):
    """CTranslate2's Generator on the exported decoder-only model: greedy generate_batch equals
    nmtkit's generate token for token, and score_batch equals nmtkit's log-probabilities."""
    from nmtkit.data import collate

    out = language_model["tmp"] / "ct2-lm"
    run = subprocess.run([sys.executable, "-m", "nmtkit.cli", "export", str(language_model["ckpt"]),
                          str(out), "--format", "ctranslate2"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    sp = spm.SentencePieceProcessor(model_file=str(out / "target.spm"))
    same = load_checkpoint(language_model["ckpt"])
    with torch.no_grad():
        same.model.generator.bias[[PAD_ID, BOS_ID]] = NEVER_BIAS
    translator = Translator(same)
    generator = ctranslate2.Generator(str(out), device="cpu", intra_threads=1)
    # prompts: nothing, and the first one or two words of held-out sentences
    prompts = [""] + [" ".join(t.split()[:n]) for t in language_model["texts"][:12] for n in (1, 2)]
    max_len = 16
    ours = translator.generate([p + " " if p else "" for p in prompts], max_len=max_len)
    # a language model's text starts after </s> (nmtkit's start token), as in training
    starts = [["</s>"] + sp.encode(p, out_type=str) for p in prompts]
    # (include_prompt_in_result=False would return the part of a longer prompt past the
    # batch's shortest one: the prompt stays in, and </s> is cut off)
    theirs = generator.generate_batch(starts, max_length=max_len, sampling_topk=1, beam_size=1,
                                      disable_unk=True)
    compared = same_tokens = 0
    for prompt, start, (text,), result in zip(prompts, starts, ours, theirs, strict=True):
        pieces = result.sequences[0][1:]
        assert pieces[: len(start) - 1] == start[1:]
        new = pieces[len(start) - 1:]
        if prompt and new and not new[0].startswith("\u2581"):
            # nmtkit's prompt ends in a space, so its next piece starts a new word; CTranslate2
            # has no such rule, and here its likeliest piece goes on with the prompt's last word
            continue
        assert sp.decode(pieces) == text, (prompt, text, pieces)
        assert sp.encode(text, out_type=str) == pieces  # token for token
        compared += 1
        same_tokens += len(new)
    assert compared >= len(prompts) // 2 and same_tokens > 3 * compared  # not all empty
    # score_batch: each text after </s>, its pieces then </s>, against nmtkit's own log-probs
    texts = language_model["texts"][:20]
    ids = [same.tgt_tokenizer.encode(t) for t in texts]
    batch = collate([([], i) for i in ids], list(range(len(ids))))
    with torch.no_grad():
        log_probs = same.model(batch.src, batch.src_lengths, batch.tgt_in)  # (batch, T, vocab)
    gold = log_probs.gather(2, batch.tgt_out.unsqueeze(2)).squeeze(2)
    scored = generator.score_batch([["</s>"] + same.tgt_tokenizer.pieces(i) + ["</s>"] for i in ids])
    for row, (i, s) in enumerate(zip(ids, scored, strict=True)):
        assert len(s.log_probs) == len(i) + 1
        ours_row = gold[row, : len(i) + 1].tolist()
        assert max(abs(a - b) for a, b in zip(ours_row, s.log_probs, strict=True)) < 1e-3
