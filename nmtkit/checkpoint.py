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
that the next run removes). Its files and folders get the permissions the user's umask gives.
Loading reads tensors with safetensors and metadata with json: nothing in a checkpoint can run
code.

checkpoint.json records the SHA-256 of each tensor file ("checksums"), and loading checks it:
a flipped bit on a disk or in a copy, or a weight edited by hand, is refused with the file's
name instead of translating with damaged weights. (SHA-256 because CPUs hash it in hardware:
about 40 ms for a 30 MB model, see benchmarks/bench_checkpoint.py.) Checkpoints written before
checksums were recorded have none and load unchecked.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from nmtkit.config import Config, config_from_dict
from nmtkit.errors import NMTKitError
from nmtkit.files import as_user_file, lock_holder, temp_folder
from nmtkit.model import build_model
from nmtkit.seq2seq import Seq2Seq
from nmtkit.vocabulary import Tokenizer

FORMAT_VERSION = 1


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def commit_folder(tmp: Path, final: Path) -> None:
    """Make the complete temp folder `tmp` the folder `final` (fsynced, one rename). A `final`
    that exists is replaced only when the caller has checked it may be (`average` replacing
    its own earlier output)."""
    for f in tmp.iterdir():
        as_user_file(f)
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)
    if final.exists():
        old = temp_folder(final, "old")
        os.replace(final, old / final.name)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)


def remove_folder(path: Path) -> None:
    """Rename out of sight first, then delete: a crash mid-delete leaves only a temp folder
    (which the next run removes, see files.remove_stale)."""
    doomed = temp_folder(path, "del")
    os.replace(path, doomed / path.name)
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
    tmp = temp_folder(path)
    try:
        # save_model stores shared (tied) tensors once and restores the tie on load
        save_model(_unwrap(model), str(tmp / "model.safetensors"))
        if training_tensors is not None:
            save_file({k: v.contiguous().cpu() for k, v in training_tensors.items()},
                      str(tmp / "training.safetensors"))
            write_json(tmp / "training.json", training_json or {})
        checksums = {name: file_checksum(tmp / name) for name in TENSOR_FILES
                     if (tmp / name).is_file()}
        write_json(tmp / "checkpoint.json", {
            "format_version": FORMAT_VERSION,
            "config": config.to_json_dict(),
            **info,
            "checksums": checksums,
        })
        (tmp / "src.spm.model").write_bytes(src_tokenizer.to_bytes())
        (tmp / "tgt.spm.model").write_bytes(tgt_tokenizer.to_bytes())
        write_json(tmp / "vocab.json", {"src": src_tokenizer.vocab(), "tgt": tgt_tokenizer.vocab()})
        commit_folder(tmp, path)
    except SafetensorError as err:  # its I/O errors (a full disk) are not OSErrors
        shutil.rmtree(tmp, ignore_errors=True)
        code = re.search(r"os error (\d+)", str(err))
        if code:
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


TENSOR_FILES = ("model.safetensors", "training.safetensors")


def file_checksum(path: Path) -> str:
    """'sha256:<hex>' of a file's bytes."""
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def verify_checksum(path: Path, checksums: dict[str, str] | None) -> None:
    """Refuse a tensor file whose bytes are not those checkpoint.json recorded (a checkpoint
    without checksums, written before they were recorded, is not checked)."""
    expected = (checksums or {}).get(path.name)
    if expected is None:
        return
    if not isinstance(expected, str) or not expected.startswith("sha256:"):
        raise NMTKitError(f"{path.parent / 'checkpoint.json'}: checksums.{path.name} is not "
                          "'sha256:<hex>' (a damaged checkpoint?)")
    try:
        actual = file_checksum(path)
    except OSError as err:
        raise NMTKitError(f"{path}: cannot be read ({err.strerror})") from None
    if actual != expected:
        raise NMTKitError(f"{path}: damaged: its SHA-256 is not the one recorded in "
                          "checkpoint.json when it was written (changed or corrupted since)")


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
    checksums: dict[str, str] | None = None  # of the tensor files; None: an older checkpoint


def read_json(path: Path) -> Any:
    """A JSON object of a checkpoint (checkpoint.json, training.json)."""
    if not path.is_file():
        raise NMTKitError(f"{path}: missing (not a complete nmtkit checkpoint)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise NMTKitError(f"{path}: corrupted JSON ({err})") from None
    if not isinstance(data, dict):
        raise NMTKitError(f"{path}: not a JSON object (a damaged checkpoint?)")
    return data


def read_tensors(path: Path, checksums: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """A safetensors file of a checkpoint, checked against checkpoint.json's `checksums`."""
    if not path.is_file():
        raise NMTKitError(f"{path}: missing (not a complete nmtkit checkpoint)")
    verify_checksum(path, checksums)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise NMTKitError(f"{path}: corrupted or truncated safetensors file ({err})") from None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder as given, or a run folder's best checkpoint (said on stderr); the
    error for anything else names the nearest checkpoints or runs."""
    path = Path(path)
    if (path / "checkpoint.json").is_file():
        return path
    for link in ("best", "last"):
        if (path / link / "checkpoint.json").is_file():
            print(f"nmtkit: using {path / link}, the run's {link} checkpoint", file=sys.stderr)
            return path / link
    if not path.exists():
        raise NMTKitError(f"checkpoint folder not found: {path}{_nearest(path)}")
    raise NMTKitError(f"{path} is not a checkpoint or a run folder{_nearest(path)}")


def _nearest(path: Path) -> str:
    """' (nearest: a, b, c)': checkpoints and run folders near a mistaken path."""
    candidates: list[Path] = []
    for folder in (path, path.parent, path.parent.parent):
        if folder.is_dir():
            for p in sorted(folder.iterdir())[:500]:
                if (p / "checkpoint.json").is_file() or (p / "best").exists() or (p / "last").exists():
                    candidates.append(p)
            if candidates:
                break
    if not candidates:
        return " (no checkpoint or run folder next to it either)"
    names = {str(c): c.name for c in candidates}
    close = difflib.get_close_matches(path.name, list(names.values()), n=3, cutoff=0.0)
    shown = [next(k for k, v in names.items() if v == name) for name in close]
    return f" (nearest: {', '.join(shown)})"


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    path = Path(path)
    if not path.is_dir():
        raise NMTKitError(f"checkpoint folder not found: {path}{_nearest(path)}")
    meta = read_json(path / "checkpoint.json")
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise NMTKitError(f"{path / 'checkpoint.json'}: not an nmtkit checkpoint description "
                          "(a JSON object with a config)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise NMTKitError(f"{path / 'checkpoint.json'}: unsupported format_version "
                          f"{meta.get('format_version')!r}")
    checksums = meta.get("checksums")
    if checksums is not None and not isinstance(checksums, dict):
        raise NMTKitError(f"{path / 'checkpoint.json'}: checksums is not an object "
                          "(a damaged checkpoint?)")
    config = config_from_dict(meta["config"], str(path / "checkpoint.json"))
    src_tok = _tokenizer(path / "src.spm.model")
    tgt_tok = _tokenizer(path / "tgt.spm.model")
    model = build_model(config.model, len(src_tok), len(tgt_tok), config.data.monolingual)
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise NMTKitError(f"{weights}: missing (not a complete nmtkit checkpoint)")
    verify_checksum(weights, checksums)
    try:
        missing, unexpected = load_model(model, str(weights), strict=False)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise NMTKitError(f"{weights}: corrupted, truncated or of another architecture ({err})") from None
    if missing or unexpected:
        raise NMTKitError(f"{weights}: does not match the config's architecture "
                          f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    model.to(device).eval()
    info = {k: v for k, v in meta.items() if k not in ("config", "format_version", "checksums")}
    return Checkpoint(path, model, config, src_tok, tgt_tok, info, checksums)


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
    """Write the element-wise mean of the weights of several checkpoints of one architecture.

    `out` must be a new path, or an earlier output of `average` (which it replaces): never a
    training checkpoint, a run folder or any other existing file or folder."""
    if not paths:
        raise NMTKitError("nmtkit average: give at least one checkpoint")
    out = Path(out)
    for path in paths:
        if not (Path(path) / "checkpoint.json").is_file() and (Path(path) / "last").exists():
            newest = sorted(Path(path).glob("ckpt-*"))[-3:]
            raise NMTKitError(f"{path} is a run folder: average takes its checkpoints, e.g. "
                              + " ".join(str(c) for c in newest))
    _check_average_out(out, paths)
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
    info = {"step": first.info.get("step"), "averaged_from": [str(p) for p in paths],
            "longest_train_source": max(c.info.get("longest_train_source", 0) for c in ckpts)}
    return save_checkpoint(out, first.model, first.config, first.src_tokenizer,
                           first.tgt_tokenizer, info)


def _check_average_out(out: Path, inputs: list[Path]) -> None:
    holder = lock_holder(out.parent)
    if holder:
        raise NMTKitError(f"--out {out}: {out.parent} is a run folder being trained ({holder}); "
                          "write the average elsewhere, or when training has ended")
    if not out.exists() and not out.is_symlink():
        if out.parent.exists() and not out.parent.is_dir():
            raise NMTKitError(f"--out {out}: {out.parent} is a file, not a folder")
        return
    if any(out.resolve() == Path(p).resolve() for p in inputs):
        raise NMTKitError(f"--out {out} is one of the checkpoints being averaged: "
                          "choose a new folder")
    meta = out / "checkpoint.json"
    ours = out.is_dir() and not out.is_symlink() and meta.is_file() and \
        not (out / "training.json").exists()
    if ours:
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = None
        ours = isinstance(data, dict) and "averaged_from" in data
    if not ours:
        raise NMTKitError(f"--out {out} already exists and is not an averaged checkpoint: "
                          "choose a new folder (average never replaces other files)")
