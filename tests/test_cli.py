import os
import shutil
import stat
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
    from nmtkit.config import TransformerConfig
    from nmtkit.training import train
    from nmtkit.translator import Translator

    cfg = tiny_config.model_copy(update={
        "model": TransformerConfig(d_model=32, heads=2, ff_size=64, encoder_layers=1, decoder_layers=2),
        "training": tiny_config.training.model_copy(update={"max_steps": 2, "valid_bleu": False})})
    ckpt = train(cfg) / "last"
    png = tmp_path / "t.png"
    for extra in (["--layer", "0", "--head", "1"], ["--all-heads", "--beam", "3"]):
        assert main(["plot-attention", "--checkpoint", str(ckpt), "--sentence", "삼십", "--out", str(png),
                     *extra]) == 0
        assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["plot-attention", "--checkpoint", str(ckpt), "--sentence", "삼십", "--out", str(png),
                 "--layer", "5"]) == 2
    assert "layer 5" in capsys.readouterr().err
    t = Translator.load(ckpt)
    heads = [t.translate(["삼십 사"], return_details=True, attention_layer=1, attention_head=h)[0].attention
             for h in (0, 1)]
    (r,) = t.translate(["삼십 사"], return_details=True, attention_layer=1, all_attention=True)
    for i, row in enumerate(r.attention):
        for j, v in enumerate(row):
            assert abs(v - (heads[0][i][j] + heads[1][i][j]) / 2) < 1e-5  # the mean of the heads
            assert abs(r.attention_layers[1][1][i][j] - heads[1][i][j]) < 1e-6
        assert abs(sum(row) - 1) < 1e-5
    assert len(r.attention_layers) == 2 and len(r.attention_layers[0]) == 2
    default = t.translate(["삼십 사"], return_details=True)[0].attention  # the last layer's mean
    assert default == r.attention


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny trained checkpoint for the command-line mistakes below."""
    from nmtkit.config import config_from_dict
    from nmtkit.democorpus import make_demo_corpus
    from nmtkit.training import train

    tmp = tmp_path_factory.mktemp("cli")
    corpus = tmp / "corpus"
    make_demo_corpus(corpus, seed=7, n_train=200, n_valid=20, n_test=20)
    cfg = config_from_dict({
        "data": {"train_src": str(corpus / "train.ko"), "train_tgt": str(corpus / "train.en"),
                 "valid_src": str(corpus / "valid.ko"), "valid_tgt": str(corpus / "valid.en"),
                 "out_dir": str(tmp / "bin"), "max_len": 40},
        "vocab": {"size": 60, "joint": False, "byte_fallback": False},
        "model": {"type": "rnn", "embed_size": 16, "hidden_size": 16, "encoder_layers": 1,
                  "decoder_layers": 1},
        "training": {"out_dir": str(tmp / "run"), "max_steps": 2, "valid_bleu": False}})
    return train(cfg) / "last"


def _mistakes(ckpt: Path, tmp: Path) -> list[tuple[list[str], str]]:
    """(arguments, what the one error line must say) for a user's mistakes."""
    folder = tmp / "folder"
    folder.mkdir(exist_ok=True)
    fifo = tmp / "fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    text = tmp / "in.txt"
    text.write_text("삼십\n")
    empty = tmp / "empty.txt"
    empty.write_text("")
    notes = tmp / "notes.txt"
    notes.write_text("my notes\n")
    latin1 = tmp / "latin1.yaml"
    latin1.write_bytes(b"data:\n  train_src: caf\xe9\n")
    dup = tmp / "dup.yaml"
    dup.write_text("data: {train_src: a, train_tgt: b, valid_src: c, valid_tgt: d}\n"
                   "training:\n  lr: 0.1\n  lr: 0.2\n")
    c = str(ckpt)
    logs = tmp / "logs"
    logs.mkdir(exist_ok=True)
    (logs / "log.jsonl").write_text("")
    garbage = tmp / "garbage-ckpt"
    if not garbage.exists():
        shutil.copytree(ckpt, garbage)
        (garbage / "model.safetensors").write_bytes(os.urandom(3000))
    return [
        (["average", str(ckpt.parent), "--out", str(tmp / "avg")], "is a run folder: average takes its checkpoints"),
        (["plot-curves", str(logs)], "no training or validation records yet"),
        (["plot-attention", "--checkpoint", c, "--sentence", " ", "--out", str(tmp / "a.png")], "--sentence is empty"),
        (["info", str(garbage)], "model.safetensors: corrupted or truncated safetensors file"),
        (["train", str(folder)], "config file " + str(folder) + " is a folder"),
        (["train", str(latin1)], "latin1.yaml: line 2 is not valid UTF-8"),
        (["train", str(dup)], "dup.yaml: line 4: key 'lr' is given twice in one section (first on line 3)"),
        (["translate", "--checkpoint", c, "--input", str(folder)], "--input " + str(folder) + " is a folder"),
        (["translate", "--checkpoint", c, "--beam", "0"], "argument --beam: '0': must be >= 1"),
        (["translate", "--checkpoint", c, "--batch-tokens", "-5"], "argument --batch-tokens: '-5': must be >= 1"),
        (["translate", "--checkpoint", c, "--nbest", "x"], "argument --nbest: 'x' is not a whole number"),
        (["translate", "--checkpoint", c, "--temperature", "nan"], "--temperature: 'nan': must be a finite number"),
        (["translate", "--checkpoint", c, "--temperature", "inf"], "--temperature: 'inf': must be a finite number"),
        (["translate", "--checkpoint", c, "--length-penalty", "-1"], "--length-penalty: '-1': must be >= 0"),
        (["translate", "--checkpoint", c, "--max-len-a", "nan"], "--max-len-a: 'nan': must be a finite number"),
        (["translate", "--checkpoint", c, "--max-len-b", "-2"], "--max-len-b: '-2': must be >= 0"),
        (["translate", "--checkpoint", c, "--nbest", "3", "--beam", "2"], "nbest (3) cannot exceed the beam size (2)"),
        (["translate", "--checkpoint", c, "--device", "cuda"], "no CUDA device is available"),
        (["translate", "--checkpoint", c, "--device", "tpu"], "unknown device 'tpu'"),
        (["evaluate", "--checkpoint", c, "--src", str(text), "--ref", str(text), "--tokenize", "spm"],
         "argument --tokenize: invalid choice: 'spm'"),
        (["evaluate", "--checkpoint", c, "--src", str(empty), "--ref", str(empty)], "no sentence to translate"),
        (["evaluate", "--checkpoint", c, "--src", str(fifo), "--ref", str(text)], "not a regular file"),
        (["evaluate", "--checkpoint", c, "--src", str(text), "--ref", str(text), "--output", str(text)],
         "--output " + str(text) + " is one of this command's inputs"),
        (["evaluate", "--checkpoint", c, "--src", str(text), "--ref", str(text), "--output", str(notes)],
         "--output " + str(notes) + " exists; add --force to replace it"),
        (["plot-attention", "--checkpoint", c, "--sentence", "삼", "--out", str(text)], "give a file name ending in .png"),
        (["plot-attention", "--checkpoint", c, "--sentence", "삼", "--out", str(tmp / "in.png")], None),
        (["average", c, "--out", str(folder)], "--out " + str(folder) + " already exists"),
        (["translate"], "the following arguments are required: --checkpoint"),
    ]


def test_every_mistake_is_one_line_and_exit_2(ckpt, tmp_path, capsys, monkeypatch) -> None:
    (tmp_path / "in.png").write_text("not a picture")
    monkeypatch.chdir(tmp_path)
    for args, message in _mistakes(ckpt, tmp_path):
        try:
            code = main(args)
        except SystemExit as exit_:  # argparse's mistakes
            code = exit_.code
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2, (args, err[-500:])
        assert "Traceback" not in err and len(lines) == 1, (args, err[-800:])
        assert lines[0].startswith("nmtkit: error: "), (args, lines)
        assert message is None or message in lines[0], (args, lines[0])
    assert (tmp_path / "in.png").read_text() == "not a picture"
    assert (tmp_path / "in.txt").read_text() == "삼십\n"
    assert (tmp_path / "notes.txt").read_text() == "my notes\n"


def test_evaluate_output_replaces_only_when_forced_and_keeps_links_and_devices(ckpt, tmp_path) -> None:
    text = tmp_path / "in.txt"
    text.write_text("삼십\n")
    target = tmp_path / "hyp.txt"
    target.write_text("old\n")
    link = tmp_path / "link.txt"
    link.symlink_to(target.name)
    args = ["evaluate", "--checkpoint", str(ckpt), "--src", str(text), "--ref", str(text)]
    assert main([*args, "--output", str(link), "--force"]) == 0
    assert link.is_symlink() and target.read_text() != "old\n" and len(target.read_text().splitlines()) == 1
    if os.geteuid() == 0:  # a device node is written into, never replaced by a regular file
        device = tmp_path / "null"
        os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        assert main([*args, "--output", str(device)]) == 0
        assert stat.S_ISCHR(device.stat().st_mode)


def test_full_disk_and_read_only_folders_are_one_line(ckpt, tmp_path) -> None:
    """A file size limit stands in for a full disk (EFBIG where ENOSPC would come): the error
    is one line and no half-written output is left."""
    script = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
              "resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000)); "
              "from nmtkit.cli import main; sys.exit(main(sys.argv[1:]))")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", script, "average", str(ckpt), "--out",
                             str(tmp_path / "avg")], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-1500:]
    assert "file too large" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "avg").exists() and not list(tmp_path.glob(".avg*"))
    with open("/dev/full", "w") as full:  # translate's output on a full device
        result = subprocess.run([sys.executable, "-m", "nmtkit.cli", "translate", "--checkpoint",
                                 str(ckpt)], input="삼십\n", stdout=full, stderr=subprocess.PIPE,
                                text=True, env=env, timeout=120)
    assert result.returncode == 2 and "no space left on the device" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        result = run_cli("average", str(ckpt), "--out", str(ro / "avg"))
        assert result.returncode == 2 and "permission denied" in result.stderr


def test_translate_splits_lines_at_newline_only(ckpt) -> None:
    result = run_cli("translate", "--checkpoint", str(ckpt), stdin="삼십\r사\n칠백\r\n\n오")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split("\n")) == 5  # 4 input lines (a lone \r splits nothing)


def test_over_long_inputs_follow_the_policy_and_never_stop_the_stream(ckpt, tmp_path) -> None:
    long = " ".join(["삼십사만"] * 400)
    stdin = f"삼십\n{long}\n칠백\n{long}\n"
    result = run_cli("translate", "--checkpoint", str(ckpt), stdin=stdin)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 4
    assert "nmtkit: warning: 2 input line(s) truncated to 40 subword tokens (first: standard input line 2)" \
        in result.stderr
    result = run_cli("translate", "--checkpoint", str(ckpt), "--too-long", "skip", stdin=stdin)
    assert result.stdout.split("\n")[1] == "" and result.stdout.split("\n")[0] != ""
    assert "skipped" in result.stderr
    result = run_cli("translate", "--checkpoint", str(ckpt), "--too-long", "error", stdin=stdin)
    assert result.returncode == 2 and "input 2 has" in result.stderr and "limit of 40" in result.stderr


def test_translate_reads_prefixes_and_writes_alignments(numbers_checkpoint, tmp_path) -> None:
    import json

    lines = [json.dumps({"source": "삼십사만 오천육백칠십팔", "prefix": "three hundred fo"}, ensure_ascii=False),
             json.dumps({"source": "사천칠십일"}, ensure_ascii=False), ""]
    result = run_cli("translate", "--checkpoint", str(numbers_checkpoint), "--input-format", "jsonl",
                     "--alignment", stdin="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert len(out) == 3 and out[0].startswith("three hundred forty")  # one line per input line
    text, pairs = out[0].split(" ||| ")
    pairs = [tuple(map(int, p.split("-"))) for p in pairs.split()]
    assert sorted(t for _, t in pairs) == list(range(len(text.split())))  # each target word once
    assert all(0 <= s < 2 for s, _ in pairs)
    result = run_cli("translate", "--checkpoint", str(numbers_checkpoint), "--input-format", "jsonl",
                     "--output-format", "jsonl", "--alignment", stdin=lines[0] + "\n")
    record = json.loads(result.stdout)
    assert record["translation"].startswith("three hundred fo") and "-" in record["alignment"]
    bad = run_cli("translate", "--checkpoint", str(numbers_checkpoint), "--input-format", "jsonl",
                  stdin='{"source": "삼십"}\n{"src": 3}\n')
    assert bad.returncode == 2 and "standard input line 2: expected an object" in bad.stderr


def test_score_command_prints_one_line_per_pair(numbers_checkpoint, tmp_path) -> None:
    import json

    src, tgt = tmp_path / "s.ko", tmp_path / "t.en"
    src.write_text("사천칠십일\n사천칠십일\n")
    tgt.write_text("four thousand seventy-one\nnine hundred\n")
    result = run_cli("score", "--checkpoint", str(numbers_checkpoint), "--src", str(src), "--tgt", str(tgt))
    assert result.returncode == 0, result.stderr
    good, bad = (tuple(map(float, line.split("\t"))) for line in result.stdout.splitlines())
    assert good[0] > bad[0] and good[0] < 0
    result = run_cli("score", "--checkpoint", str(numbers_checkpoint), "--src", str(src), "--tgt", str(tgt),
                     "--output-format", "jsonl")
    record = json.loads(result.stdout.splitlines()[0])
    assert record["tokens"][-1] == "</s>" and len(record["token_scores"]) == len(record["tokens"])


@pytest.mark.parametrize("stdin, message", [
    ('{"source": "삼십"}\n{"source": "삼십", "prefx": "thirty"}\n', "standard input line 2: unknown key 'prefx'"),
    ('{"source": "삼십"}\n\n{"source": "삼십", "prefix": "thirty ☃ "}\n', "standard input line 3: prefix "),
    ('{"source": "삼십", "prefix": "' + "one " * 300 + '"}\n', "standard input line 1: prefix 'one one"),
    ('{"source": "삼십"}\n' + "[" * 100_000 + "\n", "standard input line 2: not valid JSON (nested too deeply)"),
    ('{"source": "\\ud800"}\n', "standard input line 1: 'source' holds a lone surrogate (\\ud800"),
    ('{"source": "삼십", "prefix": "a\\udfff"}\n', "standard input line 1: 'prefix' holds a lone surrogate"),
])
def test_jsonl_input_mistakes_name_their_line(numbers_checkpoint, monkeypatch, capsys, stdin, message) -> None:
    import io

    from nmtkit.cli import main

    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(["translate", "--checkpoint", str(numbers_checkpoint), "--input-format", "jsonl"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("nmtkit: error: ") and err.count("\n") == 1, err
    assert message in err, err


def test_score_warns_of_targets_it_cannot_spell_or_must_cut(numbers_checkpoint, tmp_path, capsys) -> None:
    import json

    from nmtkit.cli import main

    src, tgt = tmp_path / "s.ko", tmp_path / "t.en"
    src.write_text("사천칠십일\n사천칠십일\n사천칠십일\n")
    tgt.write_text("four thousand seventy-one\nfour 四千\n" + "nine " * 200 + "\n")
    code = main(["score", "--checkpoint", str(numbers_checkpoint), "--src", str(src), "--tgt", str(tgt),
                 "--output-format", "jsonl"])
    out, err = capsys.readouterr()
    assert code == 0
    assert "nmtkit: warning: 1 target(s) hold characters the target vocabulary cannot spell" in err
    assert "target 2, '四千'" in err and "target(s) longer than 80 subword tokens" in err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["unknown"] > 0 for r in records] == [False, True, False]
    assert [r["truncated"] for r in records] == [False, False, True]


@pytest.mark.parametrize("flags, message", [
    (["--alignment-layer", "0"], "--alignment-layer 0 needs --alignment"),
    (["--alignment-layer", "7"], "--alignment-layer 7 needs --alignment"),
    (["--alignment", "--alignment-layer", "7"], "alignment_layer 7: the decoder has layers 0..0"),
])
def test_an_alignment_layer_is_checked_and_needs_alignment(numbers_checkpoint, monkeypatch, capsys,
                                                          flags, message) -> None:
    import io

    from nmtkit.cli import main

    monkeypatch.setattr(sys, "stdin", io.StringIO("사천칠십일\n"))
    code = main(["translate", "--checkpoint", str(numbers_checkpoint), *flags])
    out, err = capsys.readouterr()
    assert code == 2 and err == f"nmtkit: error: {err.removeprefix('nmtkit: error: ')}" and message in err, err
    assert out == ""  # refused before the first line


def test_bad_utf8_is_reported_on_its_own_line(numbers_checkpoint, tmp_path) -> None:
    """The decoder reads ahead in blocks: the line number must still be the bad bytes' own."""
    five_then_binary = "사천칠십일\n".encode() * 5 + bytes(range(128, 256)) * 40
    late = "삼십\n".encode() * 3 + b"\n" * 4997 + b"caf\xe9\n" + "삼십\n".encode() * 300  # blank: quick
    path = tmp_path / "in.ko"
    path.write_bytes(late)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for extra, stdin, line in ((["--input", str(path)], b"", 5001), ([], five_then_binary, 6)):
        result = subprocess.run([sys.executable, "-m", "nmtkit.cli", "translate", "--checkpoint",
                                 str(numbers_checkpoint), "--beam", "1", *extra], input=stdin,
                                capture_output=True, env=env, timeout=300)
        err = result.stderr.decode()
        assert result.returncode == 2 and err.endswith(f"line {line} is not valid UTF-8\n"), err
        assert err.count("\n") == 1
