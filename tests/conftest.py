import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models on 2 shared cores: one thread avoids waiting on the other core per op."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tiny_config(tmp_path):
    """A small numbers corpus (Korean -> English) and a config for a tiny, fast RNN."""
    from nmtkit.config import config_from_dict
    from nmtkit.democorpus import make_demo_corpus

    corpus = tmp_path / "corpus"
    make_demo_corpus(corpus, seed=7, n_train=400, n_valid=40, n_test=40)
    raw = {
        "data": {
            "train_src": str(corpus / "train.ko"), "train_tgt": str(corpus / "train.en"),
            "valid_src": str(corpus / "valid.ko"), "valid_tgt": str(corpus / "valid.en"),
            "test_src": str(corpus / "test.ko"), "test_tgt": str(corpus / "test.en"),
            "out_dir": str(tmp_path / "bin"), "max_len": 40,
        },
        "vocab": {"type": "bpe", "size": 60, "joint": False, "byte_fallback": False},
        "model": {"type": "rnn", "embed_size": 16, "hidden_size": 32, "encoder_layers": 1,
                  "decoder_layers": 1, "dropout": 0.1},
        "training": {"out_dir": str(tmp_path / "run"), "max_tokens": 600, "max_epochs": 1,
                     "lr": 0.005, "log_every": 1, "valid_max_sentences": 10, "seed": 3},
    }
    return config_from_dict(raw)
