import os
import subprocess
import sys
from pathlib import Path

import pytest

from nmtkit.cli import main

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None, stdin: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "nmtkit.cli", *args], capture_output=True,
                          text=True, cwd=cwd, input=stdin, env=env, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["train", "missing.yaml"], "config file not found: missing.yaml"),
    (["translate", "--checkpoint", "no/such/dir"], "checkpoint folder not found"),
    (["evaluate", "--checkpoint", "x", "--src", "nope.txt", "--ref", "nope2.txt"], "file not found"),
    (["plot-curves", "no-run"], "no training log"),
])
def test_user_mistakes_exit_2_with_one_line(args, message, tmp_path) -> None:
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_config_names_key_and_file(tmp_path, capsys) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {train_src: a, train_tgt: b, valid_src: c, valid_tgt: d}\n"
                   "model: {type: rnn, hiden_size: 3}\ntraining: {lr: -1}\n")
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and "model.hiden_size: unknown key" in err and "training.lr" in err
    assert main(["train", str(cfg), "--set", "model.hiden_size"]) == 2
    assert "KEY.PATH=VALUE" in capsys.readouterr().err


def test_missing_data_file_names_it(tmp_path, capsys) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{train_src: {tmp_path}/a.txt, train_tgt: {tmp_path}/b.txt, "
                   f"valid_src: {tmp_path}/c, valid_tgt: {tmp_path}/d, out_dir: {tmp_path}/bin}}\n")
    assert main(["prepare", str(cfg)]) == 2
    assert "a.txt" in capsys.readouterr().err


def test_train_translate_evaluate_plot(tiny_config, tmp_path, capsys) -> None:
    import yaml

    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump(tiny_config.to_json_dict()))
    assert main(["train", str(cfg_file), "--set", "training.max_steps=3"]) == 0
    run = tiny_config.training.out_dir
    assert main(["train", str(cfg_file)]) == 2  # a second run would mix with the first
    assert "--resume" in capsys.readouterr().err
    ckpt = str(run / "best")
    result = run_cli("translate", "--checkpoint", ckpt, stdin="삼십\n\n칠백\n")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""  # order and empty line kept
    assert main(["evaluate", "--checkpoint", ckpt, "--src", str(tiny_config.data.test_src),
                 "--ref", str(tiny_config.data.test_tgt)]) == 0
    out = capsys.readouterr().out
    assert "BLEU = " in out and "nrefs:1" in out and "chrF = " in out
    png = tmp_path / "att.png"
    assert main(["plot-attention", "--checkpoint", ckpt, "--sentence", "삼십", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot-curves", str(run)]) == 0
    assert (run / "curves.png").stat().st_size > 1000


def test_plot_attention_for_a_transformer_layer_and_head(tiny_config, tmp_path, capsys) -> None:
    from nmtkit.cli import transformer_attention
    from nmtkit.config import TransformerConfig
    from nmtkit.training import train
    from nmtkit.translator import Translator

    cfg = tiny_config.model_copy(update={
        "model": TransformerConfig(d_model=32, heads=2, ff_size=64, encoder_layers=1, decoder_layers=2),
        "training": tiny_config.training.model_copy(update={"max_steps": 2, "valid_bleu": False})})
    ckpt = train(cfg) / "last"
    png = tmp_path / "t.png"
    assert main(["plot-attention", "--checkpoint", str(ckpt), "--sentence", "삼십", "--out", str(png),
                 "--layer", "0", "--head", "1"]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["plot-attention", "--checkpoint", str(ckpt), "--sentence", "삼십", "--out", str(png),
                 "--layer", "5"]) == 2
    assert "--layer 5" in capsys.readouterr().err
    t = Translator.load(ckpt)
    (r,) = t.translate(["삼십 사"], return_details=True)
    heads = [transformer_attention(t, "삼십 사", r.tokens, 1, h) for h in (0, 1)]
    mean = transformer_attention(t, "삼십 사", r.tokens, 1, None)
    for i, row in enumerate(mean):
        for j, v in enumerate(row):
            assert abs(v - (heads[0][i][j] + heads[1][i][j]) / 2) < 1e-5
        assert abs(sum(row) - 1) < 1e-5
    # the last layer's head-mean is what search returns as the attention alignment
    for a, b in zip(mean, r.attention, strict=False):
        assert max(abs(x - y) for x, y in zip(a, b, strict=False)) < 1e-4
