"""`nmtkit import marian`: a Hugging Face MarianMTModel computes the same in nmtkit.

The tests build a small random MarianMTModel themselves (no download), with its own two
sentencepiece models trained on the numbers corpus, and compare nmtkit's logits, greedy and
beam outputs with Hugging Face's. The same model written in the original Marian release layout
(npz, decoder.yml, vocabulary yml) must import to the same computation."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
import yaml
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


def _marian_folder(tmp: Path, corpus: dict[str, tuple[Path, Path]], weights: str,
                   varied: bool = False) -> Path:
    """A random MarianMTModel (swish, scaled embeddings, sines|cosines, a final logits bias and
    a non-zero <pad> row: every option the import maps) saved with save_pretrained. `varied`:
    weights large enough that outputs depend on the source and often end with </s>."""
    name = f"{weights}{'-varied' if varied else ''}"
    folder = tmp / f"marian-{name}"
    folder.mkdir()
    en, ko = corpus["train"]
    src_spm = _train_spm(ko, tmp / f"src-{name}", 60)
    tgt_spm = _train_spm(en, tmp / f"tgt-{name}", 50)
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
        if varied:  # the default linears (std 0.02) give all 50 sentences the same output
            for module in model.modules():
                if isinstance(module, torch.nn.Linear) and module is not model.lm_head:
                    module.weight.normal_(0, 2.0 / module.in_features ** 0.5)
                    module.bias.normal_(0, 0.1)
            model.final_logits_bias[0, 0] = 5.0
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
    _check_logits(marian["folder"], marian["hf"], marian["ckpt"], marian["sources"][:8])


def _check_logits(folder: Path, hf, imported: Path, sources: list[str]) -> None:
    """nmtkit's logits on `imported` equal those of the MarianMTModel `hf` (whose vocab.json and
    source.spm are in `folder`), teacher-forced over hf's greedy outputs."""
    ids, mask = _hf_batch(folder, sources)
    assert not mask.all()  # padding in the batch
    ckpt = load_checkpoint(imported)
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


@pytest.fixture(scope="module")
def varied(marian):
    """A MarianMTModel whose outputs vary with the source, imported."""
    folder = _marian_folder(marian["tmp"], marian["corpus"], "safetensors", varied=True)
    hf = transformers.MarianMTModel.from_pretrained(folder).eval()
    return {"folder": folder, "hf": hf, "ckpt": import_marian(folder, marian["tmp"] / "varied")}


def test_logits_of_a_varied_model_equal_hugging_face(marian, varied):
    _check_logits(varied["folder"], varied["hf"], varied["ckpt"], marian["sources"][:8])


@pytest.mark.parametrize("beam", [1, 5])
def test_search_equals_generate(marian, varied, beam):
    _check_search(varied["folder"], varied["hf"], varied["ckpt"], marian["sources"], beam)


def _check_search(folder: Path, hf, imported: Path, sources: list[str], beam: int) -> None:
    """Greedy or beam search on `imported` equals hf's generate, token for token."""
    ids, mask = _hf_batch(folder, sources)
    vocab = json.loads((folder / "vocab.json").read_text())
    out = hf.generate(input_ids=ids, attention_mask=mask, num_beams=beam, do_sample=False,
                      max_new_tokens=MAX_NEW + 1, length_penalty=0.0, early_stopping=False,
                      bad_words_ids=[[vocab["<pad>"]], [vocab["<unk>"]]],
                      forced_eos_token_id=None, num_return_sequences=1,
                      logits_processor=transformers.LogitsProcessorList([_EosAtLimit(MAX_NEW)]))
    theirs = [_hf_pieces(folder, row) for row in out.tolist()]
    tr = Translator.load(imported)
    ours = tr.translate(sources, beam=beam, length_penalty=0.0, max_len_a=0.0, max_len_b=MAX_NEW,
                        attention=False, return_details=True)
    assert max(len(t) for t in theirs) > 2  # not all empty
    assert len({tuple(t) for t in theirs}) > len(sources) // 5  # the outputs depend on the source
    assert [t.tokens for t in ours] == theirs


class _EosAtLimit(transformers.LogitsProcessor):
    """nmtkit's rule at the length limit: only </s>, with its own log-probability. (generate
    stops a hypothesis there without </s>, and forced_eos_token_id gives </s> a log-probability
    of 0: either scores a beam that reaches the limit differently.)"""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.size(1) - 1 < self.limit:  # tokens generated so far, after the start
            return scores
        only_eos = torch.full_like(scores, float("-inf"))
        only_eos[:, 0] = scores[:, 0]
        return only_eos


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

    fails(_cli("import", "marian", str(tmp_path), str(tmp_path / "o1")), "not a Hugging Face Marian",
          "no *.npz")
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


# --- the original Marian release (*.npz, decoder.yml, vocabulary yml, spm models) ---

NPZ_NAME = "opus.spm60-spm50.transformer-align.model1.npz.best-perplexity.npz"
VOCAB_YML = "opus.spm60-spm50.vocab.yml"


def _marian_options(cfg) -> dict:
    """special:model.yml as Marian writes it for an OPUS-MT transformer-align model."""
    return {
        "type": "transformer", "dim-vocabs": [cfg.vocab_size - 1, cfg.vocab_size - 1],
        "dim-emb": cfg.d_model, "enc-depth": cfg.encoder_layers, "dec-depth": cfg.decoder_layers,
        "tied-embeddings-all": True, "tied-embeddings-src": False, "tied-embeddings": False,
        "transformer-heads": cfg.encoder_attention_heads, "transformer-dim-ffn": cfg.encoder_ffn_dim,
        "transformer-ffn-activation": cfg.activation_function, "transformer-ffn-depth": 2,
        "transformer-preprocess": "", "transformer-postprocess": "dan",
        "transformer-postprocess-emb": "d", "transformer-train-position-embeddings": False,
        "transformer-decoder-autoreg": "self-attention", "transformer-no-projection": False,
        "transformer-aan-depth": 2, "transformer-aan-nogate": False, "transformer-dim-aan": 2048,
        "transformer-tied-layers": [], "transformer-guided-alignment-layer": "last",
        "transformer-dropout": 0.1, "right-left": False, "layer-normalization": False,
        "ulr-dim-emb": 0, "dec-cell-base-depth": 2, "dec-cell-high-depth": 1, "version": "v1.7.6",
    }


def write_marian_release(model, hf_folder: Path, out: Path, options: dict | None = None) -> Path:
    """`model` (a MarianMTModel whose <pad> is last, with a zero row: Marian's decoder starts
    from a zero embedding) in the layout OPUS-MT releases: Marian's names, matrices (in, out),
    biases and norms (1, n), no <pad> row, the options as yaml bytes in special:model.yml."""
    state = {k.removeprefix("model."): v.detach().numpy() for k, v in model.state_dict().items()}
    vocab = json.loads((hf_folder / "vocab.json").read_text())
    assert vocab["<pad>"] == len(vocab) - 1
    arrays = {"Wemb": state["shared.weight"][:-1],
              "decoder_ff_logit_out_b": state["final_logits_bias"][:, :-1]}
    ours = {"self_attn": "self", "encoder_attn": "context"}
    norms = {"self_attn_layer_norm": "self_Wo", "encoder_attn_layer_norm": "context_Wo",
             "final_layer_norm": "ffn_ffn"}
    for name, value in state.items():
        parts = name.split(".")
        if parts[0] not in ("encoder", "decoder") or parts[1] != "layers":
            continue
        layer, module, kind = f"{parts[0]}_l{int(parts[2]) + 1}", parts[3], parts[-1]
        if module in ours:  # self_attn.q_proj.weight -> encoder_l1_self_Wq
            x = parts[4][0]  # q k v o(ut_proj)
            key = f"{layer}_{ours[module]}_{'W' if kind == 'weight' else 'b'}{x}"
        elif module in norms:
            key = f"{layer}_{norms[module]}_ln_{'scale' if kind == 'weight' else 'bias'}"
        else:  # fc1 / fc2
            key = f"{layer}_ffn_{'W' if kind == 'weight' else 'b'}{module[-1]}"
        arrays[key] = value.T if kind == "weight" and module not in norms else value.reshape(1, -1)
    text = yaml.safe_dump(options or _marian_options(model.config), sort_keys=False) + "\0"
    arrays["special:model.yml"] = np.frombuffer(text.encode("utf-8"), dtype=np.int8)
    out.mkdir()
    np.savez(out / NPZ_NAME, **arrays)
    pieces = sorted((p for p in vocab if p != "<pad>"), key=vocab.get)
    (out / VOCAB_YML).write_text("".join(f"{json.dumps(p, ensure_ascii=False)}: {vocab[p]}\n"
                                         for p in pieces), encoding="utf-8")
    (out / "decoder.yml").write_text(
        f"models:\n  - {NPZ_NAME}\nvocabs:\n  - {VOCAB_YML}\n  - {VOCAB_YML}\nbeam-size: 6\n"
        "normalize: 0.6\nword-penalty: 0\nmini-batch: 1\nmaxi-batch: 1\nmaxi-batch-sort: src\n"
        "relative-paths: true\n")
    for name in ("source.spm", "target.spm"):
        (out / name).write_bytes((hf_folder / name).read_bytes())
    return out


@pytest.fixture(scope="module")
def release(marian, varied):
    """The varied model with a zero <pad> row and bias, as a Marian release, imported."""
    hf = copy.deepcopy(varied["hf"])
    with torch.no_grad():
        hf.model.shared.weight[-1] = 0.0
        hf.final_logits_bias[0, -1] = 0.0
    folder = write_marian_release(hf, varied["folder"], marian["tmp"] / "release")
    ckpt = import_marian(folder, marian["tmp"] / "imported-npz")
    return {"folder": folder, "hf": hf, "ckpt": ckpt}


def test_the_release_writer_matches_transformers_converter(marian, release, tmp_path):
    """transformers' own converter (shipped up to transformers 4) reads the written release back
    into the same weights: the layout is Marian's, not merely the inverse of nmtkit's import."""
    convert = pytest.importorskip("transformers.models.marian.convert_marian_to_pytorch")
    folder = tmp_path / "release"
    shutil.copytree(release["folder"], folder)  # the converter writes vocab.json into it
    state = convert.OpusState(folder).load_marian_model().state_dict()
    theirs = release["hf"].state_dict()
    assert state.keys() == theirs.keys()
    for name, value in theirs.items():
        if "embed_positions" in name:  # sinusoids, not stored; the converter sizes them d_model
            value = value[:len(state[name])]
        assert torch.allclose(state[name].float(), value.float(), atol=1e-6), name


def test_npz_release_logits_equal_hugging_face_on_a_padded_batch(marian, varied, release):
    _check_logits(varied["folder"], release["hf"], release["ckpt"], marian["sources"][:8])


@pytest.mark.parametrize("beam", [1, 5])
def test_npz_release_search_equals_generate(marian, varied, release, beam):
    _check_search(varied["folder"], release["hf"], release["ckpt"], marian["sources"], beam)


def test_npz_release_with_one_spm_and_no_decoder_yml(marian, release, tmp_path):
    """A release without decoder.yml (the only .npz and *vocab.yml are used) and with one
    sentencepiece model for both sides imports the same model."""
    folder = tmp_path / "bare"
    shutil.copytree(release["folder"], folder)
    (folder / "decoder.yml").unlink()
    (folder / "target.spm").unlink()
    (folder / "source.spm").rename(folder / "opus.spm60.spm")
    result = _cli("import", "marian", str(folder), str(tmp_path / "ckpt"))
    assert result.returncode == 0, result.stderr
    a, b = (load_file(str(Path(c) / "model.safetensors")) for c in (release["ckpt"], tmp_path / "ckpt"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    info = json.loads((tmp_path / "ckpt" / "checkpoint.json").read_text())
    assert info["imported_from"]["format"] == "marian-npz"


def _copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


def _fails(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("nmtkit: error:") and result.stderr.count("\n") == 1, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def _refused(folder: Path, out: Path, *words: str) -> None:
    with pytest.raises(NMTKitError) as err:
        import_marian(folder, out)
    assert "\n" not in str(err.value)
    for word in words:
        assert word in str(err.value), str(err.value)


def test_npz_release_bad_inputs_are_one_line_errors(varied, release, tmp_path):
    # an npz holding a pickled object: np.load(allow_pickle=False) refuses it, nothing is run
    pickled = _copy(release["folder"], tmp_path / "pickled")
    with np.load(pickled / NPZ_NAME) as npz:
        arrays = dict(npz)
    arrays["evil"] = np.array([Path("x")], dtype=object)
    np.savez(pickled / NPZ_NAME, **arrays)
    _fails(_cli("import", "marian", str(pickled), str(tmp_path / "o1")), "evil", "pickled",
           "allow_pickle=False")
    # the rest in-process: the CLI turns each NMTKitError into that one line (the pickle above)
    # unsupported options, named by Marian's name
    opts = _marian_options(release["hf"].config)
    for n, (key, value) in enumerate((("transformer-preprocess", "n"),
                                      ("transformer-ffn-activation", "gelu"),
                                      ("transformer-decoder-autoreg", "average-attention"),
                                      ("right-left", True), ("tied-embeddings-all", False),
                                      ("transformer-postprocess-emb", "dn"))):
        changed = tmp_path / f"opt{n}"
        write_marian_release(release["hf"], varied["folder"], changed, {**opts, key: value})
        _refused(changed, tmp_path / "o2", key, "not supported")
    # the vocabulary yml missing, or named by decoder.yml but absent
    no_vocab = _copy(release["folder"], tmp_path / "novocab")
    (no_vocab / VOCAB_YML).unlink()
    _refused(no_vocab, tmp_path / "o3", VOCAB_YML, "missing")
    (no_vocab / "decoder.yml").unlink()
    _refused(no_vocab, tmp_path / "o3", "vocab.yml")
    # a vocabulary yml with a line lost: named, with the first id no piece has
    lines = (release["folder"] / VOCAB_YML).read_text(encoding="utf-8").splitlines(keepends=True)
    (no_vocab / VOCAB_YML).write_text("".join(lines[:7] + lines[8:]), encoding="utf-8")
    _refused(no_vocab, tmp_path / "o3", VOCAB_YML, "no piece has id 7")
    (no_vocab / VOCAB_YML).write_text("".join(lines) + f'"<pad>": {len(lines)}\n', encoding="utf-8")
    _refused(no_vocab, tmp_path / "o3", VOCAB_YML, "<pad>")
    # a weight nmtkit does not map (learned positions) and a missing one
    extra = _copy(release["folder"], tmp_path / "extra")
    arrays["Wpos"] = np.zeros((4, 32), dtype=np.float32)
    del arrays["evil"], arrays["decoder_l2_ffn_W2"]
    np.savez(extra / NPZ_NAME, **arrays)
    _refused(extra, tmp_path / "o4", "Wpos")
    del arrays["Wpos"]
    np.savez(extra / NPZ_NAME, **arrays)
    _refused(extra, tmp_path / "o4", "decoder_l2_ffn_W2")
    # not an npz at all
    (extra / NPZ_NAME).write_bytes(b"not a zip")
    _refused(extra, tmp_path / "o5", "not an npz")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6))


def test_out_below_a_file_and_a_spm_that_is_a_folder_name_the_cause(marian, tmp_path):
    """Found by a hostile review: OUT below a file said "already exists", and a source.spm
    that is a folder was reported as missing."""
    (tmp_path / "afile").write_text("x")
    _fails(_cli("import", "marian", str(marian["folder"]), str(tmp_path / "afile" / "sub" / "out")),
           "afile is a file, not a folder")
    spm_dir = _copy(marian["folder"], tmp_path / "spmdir")
    (spm_dir / "source.spm").unlink()
    (spm_dir / "source.spm").mkdir()
    _fails(_cli("import", "marian", str(spm_dir), str(tmp_path / "o")), "source.spm is a folder")
    (spm_dir / "config.json").unlink()
    (spm_dir / "config.json").mkdir()
    _refused(spm_dir, tmp_path / "o", "config.json is a folder")
    assert (tmp_path / "afile").read_text() == "x" and not (tmp_path / "o").exists()


def test_npz_release_with_an_untied_output_layer(release, tmp_path):
    """decoder_ff_logit_out_W, Marian's untied output layer stored (d_model, vocab), becomes the
    output weight; here it holds the embedding's values, so the model computes as before."""
    folder = _copy(release["folder"], tmp_path / "untied")
    with np.load(folder / NPZ_NAME) as npz:
        arrays = dict(npz)
    arrays["decoder_ff_logit_out_W"] = arrays["Wemb"].T.copy() * 2.0
    np.savez(folder / NPZ_NAME, **arrays)
    ckpt = load_checkpoint(import_marian(folder, tmp_path / "ckpt"))
    tied = load_checkpoint(release["ckpt"])
    assert ckpt.config.model.tie_output is False and tied.config.model.tie_output is True
    ours, theirs = ckpt.model.generator.weight, tied.model.generator.weight
    assert torch.equal(ours, 2.0 * theirs)  # <pad> and <s>: zero rows in both
    assert torch.equal(ckpt.model.encoder.embedding.weight, tied.model.encoder.embedding.weight)


# the command, made slow once its temp folder holds its first files (the spm models are written
# last), so that the signal lands while OUT is half-written
# (SIGINT's default handler restored: a pytest-xdist worker's children inherit it ignored, as a
# shell's background jobs do, and then Ctrl-C rightly does nothing)
_SLOW_CLI = ("import signal, sys, time; signal.signal(signal.SIGINT, signal.default_int_handler); "
             "from nmtkit import vocabulary; from nmtkit.cli import main; "
             "fast = vocabulary.Tokenizer.to_bytes; "
             "vocabulary.Tokenizer.to_bytes = lambda self: (time.sleep(60), fast(self))[1]; "
             "sys.exit(main(sys.argv[1:]))")


@pytest.mark.parametrize("command", ["import", "export"])
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_while_writing_leaves_no_half_written_out(marian, tmp_path, command, sig):
    """Ctrl-C or SIGTERM while OUT is being written: exit 130 / 143 with one line, no OUT and no
    temp folder left, and the folder the user made (OUT's parent) kept with its files."""
    import signal
    import time

    if command == "export":
        pytest.importorskip("ctranslate2")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's own file")
    out = mine / "OUT"
    args = ["import", "marian", str(marian["folder"]), str(out)] if command == "import" else \
        ["export", str(marian["ckpt"]), "--format", "ctranslate2", str(out)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_CLI, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not any(any(p.rglob("*")) for p in mine.glob(".OUT.*")) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        assert time.monotonic() < deadline, "the temp folder never appeared"
        proc.send_signal(getattr(signal, sig))
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == (130 if sig == "SIGINT" else 143), err
    assert len(err.splitlines()) == 1 and err.startswith("nmtkit: "), err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert (mine / "notes.txt").read_text() == "the user's own file"


def test_import_and_export_remove_what_a_killed_run_left(marian, tmp_path):
    """SIGKILL cannot be caught: the temp folder of a killed import or export (its process gone)
    is removed by the next one into the same OUT; a live process's is kept."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [tmp_path / f".imp.tmp-{dead.pid}-x1", tmp_path / f".ct2.tmp-{dead.pid}-x2"]
    live = tmp_path / f".imp.tmp-{os.getpid()}-x3"
    for folder in (*stale, live):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    import_marian(marian["folder"], tmp_path / "imp")
    if importlib.util.find_spec("ctranslate2") is not None:
        from nmtkit.export import export_ctranslate2
        export_ctranslate2(tmp_path / "imp", tmp_path / "ct2")
    else:
        stale.pop()
    assert not any(p.exists() for p in stale) and live.is_dir()


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


def test_a_finetuning_config_without_a_model_section_takes_the_checkpoints(marian, tmp_path):
    """`nmtkit train finetune.yaml --init-from OUT` where the YAML has no model: section: the
    imported model's is used (the user need not copy it out of checkpoint.json). Before, the
    defaults (an RNN) were compared with the checkpoint's model and refused."""
    raw = _finetune_config(marian, tmp_path, 1).to_json_dict()
    del raw["model"]
    config = tmp_path / "finetune.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    cli = [sys.executable, "-m", "nmtkit.cli", "train", str(config)]
    run = subprocess.run([*cli, "--init-from", str(marian["ckpt"])], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    tuned = load_checkpoint(tmp_path / "run" / "last")
    assert tuned.config.model == load_checkpoint(marian["ckpt"]).config.model
