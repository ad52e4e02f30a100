"""Multi-process training with DDP on CPU (gloo), launched by torchrun like a user would."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from nmtkit.training import train

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_two_ranks_match_each_other_and_one_process(tiny_config, tmp_path) -> None:
    common = {"max_steps": 4, "valid_bleu": False, "num_threads": 1, "max_epochs": 20}
    model = tiny_config.model.model_copy(update={"dropout": 0.0})  # no per-rank dropout masks
    ddp_cfg = tiny_config.model_copy(update={"model": model, "training": tiny_config.training
                                             .model_copy(update={**common, "out_dir": tmp_path / "ddp"})})
    cfg_file = tmp_path / "ddp.json"
    cfg_file.write_text(json.dumps(ddp_cfg.to_json_dict()))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(WORKER), str(cfg_file), str(tmp_path / "weights")],
        capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = load_file(str(tmp_path / "weights" / "rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "weights" / "rank1.safetensors"))
    for k in rank0:
        assert torch.equal(rank0[k], rank1[k]), k
    # rank 0 alone wrote the checkpoint and the log
    assert (tmp_path / "ddp" / "last" / "model.safetensors").is_file()

    # one process fed the same total batch: both shards' batches accumulated per update
    single_cfg = ddp_cfg.model_copy(update={"training": ddp_cfg.training.model_copy(
        update={"update_freq": 2, "out_dir": tmp_path / "single"})})
    single = load_file(str(train(single_cfg) / "last" / "model.safetensors"))
    for k, v in single.items():
        rel = (v - rank0[k]).norm() / v.norm().clamp(min=1e-12)
        assert rel < 1e-4, (k, float(rel))
    # ...whereas one process that sees only one shard's batch per update ends elsewhere
    half_cfg = single_cfg.model_copy(update={"training": single_cfg.training.model_copy(
        update={"update_freq": 1, "out_dir": tmp_path / "half"})})
    half = load_file(str(train(half_cfg) / "last" / "model.safetensors"))
    assert max(float((half[k] - rank0[k]).norm() / half[k].norm().clamp(min=1e-12))
               for k in half) > 1e-3


def _torchrun(cfg, tmp_path, name: str, resume: bool = False) -> None:
    cfg_file = tmp_path / f"{name}.json"
    cfg_file.write_text(json.dumps(cfg.to_json_dict()))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(WORKER), str(cfg_file), str(tmp_path / name), *(["--resume"] if resume else [])],
        capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_ranks_with_dropout_resume_bit_identically(tiny_config, tmp_path) -> None:
    common = {"valid_bleu": False, "num_threads": 1, "max_epochs": 20, "valid_every": 3}
    model = tiny_config.model.model_copy(update={"dropout": 0.3})  # per-rank dropout masks
    cfg = tiny_config.model_copy(update={"model": model})
    straight = cfg.model_copy(update={"training": cfg.training.model_copy(
        update={**common, "max_steps": 6, "out_dir": tmp_path / "straight"})})
    _torchrun(straight, tmp_path, "straight")
    part = cfg.model_copy(update={"training": cfg.training.model_copy(
        update={**common, "max_steps": 3, "out_dir": tmp_path / "parts"})})
    _torchrun(part, tmp_path, "part1")
    rng = load_file(str(tmp_path / "parts" / "last" / "training.safetensors"))
    assert not torch.equal(rng["rng.torch.0"], rng["rng.torch.1"])  # each rank its own stream
    _torchrun(part.model_copy(update={"training": part.training.model_copy(update={"max_steps": 6})}),
              tmp_path, "part2", resume=True)
    a = load_file(str(tmp_path / "straight" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "parts" / "last" / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
