"""The training loop: teacher forcing with (label-smoothed) cross-entropy, validation, checkpoints.

One `Trainer` serves a single process and `torchrun` multi-process training (DDP) alike: with
several ranks the batches are sharded, gradients are averaged by DDP, and only rank 0 writes
checkpoints and logs. Everything needed to continue exactly where a run stopped (model,
optimiser, schedule, RNG states, data position) is in each checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from nmtkit.checkpoint import (
    TMP_PREFIX,
    load_checkpoint,
    optimizer_from_tensors,
    optimizer_to_tensors,
    read_json,
    read_tensors,
    remove_folder,
    save_checkpoint,
)
from nmtkit.config import Config
from nmtkit.cpu import keep_freed_memory
from nmtkit.data import PreparedData, TokenBatchSampler, collate, prepare
from nmtkit.errors import NMTKitError
from nmtkit.loss import label_smoothed_nll, perplexity
from nmtkit.metrics import bleu_score
from nmtkit.model import build_model, count_parameters
from nmtkit.schedules import LRSchedule, teacher_forcing_ratio
from nmtkit.search import greedy_search
from nmtkit.seq2seq import Seq2Seq

CKPT_PREFIX = "ckpt-"


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise NMTKitError("training.device is 'cuda' but no CUDA device is available")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and dist.is_available() and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(choice)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temp folders of interrupted writes are not listed)."""
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith(CKPT_PREFIX))


def point_link(link: Path, target: Path) -> None:
    """Atomically (re)point a symlink such as `best` or `last` at a checkpoint folder."""
    tmp = link.with_name(f"{TMP_PREFIX}{link.name}-link")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target.name)
    os.replace(tmp, link)


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
    epoch: int = 0
    batches_in_epoch: int = 0
    bad_steps: int = 0
    evals_without_improvement: int = 0
    best_metric: float | None = None
    best: list[list[float]] = field(default_factory=list)  # [metric, step] of kept best ckpts
    train_seconds: float = 0.0
    stopped: str = ""


class Trainer:
    def __init__(self, config: Config, log: Any = print) -> None:
        self.cfg = config
        self.tcfg = config.training
        self.log_fn = log
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.distributed = self.world > 1
        self.device = resolve_device(self.tcfg.device)
        self.run_dir = Path(self.tcfg.out_dir)
        self.state = TrainState()
        self._jsonl = None
        self._tb = None
        self.last_saved_step = -1

    # ---- logging (rank 0 only) ----
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def log(self, msg: str) -> None:
        if self.is_main:
            tqdm.write(msg) if self.log_fn is print else self.log_fn(msg)

    def record(self, kind: str, **values: Any) -> None:
        if not self.is_main:
            return
        row = {"type": kind, "step": self.state.step, "epoch": self.state.epoch, **values}
        if self._jsonl is None:
            self._jsonl = open(self.run_dir / "log.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, int | float) and v is not None:
                    self._tb.add_scalar(f"{kind}/{k}", v, self.state.step)

    # ---- set-up ----
    def setup(self, resume: bool) -> None:
        tcfg = self.tcfg
        if tcfg.num_threads:
            torch.set_num_threads(tcfg.num_threads)
        if self.distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        else:
            keep_freed_memory()  # reuse the big per-update buffers instead of faulting them in
        seed_everything(tcfg.seed)
        # rank 0 prepares the data; the others wait and then read the prepared folder
        if self.is_main:
            self.data = prepare(self.cfg.data, self.cfg.vocab, log=self.log)
        self._barrier()
        if not self.is_main:
            self.data = PreparedData.load(Path(self.cfg.data.out_dir))
        self.train_corpus = self.data.split("train")
        self.valid_corpus = self.data.split("valid")
        if len(self.train_corpus) == 0:
            raise NMTKitError(f"{self.cfg.data.train_src}: no training pairs left after filtering")
        self.model: Seq2Seq = build_model(
            self.cfg.model, len(self.data.src_tokenizer), len(self.data.tgt_tokenizer)
        ).to(self.device)
        opt_cls = torch.optim.AdamW if tcfg.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(
            self.model.parameters(), lr=tcfg.lr, betas=tcfg.betas, weight_decay=tcfg.weight_decay
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
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for stale in self.run_dir.glob(f"{TMP_PREFIX}*"):  # left by a crash mid-write
                shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()
            if not resume and list_checkpoints(self.run_dir):
                raise NMTKitError(
                    f"{self.run_dir} already holds checkpoints: pass --resume to continue, "
                    "or choose another training.out_dir"
                )
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            except ImportError:
                self._tb = None
        self._barrier()
        if resume:
            self._resume()

    def _barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    # ---- checkpoints ----
    def _save(self, eval_result: EvalResult | None) -> Path | None:
        if not self.is_main:
            return None
        st = self.state
        opt_tensors, opt_json = optimizer_to_tensors(self.optimizer)
        tensors = dict(opt_tensors)
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
        py_state = random.getstate()
        training_json = {
            "optimizer": opt_json,
            "schedule": self.schedule.state_dict(),
            "sampler": self.sampler.state_dict(),
            "trainer": st.__dict__,
            "rng_python": [py_state[0], list(py_state[1]), py_state[2]],
        }
        metrics = None if eval_result is None else eval_result.__dict__
        path = self.run_dir / f"{CKPT_PREFIX}{st.step:08d}"
        save_checkpoint(
            path, self.model, self.cfg, self.data.src_tokenizer, self.data.tgt_tokenizer,
            {"step": st.step, "epoch": st.epoch, "metrics": metrics}, tensors, training_json,
        )
        point_link(self.run_dir / "last", path)
        self._prune()
        return path

    def _prune(self) -> None:
        """Keep the newest `keep_last` and the best `keep_best` checkpoints; delete the rest."""
        ckpts = list_checkpoints(self.run_dir)
        keep = {p.name for p in ckpts[-self.tcfg.keep_last :]}
        keep |= {f"{CKPT_PREFIX}{int(step):08d}" for _, step in self.state.best}
        for p in ckpts:
            if p.name not in keep:
                remove_folder(p)

    def _update_best(self, result: EvalResult) -> bool:
        """Record this evaluation; True if it is the best so far."""
        name = self.tcfg.early_stopping.metric
        if name == "bleu" and result.bleu is None:
            name = "loss"  # BLEU is switched off (training.valid_bleu): judge by loss instead
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

    def _resume(self) -> None:
        ckpts = list_checkpoints(self.run_dir)
        if not ckpts:
            self.log(f"--resume: no checkpoint in {self.run_dir}, starting from scratch")
            return
        path = ckpts[-1]
        ckpt = load_checkpoint(path, self.device)
        self.model.load_state_dict(ckpt.model.state_dict())
        tensors = read_tensors(path / "training.safetensors")
        meta = read_json(path / "training.json")
        self.optimizer.load_state_dict(optimizer_from_tensors(tensors, meta["optimizer"]))
        self.schedule.load_state_dict(meta["schedule"])
        self.sampler.load_state_dict(meta["sampler"])
        self.state = TrainState(**meta["trainer"])
        self.state.stopped = ""
        self.last_saved_step = self.state.step
        torch.set_rng_state(tensors["rng.torch"])
        if torch.cuda.is_available():
            cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
            if cuda_states:
                torch.cuda.set_rng_state_all(cuda_states)
        v, s, g = meta["rng_python"]
        random.setstate((v, tuple(s), g))
        self.log(f"resumed from {path} (update {self.state.step}, epoch {self.state.epoch + 1})")

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
                logits, _ = model(batch.src, batch.src_lengths, batch.tgt_in, normalize=False)
            _, nll = label_smoothed_nll(logits, batch.tgt_out)
            total_nll += float(nll)
            total_tokens += batch.n_tgt_tokens
        loss = total_nll / max(1, total_tokens)
        bleu = self.valid_bleu() if self.tcfg.valid_bleu else None
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
        enabled = self.tcfg.precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    # ---- training ----
    def train(self, resume: bool = False) -> TrainState:
        self.setup(resume)
        tcfg, st = self.tcfg, self.state
        n_params = count_parameters(self.model)
        self.log(f"model: {self.cfg.model.type}, {n_params:,} parameters; device {self.device}"
                 f"{f', {self.world} processes' if self.distributed else ''}; "
                 f"{len(self.train_corpus):,} training pairs, {len(self.sampler)} batches/epoch")
        started = time.monotonic() - st.train_seconds
        self.model.train()
        while not st.stopped:
            if st.epoch >= tcfg.max_epochs:
                st.stopped = f"reached max_epochs={tcfg.max_epochs}"
                break
            self._train_epoch(started)
        self.log(f"stopped: {st.stopped}")
        if self.last_saved_step != st.step:
            self._validate_and_save()
        self._barrier()
        if self._jsonl:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        return st

    def _train_epoch(self, started: float) -> None:
        tcfg, st = self.tcfg, self.state
        self.sampler.set_epoch(st.epoch)
        if st.batches_in_epoch:
            self.sampler.load_state_dict({"epoch": st.epoch, "position": st.batches_in_epoch})
        batches = iter(self.sampler)
        n_batches = len(self.sampler)
        bar = tqdm(total=n_batches, initial=st.batches_in_epoch, desc=f"epoch {st.epoch + 1}",
                   disable=not self.is_main, dynamic_ncols=True, leave=False)
        window_tokens, window_start, window_loss, window_n = 0, time.monotonic(), 0.0, 0
        while True:
            group = []
            for indices in batches:
                group.append(indices)
                if len(group) == tcfg.update_freq:
                    break
            if not group:
                break
            loss_sum, nll_sum, n_tokens = self._update(group)
            st.batches_in_epoch += len(group)
            bar.update(len(group))
            if n_tokens == 0:
                continue
            window_tokens += n_tokens
            window_loss += loss_sum
            window_n += n_tokens
            elapsed = time.monotonic() - window_start
            tok_s = window_tokens * self.world / max(elapsed, 1e-9)
            bar.set_postfix(loss=f"{loss_sum / n_tokens:.3f}", lr=f"{self.schedule(st.step):.2e}",
                            tok_s=f"{tok_s:,.0f}")
            if st.step % tcfg.log_every == 0:
                self.record("train", loss=window_loss / max(1, window_n),
                            lr=self.schedule(st.step), tokens_per_s=tok_s,
                            elapsed_s=time.monotonic() - started)
                window_tokens, window_start, window_loss, window_n = 0, time.monotonic(), 0.0, 0
            st.train_seconds = time.monotonic() - started
            if tcfg.max_steps and st.step >= tcfg.max_steps:
                st.stopped = f"reached max_steps={tcfg.max_steps}"
            elif tcfg.max_minutes and st.train_seconds >= tcfg.max_minutes * 60:
                st.stopped = f"reached max_minutes={tcfg.max_minutes}"
            if tcfg.valid_every and st.step % tcfg.valid_every == 0:
                self._validate_and_save()
            if st.stopped:
                break
        bar.close()
        if not st.stopped:
            st.epoch += 1
            st.batches_in_epoch = 0
            self.sampler.set_epoch(st.epoch)
            if not tcfg.valid_every:
                self._validate_and_save()

    def _validate_and_save(self) -> None:
        self.last_saved_step = self.state.step
        start = time.monotonic()
        result = self.evaluate()
        self._report_eval(result, time.monotonic() - start)
        improved = self._update_best(result)
        path = self._save(result)
        if improved and path is not None:
            point_link(self.run_dir / "best", path)
        es = self.tcfg.early_stopping
        if es.patience and self.state.evals_without_improvement >= es.patience:
            self.state.stopped = (f"early stopping: valid {es.metric} did not improve for "
                                  f"{es.patience} evaluations")

    def _report_eval(self, r: EvalResult, seconds: float) -> None:
        bleu = "" if r.bleu is None else f", BLEU {r.bleu:.2f}"
        self.log(f"[valid] update {self.state.step}, epoch {self.state.epoch}: "
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
                logits, _ = self.ddp_model(batch.src, batch.src_lengths, batch.tgt_in,
                                           self.teacher_forcing_ratio(), normalize=False)
                loss, nll = label_smoothed_nll(logits, batch.tgt_out, tcfg.label_smoothing)
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
        return loss_total, nll_total, tokens


def train(config: Config, resume: bool = False) -> Path:
    """Train per `config`; returns the run folder (with `best` and `last` checkpoint links)."""
    trainer = Trainer(config)
    try:
        trainer.train(resume)
    finally:
        if trainer.distributed and dist.is_initialized():
            dist.destroy_process_group()
    return trainer.run_dir


def load_log(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise NMTKitError(f"{path}: no training log (is {run_dir} a run folder?)")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise NMTKitError(f"{path}: line {n} is not valid JSON") from None
    return rows

