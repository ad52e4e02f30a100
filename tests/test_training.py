import json
import math
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from nmtkit.config import EarlyStoppingConfig
from nmtkit.errors import NMTKitError
from nmtkit.training import Trainer, list_checkpoints, load_log, train


def _losses(run_dir) -> list[float]:
    return [r["loss"] for r in load_log(run_dir) if r["type"] == "train"]


def _weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _with(cfg, **training):
    return cfg.model_copy(update={"training": cfg.training.model_copy(update=training)})


def test_same_seed_same_losses(tiny_config, tmp_path) -> None:
    a = train(_with(tiny_config, out_dir=tmp_path / "a", max_steps=20, max_epochs=5))
    b = train(_with(tiny_config, out_dir=tmp_path / "b", max_steps=20, max_epochs=5))
    la, lb = _losses(a), _losses(b)
    assert len(la) == 20
    assert la == lb
    c = train(_with(tiny_config, out_dir=tmp_path / "c", max_steps=20, max_epochs=5, seed=99))
    assert _losses(c) != la
    assert la[-1] < la[0]  # it learns


@pytest.mark.parametrize("update_freq", [1, 2])
def test_resume_gives_identical_weights(tiny_config, tmp_path, update_freq) -> None:
    # 14 updates cross an epoch boundary (about 9 batches per epoch) and stop mid-epoch
    base = dict(max_epochs=10, update_freq=update_freq, schedule="noam", warmup_steps=4,
                valid_bleu=False, num_threads=1)  # same thread count: same float sums
    straight = train(_with(tiny_config, out_dir=tmp_path / "s", max_steps=14, **base))
    part = _with(tiny_config, out_dir=tmp_path / "r", max_steps=7, **base)
    run = subprocess.run([sys.executable, "-c", (
        "import sys, json; from nmtkit.config import config_from_dict; "
        "from nmtkit.training import train; "
        "train(config_from_dict(json.loads(sys.argv[1])))"), json.dumps(part.to_json_dict())],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    resumed = train(_with(tiny_config, out_dir=tmp_path / "r", max_steps=14, **base), resume=True)
    w1, w2 = _weights(straight / "last"), _weights(resumed / "last")
    assert w1.keys() == w2.keys()
    for k in w1:
        assert torch.equal(w1[k], w2[k]), k
    # and the resumed run really continued (it did not start over)
    steps = [r["step"] for r in load_log(resumed) if r["type"] == "train"]
    assert steps == sorted(steps) and len(steps) == 14


def test_early_stopping_stops_at_the_right_evaluation(tiny_config, tmp_path, monkeypatch) -> None:
    scores = iter([10.0, 12.0, 11.0, 12.0, 9.0, 50.0, 60.0])
    monkeypatch.setattr(Trainer, "valid_bleu", lambda self: next(scores))
    cfg = _with(tiny_config, out_dir=tmp_path / "e", max_epochs=50, valid_every=2,
                early_stopping=EarlyStoppingConfig(metric="bleu", patience=3), keep_best=2, keep_last=1)
    run = train(cfg)
    valid = [r for r in load_log(run) if r["type"] == "valid"]
    # best is 12.0 at the 2nd evaluation; 3 evaluations without improvement end the run
    assert [r["bleu"] for r in valid] == [10.0, 12.0, 11.0, 12.0, 9.0]
    assert (run / "best").resolve().name == "ckpt-00000004"
    # keep_best=2 (12.0 at update 4, 12.0 at update 8) and keep_last=1 (update 10)
    assert [p.name for p in list_checkpoints(run)] == ["ckpt-00000004", "ckpt-00000008",
                                                      "ckpt-00000010"]


def test_non_finite_loss_stops_with_clear_message(tiny_config, tmp_path, monkeypatch) -> None:
    from nmtkit import training

    def nan_loss(log_probs, target, smoothing=0.0):
        loss = log_probs.sum() * float("nan")
        return loss, loss.detach()

    monkeypatch.setattr(training, "label_smoothed_nll", nan_loss)
    with pytest.raises(NMTKitError, match="max_bad_steps"):
        train(_with(tiny_config, out_dir=tmp_path / "n", max_bad_steps=3))
    assert not list_checkpoints(tmp_path / "n")


@pytest.mark.parametrize("model_type", ["rnn", "transformer"])
def test_bf16_training_keeps_fp32_checkpoints(tiny_config, tmp_path, model_type) -> None:
    from nmtkit.config import TransformerConfig

    cfg = _with(tiny_config, out_dir=tmp_path / "b", max_steps=4, precision="bf16",
                label_smoothing=0.1)
    if model_type == "transformer":
        cfg = cfg.model_copy(update={"model": TransformerConfig(
            d_model=32, heads=2, ff_size=64, encoder_layers=1, decoder_layers=1)})
    run = train(cfg)
    losses = _losses(run)
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    weights = _weights(run / "last")
    assert {v.dtype for v in weights.values()} == {torch.float32}
    assert any(r["type"] == "valid" and r["bleu"] is not None for r in load_log(run))


def test_best_follows_loss_when_bleu_is_off(tiny_config, tmp_path) -> None:
    run = train(_with(tiny_config, out_dir=tmp_path / "l", valid_every=3, max_steps=9,
                      valid_bleu=False, keep_last=1, lr=0.01))
    valid = [r for r in load_log(run) if r["type"] == "valid"]
    best = min(valid, key=lambda r: r["loss"])
    assert (run / "best").resolve().name == f"ckpt-{best['step']:08d}"
    assert best["step"] != valid[0]["step"]  # the loss improved, so best moved


def test_scheduled_sampling_ratio_follows_the_update_count(tiny_config) -> None:
    from nmtkit.config import ScheduledSamplingConfig

    cfg = tiny_config.model_copy(deep=True)
    cfg.training.scheduled_sampling = ScheduledSamplingConfig(decay="linear", k=1.0, c=0.01)
    trainer = Trainer(cfg)
    assert trainer.teacher_forcing_ratio() == 1.0
    trainer.state.step = 30
    assert trainer.teacher_forcing_ratio() == pytest.approx(0.7)
    assert Trainer(tiny_config).teacher_forcing_ratio() == 1.0  # fixed ratio by default
