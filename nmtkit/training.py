"""The training loop: teacher forcing with (label-smoothed) cross-entropy, validation, checkpoints.

One `Trainer` serves a single process and `torchrun` multi-process training (DDP) alike: with
several ranks the batches are sharded, gradients are averaged by DDP, and only rank 0 writes
checkpoints and logs. Everything needed to continue exactly where a run stopped (model,
optimiser, schedule, every rank's RNG states, data position) is in each checkpoint, and
`--resume` checks that what it continues is what was trained (model, vocabulary, data) before
it touches anything. SIGINT (Ctrl-C) and SIGTERM stop after the current update with a
checkpoint and end in `TrainingInterrupted` (exit 130 or 143 from the CLI); a second one aborts
at once. One process at a time trains in a run folder: it holds an OS lock on `.lock` there.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from nmtkit.checkpoint import (
    Checkpoint,
    load_checkpoint,
    optimizer_from_tensors,
    optimizer_to_tensors,
    read_json,
    read_tensors,
    remove_folder,
    save_checkpoint,
)
from nmtkit.config import Config, config_from_dict
from nmtkit.cpu import bound_onednn_cache, keep_freed_memory, native_bf16
from nmtkit.data import PreparedData, TokenBatchSampler, collate, file_digests, prepare
from nmtkit.ema import WeightAverage
from nmtkit.errors import NMTKitError, TrainingInterrupted
from nmtkit.files import LOCK_NAME, FolderLock, remove_stale, temp_name, write_text_atomic
from nmtkit.loss import perplexity
from nmtkit.metrics import bleu_score
from nmtkit.model import build_model, count_parameters
from nmtkit.schedules import LRSchedule, teacher_forcing_ratio
from nmtkit.search import greedy_search
from nmtkit.seq2seq import Seq2Seq

CKPT_PREFIX = "ckpt-"

# The keys of `training` a resumed run may change, and when each change takes effect. Every
# other key of `training`, and all of `model`, `vocab` and `data` (but the file paths, when the
# files' bytes are unchanged), must be as they were: `--resume` refuses to go on otherwise.
RESUMABLE = {
    "max_epochs": "at once: a run already past the new limit is finished",
    "max_steps": "at once: a run already past the new limit is finished",
    "max_minutes": "at once (training time, validation included, summed over the sessions)",
    "early_stopping.patience": "at once, counting the evaluations without improvement so far",
    "early_stopping.target": "at once: a run whose best validation reached it is finished",
    "valid_every": "from the next update",
    "valid_bleu": "from the next validation",
    "valid_max_sentences": "from the next validation",
    "bleu_tokenize": "from the next validation",
    "keep_best": "at the next checkpoint",
    "keep_last": "at the next checkpoint",
    "log_every": "at once",
    "num_threads": "at once",
    "device": "at once (the optimizer state moves with the model)",
    "precision": "from the next update (auto: chosen again for the machine it resumes on)",
    "lr": "from the next update: the schedule goes on from the current update with this peak",
    "warmup_steps": "from the next update: each update's learning rate is the new schedule's at "
                    "that update (it jumps where the two warm-ups differ)",
    "min_lr": "from the next update",
    "clip_norm": "from the next update",
    "label_smoothing": "from the next update",
    "max_bad_steps": "at once",
    "out_dir": "(it is where the run is)",
}
WARN_AFTER = 20  # updates measured before the time-budget check; later, the window of the speed check
SLOW_RATIO = 0.6  # a window below this share of the early speed (tokens/s) counts as slowed down
SLOW_WINDOWS = 2  # windows in a row that must be slow before the warning (one can be a blip)


def time_left(seconds_per_update: float, step: int, max_steps: int, updates_left_in_epochs: float,
              train_seconds: float, max_minutes: float) -> tuple[float, str]:
    """Seconds until the first of max_steps, max_epochs and max_minutes ends the run, at the
    speed measured so far, and which one (what the progress bar shows as the run's ETA)."""
    ends = [(updates_left_in_epochs * seconds_per_update, "max_epochs")]
    if max_steps:
        ends.append((max(0, max_steps - step) * seconds_per_update, "max_steps"))
    if max_minutes:
        ends.append((max(0.0, max_minutes * 60 - train_seconds), "max_minutes"))
    return min(ends)


def machine_load(threads: int) -> tuple[float, int, float] | None:
    """(1-minute load average, cores this process may run on, the other work in it), or None
    where the OS does not say. The load average counts every runnable process of the machine (of
    the host, in a container), this one's `threads` busy threads included: they are taken out."""
    try:
        load = os.getloadavg()[0]
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    except OSError:
        return None
    return (load, cores, load - min(threads, cores)) if cores else None


def busy_machine(threads: int) -> tuple[float, int, float] | None:
    """(load average, cores, other work) when the other processes on this machine leave fewer
    cores than torch's `threads`: then they oversubscribe the cores, and threads that wait for
    each other spin (one thread trained 1.5-2x faster than two on 2 busy cores). None when the
    machine is not that busy, or the OS does not say."""
    measured = machine_load(threads)
    if measured is None:
        return None
    load, cores, others = measured
    if threads > 1 and others >= 0.75 and threads + others > cores + 0.5:
        return load, cores, others
    return None


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise NMTKitError("training.device is 'cuda' but no CUDA device is available "
                          "(set training.device: cpu or auto)")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and dist.is_available() and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(choice)


def resolve_precision(choice: str, device: torch.device, rnn: bool = False) -> tuple[str, str]:
    """The precision to train in for training.precision `choice` on `device`, and a line for the
    log that says why. `auto` is bf16 where it is computed natively (a CPU with AVX512-BF16 or
    AMX, a GPU that supports it) and fp32 elsewhere: emulated bf16 is slower than fp32. An
    explicit bf16 is kept everywhere (it still saves memory), with a warning where it is
    emulated. rnn: the model has LSTM/GRU cells (they then run in fp32, which the warning says)."""
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
        why = f"the GPU ({torch.cuda.get_device_name(device)}) " + \
            ("supports bf16" if native else "has no native bf16")
    elif device.type == "cpu":
        native, why = native_bf16()
    else:
        native, why = False, f"bf16 autocast is not known to pay on {device.type}"
    if choice == "auto":
        chosen = "bf16" if native else "fp32"
        return chosen, f"precision: {chosen} (training.precision auto: {why})"
    if choice == "bf16" and not native:
        cells = " (the LSTM/GRU cells run in fp32 there)" if rnn else ""
        return "bf16", (f"warning: precision bf16 is emulated here ({why}): probably slower than "
                        f"fp32{cells}; training.precision: auto or fp32 picks the faster one")
    return choice, f"precision: {choice}"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temp folders of interrupted writes are not listed)."""
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir()
                  if p.is_dir() and not p.is_symlink() and p.name.startswith(CKPT_PREFIX))


# what training writes into a run folder (and the demo's pictures, the lock, and temp names)
RUN_NAMES = re.compile(r"^(ckpt-\d+|best|last|log\.jsonl|tensorboard|attention\.png|curves\.png"
                       r"|\.lock|\..*-\d+-.*)$")


def is_run_folder(path: Path) -> bool:
    """A folder `nmtkit train` made: checkpoints, or the training log it writes first (a file
    that merely has that name does not count)."""
    if list_checkpoints(path):
        return True
    try:
        with open(path / "log.jsonl", encoding="utf-8") as f:
            first = json.loads(f.readline())
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and first.get("type") in ("train", "valid") and "step" in first


def point_link(link: Path, target: Path) -> None:
    """Atomically (re)point a symlink such as `best` or `last` at a checkpoint folder."""
    tmp = temp_name(link, "tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target.name)
    os.replace(tmp, link)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str,
                       allowed: set[str] = frozenset()) -> list[str]:
    """'key: old -> new' for each key (outside `allowed`) whose value differs; a different
    `type` (another model family) comes first, as the cause of every other difference."""
    a, b = _flat(old), _flat(new)
    keys = sorted(a.keys() | b.keys(), key=lambda k: (k != "type", k))
    return [f"{prefix}{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys
            if a.get(k) != b.get(k) and k not in allowed]


@dataclass
class EvalResult:
    loss: float
    ppl: float
    bleu: float | None

    def metric(self, name: str) -> float:
        return {"loss": self.loss, "ppl": self.ppl, "bleu": self.bleu if self.bleu is not None else 0.0}[name]


@dataclass
class TrainState:
    """Counters that must survive a restart (saved as JSON)."""

    step: int = 0  # optimizer updates done
    epoch: int = 0  # epochs completed
    batches_in_epoch: int = 0
    bad_steps: int = 0
    evals_without_improvement: int = 0
    best_metric: float | None = None
    best: list[list[float]] = field(default_factory=list)  # [metric, step] of kept best ckpts
    train_seconds: float = 0.0
    stopped: str = ""


class Trainer:
    def __init__(self, config: Config, log: Any = print, resume_command: str | None = None) -> None:
        self.cfg = config
        self.tcfg = config.training
        self.log_fn = log
        self.resume_command = resume_command or "the same command with --resume"
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.distributed = self.world > 1
        self.device = resolve_device(self.tcfg.device)
        self.precision, self._precision_note = resolve_precision(self.tcfg.precision, self.device,
                                                                    rnn=self.cfg.model.type == "rnn")
        self.run_dir = Path(self.tcfg.out_dir)
        self.state = TrainState()
        self._jsonl = None
        self._tb = None
        self.last_saved_step = -1
        self.finished = False  # a resumed run that had already ended
        self._signal: str | None = None
        self._speed: list[float] | None = None  # [seconds, updates, tokens] measured so far
        self._early: tuple[float, float] | None = None  # (updates/min, tokens/s) of the first check
        self._window = [0.0, 0, 0]  # [seconds, updates, tokens] since the last speed check
        self._slow_windows = 0  # speed checks in a row below SLOW_RATIO of the early speed
        self._advised_threads = False  # the advice on training.num_threads is given once
        self.init_from: Path | None = None
        self.ema: WeightAverage | None = None
        self._lock: FolderLock | None = None
        self._resume_tensors: dict[str, torch.Tensor] = {}
        self._made_run_dir = False

    # ---- logging (rank 0 only) ----
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def log(self, msg: str) -> None:
        if self.is_main:
            tqdm.write(msg) if self.log_fn is print else self.log_fn(msg)

    @property
    def epochs_done(self) -> float:
        """Completed epochs, with the fraction of the current one."""
        n = len(self.sampler) if getattr(self, "sampler", None) is not None else 0
        return self.state.epoch + (self.state.batches_in_epoch / n if n else 0.0)

    def record(self, kind: str, **values: Any) -> None:
        if not self.is_main:
            return
        row = {"type": kind, "step": self.state.step, "epoch": round(self.epochs_done, 4), **values}
        if self._jsonl is None:
            self._jsonl = open(self.run_dir / "log.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, int | float) and v is not None:
                    self._tb.add_scalar(f"{kind}/{k}", v, self.state.step)

    # ---- set-up ----
    def setup(self, resume: str | bool | None = None, init_from: Path | None = None) -> None:
        """resume: None/False (a new run), True/'yes' (continue; an error if there is nothing to
        continue) or 'auto' (continue if there is a checkpoint, else start). init_from: start
        from a checkpoint's weights and subword models (fine-tuning)."""
        tcfg = self.tcfg
        if tcfg.num_threads:
            torch.set_num_threads(tcfg.num_threads)
        if self.distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        else:
            keep_freed_memory()  # reuse the big per-update buffers instead of faulting them in
            bound_onednn_cache()  # keep resident memory flat over a bf16 run
        # each rank draws its own dropout masks
        seed_everything(tcfg.seed + self.rank)
        if self.is_main:  # before anything in the folder is read or written
            self._lock_run_dir()
        resume_from = self._find_resume_point(resume) if resume else None
        if resume_from is None and resume not in (None, False, "auto"):
            raise NMTKitError(f"--resume: no checkpoint in {self.run_dir} to continue from; "
                              "run without --resume to start (or with --resume auto)")
        self._check_run_dir(resume_from is not None)
        tokenizers = None
        source: Checkpoint | None = None
        if resume_from is not None:
            source = resume_from
            self._check_resumable(resume_from)
        elif init_from is not None:
            source = load_checkpoint(init_from)
            self.init_from = Path(init_from)
            diffs = config_differences(source.config.model.model_dump(mode="json"),
                                       self.cfg.model.model_dump(mode="json"), "model.")
            if diffs:
                raise NMTKitError(f"--init-from {init_from}: the config's model differs from the "
                                  f"checkpoint's ({diffs[0]}); fine-tuning keeps the model as it is")
        if source is not None:
            tokenizers = (source.src_tokenizer, source.tgt_tokenizer)
        # rank 0 prepares the data; the others wait and then read the prepared folder
        if self.is_main:
            self.data = prepare(self.cfg.data, self.cfg.vocab, log=self.log, tokenizers=tokenizers)
        self._barrier()
        if not self.is_main:
            self.data = PreparedData.load(Path(self.cfg.data.out_dir))
        self.train_corpus = self.data.split("train")
        self.valid_corpus = self.data.split("valid")
        if len(self.train_corpus) == 0:
            raise NMTKitError(f"{self.cfg.data.train_src or self.cfg.data.train}: no training pairs "
                              "left after filtering")
        self.model: Seq2Seq = _build(self.cfg, len(self.data.src_tokenizer),
                                     len(self.data.tgt_tokenizer)).to(self.device)
        opt_cls = torch.optim.AdamW if tcfg.optimizer == "adamw" else torch.optim.Adam
        # fused: one kernel for all parameters (6% of a small model's update on 2 CPU cores)
        self.optimizer = opt_cls(
            self.model.parameters(), lr=tcfg.lr, betas=tcfg.betas, weight_decay=tcfg.weight_decay,
            fused=self.device.type in ("cpu", "cuda"),
        )
        self.sampler = TokenBatchSampler(
            self.train_corpus.src_lengths, self.train_corpus.tgt_lengths, tcfg.max_tokens,
            shuffle=True, seed=tcfg.seed, num_shards=self.world, shard_id=self.rank,
        )
        total = tcfg.max_steps or math.ceil(len(self.sampler) / tcfg.update_freq) * tcfg.max_epochs
        self.schedule = LRSchedule(
            tcfg.schedule, tcfg.lr, tcfg.warmup_steps, total, tcfg.min_lr,
            tcfg.plateau_factor, tcfg.plateau_patience,
        )
        self.ddp_model: nn.Module = self.model
        if self.distributed:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        training_tensors: dict[str, torch.Tensor] = {}
        if resume_from is not None:
            training_tensors = self._resume(resume_from)
            self.finished = bool(self._limit_reached())
        elif source is not None:
            self.model.load_state_dict(source.model.state_dict())
            self.log(f"fine-tuning from {init_from}: its weights and subword models; a new "
                     "optimizer and schedule")
        if tcfg.ema_decay:
            # a checkpoint holds the average: it starts from what was loaded; a resumed run gets
            # its raw weights back from the training state
            self.ema = WeightAverage(self.model, tcfg.ema_decay)
            if resume_from is not None:
                self.ema.resume(training_tensors, str(resume_from.path / "training.safetensors"))
        if self.is_main and not self.finished:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if resume_from is None:
                self._drop_log_rows_after(0)  # a run that never saved a checkpoint starts over
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"),
                                         purge_step=self.state.step + 1 if resume_from else None)
            except ImportError:
                self._tb = None
        self._barrier()

    def _check_not_foreign(self) -> None:
        """The run folder is new, or a run folder (never a user's other folder or file)."""
        run = self.run_dir
        if run.exists() and not run.is_dir():
            raise NMTKitError(f"training.out_dir {run} is a file, not a folder")
        if run.is_dir() and not is_run_folder(run) and any(
                p for p in run.iterdir() if p.name not in ("tensorboard", LOCK_NAME)):
            raise NMTKitError(f"training.out_dir {run} is a folder with other files in it, not "
                              "a run folder: choose a new or empty folder")

    def _lock_run_dir(self) -> None:
        """Hold the run folder's lock (making the folder if need be): a second process training
        into it would mix its checkpoints and log rows with this one's."""
        self._check_not_foreign()
        self._made_run_dir = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = FolderLock(self.run_dir)
        self._lock.acquire(f"training.out_dir {self.run_dir}")

    def _unlock_run_dir(self) -> None:
        """Release the lock; a folder this run made and left empty (it stopped with an error
        before writing anything) goes too."""
        if self._lock is None:
            return
        self._lock.release()
        self._lock = None
        run = self.run_dir
        if self._made_run_dir and {p.name for p in run.iterdir()} <= {LOCK_NAME}:
            (run / LOCK_NAME).unlink(missing_ok=True)
            run.rmdir()

    def _check_run_dir(self, resuming: bool) -> None:
        """Clean what a crash left in the run folder; a new run may not start over checkpoints."""
        run = self.run_dir
        self._check_not_foreign()
        if run.is_dir():
            remove_stale(run / f"{CKPT_PREFIX}*")  # left by a crash mid-write
            for link in ("best", "last"):
                remove_stale(run / link)
            if not resuming and list_checkpoints(run):
                raise NMTKitError(
                    f"{run} already holds checkpoints: pass --resume to continue, "
                    "or choose another training.out_dir"
                )

    def _barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    # ---- resuming ----
    def _find_resume_point(self, resume: str | bool) -> Checkpoint | None:
        """The newest checkpoint that loads completely; damaged newer ones are skipped with a
        warning (an older complete one is the last state known to be whole)."""
        for path in reversed(list_checkpoints(self.run_dir)):
            try:
                ckpt = load_checkpoint(path, self.device)
                self._resume_tensors = read_tensors(path / "training.safetensors", ckpt.checksums)
                read_json(path / "training.json")
                return ckpt
            except NMTKitError as err:
                self.log(f"warning: skipping damaged checkpoint {path} ({err})")
        return None

    def _check_resumable(self, ckpt: Checkpoint) -> None:
        """What the checkpoint was trained with must be what the config asks for now."""
        old, new = ckpt.config, self.cfg
        hint = ("a run resumes as it was trained; to go on with other settings or data, start "
                f"a new run with --init-from {ckpt.path}")
        paths = {"train_src", "train_tgt", "valid_src", "valid_tgt", "test_src", "test_tgt", "train",
                 "valid", "test", "out_dir"}
        diffs = []
        for section, allowed in (("model", set()), ("vocab", set()), ("data", paths),
                                 ("training", set(RESUMABLE))):
            diffs += config_differences(getattr(old, section).model_dump(mode="json"),
                                        getattr(new, section).model_dump(mode="json"),
                                        f"{section}.", allowed)
        if diffs:
            raise NMTKitError(f"--resume: {diffs[0]} since {ckpt.path} ({hint})")
        trained_on = ckpt.info.get("data_inputs") or {}
        for name, now in file_digests(new.data).items():
            then = trained_on.get(name)
            if then is not None and then.get("sha1") != now["sha1"]:
                split, side = name.split(".")
                raise NMTKitError(f"--resume: data.{split}_{side} ({now['path']}) is not the file "
                                  f"{ckpt.path} was trained on (its content changed) ({hint})")
        saved_world = read_json(ckpt.path / "training.json").get("world", 1)
        if saved_world != self.world:
            raise NMTKitError(f"--resume: {ckpt.path} was trained by {saved_world} process(es), "
                              f"this is {self.world}; resume with the same number")

    def _resume(self, ckpt: Checkpoint) -> dict[str, torch.Tensor]:
        """Restores the training state; returns the checkpoint's training tensors (the moving
        average's raw weights are among them)."""
        path = ckpt.path
        self.model.load_state_dict(ckpt.model.state_dict())
        tensors, self._resume_tensors = self._resume_tensors, {}  # read and checked by _find_resume_point
        meta = read_json(path / "training.json")
        try:
            self.optimizer.load_state_dict(optimizer_from_tensors(tensors, meta["optimizer"]))
            self.schedule.load_state_dict(meta["schedule"])
            self.sampler.load_state_dict(meta["sampler"])
            self.state = TrainState(**meta["trainer"])
            torch.set_rng_state(tensors[f"rng.torch.{self.rank}"])
            if self.device.type == "cuda":
                torch.cuda.set_rng_state(tensors[f"rng.cuda.{self.rank}"], self.device)
            v, s, g = meta["rng_python"][self.rank]
            random.setstate((v, tuple(s), g))
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise NMTKitError(f"{path / 'training.json'}: not the training state this version "
                              f"writes ({type(err).__name__}: {err})") from None
        self.state.stopped = ""
        self.last_saved_step = self.state.step
        if self.is_main:
            self._drop_log_rows_after(self.state.step)
        self.log(f"resumed from {path} (update {self.state.step}, epoch {self.epochs_done:.2f})")
        return tensors

    def _drop_log_rows_after(self, step: int) -> None:
        """Rows logged after the checkpoint we resume from were lost with the rest of that
        work: drop them, so the log has each update once."""
        path = self.run_dir / "log.jsonl"
        if not path.is_file():
            return
        rows = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
                if line.strip()]
        kept = [line for line in rows if _row_step(line) <= step]
        if len(kept) != len(rows):
            write_text_atomic(path, "".join(kept))

    # ---- checkpoints ----
    def _rng_states(self) -> tuple[dict[str, torch.Tensor], list[Any]]:
        """Every rank's generator states (gathered to all ranks): torch's (and CUDA's) as
        tensors, Python's as JSON."""
        py = random.getstate()
        mine = {"torch": torch.get_rng_state(), "python": [py[0], list(py[1]), py[2]]}
        if self.device.type == "cuda":
            mine["cuda"] = torch.cuda.get_rng_state(self.device)
        states = [mine]
        if self.distributed:
            states = [None] * self.world
            dist.all_gather_object(states, mine)
        tensors = {f"rng.{kind}.{r}": s[kind] for r, s in enumerate(states)
                   for kind in ("torch", "cuda") if kind in s}
        return tensors, [s["python"] for s in states]

    def _save(self, eval_result: EvalResult | None) -> Path | None:
        rng_tensors, rng_python = self._rng_states()  # a collective: every rank takes part
        if not self.is_main:
            return None
        st = self.state
        opt_tensors, opt_json = optimizer_to_tensors(self.optimizer)
        training_json = {
            "optimizer": opt_json,
            "schedule": self.schedule.state_dict(),
            "sampler": self.sampler.state_dict(),
            "trainer": st.__dict__,
            "rng_python": rng_python,
            "world": self.world,
        }
        metrics = None if eval_result is None else eval_result.__dict__
        path = self.run_dir / f"{CKPT_PREFIX}{st.step:08d}"
        info = {"step": st.step, "epoch": round(self.epochs_done, 4), "metrics": metrics,
                "train_seconds": round(st.train_seconds, 1), "data_inputs": self.data.meta["inputs"],
                # the Translator warns about inputs far longer than anything seen in training
                "longest_train_source": int(max(self.train_corpus.src_lengths, default=0))}
        if self.init_from is not None:
            info["init_from"] = str(self.init_from)
        with self._averaged() as raw_weights:  # the checkpoint's model is the average, if any
            save_checkpoint(path, self.model, self.cfg, self.data.src_tokenizer, self.data.tgt_tokenizer,
                            info, {**opt_tensors, **rng_tensors, **raw_weights}, training_json)
        point_link(self.run_dir / "last", path)
        self._prune()
        return path

    def _averaged(self) -> AbstractContextManager[dict[str, torch.Tensor]]:
        """The model holds the moving average of its weights inside the block (if one is kept)."""
        return self.ema.applied() if self.ema is not None else nullcontext({})

    def _prune(self) -> None:
        """Keep the newest `keep_last` and the best `keep_best` checkpoints; delete the rest."""
        ckpts = list_checkpoints(self.run_dir)
        keep = {p.name for p in ckpts[-self.tcfg.keep_last :]}
        keep |= {f"{CKPT_PREFIX}{int(step):08d}" for _, step in self.state.best}
        for p in ckpts:
            if p.name not in keep:
                remove_folder(p)

    def _judged_by(self) -> str:
        """The metric that picks the best checkpoint: early_stopping.metric, but the loss where
        there is no BLEU (training.valid_bleu off, or a language model, which translates nothing)."""
        name = self.tcfg.early_stopping.metric
        if name == "bleu" and (not self.tcfg.valid_bleu or self.cfg.data.monolingual):
            return "loss"
        return name

    def _update_best(self, result: EvalResult) -> bool:
        """Record this evaluation; True if it is the best so far."""
        name = self._judged_by()
        value = result.metric(name)
        higher = name == "bleu"
        st = self.state
        improved = st.best_metric is None or (value > st.best_metric if higher else value < st.best_metric)
        if improved:
            st.best_metric = value
            st.evals_without_improvement = 0
        else:
            st.evals_without_improvement += 1
        st.best.append([value, st.step])
        st.best.sort(key=lambda x: -x[0] if higher else x[0])
        del st.best[self.tcfg.keep_best :]
        self.schedule.on_validation(value, higher)
        return improved

    # ---- evaluation ----
    @torch.inference_mode()
    def evaluate(self) -> EvalResult:
        model = self.model
        model.eval()
        corpus = self.valid_corpus
        sampler = TokenBatchSampler(corpus.src_lengths, corpus.tgt_lengths, self.tcfg.max_tokens,
                                    shuffle=False, seed=0)
        total_nll, total_tokens = 0.0, 0
        for indices in sampler:
            batch = collate([corpus[i] for i in indices], indices).to(self.device)
            with self._autocast():
                _, nll = model(batch.src, batch.src_lengths, batch.tgt_in, target=batch.tgt_out)
            total_nll += float(nll)
            total_tokens += batch.n_tgt_tokens
        loss = total_nll / max(1, total_tokens)
        # a language model has no translations to score: loss and perplexity only
        bleu = self.valid_bleu() if self.tcfg.valid_bleu and not self.cfg.data.monolingual else None
        model.train()
        return EvalResult(loss, perplexity(loss), bleu)

    def valid_bleu(self) -> float:
        corpus = self.valid_corpus
        n = len(corpus)
        if self.tcfg.valid_max_sentences:
            n = min(n, self.tcfg.valid_max_sentences)
        refs = (corpus.raw_text("tgt") or [])[:n]
        src_lengths = corpus.src_lengths[:n]
        sampler = TokenBatchSampler(src_lengths, src_lengths, self.tcfg.max_tokens,
                                    shuffle=False, seed=0)
        hyps = [""] * n
        dcfg = self.cfg.decoding
        for indices in sampler:
            batch = collate([corpus[i] for i in indices], indices).to(self.device)
            with self._autocast():
                results = greedy_search(self.model, batch.src, batch.src_lengths,
                                        dcfg.max_len_a, dcfg.max_len_b)
            for i, hyp in zip(indices, results, strict=True):
                hyps[i] = self.data.tgt_tokenizer.decode(hyp.tokens)
        return bleu_score(hyps, refs, self.tcfg.bleu_tokenize)

    def _autocast(self):
        enabled = self.precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    # ---- training ----
    def train(self, resume: str | bool | None = None, init_from: Path | None = None) -> TrainState:
        """Train to a limit; raises TrainingInterrupted (after writing a checkpoint) when a
        signal stopped it."""
        try:
            return self._train(resume, init_from)
        finally:
            self._unlock_run_dir()

    def _train(self, resume: str | bool | None, init_from: Path | None) -> TrainState:
        self.setup(resume, init_from)
        st = self.state
        if self.finished:
            self.log(f"nothing to do: the run in {self.run_dir} has finished "
                     f"({self._limit_reached()}); raise that limit to train on")
            return st
        n_params = count_parameters(self.model)
        self.log(f"model: {self.cfg.model.type}, {n_params:,} parameters; device {self.device}"
                 f"{f', {self.world} processes' if self.distributed else ''}; "
                 f"{len(self.train_corpus):,} training pairs, {len(self.sampler)} batches/epoch")
        self.log(self._precision_note)
        started = time.monotonic() - st.train_seconds
        self._session_start = (st.step, st.train_seconds)
        self.model.train()
        with self._stop_on_signals():
            while not st.stopped:
                self._train_epoch(started)
        if self.last_saved_step != st.step:
            if self._signal:  # quick: a checkpoint of where it is, no validation
                st.train_seconds = time.monotonic() - started
                self._save(None)
            else:
                self._validate_and_save()
        self._barrier()
        self._summary(started)
        if self._jsonl:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._signal:
            raise TrainingInterrupted(self._signal, signal.Signals[self._signal], True)
        return st

    def _summary(self, started: float) -> None:
        st = self.state
        minutes = (time.monotonic() - started) / 60
        lines = [f"stopped: {st.stopped} after {st.step} updates, epoch {self.epochs_done:.2f}, "
                 f"{minutes:.1f} min of training"]
        if st.best:
            metric = self._judged_by()
            name = "BLEU" if metric == "bleu" else metric
            lines.append(f"best: valid {name} {st.best[0][0]:.2f} at update {int(st.best[0][1])} "
                         f"-> {self.run_dir / 'best'}")
        lines.append(f"last: {self.run_dir / 'last'}")
        if self._signal:
            lines.append(f"to continue: {self.resume_command}")
        self.log("\n".join(lines))

    @contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM: finish the update, write a checkpoint, stop; a second one aborts."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self._signal:
                raise TrainingInterrupted(signal.Signals(signum).name, signum, False)
            self._signal = signal.Signals(signum).name
            self.log(f"\n{self._signal}: stopping after this update with a checkpoint "
                     "(send it again to abort at once)")

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _interrupted(self) -> bool:
        """Whether a signal asked to stop (on any rank: all stop after the same update)."""
        flag = self._signal is not None
        if self.distributed:
            t = torch.tensor([float(flag)], device=self.device)
            dist.all_reduce(t)
            if t.item() and not self._signal:
                self._signal = "SIGTERM"
            flag = bool(t.item())
        return flag

    def _limit_reached(self) -> str:
        """Why the run must stop before another update ('' if it may go on)."""
        tcfg, st = self.tcfg, self.state
        es = tcfg.early_stopping
        if tcfg.max_steps and st.step >= tcfg.max_steps:
            return f"reached max_steps={tcfg.max_steps}"
        if st.epoch >= tcfg.max_epochs:
            return f"reached max_epochs={tcfg.max_epochs}"
        if tcfg.max_minutes and st.train_seconds >= tcfg.max_minutes * 60:
            return f"reached max_minutes={tcfg.max_minutes:g}"
        if es.target is not None and st.best_metric is not None:
            higher = es.metric == "bleu"
            if (st.best_metric >= es.target) if higher else (st.best_metric <= es.target):
                return (f"reached the target: valid {es.metric} {st.best_metric:.2f} "
                        f"(early_stopping.target={es.target:g})")
        if es.patience and st.evals_without_improvement >= es.patience:
            return f"early stopping: valid {es.metric} did not improve for {es.patience} evaluations"
        return ""

    def _check_budget(self, updates_per_min: float, tokens_per_s: float) -> None:
        """Once, early: say how fast training goes, and warn when the limits end it before the
        warm-up, the first validation or one epoch."""
        tcfg = self.tcfg
        per_epoch = math.ceil(len(self.sampler) / tcfg.update_freq)
        self.log(f"speed: {updates_per_min:.1f} updates/min ({tokens_per_s:,.0f} target tokens/s); "
                 f"one epoch is {per_epoch} updates, about {per_epoch / updates_per_min:.1f} min")
        ends = [(tcfg.max_epochs * per_epoch, f"training.max_epochs={tcfg.max_epochs}")]
        if tcfg.max_steps:
            ends.append((tcfg.max_steps, f"training.max_steps={tcfg.max_steps}"))
        if tcfg.max_minutes:
            ends.append((int(tcfg.max_minutes * updates_per_min),
                         f"training.max_minutes={tcfg.max_minutes:g}"))
        last, why = min(ends)
        if tcfg.max_steps and tcfg.max_minutes and last < tcfg.max_steps and \
                why.startswith("training.max_minutes"):
            decay = " (the cosine schedule decays to min_lr only at max_steps)" \
                if tcfg.schedule == "cosine" else ""
            self.log(f"warning: at {updates_per_min:.1f} updates/min, {why} ends training after "
                     f"about {last} of the {tcfg.max_steps} updates of training.max_steps{decay}; "
                     f"they need about {tcfg.max_steps / updates_per_min:.0f} min: raise max_minutes "
                     "or lower max_steps (both may change on --resume)")
        first_valid = tcfg.valid_every or per_epoch
        for milestone, name, fix in (
            (tcfg.warmup_steps, f"the warm-up (training.warmup_steps={tcfg.warmup_steps})",
             "lower warmup_steps (it may change on --resume)"),
            (first_valid, f"the first validation (after {first_valid} updates)", "lower valid_every"),
            (per_epoch, f"one epoch ({per_epoch} updates)", "lower max_tokens or use more data"),
        ):
            if milestone and last < milestone:
                self.log(f"warning: at {updates_per_min:.1f} updates/min, {why} ends training after "
                         f"about {last} updates, before {name}: {fix} or raise the limit")
        busy = busy_machine(torch.get_num_threads())
        if busy is not None:
            load, cores, others = busy
            self._advised_threads = True
            self.log(f"warning: the machine is busy (load average {load:.1f} on {cores} cores, about "
                     f"{others:.1f} of it other work): {torch.get_num_threads()} training threads "
                     f"oversubscribe the cores and wait on each other; training.num_threads="
                     f"{max(1, cores - round(others))} is likely faster (it may change on --resume)")

    def _check_slowdown(self, updates_per_min: float, tokens_per_s: float) -> None:
        """After each later window of WARN_AFTER updates: when training has run well below its
        early speed for SLOW_WINDOWS windows in a row and other work shares the cores, warn once,
        naming both speeds and what to do. Work started after the first check is caught only
        here. The thread count is not changed for the user: it changes the order of the float
        sums, so a run would no longer repeat from its seed, and the load average counts the
        whole host (other containers too), which is not proof enough to act on alone."""
        if self._advised_threads or self._early is None:
            return
        early_upm, early_tps = self._early
        # tokens/s where there are tokens: batches differ in size, the throughput much less
        slow = tokens_per_s < SLOW_RATIO * early_tps if early_tps else \
            updates_per_min < SLOW_RATIO * early_upm
        self._slow_windows = self._slow_windows + 1 if slow else 0
        threads = torch.get_num_threads()
        measured = machine_load(threads)
        if self._slow_windows < SLOW_WINDOWS or measured is None:
            return
        load, cores, others = measured
        if others < 0.75:  # slower, but not for other work (longer batches, memory, heat): quiet
            return
        self._advised_threads = True
        free = max(1, cores - round(others))
        said = (f"warning: training slowed from {early_upm:.1f} to {updates_per_min:.1f} updates/min "
                f"({early_tps:,.0f} to {tokens_per_s:,.0f} target tokens/s) over the last "
                f"{SLOW_WINDOWS * WARN_AFTER} updates, while other work shares the cores (load "
                f"average {load:.1f} on {cores} cores, about {others:.1f} of it other work)")
        if threads > free:
            self.log(f"{said}: {threads} training threads oversubscribe the cores and wait on each "
                     f"other. Set training.num_threads={free} (stop with Ctrl-C, which writes a "
                     f"checkpoint, and continue with {self.resume_command} "
                     f"--set training.num_threads={free}), or stop the other work")
        else:
            self.log(f"{said}: stop the other work, or expect the run to take longer "
                     f"({threads} training thread{'s' if threads > 1 else ''} already fit the free cores)")

    def _train_epoch(self, started: float) -> None:
        tcfg, st = self.tcfg, self.state
        st.stopped = self._limit_reached()
        if st.stopped:
            return
        self.sampler.set_epoch(st.epoch)
        if st.batches_in_epoch:
            self.sampler.load_state_dict({"epoch": st.epoch, "position": st.batches_in_epoch})
        batches = iter(self.sampler)
        n_batches = len(self.sampler)
        bar = tqdm(total=n_batches, initial=st.batches_in_epoch, desc=f"epoch {st.epoch + 1}",
                   disable=not self.is_main, dynamic_ncols=True, leave=False)
        window_tokens, window_start, window_loss, window_n = 0, time.monotonic(), 0.0, 0
        try:
            while True:
                st.stopped = self._limit_reached()
                if st.stopped:
                    return
                group = []
                for indices in batches:
                    group.append(indices)
                    if len(group) == tcfg.update_freq:
                        break
                if not group:
                    break
                update_start = time.monotonic()
                loss_sum, nll_sum, n_tokens = self._update(group)
                st.batches_in_epoch += len(group)
                bar.update(len(group))
                st.train_seconds = time.monotonic() - started
                if n_tokens:
                    window_tokens += n_tokens
                    window_loss += loss_sum
                    window_n += n_tokens
                    elapsed = time.monotonic() - window_start
                    tok_s = window_tokens * self.world / max(elapsed, 1e-9)
                    bar.set_postfix(loss=f"{loss_sum / n_tokens:.3f}", lr=f"{self.schedule(st.step):.2e}",
                                    tok_s=f"{tok_s:,.0f}", run_eta=self._run_eta())
                    if st.step % tcfg.log_every == 0:
                        self.record("train", loss=window_loss / max(1, window_n),
                                    lr=self.schedule(st.step), tokens_per_s=tok_s,
                                    elapsed_s=st.train_seconds, **memory_gb())
                        window_tokens, window_start, window_loss, window_n = 0, time.monotonic(), 0.0, 0
                self._measure_speed(n_tokens, time.monotonic() - update_start)
                st.stopped = self._limit_reached()  # known before a checkpoint records it
                if tcfg.valid_every and st.step % tcfg.valid_every == 0:
                    valid_start = time.monotonic()
                    self._validate_and_save()
                    window_start += time.monotonic() - valid_start  # tokens/s: of training alone
                if self._interrupted():
                    st.stopped = f"{self._signal or 'a signal'} (interrupted)"
                    return
        finally:
            bar.close()
        # the epoch is complete (on a resume, it may have been before the checkpoint was saved)
        st.epoch += 1
        st.batches_in_epoch = 0
        self.sampler.set_epoch(st.epoch)
        if not tcfg.valid_every and self.last_saved_step != st.step:
            self._validate_and_save()

    def _run_eta(self) -> str:
        """The whole run's time left, at this session's speed so far (validation included), and
        the limit that ends it: the epoch bar's own ETA covers the epoch only."""
        tcfg, st = self.tcfg, self.state
        done = st.step - self._session_start[0]
        if done <= 0:
            return "?"
        seconds_per_update = (st.train_seconds - self._session_start[1]) / done
        batches_left = tcfg.max_epochs * len(self.sampler) - (st.epoch * len(self.sampler)
                                                              + st.batches_in_epoch)
        seconds, limit = time_left(seconds_per_update, st.step, tcfg.max_steps,
                                   math.ceil(batches_left / tcfg.update_freq), st.train_seconds,
                                   tcfg.max_minutes)
        return f"{tqdm.format_interval(seconds)} ({limit})"

    def _measure_speed(self, tokens: int, seconds: float) -> None:
        """Time WARN_AFTER updates (after this session's first, which pays one-off costs), then
        check the time budget, once; then time each further window of WARN_AFTER updates against
        that early speed (`seconds`: the update's own time, validation left out)."""
        if self._speed is None:
            self._speed = [0.0, 0, 0]
            return
        window = self._speed if self._early is None else self._window
        window[0] += seconds
        window[1] += 1
        window[2] += tokens
        if window[1] < WARN_AFTER:
            return
        seconds, updates, tokens = window[0] or 1e-9, window[1], window[2]
        rate = (60 * updates / seconds, tokens * self.world / seconds)
        if self._early is None:
            self._early = rate
            self._check_budget(*rate)
        else:
            self._window = [0.0, 0, 0]
            self._check_slowdown(*rate)

    def _validate_and_save(self) -> None:
        self.last_saved_step = self.state.step
        start = time.monotonic()
        with self._averaged():
            result = self.evaluate()
        seconds = time.monotonic() - start
        self._report_eval(result, seconds)
        improved = self._update_best(result)
        path = self._save(result)
        if improved and path is not None:
            point_link(self.run_dir / "best", path)

    def _report_eval(self, r: EvalResult, seconds: float) -> None:
        bleu = "" if r.bleu is None else f", BLEU {r.bleu:.2f}"
        self.log(f"[valid] update {self.state.step}, epoch {self.epochs_done:.2f}: "
                 f"loss {r.loss:.4f}, ppl {r.ppl:.2f}{bleu} ({seconds:.1f} s)")
        self.record("valid", loss=r.loss, ppl=r.ppl, bleu=r.bleu, valid_s=seconds,
                    elapsed_s=self.state.train_seconds)

    def teacher_forcing_ratio(self) -> float:
        """The probability of feeding gold previous tokens in this update."""
        ss = self.tcfg.scheduled_sampling
        if ss is None:
            return self.tcfg.teacher_forcing_ratio
        return teacher_forcing_ratio(self.state.step, ss.decay, ss.k, ss.c, ss.min_ratio)

    def _update(self, group: list[list[int]]) -> tuple[float, float, int]:
        """One optimizer update over `update_freq` batches; the gradient is that of the loss
        summed over all their target tokens (on all ranks) divided by that token count."""
        tcfg, st = self.tcfg, self.state
        self.optimizer.zero_grad(set_to_none=True)
        loss_total, nll_total, tokens = 0.0, 0.0, 0
        for k, indices in enumerate(group):
            batch = collate([self.train_corpus[i] for i in indices], indices).to(self.device)
            sync = k == len(group) - 1
            ctx = self.ddp_model.no_sync() if self.distributed and not sync else nullcontext()
            with ctx, self._autocast():
                loss, nll = self.ddp_model(batch.src, batch.src_lengths, batch.tgt_in,
                                           self.teacher_forcing_ratio(), target=batch.tgt_out,
                                           smoothing=tcfg.label_smoothing)
            loss.backward()
            loss_total += float(loss.detach())
            nll_total += float(nll)
            tokens += batch.n_tgt_tokens
        all_tokens = tokens
        if self.distributed:
            t = torch.tensor([float(tokens)], device=self.device)
            dist.all_reduce(t)
            all_tokens = int(t.item())
        # DDP averaged the gradient sums over ranks; turn them into a per-token mean
        scale = self.world / max(1, all_tokens)
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad.mul_(scale)
        # the total norm, clipped to clip_norm (0: measured only, for the finiteness check)
        norm = nn.utils.clip_grad_norm_(self.model.parameters(), tcfg.clip_norm or math.inf)
        if not torch.isfinite(norm):  # identical on every rank: gradients are all-reduced
            st.bad_steps += 1
            self.optimizer.zero_grad(set_to_none=True)
            self.log(f"warning: non-finite gradient at update {st.step + 1}, update skipped "
                     f"({st.bad_steps} in a row)")
            if st.bad_steps >= tcfg.max_bad_steps:
                raise NMTKitError(
                    f"the loss was not finite for {st.bad_steps} updates in a row "
                    f"(training.max_bad_steps); lower training.lr or use precision fp32"
                )
            return 0.0, 0.0, 0
        st.bad_steps = 0
        lr = self.schedule(st.step + 1)
        for group_ in self.optimizer.param_groups:
            group_["lr"] = lr
        self.optimizer.step()
        st.step += 1
        if self.ema is not None:
            self.ema.update(st.step)
        return loss_total, nll_total, tokens


def _row_step(line: str) -> int:
    try:
        row = json.loads(line)
        return int(row.get("step", 0)) if isinstance(row, dict) else 0
    except (json.JSONDecodeError, TypeError, ValueError):
        return 0


def _build(cfg: Config, src_vocab: int, tgt_vocab: int) -> Seq2Seq:
    """build_model, with a clear error when the model cannot fit in memory."""
    with torch.device("meta"):
        n = count_parameters(build_model(cfg.model, src_vocab, tgt_vocab))
    need = n * 4 * 4  # fp32 weights, gradients and two Adam moments
    available = _available_memory()
    if available and need > available:
        raise NMTKitError(f"model: {n:,} parameters need about {need / 2**30:.1f} GiB to train, more "
                          f"than the {available / 2**30:.1f} GiB available; make the model smaller")
    return build_model(cfg.model, src_vocab, tgt_vocab, cfg.data.monolingual)


def _available_memory() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def train(config: Config, resume: str | bool | None = None, init_from: Path | None = None,
          resume_command: str | None = None) -> Path:
    """Train per `config`; returns the run folder (with `best` and `last` checkpoint links)."""
    trainer = Trainer(config, resume_command=resume_command)
    try:
        trainer.train(resume, init_from)
    finally:
        if trainer.distributed and dist.is_initialized():
            dist.destroy_process_group()
    return trainer.run_dir


def memory_gb() -> dict[str, float]:
    """This process's resident memory now and at its peak, in GB (what a run's log records to
    show whether memory stays flat over a long run); empty where the OS does not say."""
    try:
        import resource

        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    except (OSError, ImportError, ValueError, IndexError):
        return {}
    # the kernel's two counters are sampled apart (and per-CPU counts lag): the peak is at
    # least what is resident now
    return {"rss_gb": round(rss / 1e9, 3), "peak_rss_gb": round(max(peak, rss) / 1e9, 3)}


def load_log(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise NMTKitError(f"{path}: no training log (is {run_dir} a run folder?)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise NMTKitError(f"{path}: line {line} is not valid UTF-8 (not a training log)") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise NMTKitError(f"{path}: line {n} is not valid JSON") from None
            if isinstance(row, dict):
                rows.append(row)
    return rows


def checkpoint_config(path: Path) -> Config:
    """The config a checkpoint was trained with."""
    return config_from_dict(read_json(Path(path) / "checkpoint.json").get("config", {}),
                            str(Path(path) / "checkpoint.json"))
