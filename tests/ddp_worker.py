"""Run under torchrun by test_distributed.py: train, then each rank saves the weights it holds."""

import json
import sys
from pathlib import Path

import torch.distributed as dist
from safetensors.torch import save_file

from nmtkit.config import config_from_dict
from nmtkit.training import Trainer

if __name__ == "__main__":
    cfg = config_from_dict(json.loads(Path(sys.argv[1]).read_text()))
    trainer = Trainer(cfg)
    trainer.train(resume="--resume" in sys.argv)
    weights = {k: v.detach().clone().contiguous() for k, v in trainer.model.state_dict().items()}
    out = Path(sys.argv[2])
    out.mkdir(exist_ok=True)
    save_file(weights, str(out / f"rank{trainer.rank}.safetensors"))
    dist.destroy_process_group()
