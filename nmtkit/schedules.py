"""Learning-rate schedules as plain functions of the update number, with JSON-able state.

    constant  lr                                              (optionally after linear warm-up)
    noam      lr * min(step / warmup, sqrt(warmup / step))    inverse square root, peak lr at warmup
    cosine    linear warm-up, then cosine decay to min_lr at the last update
    plateau   lr * factor^k, k = times the validation metric stopped improving for `patience` evals
"""

from __future__ import annotations

import math
from typing import Any


class LRSchedule:
    def __init__(
        self,
        kind: str,
        lr: float,
        warmup_steps: int = 0,
        total_steps: int = 0,
        min_lr: float = 0.0,
        plateau_factor: float = 0.5,
        plateau_patience: int = 2,
    ) -> None:
        if kind == "cosine" and total_steps <= 0:
            raise ValueError("the cosine schedule needs the total number of updates")
        self.kind = kind
        self.base_lr = lr
        self.warmup = warmup_steps
        self.total = total_steps
        self.min_lr = min_lr
        self.factor = plateau_factor
        self.patience = plateau_patience
        # plateau state
        self.scale = 1.0
        self.best: float | None = None
        self.bad_evals = 0

    def __call__(self, step: int) -> float:
        """The learning rate of update number `step` (1-based)."""
        step = max(step, 1)
        if self.kind == "noam":
            w = max(self.warmup, 1)
            return self.base_lr * min(step / w, math.sqrt(w / step))
        warm = min(1.0, step / self.warmup) if self.warmup else 1.0
        if self.kind == "cosine":
            if step <= self.warmup:
                return self.base_lr * warm
            progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
            cos = 0.5 * (1.0 + math.cos(math.pi * progress))
            return self.min_lr + (self.base_lr - self.min_lr) * cos
        if self.kind == "plateau":
            return max(self.min_lr, self.base_lr * self.scale * warm)
        return self.base_lr * warm  # constant

    def on_validation(self, value: float, higher_is_better: bool) -> None:
        """Reduce-on-plateau bookkeeping; a no-op for the other schedules."""
        if self.kind != "plateau":
            return
        improved = self.best is None or (value > self.best if higher_is_better else value < self.best)
        if improved:
            self.best, self.bad_evals = value, 0
            return
        self.bad_evals += 1
        if self.bad_evals > self.patience:
            self.scale *= self.factor
            self.bad_evals = 0

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale, self.best, self.bad_evals = state["scale"], state["best"], state["bad_evals"]


def teacher_forcing_ratio(step: int, decay: str, k: float, c: float = 0.0,
                          min_ratio: float = 0.0) -> float:
    """Scheduled sampling's eps_i (Bengio et al. 2015): the probability, at update `step`, of
    feeding the gold previous token rather than the model's own (see ScheduledSamplingConfig)."""
    if decay == "linear":
        eps = k - c * step
    elif decay == "exponential":
        eps = k**step
    elif decay == "inverse_sigmoid":
        eps = k / (k + math.exp(min(step / k, 700.0)))  # exp overflows past ~709
    else:
        raise ValueError(f"unknown decay {decay!r}")
    return max(min_ratio, min(1.0, eps))
