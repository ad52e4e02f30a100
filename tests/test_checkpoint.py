import json

import pytest
import torch

from nmtkit.checkpoint import load_checkpoint
from nmtkit.errors import NMTKitError
from nmtkit.training import train
from nmtkit.translator import Translator


@pytest.fixture
def trained_run(tiny_config):
    return train(tiny_config), tiny_config


def test_round_trip_gives_identical_translations(trained_run) -> None:
    run_dir, cfg = trained_run
    sources = (cfg.data.test_src.read_text(encoding="utf-8").splitlines())[:12]
    a = Translator.load(run_dir / "last")
    first = a.translate(sources)
    b = Translator.load(run_dir / "last")
    assert b.translate(sources) == first
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    ckpt = run_dir / "last"
    info = json.loads((ckpt / "checkpoint.json").read_text())
    assert info["config"]["model"]["hidden_size"] == 32
    vocab = json.loads((ckpt / "vocab.json").read_text())
    assert vocab["src"][:4] == ["<pad>", "<unk>", "<s>", "</s>"]


def test_checkpoint_holds_no_pickle(trained_run) -> None:
    run_dir, _ = trained_run
    names = {p.name for p in (run_dir / "last").iterdir()}
    assert names == {"model.safetensors", "checkpoint.json", "src.spm.model", "tgt.spm.model",
                     "vocab.json", "training.safetensors", "training.json"}
    for p in (run_dir / "last").iterdir():
        assert not p.read_bytes().startswith(b"\x80"), f"{p.name} looks like a pickle"


def test_corrupted_and_missing_files_give_clear_errors(trained_run, tmp_path) -> None:
    import shutil

    run_dir, _ = trained_run
    broken = tmp_path / "broken"
    shutil.copytree(run_dir / "last", broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    with pytest.raises(NMTKitError, match="model.safetensors"):
        load_checkpoint(broken)
    (broken / "checkpoint.json").write_text("{not json")
    with pytest.raises(NMTKitError, match="checkpoint.json"):
        load_checkpoint(broken)
    (broken / "checkpoint.json").unlink()
    with pytest.raises(NMTKitError, match="checkpoint.json"):
        load_checkpoint(broken)
    with pytest.raises(NMTKitError, match="not found"):
        load_checkpoint(tmp_path / "nowhere")


def test_average_gives_mean_of_weights(tiny_config, tmp_path) -> None:
    from safetensors.torch import load_file

    from nmtkit.checkpoint import average_checkpoints
    from nmtkit.training import list_checkpoints

    cfg = tiny_config.model_copy(update={"training": tiny_config.training.model_copy(
        update={"valid_every": 3, "max_steps": 6, "keep_last": 5, "valid_bleu": False})})
    run = train(cfg)
    a, b = list_checkpoints(run)[-2:]
    out = average_checkpoints([a, b], tmp_path / "avg")
    wa, wb, wm = (load_file(str(p / "model.safetensors")) for p in (a, b, out))
    assert wm.keys() == wa.keys()
    for k in wa:
        assert torch.allclose(wm[k], (wa[k] + wb[k]) / 2, atol=1e-7), k
    assert not torch.equal(wa["generator.weight"], wb["generator.weight"])
    Translator.load(out).translate(["삼십"])  # a usable checkpoint


def test_average_refuses_different_architectures(tiny_config, tmp_path) -> None:
    from nmtkit.checkpoint import average_checkpoints

    base = tiny_config.training.model_copy(update={"max_steps": 1, "valid_bleu": False})
    a = train(tiny_config.model_copy(update={"training": base.model_copy(
        update={"out_dir": tmp_path / "a"})}))
    other = tiny_config.model_copy(update={
        "model": tiny_config.model.model_copy(update={"hidden_size": 24}),
        "training": base.model_copy(update={"out_dir": tmp_path / "b"})})
    b = train(other)
    with pytest.raises(NMTKitError, match="architecture"):
        average_checkpoints([a / "last", b / "last"], tmp_path / "avg")
    assert not (tmp_path / "avg").exists()


def test_average_never_replaces_a_users_folder_a_run_or_a_training_checkpoint(tiny_config, tmp_path) -> None:
    import os
    import stat

    from nmtkit.checkpoint import average_checkpoints
    from nmtkit.training import list_checkpoints

    cfg = tiny_config.model_copy(update={"training": tiny_config.training.model_copy(
        update={"valid_every": 2, "max_steps": 4, "keep_last": 3, "valid_bleu": False})})
    run = train(cfg)
    a, b = list_checkpoints(run)[-2:]
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    for out in (run, notes, a, run / "last", notes / "todo.txt"):
        with pytest.raises(NMTKitError, match="--out .* (already exists|is one of)"):
            average_checkpoints([a, b], out)
    assert (notes / "todo.txt").read_text() == "mine"
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before
    assert (a / "training.json").is_file()  # the training state is still there
    old = os.umask(0o022)
    try:
        out = average_checkpoints([a, b], tmp_path / "avg")
        again = average_checkpoints([a], tmp_path / "avg")  # its own earlier output: replaced
    finally:
        os.umask(old)
    assert out == again and json.loads((out / "checkpoint.json").read_text())["averaged_from"] == [str(a)]
    assert stat.S_IMODE(out.stat().st_mode) == 0o755  # the umask, not mkdtemp's 0700
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o644}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_a_run_folder_resolves_to_its_best_and_mistakes_name_the_nearest(trained_run, capsys) -> None:
    from nmtkit.checkpoint import resolve_checkpoint

    run_dir, _ = trained_run
    assert resolve_checkpoint(run_dir) == run_dir / "best"
    assert "using" in capsys.readouterr().err
    assert resolve_checkpoint(run_dir / "last") == run_dir / "last"
    with pytest.raises(NMTKitError, match=f"not found: {run_dir}x .*nearest: {run_dir}"):
        resolve_checkpoint(str(run_dir) + "x")
    with pytest.raises(NMTKitError, match="not a checkpoint or a run folder.*nearest: .*ckpt-"):
        resolve_checkpoint(run_dir / "tensorboard")


@pytest.mark.parametrize("content", ["[1, 2]", '{"format_version": 1}', "not json"])
def test_checkpoint_json_of_the_wrong_shape_is_one_clear_error(trained_run, tmp_path, content) -> None:
    import shutil

    run_dir, _ = trained_run
    ckpt = tmp_path / "ckpt"
    shutil.copytree(run_dir / "last", ckpt)
    (ckpt / "checkpoint.json").write_text(content)
    with pytest.raises(NMTKitError, match="checkpoint.json: (not an nmtkit|not a JSON object|corrupted JSON)"):
        load_checkpoint(ckpt)


def _flip_a_weight_byte(weights) -> None:
    """One bit of the last tensor's data: safetensors still parses the file."""
    raw = bytearray(weights.read_bytes())
    raw[-3] ^= 0x10
    weights.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["a flipped byte", "a weight set to 6e37"])
def test_a_damaged_weight_file_is_refused_by_its_checksum(trained_run, tmp_path, damage) -> None:
    import shutil
    import subprocess
    import sys

    from safetensors.torch import load_file, save_file

    run_dir, _ = trained_run
    broken = tmp_path / "broken"
    shutil.copytree(run_dir / "last", broken)
    weights = broken / "model.safetensors"
    if damage == "a flipped byte":
        _flip_a_weight_byte(weights)
    else:
        tensors = load_file(str(weights))
        tensors["generator.weight"][3, 5] = 6e37
        save_file(tensors, str(weights))
    message = f"{weights}: damaged: its SHA-256 is not the one recorded in checkpoint.json"
    with pytest.raises(NMTKitError, match=message):
        load_checkpoint(broken)
    result = subprocess.run([sys.executable, "-m", "nmtkit.cli", "translate", "--checkpoint",
                             str(broken)], input="삼십\n", capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [f"nmtkit: error: {message} when it was written "
                                          "(changed or corrupted since)"]
    recorded = json.loads((broken / "checkpoint.json").read_text())["checksums"]
    assert set(recorded) == {"model.safetensors", "training.safetensors"}
    assert all(v.startswith("sha256:") and len(v) == 7 + 64 for v in recorded.values())


def test_a_checkpoint_without_checksums_still_loads(trained_run, tmp_path) -> None:
    """Checkpoints written before checksums were recorded load as before, unchecked."""
    import shutil

    run_dir, cfg = trained_run
    old = tmp_path / "old"
    shutil.copytree(run_dir / "last", old)
    meta = json.loads((old / "checkpoint.json").read_text())
    del meta["checksums"]
    (old / "checkpoint.json").write_text(json.dumps(meta))
    sources = cfg.data.test_src.read_text(encoding="utf-8").splitlines()[:5]
    assert Translator.load(old).translate(sources) == Translator.load(run_dir / "last").translate(sources)
    _flip_a_weight_byte(old / "model.safetensors")
    load_checkpoint(old)  # nothing to check it against
    meta["checksums"] = "not an object"
    (old / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(NMTKitError, match="checkpoint.json: checksums is not an object"):
        load_checkpoint(old)


def test_an_averaged_checkpoint_records_its_checksum(trained_run, tmp_path) -> None:
    from nmtkit.checkpoint import average_checkpoints

    run_dir, _ = trained_run
    out = average_checkpoints([run_dir / "last"], tmp_path / "avg")
    assert set(json.loads((out / "checkpoint.json").read_text())["checksums"]) == {"model.safetensors"}
    _flip_a_weight_byte(out / "model.safetensors")
    with pytest.raises(NMTKitError, match="model.safetensors: damaged"):
        load_checkpoint(out)
