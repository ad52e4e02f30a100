"""Checkpoints: a folder of safetensors tensors and JSON, written atomically, never unpickled.

    ckpt-000400/
      model.safetensors      weights (fp32; tied weights stored once)
      checkpoint.json        config, step, epoch, metrics, format version
      src.spm.model          sentencepiece models (protobuf data, not code)
      tgt.spm.model
      vocab.json             the vocabularies as piece lists
      training.safetensors   optimiser moments and RNG states        (training checkpoints only)
      training.json          scheduler, sampler position, counters   (training checkpoints only)

A checkpoint is written into a temporary folder beside its final name and renamed into place,
so a crash at any moment leaves either the complete folder or none (plus a stale temp folder
that the next run removes). Loading reads tensors with safetensors and metadata with json:
nothing in a checkpoint can run code.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from nmtkit.config import Config, config_from_dict
from nmtkit.errors import NMTKitError
from nmtkit.model import build_model
from nmtkit.seq2seq import Seq2Seq
from nmtkit.vocabulary import Tokenizer

FORMAT_VERSION = 1
TMP_PREFIX = ".tmp-"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def atomic_folder(final: Path):
    """A temp folder beside `final`; call `commit(tmp, final)` when everything is written."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}-", dir=final.parent))


def commit_folder(tmp: Path, final: Path) -> None:
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)
    if final.exists():  # replacing (e.g. `nmtkit average --out` onto an old folder)
        old = final.with_name(f"{TMP_PREFIX}old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)


def remove_folder(path: Path) -> None:
    """Rename out of sight first, then delete: a crash mid-delete leaves only a temp folder."""
    doomed = path.with_name(f"{TMP_PREFIX}del-{path.name}")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def save_checkpoint(
    path: Path,
    model: Seq2Seq,
    config: Config,
    src_tokenizer: Tokenizer,
    tgt_tokenizer: Tokenizer,
    info: dict[str, Any],
    training_tensors: dict[str, torch.Tensor] | None = None,
    training_json: dict[str, Any] | None = None,
) -> Path:
    tmp = atomic_folder(path)
    try:
        # save_model stores shared (tied) tensors once and restores the tie on load
        save_model(_unwrap(model), str(tmp / "model.safetensors"))
        write_json(tmp / "checkpoint.json", {
            "format_version": FORMAT_VERSION,
            "config": config.to_json_dict(),
            **info,
        })
        (tmp / "src.spm.model").write_bytes(src_tokenizer.to_bytes())
        (tmp / "tgt.spm.model").write_bytes(tgt_tokenizer.to_bytes())
        write_json(tmp / "vocab.json", {"src": src_tokenizer.vocab(), "tgt": tgt_tokenizer.vocab()})
        if training_tensors is not None:
            save_file({k: v.contiguous().cpu() for k, v in training_tensors.items()},
                      str(tmp / "training.safetensors"))
            write_json(tmp / "training.json", training_json or {})
        commit_folder(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel wraps the model


@dataclass
class Checkpoint:
    path: Path
    model: Seq2Seq
    config: Config
    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer
    info: dict[str, Any]


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise NMTKitError(f"{path}: missing (not a complete nmtkit checkpoint)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise NMTKitError(f"{path}: corrupted JSON ({err})") from None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise NMTKitError(f"{path}: missing (not a complete nmtkit checkpoint)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise NMTKitError(f"{path}: corrupted or truncated safetensors file ({err})") from None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    path = Path(path)
    if not path.is_dir():
        raise NMTKitError(f"checkpoint folder not found: {path}")
    meta = read_json(path / "checkpoint.json")
    if meta.get("format_version") != FORMAT_VERSION:
        raise NMTKitError(f"{path / 'checkpoint.json'}: unsupported format_version "
                          f"{meta.get('format_version')!r}")
    config = config_from_dict(meta["config"], str(path / "checkpoint.json"))
    src_tok = _tokenizer(path / "src.spm.model")
    tgt_tok = _tokenizer(path / "tgt.spm.model")
    model = build_model(config.model, len(src_tok), len(tgt_tok))
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise NMTKitError(f"{weights}: missing (not a complete nmtkit checkpoint)")
    try:
        missing, unexpected = load_model(model, str(weights), strict=False)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise NMTKitError(f"{weights}: corrupted, truncated or of another architecture ({err})") from None
    if missing or unexpected:
        raise NMTKitError(f"{weights}: does not match the config's architecture "
                          f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    model.to(device).eval()
    info = {k: v for k, v in meta.items() if k not in ("config", "format_version")}
    return Checkpoint(path, model, config, src_tok, tgt_tok, info)


def _tokenizer(path: Path) -> Tokenizer:
    if not path.is_file():
        raise NMTKitError(f"{path}: missing (not a complete nmtkit checkpoint)")
    try:
        return Tokenizer.from_bytes(path.read_bytes())
    except Exception as err:  # sentencepiece raises RuntimeError/OSError variants
        raise NMTKitError(f"{path}: not a valid sentencepiece model ({err})") from None


# ---- optimiser and RNG state as tensors + JSON (no pickle) ----

def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def average_checkpoints(paths: list[Path], out: Path) -> Path:
    """Write the element-wise mean of the weights of several checkpoints of one architecture."""
    if not paths:
        raise NMTKitError("nmtkit average: give at least one checkpoint")
    ckpts = [load_checkpoint(p) for p in paths]
    first = ckpts[0]
    for c in ckpts[1:]:
        if c.config.model != first.config.model:
            raise NMTKitError(f"{c.path}: a different model architecture than {first.path} "
                              "(model sections differ); only the same architecture can be averaged")
        if c.src_tokenizer.vocab() != first.src_tokenizer.vocab() or \
                c.tgt_tokenizer.vocab() != first.tgt_tokenizer.vocab():
            raise NMTKitError(f"{c.path}: a different vocabulary than {first.path}")
    states = [c.model.state_dict() for c in ckpts]
    mean = {k: torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype)
            for k, v in states[0].items()}
    first.model.load_state_dict(mean)
    info = {"step": first.info.get("step"), "averaged_from": [str(p) for p in paths]}
    return save_checkpoint(out, first.model, first.config, first.src_tokenizer,
                           first.tgt_tokenizer, info)
