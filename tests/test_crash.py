"""Crash safety: a training process killed with SIGKILL at random moments never leaves a
checkpoint that fails to load, and --resume continues from the newest complete one."""

import json
import random
import signal
import subprocess
import sys
import time

from nmtkit.checkpoint import load_checkpoint, read_json, read_tensors
from nmtkit.training import list_checkpoints, load_log

TRAIN = ("import sys, json; from nmtkit.config import config_from_dict; "
         "from nmtkit.training import train; "
         "train(config_from_dict(json.loads(sys.argv[1])), resume=sys.argv[2] == '1')")


def test_sigkill_while_checkpointing_never_breaks_a_checkpoint(tiny_config) -> None:
    # a checkpoint after every update: most of the time is spent writing checkpoints
    cfg = tiny_config.model_copy(update={"training": tiny_config.training.model_copy(
        update={"valid_every": 1, "valid_bleu": False, "max_steps": 60, "max_epochs": 100,
                "keep_last": 2, "num_threads": 1})})
    run_dir = cfg.training.out_dir
    rng = random.Random(0)
    kills = 0
    for attempt in range(6):
        proc = subprocess.Popen([sys.executable, "-c", TRAIN, json.dumps(cfg.to_json_dict()),
                                 "1" if attempt else "0"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # wait until training has started writing checkpoints, then kill at a random moment
        deadline = time.monotonic() + 60
        while not list_checkpoints(run_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.05, 1.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        for ckpt in list_checkpoints(run_dir):  # every checkpoint folder that exists loads
            load_checkpoint(ckpt)
            read_tensors(ckpt / "training.safetensors")
            read_json(ckpt / "training.json")
    assert kills >= 3
    done = subprocess.run([sys.executable, "-c", TRAIN, json.dumps(cfg.to_json_dict()), "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    last = list_checkpoints(run_dir)[-1]
    assert last.name == "ckpt-00000060"
    assert load_checkpoint(last).info["step"] == 60
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".tmp-")]
    assert max(r["step"] for r in load_log(run_dir)) == 60
