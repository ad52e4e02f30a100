"""The config schema: clear errors that name the file, line or key, and suggest the fix."""

import re
from pathlib import Path

import pytest

from nmtkit.config import config_from_dict, load_config
from nmtkit.errors import NMTKitError

DATA = {"train_src": "a", "train_tgt": "b", "valid_src": "c", "valid_tgt": "d"}


def error(raw: dict) -> str:
    with pytest.raises(NMTKitError) as err:
        config_from_dict(raw)
    return str(err.value)


@pytest.mark.parametrize("model, expected", [
    ({"type": "rnn", "hiden_size": 3}, "model.hiden_size: unknown key (did you mean hidden_size?)"),
    ({"type": "transformer", "hidden_size": 3},
     "model.hidden_size: unknown key (a key of model.type rnn, and this model is transformer: its key is d_model)"),
    ({"type": "rnn", "heads": 4}, "model.heads: unknown key (a key of model.type transformer"),
    ({"type": "rnn", "attention": "additive"}, "model.attention: Input should be 'none', 'dot', 'general', 'concat' or 'bahdanau'"),
])
def test_unknown_keys_suggest_the_fix(model, expected) -> None:
    assert expected in error({"data": DATA, "model": model})
    assert "did you mean lr?" in error({"data": DATA, "training": {"lrate": 1}})


@pytest.mark.parametrize("training", [{"max_minutes": float("inf")}, {"lr": float("nan")},
                                      {"betas": [0.9, 1.5]}, {"betas": [0.9]}, {"seed": 2**64}])
def test_values_that_cannot_be_saved_or_used_are_rejected(training) -> None:
    assert "training." in error({"data": DATA, "training": training})


def test_a_yaml_boolean_is_not_a_number() -> None:
    assert "training.max_steps: expected a number, got the boolean true" in error(
        {"data": DATA, "training": {"max_steps": True}})
    assert "model.dropout: expected a number, got the boolean false" in error(
        {"data": DATA, "model": {"type": "rnn", "dropout": False}})


def test_lengths_must_fit_the_positions_and_sizes_must_be_possible() -> None:
    assert "data.max_len: 1023 needs 1025 positions (with </s>), more than model.max_positions (1024)" \
        in error({"data": {**DATA, "max_len": 1023}, "model": {"type": "transformer"}})
    joint = {"vocab": {"joint": True}, "model": {"type": "decoder_only", "max_positions": 200}}
    assert "data.max_len: 100 needs 202 positions (with </s>, source and target in one sequence)" \
        in error({"data": {**DATA, "max_len": 100}, **joint})
    config_from_dict({"data": {**DATA, "max_len": 99}, **joint})
    config_from_dict({"data": {**DATA, "max_len": 1023}, "model": {"type": "rnn"}})  # no positions
    assert "model.hidden_size: Input should be less than or equal to 65536" in error(
        {"data": DATA, "model": {"type": "rnn", "hidden_size": 2_000_000}})


def test_a_model_too_large_for_memory_is_one_clear_error(tiny_config, tmp_path) -> None:
    from nmtkit.training import train

    cfg = tiny_config.model_copy(update={
        "model": tiny_config.model.model_copy(update={"hidden_size": 60_000, "embed_size": 60_000}),
        "training": tiny_config.training.model_copy(update={"out_dir": tmp_path / "big"})})
    with pytest.raises(NMTKitError, match="parameters need about .* GiB to train, more than"):
        train(cfg)


def test_yaml_mistakes_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  train_src: a\n   train_tgt: b\n")
    with pytest.raises(NMTKitError, match="bad.yaml: not valid YAML at line 3"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(NMTKitError, match="the top level must be a mapping"):
        load_config(bad)


def test_the_config_reference_lists_every_key_as_the_schema_says() -> None:
    from nmtkit.config import README_END, README_START, config_reference

    readme = (Path(__file__).resolve().parents[1] / "docs" / "reference" / "config.md").read_text(encoding="utf-8")
    block = readme[readme.index(README_START) + len(README_START): readme.index(README_END)]
    assert block.strip() == config_reference().strip(), "run `python -m nmtkit.config` to refresh it"


def test_every_shipped_config_is_valid() -> None:
    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(configs) >= 6
    for path in configs:
        load_config(path)


@pytest.mark.parametrize("override, message", [
    ("=5", "--set '=5': the key is empty"),
    (" =5", "--set ' =5': the key is empty"),
    ("training..lr=5", "--set 'training..lr=5': the key has an empty part"),
    ("training.=5", "the key has an empty part"),
])
def test_a_set_with_an_empty_key_says_so(override, message) -> None:
    from nmtkit.config import apply_overrides

    with pytest.raises(NMTKitError, match=re.escape(message)):
        apply_overrides({}, [override])


def test_a_bleu_target_needs_bleu_at_validation() -> None:
    training = {"valid_bleu": False, "early_stopping": {"metric": "bleu", "target": 30}}
    assert "early_stopping.target: a BLEU target needs valid_bleu: true" in error(
        {"data": DATA, "training": training})
    config_from_dict({"data": DATA, "training": {**training, "early_stopping": {
        "metric": "loss", "target": 1.5}}})  # a loss target needs no BLEU


@pytest.mark.parametrize("name", ["demo.yaml", "demo-transformer.yaml"])
def test_the_demos_stop_on_quality_not_on_the_clock(name) -> None:
    """A busy machine ended the demos at their 7-minute cap, far from their quality: they
    stop at a valid BLEU target (or after max_epochs); the time cap is a safety only."""
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / name)
    training = cfg.training
    assert training.early_stopping.metric == "bleu" and training.early_stopping.target >= 99
    assert training.max_minutes >= 60
    assert 0 < training.valid_every <= 100  # the target is checked often enough to stop early
