"""An exponential moving average of the weights (Polyak averaging), as Marian's exponential
smoothing, fairseq's --ema-decay and OpenNMT-py's average_decay keep it.

After every update

    average = decay_t * average + (1 - decay_t) * weights,   decay_t = min(decay, (1 + t) / (10 + t))

where t counts the updates: the warm-up of decay_t (TensorFlow's ExponentialMovingAverage with
num_updates) keeps the first updates from being averaged with the random initialisation, so early
on the average spans about the last tenth of training. The updates' noise averages out, which is
what checkpoint averaging does at the end of a run, here all along: validation and the saved
checkpoints use the average, while training goes on from the raw weights (kept in the
checkpoint's training state, so a resumed run continues exactly).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from nmtkit.errors import NMTKitError

RAW_PREFIX = "raw."  # the raw weights' names in a checkpoint's training.safetensors


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float) -> None:
        """The average starts from the model's weights as they are (new, fine-tuned or resumed)."""
        self.decay = decay
        named = list(model.named_parameters())  # tied weights appear once
        self.names = [name for name, _ in named]
        self.params = [p for _, p in named]
        self.average = [p.detach().clone() for p in self.params]

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold in the weights after update number `step` (1 for the first)."""
        weight = 1.0 - self.decay_at(step)
        for average, p in zip(self.average, self.params, strict=True):
            average.lerp_(p, weight)

    @contextmanager
    def applied(self) -> Iterator[dict[str, Tensor]]:
        """The model holds the average inside the block (for validation and saving); yields the
        raw weights by name, the training state a checkpoint must keep."""
        raw = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, average in zip(self.params, self.average, strict=True):
                p.copy_(average)
        try:
            yield {RAW_PREFIX + name: t for name, t in zip(self.names, raw, strict=True)}
        finally:
            with torch.no_grad():
                for p, t in zip(self.params, raw, strict=True):
                    p.copy_(t)

    @torch.no_grad()
    def resume(self, tensors: dict[str, Tensor], source: str) -> None:
        """The model was loaded from a checkpoint, which holds the average: take that as the
        average and put the raw weights (from its training state) back into the model."""
        for name, p, average in zip(self.names, self.params, self.average, strict=True):
            raw = tensors.get(RAW_PREFIX + name)
            if raw is None or raw.shape != p.shape:
                raise NMTKitError(f"{source}: no raw weights for {name} (training.ema_decay is set, "
                                  "but this checkpoint was not saved with it)")
            average.copy_(p)
            p.copy_(raw)
