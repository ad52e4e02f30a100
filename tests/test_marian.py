"""`nmtkit import marian`: a Hugging Face MarianMTModel computes the same in nmtkit.

The tests build a small random MarianMTModel themselves (no download), with its own two
sentencepiece models trained on the numbers corpus, and compare nmtkit's logits, greedy and
beam outputs with Hugging Face's."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")

from nmtkit.checkpoint import load_checkpoint  # noqa: E402
from nmtkit.config import Config, config_from_dict  # noqa: E402
from nmtkit.democorpus import make_demo_corpus  # noqa: E402
from nmtkit.errors import NMTKitError  # noqa: E402
from nmtkit.marian import import_marian  # noqa: E402
from nmtkit.training import train  # noqa: E402
from nmtkit.translator import Translator  # noqa: E402

N_SENTENCES = 50
MAX_NEW = 12  # tokens each side may generate, </s> included


def _train_spm(text: Path, prefix: Path, size: int) -> Path:
    # Marian's own sentencepiece models: default ids (<unk> 0, <s> 1, </s> 2), no <pad>
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(prefix), vocab_size=size,
                                   model_type="unigram", minloglevel=2)
    return Path(f"{prefix}.model")


def _marian_folder(tmp: Path, corpus: dict[str, tuple[Path, Path]], weights: str) -> Path:
    """A random MarianMTModel (swish, scaled embeddings, sines|cosines, a final logits bias and
    a non-zero <pad> row: every option the import maps) saved with save_pretrained."""
    folder = tmp / f"marian-{weights}"
    folder.mkdir()
    en, ko = corpus["train"]
    src_spm = _train_spm(ko, tmp / f"src-{weights}", 60)
    tgt_spm = _train_spm(en, tmp / f"tgt-{weights}", 50)
    vocab = ["</s>", "<unk>"]
    for model in (src_spm, tgt_spm):
        sp = spm.SentencePieceProcessor(model_file=str(model))
        vocab += [p for p in (sp.id_to_piece(i) for i in range(len(sp))) if p not in vocab
                  and p not in ("<s>",)]
    vocab.append("<pad>")
    (folder / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(vocab)}))
    (folder / "source.spm").write_bytes(src_spm.read_bytes())
    (folder / "target.spm").write_bytes(tgt_spm.read_bytes())
    pad = len(vocab) - 1
    cfg = transformers.MarianConfig(
        vocab_size=len(vocab), decoder_vocab_size=len(vocab), d_model=32, encoder_layers=2,
        decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        activation_function="swish", scale_embedding=True, pad_token_id=pad, eos_token_id=0,
        decoder_start_token_id=pad, forced_eos_token_id=0, dropout=0.0)
    torch.manual_seed(0)
    model = transformers.MarianMTModel(cfg).eval()
    with torch.no_grad():
        # larger than the default initialisation, so that outputs depend on the source
        model.model.shared.weight.normal_(0, 0.5)  # <pad> too: the decoder's start
        model.final_logits_bias.normal_(0, 1.0)
        model.final_logits_bias[0, 0] = 1.0  # </s> often enough for outputs of varied length
    model.save_pretrained(folder)
    if weights == "bin":  # the older hub folders' pickle (transformers 5 no longer writes one)
        (folder / "model.safetensors").unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


@pytest.fixture(scope="module")
def marian(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("marian")
    corpus = make_demo_corpus(tmp / "corpus", seed=5, n_train=300, n_valid=60, n_test=10)
    folder = _marian_folder(tmp, corpus, "safetensors")
    ckpt = import_marian(folder, tmp / "imported")
    sources = corpus["valid"][1].read_text(encoding="utf-8").splitlines()[:N_SENTENCES]
    model = transformers.MarianMTModel.from_pretrained(folder).eval()
    return {"folder": folder, "ckpt": ckpt, "sources": sources, "hf": model, "tmp": tmp,
            "corpus": corpus}


def _hf_ids(folder: Path, sentence: str) -> list[int]:
    """What MarianTokenizer does: source.spm pieces, looked up in vocab.json, then </s>."""
    vocab = json.loads((folder / "vocab.json").read_text())
    sp = spm.SentencePieceProcessor(model_file=str(folder / "source.spm"))
    return [vocab.get(p, vocab["<unk>"]) for p in sp.encode(sentence, out_type=str)] + [0]


def _hf_pieces(folder: Path, ids: list[int]) -> list[str]:
    vocab = json.loads((folder / "vocab.json").read_text())
    pieces = {i: p for p, i in vocab.items()}
    return [pieces[i] for i in ids if i not in (0, len(vocab) - 1)]


def _hf_batch(folder: Path, sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [_hf_ids(folder, s) for s in sentences]
    pad = len(json.loads((folder / "vocab.json").read_text())) - 1
    width = max(map(len, rows))
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    return ids, ids != pad


def test_logits_equal_hugging_face_on_a_padded_batch(marian):
    folder, hf = marian["folder"], marian["hf"]
    sources = marian["sources"][:8]
    ids, mask = _hf_batch(folder, sources)
    assert not mask.all()  # padding in the batch
    ckpt = load_checkpoint(marian["ckpt"])
    tr = Translator(ckpt, pack=False)
    vocab = json.loads((folder / "vocab.json").read_text())
    ours_of = {p: i for i, p in enumerate(tr.tgt_pieces)}
    ours_of["<pad>"] = 0  # Marian's decoder start; nmtkit feeds <s>, a copy of <pad>
    # teacher-forced over Hugging Face's greedy outputs, padded after their </s>
    out = hf.generate(input_ids=ids, attention_mask=mask, num_beams=1, do_sample=False,
                      max_new_tokens=MAX_NEW, length_penalty=0.0)
    dec_mask = out != vocab["<pad>"]
    dec_mask[:, 0] = True
    with torch.no_grad():
        # no decoder mask: the padding after </s> is never looked at by earlier positions
        theirs = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=out).logits  # (batch, len, V)
    order = [ours_of[p] for p, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    src = torch.tensor([[ours_of[p] for p in _hf_pieces_all(folder, row)] for row in ids.tolist()])
    tgt = out.clone()
    tgt = torch.tensor([[2 if i == 0 else ours_of[_piece(vocab, t)] for i, t in enumerate(row)]
                        for row in tgt.tolist()])
    model = tr.model
    with torch.no_grad():
        enc = model.encoder(src, (src != 0).sum(1))
        hidden = model.decoder(tgt, enc)
        ours = model.generator(hidden)[:, :, order]
    real = dec_mask.unsqueeze(-1).expand_as(theirs)
    assert torch.allclose(ours[real], theirs[real], atol=1e-4), (ours - theirs)[real].abs().max()


def _piece(vocab: dict[str, int], i: int) -> str:
    return next(p for p, j in vocab.items() if j == i)


def _hf_pieces_all(folder: Path, ids: list[int]) -> list[str]:
    vocab = json.loads((folder / "vocab.json").read_text())
    pieces = {i: p for p, i in vocab.items()}
    return [pieces[i] for i in ids]


@pytest.mark.parametrize("beam", [1, 5])
def test_search_equals_generate(marian, beam):
    folder, hf, sources = marian["folder"], marian["hf"], marian["sources"]
    ids, mask = _hf_batch(folder, sources)
    vocab = json.loads((folder / "vocab.json").read_text())
    out = hf.generate(input_ids=ids, attention_mask=mask, num_beams=beam, do_sample=False,
                      max_new_tokens=MAX_NEW, length_penalty=0.0, early_stopping=False,
                      bad_words_ids=[[vocab["<pad>"]], [vocab["<unk>"]]],
                      forced_eos_token_id=None, num_return_sequences=1)
    theirs = [_hf_pieces(folder, row) for row in out.tolist()]
    tr = Translator.load(marian["ckpt"])
    ours = tr.translate(sources, beam=beam, length_penalty=0.0, max_len_a=0.0, max_len_b=MAX_NEW,
                        attention=False, return_details=True)
    assert max(len(t) for t in theirs) > 2  # not all empty
    assert [t.tokens for t in ours] == theirs


def test_pytorch_model_bin_imports_the_same(marian, tmp_path):
    folder = _marian_folder(tmp_path, marian["corpus"], "bin")
    result = subprocess.run([sys.executable, "-m", "nmtkit.cli", "import", "marian", str(folder),
                             str(tmp_path / "ckpt")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "weights_only=True" in result.stderr
    sources = marian["sources"][:10]
    a = Translator.load(marian["ckpt"]).translate(sources, beam=1, attention=False, return_details=True)
    b = Translator.load(tmp_path / "ckpt").translate(sources, beam=1, attention=False, return_details=True)
    assert [t.tokens for t in a] == [t.tokens for t in b]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nmtkit.cli", *args], capture_output=True, text=True)


def test_bad_inputs_are_one_line_errors(marian, tmp_path):
    folder = marian["folder"]

    def fails(result: subprocess.CompletedProcess, *words: str) -> None:
        assert result.returncode == 2, result.stderr
        errors = [line for line in result.stderr.splitlines() if "error" in line]
        assert len(errors) == 1 and errors[0].startswith("nmtkit: error:"), result.stderr
        assert "Traceback" not in result.stderr
        for word in words:
            assert word in errors[0]

    fails(_cli("import", "marian", str(tmp_path), str(tmp_path / "o1")), "not a Hugging Face Marian")
    for bad_out, word in ((marian["ckpt"], "already exists"),):
        with pytest.raises(NMTKitError, match=word):
            import_marian(folder, bad_out)
    changed = tmp_path / "swiglu"
    changed.mkdir()
    for f in folder.iterdir():
        (changed / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((folder / "config.json").read_text())
    (changed / "config.json").write_text(json.dumps({**cfg, "normalize_before": True}))
    for key, value in (("normalize_before", True), ("activation_function", "tanh"),
                       ("share_encoder_decoder_embeddings", False)):
        (changed / "config.json").write_text(json.dumps({**cfg, key: value}))
        with pytest.raises(NMTKitError, match=key):
            import_marian(changed, tmp_path / "o2")
    # a pickle that holds more than tensors: torch's weights-only loader refuses it
    (changed / "config.json").write_text(json.dumps(cfg))
    (changed / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1), "f": Path("evil")}, changed / "pytorch_model.bin")
    fails(_cli("import", "marian", str(changed), str(tmp_path / "o4")), "torch refuses")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))


def _finetune_config(marian, out: Path, steps: int) -> Config:
    """A fine-tuning config: the imported model section as it is, the numbers corpus."""
    model = load_checkpoint(marian["ckpt"]).config.model.model_dump(mode="json")
    corpus = marian["corpus"]
    return config_from_dict({
        "data": {"train_src": str(corpus["train"][1]), "train_tgt": str(corpus["train"][0]),
                 "valid_src": str(corpus["valid"][1]), "valid_tgt": str(corpus["valid"][0]),
                 "out_dir": str(out / "bin"), "max_len": 40},
        "model": model,
        "training": {"out_dir": str(out / "run"), "max_steps": steps, "max_epochs": 10,
                     "max_tokens": 800, "lr": 0.002, "schedule": "constant", "warmup_steps": 0,
                     "valid_bleu": False, "valid_every": 1000, "num_threads": 1, "seed": 4}})


def _valid_loss(ckpt: Path, marian) -> float:
    corpus = marian["corpus"]
    src = corpus["valid"][1].read_text(encoding="utf-8").splitlines()
    tgt = corpus["valid"][0].read_text(encoding="utf-8").splitlines()
    scores = Translator.load(ckpt).score(src, tgt)
    return -sum(s.log_prob for s in scores) / sum(len(s.tokens) for s in scores)


def test_finetuning_an_imported_model_lowers_valid_loss_and_resumes_exactly(marian, tmp_path):
    straight = train(_finetune_config(marian, tmp_path / "s", 8), init_from=marian["ckpt"])
    before, after = _valid_loss(marian["ckpt"], marian), _valid_loss(straight / "last", marian)
    assert after < before - 0.5, (before, after)
    tuned = load_checkpoint(straight / "last")
    imported = load_checkpoint(marian["ckpt"])
    # it keeps the imported vocabulary and subword models
    assert tuned.src_tokenizer.to_bytes() == imported.src_tokenizer.to_bytes()
    assert tuned.tgt_tokenizer.to_bytes() == imported.tgt_tokenizer.to_bytes()
    part = _finetune_config(marian, tmp_path / "r", 4)
    run = subprocess.run([sys.executable, "-c", (
        "import sys, json; from pathlib import Path; from nmtkit.config import config_from_dict; "
        "from nmtkit.training import train; "
        "train(config_from_dict(json.loads(sys.argv[1])), init_from=Path(sys.argv[2]))"),
        json.dumps(part.to_json_dict()), str(marian["ckpt"])], capture_output=True, text=True,
        timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    resumed = train(_finetune_config(marian, tmp_path / "r", 8), resume=True)
    w1, w2 = (load_file(str(r / "last" / "model.safetensors")) for r in (straight, resumed))
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)


@pytest.mark.parametrize("beam", [1, 5])
def test_ctranslate2_export_of_an_imported_model_decodes_as_nmtkit(marian, beam):
    from tests.test_export import check_ctranslate2_matches

    check_ctranslate2_matches(marian["ckpt"], marian["sources"], beam, marian["tmp"] / f"ct2-{beam}",
                              max_len=MAX_NEW)


def test_import_refuses_a_source_spm_that_is_no_model(marian, tmp_path):
    """A few stray bytes parse as an empty protobuf: the import must not write a checkpoint
    whose tokenizer knows none of vocab.json's pieces."""
    folder = tmp_path / "broken"
    folder.mkdir()
    for f in marian["folder"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "source.spm").write_bytes(b"x\n")
    with pytest.raises(NMTKitError, match="source.spm: not a sentencepiece model"):
        import_marian(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_config_value_of_the_wrong_type_is_one_line(tmp_path):
    from nmtkit.marian import transformer_config
    cfg = {"d_model": "x", "encoder_attention_heads": 4, "decoder_attention_heads": 4,
           "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "encoder_layers": 2,
           "decoder_layers": 2, "activation_function": "swish"}
    with pytest.raises(NMTKitError) as err:
        transformer_config(cfg, tmp_path / "config.json")
    assert "\n" not in str(err.value) and "d_model" in str(err.value)


def test_ctranslate2_alternatives_of_an_imported_model_equal_nmtkit_alternatives(marian):
    from tests.test_export import check_alternatives_match

    references = marian["corpus"]["valid"][0].read_text(encoding="utf-8").splitlines()[:8]
    compared = check_alternatives_match(marian["ckpt"], marian["sources"][:8], references,
                                        marian["tmp"] / "ct2-alternatives")
    assert compared == 24


def test_bf16_finetuning_of_an_imported_model_keeps_fp32_checkpoints_and_averages(marian, tmp_path, capsys):
    """training.precision bf16 on an imported model: valid loss falls, every checkpoint is fp32
    with the imported subword models, and `nmtkit average` of the run's checkpoints works."""
    raw = _finetune_config(marian, tmp_path, 9).to_json_dict()
    raw["training"].update(precision="bf16", valid_every=3, keep_last=3)
    run = train(config_from_dict(raw), init_from=marian["ckpt"])
    # bf16, natively or (on a CPU without AVX512-BF16) emulated with a warning; never fp32
    assert re.search(r"^(warning: )?precision:? bf16", capsys.readouterr().out, re.M)
    before, after = _valid_loss(marian["ckpt"], marian), _valid_loss(run / "last", marian)
    assert after < before - 0.5, (before, after)
    imported = marian["ckpt"]
    ckpts = sorted(run.glob("ckpt-*"))
    assert len(ckpts) == 3
    for ckpt in ckpts:
        weights = load_file(str(ckpt / "model.safetensors"))
        assert {w.dtype for w in weights.values()} == {torch.float32}, ckpt
        for name in ("src.spm.model", "tgt.spm.model", "vocab.json"):
            assert (ckpt / name).read_bytes() == (imported / name).read_bytes(), (ckpt, name)
    averaged = _cli("average", *map(str, ckpts), "--out", str(tmp_path / "avg"))
    assert averaged.returncode == 0, averaged.stderr
    mean = load_file(str(tmp_path / "avg" / "model.safetensors"))
    parts = [load_file(str(c / "model.safetensors")) for c in ckpts]
    assert mean.keys() == parts[0].keys()
    for key in mean:
        assert mean[key].dtype == torch.float32
        assert torch.allclose(mean[key], sum(p[key] for p in parts) / 3, atol=1e-6), key
    assert (tmp_path / "avg" / "tgt.spm.model").read_bytes() == (imported / "tgt.spm.model").read_bytes()
    assert _valid_loss(tmp_path / "avg", marian) < before - 0.5
    assert all(Translator.load(tmp_path / "avg").translate(marian["sources"][:5]))
