import json
import math
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.parametrize("update_freq, ema_decay", [(1, 0.0), (2, 0.0), (1, 0.9)])
def test_resume_gives_identical_weights(tiny_config, tmp_path, update_freq, ema_decay) -> None:
    # 14 updates cross an epoch boundary (about 9 batches per epoch) and stop mid-epoch
    base = dict(max_epochs=10, update_freq=update_freq, schedule="noam", warmup_steps=4,
                valid_bleu=False, num_threads=1, ema_decay=ema_decay)  # same threads: same sums
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
    if ema_decay:  # the average (model.safetensors) and the raw weights both continued exactly
        raw1, raw2 = (load_file(str(r / "last" / "training.safetensors")) for r in (straight, resumed))
        raw_names = [k for k in raw1 if k.startswith("raw.")]
        assert raw_names and all(torch.equal(raw1[k], raw2[k]) for k in raw_names)
    # and the resumed run really continued (it did not start over)
    rows = [r for r in load_log(resumed) if r["type"] == "train"]
    assert [r["step"] for r in rows] == list(range(1, 15))
    # each train record has the process's memory, the peak never below the current
    assert all(0.05 < r["rss_gb"] <= r["peak_rss_gb"] < 64 for r in rows)


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


def test_tokens_per_second_leaves_validation_out(tiny_config, tmp_path, monkeypatch) -> None:
    import time

    def slow_bleu(self) -> float:
        time.sleep(1.0)
        return 10.0

    monkeypatch.setattr(Trainer, "valid_bleu", slow_bleu)
    run = train(_with(tiny_config, out_dir=tmp_path / "v", max_steps=6, max_epochs=5, valid_every=2,
                      log_every=2))
    rows = [r for r in load_log(run) if r["type"] == "train"]
    assert [r["step"] for r in rows] == [2, 4, 6]
    # a window of 2 updates holds at most 2 x 600 tokens: had it included the validation of a
    # second before it (updates 2 and 4), its tokens/s would be under 1,200
    assert all(r["tokens_per_s"] > 1200 for r in rows[1:]), rows
    # the validations still count in the run's wall time
    assert rows[-1]["elapsed_s"] > 2.0


def test_non_finite_loss_stops_with_clear_message(tiny_config, tmp_path, monkeypatch) -> None:
    from nmtkit import seq2seq

    def nan_loss(hidden, generator, target, smoothing=0.0):
        loss = hidden.sum() * float("nan")
        return loss, loss.detach()

    monkeypatch.setattr(seq2seq, "output_layer_loss", nan_loss)
    with pytest.raises(NMTKitError, match="max_bad_steps"):
        train(_with(tiny_config, out_dir=tmp_path / "n", max_bad_steps=3))
    assert not list_checkpoints(tmp_path / "n")


@pytest.mark.avx2
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


def _run_in_subprocess(cfg, resume: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", (
        "import sys, json; from nmtkit.config import config_from_dict; "
        "from nmtkit.training import train; "
        "train(config_from_dict(json.loads(sys.argv[1])), resume=sys.argv[2] == '1')"),
        json.dumps(cfg.to_json_dict()), "1" if resume else "0"],
        capture_output=True, text=True, timeout=300)


def test_resume_refuses_other_data_model_or_settings(tiny_config, tmp_path) -> None:
    cfg = _with(tiny_config, out_dir=tmp_path / "r", max_steps=3, valid_bleu=False)
    run = train(cfg)
    before = sorted(p.name for p in run.iterdir())
    bigger = cfg.model_copy(update={"model": cfg.model.model_copy(update={"hidden_size": 48})})
    with pytest.raises(NMTKitError, match=r"--resume: model.hidden_size: 32 -> 48 since .*--init-from"):
        train(_with(bigger, max_steps=6), resume=True)
    with pytest.raises(NMTKitError, match=r"--resume: training.max_tokens: 600 -> 700"):
        train(_with(cfg, max_steps=6, max_tokens=700), resume=True)
    vocab = cfg.model_copy(update={"vocab": cfg.vocab.model_copy(update={"size": 61})})
    with pytest.raises(NMTKitError, match=r"--resume: vocab.size: 60 -> 61"):
        train(_with(vocab, max_steps=6), resume=True)
    text = cfg.data.train_src.read_text(encoding="utf-8")
    cfg.data.train_src.write_text(text.replace("삼", "사", 3), encoding="utf-8")
    with pytest.raises(NMTKitError, match=r"data.train_src \(.*train.ko\) is not the file .* was trained on"):
        train(_with(cfg, max_steps=6), resume=True)
    cfg.data.train_src.write_text(text, encoding="utf-8")
    assert sorted(p.name for p in run.iterdir()) == before  # nothing touched
    # keys that may change do: more updates, other validation settings
    run = train(_with(cfg, max_steps=5, valid_every=2, keep_last=2), resume=True)
    assert [r["step"] for r in load_log(run) if r["type"] == "train"] == [1, 2, 3, 4, 5]


def test_resume_without_a_checkpoint_says_so_unless_asked_to_start(tiny_config, tmp_path) -> None:
    cfg = _with(tiny_config, out_dir=tmp_path / "n", max_steps=2, valid_bleu=False)
    with pytest.raises(NMTKitError, match="no checkpoint in .* to continue from"):
        train(cfg, resume=True)
    assert not (tmp_path / "n").exists()  # nor the folder it made to lock
    run = train(cfg, resume="auto")
    assert [p.name for p in list_checkpoints(run)] == ["ckpt-00000002"]


def test_resume_skips_a_damaged_newest_checkpoint(tiny_config, tmp_path) -> None:
    cfg = _with(tiny_config, out_dir=tmp_path / "d", max_steps=4, valid_every=2, keep_last=3,
                valid_bleu=False)
    run = train(cfg)
    newest = run / "ckpt-00000004"
    raw = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    trainer = Trainer(_with(cfg, max_steps=6))
    trainer.train(resume=True)
    assert [r["step"] for r in load_log(run) if r["type"] == "train"] == [1, 2, 3, 4, 5, 6]
    rows = [r for r in load_log(run) if r["type"] == "valid"]
    assert [r["step"] for r in rows] == [2, 4, 6]  # the lost update-4 row was logged again, once


@pytest.mark.parametrize("damage", ["a flipped byte", "a changed weight"])
def test_resume_skips_a_checkpoint_whose_checksum_fails(tiny_config, tmp_path, damage) -> None:
    from safetensors.torch import save_file

    cfg = _with(tiny_config, out_dir=tmp_path / "d", max_steps=4, valid_every=2, keep_last=3,
                valid_bleu=False)
    run = train(cfg)
    newest = run / "ckpt-00000004"
    if damage == "a flipped byte":  # in the optimizer moments: the file still parses
        state = newest / "training.safetensors"
        raw = bytearray(state.read_bytes())
        raw[-5] ^= 0x01
        state.write_bytes(bytes(raw))
    else:
        state = newest / "model.safetensors"
        tensors = load_file(str(state))
        tensors["generator.weight"][0, 0] = 6e37
        save_file(tensors, str(state))
    logs: list[str] = []
    trainer = Trainer(_with(cfg, max_steps=6), log=logs.append)
    trainer.train(resume=True)
    assert any(line.startswith(f"warning: skipping damaged checkpoint {newest} ({state}: damaged")
               for line in logs), logs
    assert any(line.startswith(f"resumed from {run / 'ckpt-00000002'}") for line in logs)


@pytest.mark.parametrize("limit", ["max_steps", "early_stopping"])
def test_resuming_a_finished_run_changes_nothing(tiny_config, tmp_path, monkeypatch, limit) -> None:
    if limit == "early_stopping":
        scores = iter([5.0, 4.0, 3.0, 99.0])
        monkeypatch.setattr(Trainer, "valid_bleu", lambda self: next(scores))
        cfg = _with(tiny_config, out_dir=tmp_path / "f", max_epochs=50, valid_every=1,
                    early_stopping=EarlyStoppingConfig(metric="bleu", patience=2))
    else:
        cfg = _with(tiny_config, out_dir=tmp_path / "f", max_steps=3, valid_bleu=False)
    run = train(cfg)
    def files() -> dict[str, int]:  # the run's files (.lock: each process writes its PID there)
        return {p.name: p.stat().st_mtime_ns for p in run.rglob("*")
                if p.is_file() and p.name != ".lock"}

    state = files()
    trainer = Trainer(cfg)
    st = trainer.train(resume=True)
    assert trainer.finished and st.step == (3 if limit == "max_steps" else 3)
    assert files() == state
    if limit == "early_stopping":  # patience and best survived the resume
        assert st.evals_without_improvement == 2 and st.best_metric == 5.0


def test_fine_tuning_starts_from_the_weights_with_a_new_optimizer(tiny_config, tmp_path) -> None:
    from nmtkit.checkpoint import load_checkpoint
    from nmtkit.democorpus import make_demo_corpus

    base = train(_with(tiny_config, out_dir=tmp_path / "base", max_steps=3, valid_bleu=False))
    new = make_demo_corpus(tmp_path / "new", seed=11, n_train=200, n_valid=20, n_test=20)
    data = tiny_config.data.model_copy(update={
        "train_src": new["train"][1], "train_tgt": new["train"][0], "valid_src": new["valid"][1],
        "valid_tgt": new["valid"][0], "test_src": None, "test_tgt": None,
        "out_dir": tmp_path / "bin-new"})
    cfg = _with(tiny_config.model_copy(update={"data": data}), out_dir=tmp_path / "ft",
                max_steps=2, valid_bleu=False, lr=0.0)  # lr 0: the weights must stay as loaded
    trainer = Trainer(cfg)
    trainer.train(init_from=base / "last")
    start = load_checkpoint(base / "last")
    for k, v in start.model.state_dict().items():
        assert torch.equal(v, trainer.model.state_dict()[k]), k
    assert trainer.state.step == 2  # a new count, and a new schedule and optimizer
    assert trainer.data.src_tokenizer.to_bytes() == start.src_tokenizer.to_bytes()
    info = json.loads((tmp_path / "ft" / "last" / "checkpoint.json").read_text())
    assert info["init_from"] == str(base / "last")
    bigger = cfg.model_copy(update={"model": cfg.model.model_copy(update={"hidden_size": 48})})
    with pytest.raises(NMTKitError, match="--init-from .*model.hidden_size: 32 -> 48"):
        train(_with(bigger, out_dir=tmp_path / "ft2"), init_from=base / "last")


# `nmtkit train` in a subprocess, each update slowed down and announced on stdout
SLOW_CLI = (
    "import os, sys, time; from nmtkit import cli, training\n"
    "update = training.Trainer._update\n"
    "def slow(self, group):\n"
    "    print('update', self.state.step + 1, flush=True); time.sleep(float(os.environ['SLOW_S']))\n"
    "    return update(self, group)\n"
    "training.Trainer._update = slow\n"
    "sys.exit(cli.main(sys.argv[1:]))")


def _slow_training(cfg, tmp_path, *args: str, sleep: float = 0.05) -> tuple[subprocess.Popen, Path]:
    import os

    config = tmp_path / f"{cfg.training.out_dir.name}.yaml"
    config.write_text(json.dumps(cfg.to_json_dict()))  # JSON is YAML
    env = dict(os.environ, PYTHONUNBUFFERED="1", SLOW_S=str(sleep))
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI, "train", str(config), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return proc, config


def _wait_for_update(proc: subprocess.Popen, n: int) -> None:
    for line in proc.stdout:
        if line.startswith(f"update {n}"):
            return
    raise AssertionError(f"training ended before update {n}: {proc.stderr.read()[-2000:]}")


def test_sigint_writes_a_checkpoint_that_resumes_exactly(tiny_config, tmp_path) -> None:
    import signal

    base = dict(max_epochs=30, schedule="noam", warmup_steps=4, valid_bleu=False, num_threads=1,
                valid_every=1000)
    straight = train(_with(tiny_config, out_dir=tmp_path / "s", max_steps=40, **base))
    cfg = _with(tiny_config, out_dir=tmp_path / "i", max_steps=40, **base)
    proc, config = _slow_training(cfg, tmp_path)
    _wait_for_update(proc, 12)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]  # 128 + SIGINT: `train && evaluate` stops here
    assert err.splitlines()[-1] == "nmtkit: stopped by SIGINT after writing a checkpoint; exit 130"
    saved = list_checkpoints(tmp_path / "i")
    assert len(saved) == 1 and 12 <= int(saved[0].name.split("-")[1]) < 40
    assert "SIGINT" in out and f"to continue: nmtkit train {config} --resume" in out
    resumed = train(cfg, resume=True)
    w1, w2 = _weights(straight / "last"), _weights(resumed / "last")
    for k in w1:
        assert torch.equal(w1[k], w2[k]), k


def test_sigterm_writes_a_checkpoint_and_exits_143(tiny_config, tmp_path) -> None:
    import signal

    cfg = _with(tiny_config, out_dir=tmp_path / "t", max_steps=1000, max_epochs=100,
                valid_bleu=False, num_threads=1, valid_every=1000)
    proc, _ = _slow_training(cfg, tmp_path)
    _wait_for_update(proc, 3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]  # 128 + SIGTERM, as job schedulers expect
    assert err.splitlines()[-1] == "nmtkit: stopped by SIGTERM after writing a checkpoint; exit 143"
    assert "stopped: SIGTERM (interrupted)" in out
    (saved,) = list_checkpoints(tmp_path / "t")
    assert (tmp_path / "t" / "last").resolve() == saved.resolve()


def test_a_second_signal_aborts_at_once_without_a_checkpoint(tiny_config, tmp_path) -> None:
    import signal
    import time

    cfg = _with(tiny_config, out_dir=tmp_path / "a", max_steps=1000, max_epochs=100,
                valid_bleu=False, num_threads=1, valid_every=1000)
    proc, _ = _slow_training(cfg, tmp_path, sleep=2.0)  # both signals land in one update
    _wait_for_update(proc, 2)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert err.splitlines()[-1] == "nmtkit: stopped by SIGTERM at once (no checkpoint); exit 143"
    assert not list_checkpoints(tmp_path / "a")


def test_one_training_at_a_time_in_a_run_folder(tiny_config, tmp_path) -> None:
    run = tmp_path / "r"
    cfg = _with(tiny_config, out_dir=run, max_steps=1000, max_epochs=100, valid_bleu=False,
                num_threads=1, valid_every=1000)
    first, config = _slow_training(cfg, tmp_path)
    try:
        _wait_for_update(first, 2)
        for extra in ([], ["--resume"]):  # the lock comes before reading any checkpoint
            second = subprocess.run([sys.executable, "-m", "nmtkit.cli", "train", str(config),
                                     *extra], capture_output=True, text=True, timeout=120)
            assert second.returncode == 2
            assert second.stderr.splitlines() == [
                f"nmtkit: error: training.out_dir {run} is in use by another nmtkit process "
                f"(PID {first.pid}): wait for it to end, stop it, or choose another folder"]
        average = subprocess.run([sys.executable, "-m", "nmtkit.cli", "average",
                                  str(tmp_path / "x"), "--out", str(run / "avg")],
                                 capture_output=True, text=True, timeout=120)
        assert average.returncode == 2 and f"being trained (PID {first.pid})" in average.stderr
        assert not (run / "avg").exists()
    finally:
        first.kill()  # SIGKILL: the kernel releases the lock with the process
        first.communicate(timeout=60)
    assert first.returncode == -9
    again = subprocess.run([sys.executable, "-m", "nmtkit.cli", "train", str(config),
                            "--set", "training.max_steps=2"], capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert [r["step"] for r in load_log(run) if r["type"] == "train"] == [1, 2]


def test_training_stops_once_the_target_is_reached(tiny_config, tmp_path, monkeypatch) -> None:
    scores = iter([40.0, 99.6, 10.0, 10.0, 10.0])
    monkeypatch.setattr(Trainer, "valid_bleu", lambda self: next(scores))
    cfg = _with(tiny_config, out_dir=tmp_path / "g", max_epochs=50, valid_every=2,
                early_stopping=EarlyStoppingConfig(metric="bleu", target=99.5))
    st = Trainer(cfg, log=lambda msg: None).train()
    assert st.step == 4
    assert st.stopped == "reached the target: valid bleu 99.60 (early_stopping.target=99.5)"
    trainer = Trainer(cfg, log=lambda msg: None)
    trainer.train(resume=True)  # a run that reached its target is finished
    assert trainer.finished and trainer.state.step == 4
    higher = _with(cfg, max_steps=6, early_stopping=EarlyStoppingConfig(metric="bleu", target=99.9))
    assert Trainer(higher, log=lambda msg: None).train(resume=True).step == 6  # goes on


def test_time_budget_warning_names_the_warmup(tiny_config, tmp_path) -> None:
    logs: list[str] = []
    cfg = _with(tiny_config, out_dir=tmp_path / "w", max_steps=25, schedule="noam",
                warmup_steps=4000, valid_bleu=False, max_epochs=20)
    Trainer(cfg, log=logs.append).train()
    assert any(line.startswith("speed: ") and "updates/min" in line for line in logs)
    warning = [line for line in logs if line.startswith("warning: at ")]
    assert any("training.max_steps=25 ends training after about 25 updates, before the warm-up "
               "(training.warmup_steps=4000)" in line for line in warning)
    logs.clear()
    Trainer(_with(cfg, out_dir=tmp_path / "ok", warmup_steps=10, valid_every=5), log=logs.append).train()
    assert not any("before the warm-up" in line or "first validation" in line for line in logs)


def test_a_folder_of_other_files_is_not_a_run_folder(tiny_config, tmp_path) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / ".tmp-keep").write_text("mine")
    (notes / "a.txt").write_text("mine")
    with pytest.raises(NMTKitError, match="training.out_dir .*notes is a folder with other files"):
        train(_with(tiny_config, out_dir=notes, max_steps=1))
    assert sorted(p.name for p in notes.iterdir()) == [".tmp-keep", "a.txt"]


def test_a_training_error_prints_on_its_own_line(tiny_config, tmp_path, monkeypatch, capsys) -> None:
    import yaml

    from nmtkit import seq2seq
    from nmtkit.cli import main

    def nan_loss(hidden, generator, target, smoothing=0.0):
        loss = hidden.sum() * float("nan")
        return loss, loss.detach()

    monkeypatch.setattr(seq2seq, "output_layer_loss", nan_loss)
    cfg = _with(tiny_config, out_dir=tmp_path / "e", max_bad_steps=2)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_json_dict()))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    last = err.rstrip("\n").split("\n")[-1]
    assert last.split("\r")[-1].startswith("nmtkit: error: the loss was not finite"), repr(err[-300:])
    assert "epoch 1:" not in last.split("\r")[-1]


def test_a_folder_that_merely_holds_a_log_jsonl_is_not_a_run(tiny_config, tmp_path) -> None:
    folder = tmp_path / "applogs"
    folder.mkdir()
    (folder / "log.jsonl").write_text('{"app": 1}\n')
    (folder / "app.py").write_text("print(1)\n")
    tiny_config.training.out_dir = folder
    tiny_config.training.max_steps = 1
    with pytest.raises(NMTKitError, match="not a run folder"):
        train(tiny_config)
    assert (folder / "log.jsonl").read_text() == '{"app": 1}\n' and sorted(p.name for p in folder.iterdir()) == \
        ["app.py", "log.jsonl"]


def test_moving_average_is_what_checkpoints_hold_and_leaves_training_alone(tiny_config, tmp_path) -> None:
    """With ema_decay the trajectory is the same update by update (same losses, same raw
    weights); the checkpoint's model is the average, and validation scores the average."""
    base = dict(max_steps=12, max_epochs=5, num_threads=1, valid_bleu=False)
    plain = train(_with(tiny_config, out_dir=tmp_path / "plain", **base))
    smooth = train(_with(tiny_config, out_dir=tmp_path / "ema", ema_decay=0.9, **base))
    assert _losses(plain) == _losses(smooth)
    raw = load_file(str(smooth / "last" / "training.safetensors"))
    plain_weights, average = _weights(plain / "last"), _weights(smooth / "last")
    names = [k for k in plain_weights if f"raw.{k}" in raw]
    assert names
    for k in names:
        assert torch.equal(raw[f"raw.{k}"], plain_weights[k]), k
    assert any(not torch.allclose(average[k], plain_weights[k]) for k in names)
    valid = [r["loss"] for r in load_log(smooth) if r["type"] == "valid"]
    plain_valid = [r["loss"] for r in load_log(plain) if r["type"] == "valid"]
    assert valid[-1] != plain_valid[-1]  # the average was validated, not the raw weights


@pytest.mark.avx2
@pytest.mark.parametrize("native", [True, False])
def test_precision_auto_picks_bf16_only_where_it_is_native_and_says_why(tiny_config, tmp_path,
                                                                       monkeypatch, native) -> None:
    from nmtkit import training

    why = "the CPU has AVX512-BF16" if native else "oneDNN is held to AVX2 (ONEDNN_MAX_CPU_ISA)"
    monkeypatch.setattr(training, "native_bf16", lambda: (native, why))
    seen = []
    real_autocast = torch.autocast

    def autocast(device_type, dtype=None, enabled=True, **kw):
        if dtype == torch.bfloat16:  # the trainer's (the output layer's own says enabled=False)
            seen.append(enabled)
        return real_autocast(device_type, dtype=dtype, enabled=enabled, **kw)

    monkeypatch.setattr(training.torch, "autocast", autocast)
    logs = []
    Trainer(_with(tiny_config, out_dir=tmp_path / "p", max_steps=2, precision="auto",
                  valid_bleu=False), log=logs.append).train()
    chosen = "bf16" if native else "fp32"
    assert f"precision: {chosen} (training.precision auto: {why})" in logs
    assert seen and set(seen) == {native}  # autocast on in bf16 only
    assert not any("emulated" in line for line in logs)


@pytest.mark.avx2
def test_explicit_bf16_without_native_support_warns_once_and_trains(tiny_config, tmp_path,
                                                                     monkeypatch) -> None:
    from nmtkit import training

    monkeypatch.setattr(training, "native_bf16", lambda: (False, "the CPU has neither AVX512-BF16 nor AMX"))
    logs = []
    Trainer(_with(tiny_config, out_dir=tmp_path / "e", max_steps=2, precision="bf16",
                  valid_bleu=False), log=logs.append).train()
    warnings = [line for line in logs if "emulated" in line]
    assert len(warnings) == 1
    assert warnings[0].startswith("warning: precision bf16 is emulated here (the CPU has neither")
    assert "training.precision: auto or fp32" in warnings[0]
    assert ("LSTM/GRU cells run in fp32" in warnings[0]) == (tiny_config.model.type == "rnn")
    # a model without recurrent cells is not told about them
    _, line = training.resolve_precision("bf16", torch.device("cpu"), rnn=False)
    assert "emulated" in line and "LSTM" not in line


def test_budget_warns_when_max_minutes_ends_the_run_before_max_steps(tiny_config, tmp_path,
                                                                    monkeypatch) -> None:
    """The issue's case: 4.7 updates/min for 90 minutes is about 423 of 2,000 updates."""
    from nmtkit import training

    monkeypatch.setattr(training, "busy_machine", lambda threads: None)
    logs: list[str] = []
    trainer = Trainer(_with(tiny_config, out_dir=tmp_path / "m", max_steps=2000, max_minutes=90,
                            max_epochs=1000, schedule="cosine"), log=logs.append)
    trainer.setup()
    trainer._check_budget(4.7, 100.0)
    warning = [line for line in logs if "training.max_steps" in line]
    assert warning == ["warning: at 4.7 updates/min, training.max_minutes=90 ends training after about "
                       "423 of the 2000 updates of training.max_steps (the cosine schedule decays to "
                       "min_lr only at max_steps); they need about 426 min: raise max_minutes or lower "
                       "max_steps (both may change on --resume)"]
    logs.clear()
    trainer.tcfg = trainer.tcfg.model_copy(update={"max_minutes": 600})  # 2,820 updates: enough
    trainer._check_budget(4.7, 100.0)
    assert not any("training.max_steps" in line for line in logs)


def test_a_busy_machine_gets_advice_on_num_threads(tiny_config, tmp_path, monkeypatch) -> None:
    from nmtkit import training

    monkeypatch.setattr(training.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(training.os, "getloadavg", lambda: (4.2, 4.0, 3.0))
    assert training.busy_machine(2) == (4.2, 2, pytest.approx(2.2))
    assert training.busy_machine(1) is None  # one thread does not wait on another
    logs: list[str] = []
    trainer = Trainer(_with(tiny_config, out_dir=tmp_path / "b", max_steps=100), log=logs.append)
    trainer.setup()
    monkeypatch.setattr(training.torch, "get_num_threads", lambda: 2)
    trainer._check_budget(60.0, 100.0)
    busy = [line for line in logs if "the machine is busy" in line]
    assert len(busy) == 1 and "training.num_threads=1 is likely faster" in busy[0]
    monkeypatch.setattr(training.os, "getloadavg", lambda: (2.1, 2.0, 2.0))  # itself alone
    assert training.busy_machine(2) is None


def test_the_run_eta_is_the_first_limit_to_end_it(tiny_config, tmp_path, capsys) -> None:
    from nmtkit.training import time_left

    # 2 s per update: 100 updates to max_steps (200 s), 50 left in the epochs (100 s), 10 min
    assert time_left(2.0, 900, 1000, 50, 60.0, 10) == (100.0, "max_epochs")
    assert time_left(2.0, 990, 1000, 50, 60.0, 10) == (20.0, "max_steps")
    assert time_left(2.0, 900, 0, 5000, 500.0, 10) == (100.0, "max_minutes")
    train(_with(tiny_config, out_dir=tmp_path / "e", max_steps=6, max_epochs=5, valid_bleu=False))
    bar = capsys.readouterr().err
    assert "run_eta=" in bar and "(max_steps)" in bar


def test_a_lower_warmup_applies_on_resume(tiny_config, tmp_path) -> None:
    """The budget warning's advice, 'lower warmup_steps', works on the run it came from."""
    cfg = _with(tiny_config, out_dir=tmp_path / "w", max_steps=3, max_epochs=5, schedule="noam",
                warmup_steps=400, valid_bleu=False)
    train(cfg)
    run = train(_with(cfg, max_steps=5, warmup_steps=4), resume=True)
    lr = {r["step"]: r["lr"] for r in load_log(run) if r["type"] == "train"}
    assert lr[3] == pytest.approx(0.005 * 3 / 400)  # the first session's warm-up
    assert lr[4] == pytest.approx(0.005)  # the new one: its peak at update 4
    assert lr[5] == pytest.approx(0.005 * (4 / 5) ** 0.5)


def _slowing_trainer(tiny_config, tmp_path, monkeypatch, threads: int):
    """A set-up Trainer on a 2-core machine with `threads` torch threads, whose load average the
    test sets through the returned list (an injected load average; the clock is the seconds
    each update is said to have taken)."""
    from nmtkit import training

    load = [float(threads)]  # itself alone
    monkeypatch.setattr(training.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(training.os, "getloadavg", lambda: (load[0], load[0], load[0]))
    logs: list[str] = []
    trainer = Trainer(_with(tiny_config, out_dir=tmp_path / "s", max_steps=1000, max_epochs=1000),
                      log=logs.append, resume_command="nmtkit train c.yaml --resume")
    trainer.setup()
    monkeypatch.setattr(training.torch, "get_num_threads", lambda: threads)
    return trainer, logs, load


def _updates(trainer, n: int, seconds: float, tokens: int = 100) -> None:
    for _ in range(n):
        trainer._measure_speed(tokens, seconds)


def test_speed_falling_on_a_busy_machine_gets_advice_on_num_threads(tiny_config, tmp_path,
                                                                    monkeypatch) -> None:
    """The issue's case: other work starts after the early check (the load average was quiet
    then) and two threads fall from 60 to 24 updates/min: one warning, naming both speeds."""
    trainer, logs, load = _slowing_trainer(tiny_config, tmp_path, monkeypatch, threads=2)
    _updates(trainer, 21, 1.0)  # the first (one-off costs), then 20 at 60 updates/min
    assert any(line.startswith("speed: 60.0 updates/min") for line in logs)
    assert not any("num_threads" in line for line in logs)  # quiet at the early check
    load[0] = 4.2  # other work starts: about 2.2 cores of it
    _updates(trainer, 20, 2.5)  # 24 updates/min: one slow window is not yet a trend
    assert not any("training slowed" in line for line in logs)
    _updates(trainer, 20, 2.5)
    slowed = [line for line in logs if "training slowed" in line]
    assert slowed == [
        "warning: training slowed from 60.0 to 24.0 updates/min (100 to 40 target tokens/s) over "
        "the last 40 updates, while other work shares the cores (load average 4.2 on 2 cores, about "
        "2.2 of it other work): 2 training threads oversubscribe the cores and wait on each other. "
        "Set training.num_threads=1 (stop with Ctrl-C, which writes a checkpoint, and continue with "
        "nmtkit train c.yaml --resume --set training.num_threads=1), or stop the other work"]
    _updates(trainer, 100, 2.5)  # once per session
    assert len([line for line in logs if "training slowed" in line]) == 1


def test_speed_falling_alone_or_briefly_gives_no_thread_advice(tiny_config, tmp_path,
                                                               monkeypatch) -> None:
    trainer, logs, load = _slowing_trainer(tiny_config, tmp_path, monkeypatch, threads=2)
    _updates(trainer, 21, 1.0)
    load[0] = 4.2
    for _ in range(3):  # busy, but slow one window at a time with normal ones between: blips
        _updates(trainer, 20, 2.5)
        _updates(trainer, 20, 1.1)
    load[0] = 2.1  # slow for long, but nothing else runs (longer batches, memory, heat)
    _updates(trainer, 60, 2.5)
    _updates(trainer, 20, 0.9, tokens=150)  # faster in tokens/s: not slowed
    assert not any("training slowed" in line or "num_threads" in line for line in logs)


def test_the_thread_advice_is_given_once_per_session(tiny_config, tmp_path, monkeypatch) -> None:
    """Busy already at the early check: that warning gives the advice, the slowdown does not
    repeat it."""
    trainer, logs, load = _slowing_trainer(tiny_config, tmp_path, monkeypatch, threads=2)
    load[0] = 4.2
    _updates(trainer, 21, 1.0)
    _updates(trainer, 40, 2.5)
    advice = [line for line in logs if "num_threads" in line]
    assert len(advice) == 1 and "the machine is busy" in advice[0]


def test_one_thread_slowed_by_other_work_is_told_to_stop_it(tiny_config, tmp_path, monkeypatch) -> None:
    trainer, logs, load = _slowing_trainer(tiny_config, tmp_path, monkeypatch, threads=1)
    _updates(trainer, 21, 1.0)
    load[0] = 3.0  # two other busy processes on the 2 cores
    _updates(trainer, 40, 2.0)
    slowed = [line for line in logs if "training slowed" in line]
    assert len(slowed) == 1 and "from 60.0 to 30.0 updates/min" in slowed[0]
    assert slowed[0].endswith("stop the other work, or expect the run to take longer (1 training "
                              "thread already fit the free cores)")
    assert "num_threads=" not in slowed[0]
