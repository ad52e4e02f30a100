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


def train_on_numbers(tmp, model: dict, *, seed: int = 3, n_train: int = 3000, n_valid: int = 50,
                     n_test: int = 50, vocab_size: int = 200, **training):
    """Train `model` on a numbers corpus made in `tmp` (Korean -> English, no validation BLEU):
    the last checkpoint, the corpus files and the config, for the fixtures that need a model
    with sensible outputs."""
    from nmtkit.config import config_from_dict
    from nmtkit.democorpus import make_demo_corpus
    from nmtkit.training import train

    files = make_demo_corpus(tmp / "corpus", seed=seed, n_train=n_train, n_valid=n_valid, n_test=n_test)
    cfg = config_from_dict({
        "data": {"train_src": str(files["train"][1]), "train_tgt": str(files["train"][0]),
                 "valid_src": str(files["valid"][1]), "valid_tgt": str(files["valid"][0]),
                 "out_dir": str(tmp / "bin"), "max_len": 40},
        "vocab": {"size": vocab_size, "joint": False, "byte_fallback": False},
        "model": model,
        "training": {"out_dir": str(tmp / "run"), "max_tokens": 2000, "valid_bleu": False,
                     "valid_every": 10000, "max_epochs": 100, **training}})
    return train(cfg) / "last", files, cfg


@pytest.fixture(scope="session")
def numbers_checkpoint(tmp_path_factory):
    """An attentional LSTM that has learnt the numbers (Korean words -> English words) well
    enough to translate them (300 updates, about 15 s): for tests that need sensible outputs,
    probabilities and attention."""
    model = {"type": "rnn", "embed_size": 64, "hidden_size": 64, "encoder_layers": 1,
             "decoder_layers": 1, "dropout": 0.0}
    return train_on_numbers(tmp_path_factory.mktemp("numbers"), model, max_steps=300, lr=0.005)[0]
