"""Configuration as data: YAML files validated into typed pydantic objects, read once at the edge.

Every section forbids unknown keys, so a typo such as `hiden_size` is an error that names the
key path and the file instead of being silently ignored.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nmtkit.errors import NMTKitError
from nmtkit.files import check_input_file


class _Section(BaseModel):
    # no inf/nan: every value must survive the round trip through checkpoint.json
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Section):
    """Where the parallel text is, and which pairs `prepare` keeps."""

    train_src: Path
    train_tgt: Path
    valid_src: Path
    valid_tgt: Path
    test_src: Path | None = None
    test_tgt: Path | None = None
    out_dir: Path = Path("data-bin/default")
    max_len: int = Field(128, ge=1, description="longest kept pair, in subword tokens")
    max_len_ratio: float = Field(3.0, gt=1.0, description="drop pairs whose length ratio exceeds it")


class VocabConfig(_Section):
    """Subword vocabulary, learned with sentencepiece on the training data."""

    type: Literal["bpe", "unigram", "char", "word"] = "bpe"
    size: int = Field(8000, ge=8)
    joint: bool = True
    character_coverage: float = Field(1.0, gt=0.0, le=1.0)
    max_sentences: int = Field(1_000_000, ge=1, description="sample at most this many lines")
    byte_fallback: bool = Field(
        True, description="bpe/unigram: a character outside the vocabulary is spelled as its "
        "UTF-8 bytes (256 byte pieces) instead of <unk>, so emoji and rare characters survive; "
        "needs size >= about 300")
    split_digits: bool = Field(
        True, description="every digit its own piece, so numbers are copied digit by digit")


class RNNConfig(_Section):
    """The classic attentional encoder-decoder (Bahdanau et al. 2015; Luong et al. 2015)."""

    type: Literal["rnn"] = "rnn"
    cell: Literal["lstm", "gru"] = "lstm"
    embed_size: int = Field(256, ge=1, le=65536)
    hidden_size: int = Field(512, ge=1, le=65536)
    encoder_layers: int = Field(2, ge=1, le=64)
    decoder_layers: int = Field(2, ge=1, le=64)
    bidirectional: bool = True
    bridge: Literal["concat", "sum", "mean", "max"] = Field(
        "concat", description="how a bidirectional encoder's two final states become one")
    attention: Literal["none", "dot", "general", "concat", "bahdanau"] = Field(
        "general", description="dot/general/concat: Luong's scores on h_t after the RNN step; "
        "bahdanau: scored with s_{t-1} before it, the context fed into the RNN")
    input_feeding: bool | None = Field(
        None, description="feed h~_{t-1} into the next step (Luong); default on with a Luong "
        "attention, and not available with bahdanau (which feeds the context) or none")
    reverse_source: bool = False
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    share_embeddings: bool = False
    tie_output: bool = False

    @model_validator(mode="after")
    def _input_feeding(self) -> RNNConfig:
        luong = self.attention in ("dot", "general", "concat")
        if self.input_feeding and not luong:
            raise ValueError(
                f"input_feeding: needs a Luong attention (dot, general, concat), not "
                f"{self.attention!r}" + (": Bahdanau attention feeds its context into the RNN "
                                         "already" if self.attention == "bahdanau" else ""))
        if self.input_feeding is None:
            object.__setattr__(self, "input_feeding", luong)
        return self


class TransformerBlocks(_Section):
    """What every stack of Transformer layers shares (the encoder-decoder, the decoder-only
    model and the Vision Transformer)."""

    d_model: int = Field(256, ge=8, le=65536)
    heads: int = Field(4, ge=1, le=1024)
    ff_size: int = Field(1024, ge=1, le=1048576)
    norm: Literal["pre", "post"] = "pre"
    positional: Literal["sinusoidal", "learned", "none"] = "sinusoidal"
    max_positions: int = Field(1024, ge=1, le=1048576)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    attention_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    activation_dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _heads_divide(self) -> TransformerBlocks:
        if self.d_model % self.heads:
            raise ValueError(f"heads: {self.heads} does not divide d_model ({self.d_model}): "
                             "each head gets an equal slice")
        return self


class TransformerConfig(TransformerBlocks):
    """The Transformer (Vaswani et al. 2017)."""

    type: Literal["transformer"] = "transformer"
    encoder_layers: int = Field(3, ge=1, le=256)
    decoder_layers: int = Field(3, ge=1, le=256)
    share_embeddings: bool = False
    tie_output: bool = True


ModelConfig = Annotated[RNNConfig | TransformerConfig, Field(discriminator="type")]


class EarlyStoppingConfig(_Section):
    metric: Literal["bleu", "loss", "ppl"] = "bleu"
    patience: int = Field(0, ge=0, description="validations without improvement; 0 = never stop")


class ScheduledSamplingConfig(_Section):
    """Scheduled sampling (Bengio et al. 2015): the probability eps_i of feeding the gold
    previous token (teacher forcing) instead of one sampled from the model decays with the
    update i, from teacher forcing towards what the model sees at inference:

        linear           eps_i = max(min_ratio, k - c * i)
        exponential      eps_i = max(min_ratio, k ** i)         (k < 1)
        inverse_sigmoid  eps_i = max(min_ratio, k / (k + exp(i / k)))   (k >= 1)
    """

    decay: Literal["linear", "exponential", "inverse_sigmoid"]
    k: float = Field(gt=0.0, description="linear: eps at update 0 (<= 1); exponential: the base "
                     "(< 1); inverse_sigmoid: how many updates it takes to decay (>= 1)")
    c: float = Field(0.0, ge=0.0, description="linear: the decrease of eps per update")
    min_ratio: float = Field(0.0, ge=0.0, le=1.0, description="eps never falls below this")

    @model_validator(mode="after")
    def _k_range(self) -> ScheduledSamplingConfig:
        rules = {"linear": (self.k <= 1.0, "at most 1"), "exponential": (self.k < 1.0, "below 1"),
                 "inverse_sigmoid": (self.k >= 1.0, "at least 1")}
        ok, need = rules[self.decay]
        if not ok:
            raise ValueError(f"k: must be {need} for {self.decay} decay, got {self.k}")
        return self


class TrainingConfig(_Section):
    out_dir: Path = Path("runs/default")
    seed: int = 1234
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    max_tokens: int = Field(4096, ge=1, description="target+source tokens per batch")
    max_epochs: int = Field(10, ge=1)
    max_steps: int = Field(0, ge=0, description="stop after this many updates; 0 = no limit")
    max_minutes: float = Field(0.0, ge=0.0, description="stop after this wall time; 0 = no limit")
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0.0)
    betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = (
        0.9, 0.98)
    weight_decay: float = Field(0.0, ge=0.0)
    schedule: Literal["constant", "noam", "cosine", "plateau"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    min_lr: float = Field(0.0, ge=0.0)
    plateau_factor: float = Field(0.5, gt=0.0, lt=1.0)
    plateau_patience: int = Field(2, ge=0)
    clip_norm: float = Field(1.0, ge=0.0, description="0 = no clipping")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    update_freq: int = Field(1, ge=1, description="batches accumulated per update")
    teacher_forcing_ratio: float = Field(
        1.0, ge=0.0, le=1.0, description="a fixed probability of feeding the gold previous token "
        "(1: teacher forcing); for a decaying one see scheduled_sampling")
    scheduled_sampling: ScheduledSamplingConfig | None = None
    max_bad_steps: int = Field(5, ge=1, description="stop after this many non-finite losses in a row")
    valid_every: int = Field(0, ge=0, description="validate every N updates; 0 = each epoch")
    valid_bleu: bool = True
    bleu_tokenize: Literal["13a", "intl", "char", "zh", "none"] = Field(
        "13a", description="sacreBLEU tokenizer; `char` for targets written without spaces"
    )
    valid_max_sentences: int = Field(0, ge=0, description="BLEU on the first N; 0 = all")
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    keep_best: int = Field(1, ge=1)
    keep_last: int = Field(1, ge=1)
    log_every: int = Field(50, ge=1)
    num_threads: int = Field(0, ge=0, description="torch CPU threads; 0 = torch's default")

    @model_validator(mode="after")
    def _one_way_to_feed(self) -> TrainingConfig:
        if self.scheduled_sampling is not None and self.teacher_forcing_ratio < 1.0:
            raise ValueError("teacher_forcing_ratio: a fixed ratio and scheduled_sampling exclude "
                             "each other; set one")
        return self


class DecodingConfig(_Section):
    """Defaults for translating with a checkpoint (validation uses greedy search and max_len_*)."""

    beam: int = Field(1, ge=1, le=1024, description="beam size; 1 = greedy search")
    length_penalty: float = Field(1.0, ge=0.0, description="GNMT alpha; 0 = none")
    max_len_a: float = Field(1.5, ge=0.0, description="output of at most a * source length + b tokens")
    max_len_b: int = Field(10, ge=0)
    batch_tokens: int = Field(4096, ge=1, description="source tokens per batch, padding included")
    max_input_len: int = Field(
        0, ge=0, description="longest input in subword tokens; 0 = data.max_len (the longest "
        "the model was trained on); the model's positions cap it")
    too_long: Literal["truncate", "skip", "error"] = Field(
        "truncate", description="an input longer than that: cut to the limit (and warn), give "
        "an empty translation (and warn), or stop with an error")


class Config(_Section):
    data: DataConfig
    vocab: VocabConfig = VocabConfig()
    model: ModelConfig = RNNConfig()
    training: TrainingConfig = TrainingConfig()
    decoding: DecodingConfig = DecodingConfig()

    def to_json_dict(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())

    @model_validator(mode="after")
    def _lengths_fit_positions(self) -> Config:
        positions = getattr(self.model, "max_positions", None)
        if positions is not None and getattr(self.model, "positional", "none") != "none" \
                and self.data.max_len + 2 > positions:
            raise ValueError(f"data.max_len: {self.data.max_len} + 2 (for <s> or </s>) exceeds "
                             f"model.max_positions ({positions}): lower data.max_len or raise "
                             "model.max_positions")
        return self


MODEL_CONFIGS: dict[str, type[BaseModel]] = {"rnn": RNNConfig, "transformer": TransformerConfig}
# keys of one model family that the other spells differently
ANALOGUES = {"hidden_size": "d_model", "embed_size": "d_model", "d_model": "hidden_size / embed_size"}


def _section_class(loc: tuple[Any, ...]) -> tuple[type[BaseModel] | None, str | None]:
    """The config class holding the key at loc[-1], and the model type if in `model`."""
    cls: type[BaseModel] = Config
    parts, tag = list(loc[:-1]), None
    while parts:
        name = parts.pop(0)
        if cls is Config and name == "model":
            tag = str(parts.pop(0)) if parts else None
            if tag not in MODEL_CONFIGS:
                return None, None
            cls = MODEL_CONFIGS[tag]
            continue
        field = cls.model_fields.get(str(name))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None, None
        cls = annotation
    return cls, tag


def _unknown_key_hint(loc: tuple[Any, ...]) -> str:
    """'did you mean ...?', or which model family the key belongs to."""
    key = str(loc[-1])
    cls, tag = _section_class(loc)
    if cls is None:
        return ""
    others = [t for t, c in MODEL_CONFIGS.items() if t != tag and key in c.model_fields]
    if tag is not None and others:
        hint = f" (a key of model.type {others[0]}, and this model is {tag}"
        if key in ANALOGUES and ANALOGUES[key].split(" ")[0] in cls.model_fields:
            hint += f": its key is {ANALOGUES[key]}"
        return hint + ")"
    close = difflib.get_close_matches(key, list(cls.model_fields), n=1, cutoff=0.5)
    return f" (did you mean {close[0]}?)" if close else ""


def _format_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        parts = tuple(p for p in e["loc"] if not str(p).startswith("function-"))
        # drop the union tag pydantic inserts ("model.rnn.hidden_size" -> "model.hidden_size")
        shown = [str(p) for i, p in enumerate(parts) if not (i == 1 and parts[0] == "model"
                                                               and p in MODEL_CONFIGS)]
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key" + _unknown_key_hint(parts)
        elif e["type"] == "value_error" and re.match(r"^[\w.]+: ", msg):
            key, msg = msg.split(": ", 1)  # a check across keys names the key it is about
            shown.append(key)
        lines.append(f"{'.'.join(shown) or 'config'}: {msg}")
    return f"{source}: invalid config: " + "; ".join(lines)


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.path=value` strings (values parsed as YAML) to a raw config dict."""
    for item in overrides:
        if "=" not in item:
            raise NMTKitError(f"--set {item!r}: expected KEY.PATH=VALUE")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise NMTKitError(f"--set {key}: {p} is not a section")
            node = child
        node[parts[-1]] = _parse_value(value)
    return raw


def config_from_dict(raw: dict[str, Any], source: str = "<config>") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise NMTKitError(_format_error(err, source)) from None


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice in one mapping is an error (PyYAML would
    silently keep the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise NMTKitError(f"line {line}: key {key!r} is given twice in one section "
                                  f"(first on line {seen[key]})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _yaml_error(path: Path, err: yaml.YAMLError) -> NMTKitError:
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return NMTKitError(f"{path}: not valid YAML{where}: {problem}")


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config; relative data paths are resolved against the current directory."""
    path = check_input_file(Path(path), "config file", allow_stream=True)
    raw_bytes = path.read_bytes()
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw_bytes.count(b"\n", 0, err.start) + 1
        raise NMTKitError(f"{path}: line {line} is not valid UTF-8") from None
    try:
        raw = yaml.load(text, Loader=_StrictLoader) or {}
    except yaml.YAMLError as err:
        raise _yaml_error(path, err) from None
    except NMTKitError as err:
        raise NMTKitError(f"{path}: {err}") from None
    if not isinstance(raw, dict):
        raise NMTKitError(f"{path}: the top level must be a mapping of sections "
                          "(data:, vocab:, model:, training:, decoding:)")
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, str(path))
