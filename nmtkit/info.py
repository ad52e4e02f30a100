"""`nmtkit info`: what a run folder or a checkpoint holds, in a few lines (or as JSON).

Everything comes from the JSON files beside the weights (checkpoint.json, training.json,
log.jsonl): no weights are loaded, so it is instant on any checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from nmtkit.checkpoint import read_json
from nmtkit.config import config_from_dict
from nmtkit.errors import NMTKitError
from nmtkit.model import build_model, count_parameters
from nmtkit.training import list_checkpoints, load_log


def describe(path: Path) -> dict[str, Any]:
    """The facts `nmtkit info` shows, for a run folder or a checkpoint folder."""
    path = Path(path)
    if not path.exists():
        raise NMTKitError(f"{path}: not found (give a run folder or a checkpoint folder)")
    run = path if (path / "last").exists() or (path / "log.jsonl").is_file() else None
    ckpt = path if (path / "checkpoint.json").is_file() else None
    if run is not None and ckpt is None:
        links = [run / link for link in ("last", "best")]
        ckpt = next((p for p in links if (p / "checkpoint.json").is_file()), None)
    if ckpt is None:
        raise NMTKitError(f"{path} is neither a run folder nor a checkpoint")
    meta = read_json(ckpt / "checkpoint.json")
    config = config_from_dict(meta.get("config", {}), str(ckpt / "checkpoint.json"))
    vocab = read_json(ckpt / "vocab.json")
    _check_weights(ckpt / "model.safetensors")
    with torch.device("meta"):
        params = count_parameters(build_model(config.model, len(vocab["src"]), len(vocab["tgt"])))
    facts: dict[str, Any] = {
        "path": str(path),
        "kind": "run" if run is not None and path == run else "checkpoint",
        "model": config.model.model_dump(mode="json"),
        "parameters": params,
        "vocab": {**config.vocab.model_dump(mode="json"), "src_size": len(vocab["src"]),
                  "tgt_size": len(vocab["tgt"])},
        "step": meta.get("step"),
        "epoch": meta.get("epoch"),
        "train_minutes": round(meta.get("train_seconds", 0.0) / 60, 1) if "train_seconds" in meta else None,
        "metrics": meta.get("metrics"),
        "config": config.to_json_dict(),
    }
    if "averaged_from" in meta:
        facts["averaged_from"] = meta["averaged_from"]
    if "init_from" in meta:
        facts["init_from"] = meta["init_from"]
    training = ckpt / "training.json"
    if training.is_file():
        facts["stopped"] = read_json(training).get("trainer", {}).get("stopped") or None
    if run is not None and path == run:
        facts["checkpoints"] = [p.name for p in list_checkpoints(run)]
        best = run / "best"
        if (best / "checkpoint.json").is_file():
            best_meta = read_json(best / "checkpoint.json")
            facts["best"] = {"path": str(best), "checkpoint": best.resolve().name,
                             "step": best_meta.get("step"), "metrics": best_meta.get("metrics")}
        if (run / "log.jsonl").is_file():
            valid = [r for r in load_log(run) if r.get("type") == "valid"]
            facts["validations"] = len(valid)
    return facts


def _check_weights(path: Path) -> None:
    """The weights file's header and size (reading no tensor): info must not call a damaged
    checkpoint fine."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            if not list(f.keys()):
                raise NMTKitError(f"{path}: holds no weights (a damaged checkpoint)")
    except (SafetensorError, OSError, ValueError) as err:
        raise NMTKitError(f"{path}: corrupted or truncated safetensors file ({err})") from None


def _model_line(model: dict[str, Any]) -> str:
    if model["type"] == "rnn":
        direction = "bidirectional " if model["bidirectional"] else ""
        feeding = ", input feeding" if model.get("input_feeding") else ""
        return (f"rnn: {direction}{model['cell'].upper()} {model['encoder_layers']}+"
                f"{model['decoder_layers']} layers, hidden {model['hidden_size']}, embeddings "
                f"{model['embed_size']}, {model['attention']} attention{feeding}")
    layers = (f"{model['encoder_layers']}+{model['decoder_layers']}" if "encoder_layers" in model
              else str(model.get("layers")))
    return (f"{model['type']}: {layers} layers, d_model {model['d_model']}, {model['heads']} heads, "
            f"ff {model['ff_size']}, {model['norm']}-norm, {model['positional']} positions")


def _metrics(m: dict[str, Any] | None) -> str:
    if not m:
        return "no validation"
    parts = [f"BLEU {m['bleu']:.2f}"] if m.get("bleu") is not None else []
    parts += [f"loss {m['loss']:.3f}", f"ppl {m['ppl']:.2f}"]
    return "valid " + ", ".join(parts)


def render(facts: dict[str, Any]) -> str:
    """The facts as a few aligned lines."""
    v = facts["vocab"]
    extras = [x for x, on in (("byte fallback", v.get("byte_fallback")),
                              ("digits split", v.get("split_digits"))) if on]
    sizes = f"{v['src_size']}" if v["joint"] else f"{v['src_size']} source / {v['tgt_size']} target"
    lines = [
        f"{facts['path']}  ({facts['kind']})",
        ("model", f"{_model_line(facts['model'])}; {facts['parameters']:,} parameters"),
        ("vocabulary", f"{v['type']}, {'joint, ' if v['joint'] else ''}{sizes} pieces"
                       + (f" ({', '.join(extras)})" if extras else "")),
    ]
    trained = f"{facts['step']} updates, epoch {facts['epoch']}"
    if facts.get("train_minutes") is not None:
        trained += f", {facts['train_minutes']} min of training"
    if facts.get("stopped"):
        trained += f" (stopped: {facts['stopped']})"
    lines.append(("trained", trained))
    if "best" in facts:
        b = facts["best"]
        lines.append(("best", f"update {b['step']}: {_metrics(b['metrics'])} -> {b['path']}"))
    else:
        lines.append(("scores", _metrics(facts.get("metrics"))))
    if facts.get("checkpoints"):
        lines.append(("checkpoints", ", ".join(facts["checkpoints"])))
    for key in ("averaged_from", "init_from"):
        if key in facts:
            value = facts[key]
            lines.append((key.replace("_", " "), ", ".join(value) if isinstance(value, list) else value))
    c = facts["config"]
    t, d = c["training"], c["data"]
    text = f"{d['train_src']} -> {d['train_tgt']}" if d.get("train_src") else f"{d['train']} (one language)"
    lines.append(("data", f"{text} (max_len {d['max_len']})"))
    lines.append(("training", f"{t['optimizer']} lr {t['lr']:g}, {t['schedule']} schedule "
                              f"(warm-up {t['warmup_steps']}), max_tokens {t['max_tokens']}, "
                              f"label_smoothing {t['label_smoothing']}, {t['precision']}"))
    dec = c["decoding"]
    lines.append(("decoding", f"beam {dec['beam']}, length_penalty {dec['length_penalty']}"))
    width = max(len(x[0]) for x in lines[1:])
    return "\n".join([lines[0]] + [f"  {k:<{width}}  {val}" for k, val in lines[1:]])


def info_json(facts: dict[str, Any]) -> str:
    return json.dumps(facts, indent=2, ensure_ascii=False)
