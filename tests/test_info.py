"""`nmtkit info` on a run folder and on a checkpoint."""

import json

from nmtkit.cli import main
from nmtkit.training import train


def test_info_reports_model_vocabulary_progress_and_best(tiny_config, capsys) -> None:
    cfg = tiny_config.model_copy(update={"training": tiny_config.training.model_copy(
        update={"max_steps": 6, "valid_every": 2, "keep_last": 3})})
    run = train(cfg)
    capsys.readouterr()
    assert main(["info", str(run)]) == 0
    text = capsys.readouterr().out
    best_step = json.loads((run / "best" / "checkpoint.json").read_text())["step"]
    assert f"update {best_step}: valid BLEU" in text
    assert "rnn: bidirectional LSTM 1+1 layers, hidden 32" in text and "parameters" in text
    assert "6 updates" in text and "stopped: reached max_steps=6" in text
    assert "bpe, 60 source / 60 target pieces" in text
    assert main(["info", "--json", str(run / "best")]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["kind"] == "checkpoint" and facts["step"] == best_step
    assert facts["config"]["model"]["hidden_size"] == 32 and facts["parameters"] > 1000
    assert main(["info", str(run.parent)]) == 2


def test_info_on_a_path_that_does_not_exist_says_not_found(tmp_path, capsys) -> None:
    assert main(["info", str(tmp_path / "runs" / "nope")]) == 2
    err = capsys.readouterr().err
    assert err == f"nmtkit: error: {tmp_path / 'runs' / 'nope'}: not found (give a run folder or a checkpoint folder)\n"
