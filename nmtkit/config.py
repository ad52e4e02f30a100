"""Configuration as data: YAML files validated into typed pydantic objects, read once at the edge.

Every section forbids unknown keys, so a typo such as `hiden_size` is an error that names the
key path and the file instead of being silently ignored.
"""

from __future__ import annotations

import difflib
import json
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nmtkit.errors import NMTKitError
from nmtkit.files import check_input_file


class Section(BaseModel):
    """A part of a config: unknown keys, inf and nan are errors."""

    # no inf/nan: every value must survive the round trip through checkpoint.json
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, raw: Any) -> Any:
        """YAML reads `yes`/`true` as a boolean, which pydantic would take as the number 1."""
        if isinstance(raw, dict):
            for key, value in raw.items():
                field = cls.model_fields.get(key)
                if isinstance(value, bool) and field is not None:
                    types = _types(field.annotation)
                    if bool not in types and types & {int, float}:
                        raise ValueError(f"{key}: expected a number, got the boolean "
                                         f"{str(value).lower()}")
        return raw


def _types(annotation: Any) -> set[Any]:
    """The plain types an annotation allows (int | None -> {int, NoneType})."""
    args = get_args(annotation)
    return set().union(*(_types(a) for a in args)) if args else {annotation}


S = TypeVar("S", bound=Section)


class DataConfig(Section):
    """Where the text is, and which pairs `prepare` keeps: parallel text (train_src/train_tgt,
    valid_src/valid_tgt), or, for a language model, one language (train, valid)."""

    train_src: Path | None = Field(None, description="training sources, one sentence per line (UTF-8)")
    train_tgt: Path | None = Field(None, description="their translations, line by line")
    valid_src: Path | None = Field(None, description="validation sources (BLEU and loss during training)")
    valid_tgt: Path | None = Field(None, description="validation references")
    test_src: Path | None = Field(None, description="test sources (prepared too; optional)")
    test_tgt: Path | None = Field(None, description="test references")
    train: Path | None = Field(None, description="a language model's training text (instead of "
                               "the parallel files), one sentence per line")
    valid: Path | None = Field(None, description="a language model's validation text")
    test: Path | None = Field(None, description="a language model's test text (optional)")
    out_dir: Path = Field(Path("data-bin/default"), description="the prepared data folder")
    max_len: int = Field(128, ge=1, description="longest kept pair, in subword tokens")
    max_len_ratio: float = Field(3.0, gt=1.0, description="drop pairs whose length ratio exceeds it")

    @property
    def monolingual(self) -> bool:
        """Text of one language (a language model's), not sentence pairs."""
        return self.train is not None

    @model_validator(mode="after")
    def _parallel_or_monolingual(self) -> DataConfig:
        parallel = ("train_src", "train_tgt", "valid_src", "valid_tgt")
        if self.train is None and self.valid is None:
            missing = [k for k in parallel if getattr(self, k) is None]
            if missing:
                raise ValueError(f"{missing[0]}: required (or give data.train and data.valid, one "
                                 "language, for a language model)")
        else:
            if self.train is None or self.valid is None:
                raise ValueError(f"{'train' if self.train is None else 'valid'}: a language model "
                                 "needs both data.train and data.valid")
            given = [k for k in (*parallel, "test_src", "test_tgt") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{given[0]}: give parallel files or one language "
                                 "(data.train, data.valid), not both")
        return self


class VocabConfig(Section):
    """Subword vocabulary, learned with sentencepiece on the training data."""

    type: Literal["bpe", "unigram", "char", "word"] = Field("bpe", description="sentencepiece model type")
    size: int = Field(8000, ge=8, description="pieces per vocabulary; a small corpus may give fewer")
    joint: bool = Field(True, description="one vocabulary for both languages (needed to share embeddings)")
    character_coverage: float = Field(1.0, gt=0.0, le=1.0, description="share of characters kept as "
                                      "pieces; below 1 the rarest are left out (byte fallback spells them)")
    max_sentences: int = Field(1_000_000, ge=1, description="sample at most this many lines")
    byte_fallback: bool = Field(
        True, description="bpe/unigram: a character outside the vocabulary is spelled as its "
        "UTF-8 bytes (256 byte pieces) instead of <unk>, so emoji and rare characters survive; "
        "needs size >= about 300")
    split_digits: bool = Field(
        True, description="every digit its own piece, so numbers are copied digit by digit")


class RNNConfig(Section):
    """The classic attentional encoder-decoder (Bahdanau et al. 2015; Luong et al. 2015)."""

    type: Literal["rnn"] = "rnn"
    cell: Literal["lstm", "gru"] = Field("lstm", description="the recurrent unit")
    embed_size: int = Field(256, ge=1, le=65536, description="word embedding size")
    hidden_size: int = Field(512, ge=1, le=65536, description="RNN state size (per direction)")
    encoder_layers: int = Field(2, ge=1, le=64, description="stacked encoder RNN layers")
    decoder_layers: int = Field(2, ge=1, le=64, description="stacked decoder RNN layers")
    bidirectional: bool = Field(True, description="the encoder reads the source both ways")
    bridge: Literal["concat", "sum", "mean", "max"] = Field(
        "concat", description="how a bidirectional encoder's two final states become one")
    attention: Literal["none", "dot", "general", "concat", "bahdanau"] = Field(
        "general", description="dot/general/concat: Luong's scores on h_t after the RNN step; "
        "bahdanau: scored with s_{t-1} before it, the context fed into the RNN")
    input_feeding: bool | None = Field(
        None, description="feed h~_{t-1} into the next step (Luong); default on with a Luong "
        "attention, and not available with bahdanau (which feeds the context) or none")
    reverse_source: bool = Field(False, description="read the source words backwards, </s> last "
                                 "(Sutskever et al. 2014)")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="on embeddings, between layers, on outputs")
    share_embeddings: bool = Field(False, description="one embedding table for source and target "
                                   "(needs vocab.joint)")
    tie_output: bool = Field(False, description="the target embedding is also the output layer "
                             "(needs embed_size == hidden_size)")

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


class TransformerBlocks(Section):
    """What every stack of Transformer layers shares (the encoder-decoder, the decoder-only
    model and the Vision Transformer)."""

    d_model: int = Field(256, ge=8, le=65536, description="the width of every layer")
    heads: int = Field(4, ge=1, le=1024, description="attention heads; must divide d_model")
    ff_size: int = Field(1024, ge=1, le=1048576, description="the feed-forward network's inner width")
    norm: Literal["pre", "post"] = Field("pre", description="layer norm before each sublayer (pre: "
                                         "stable) or after it (post: the original)")
    positional: Literal["sinusoidal", "learned", "none"] = Field("sinusoidal", description="how "
                                                                 "positions are encoded")
    max_positions: int = Field(1024, ge=1, le=1048576, description="the longest sequence the position "
                               "table covers (learned/sinusoidal)")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="on embeddings and every sublayer's output")
    attention_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="on attention weights")
    activation_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="inside the feed-forward network")
    activation: Literal["relu", "gelu", "swish"] = Field("relu", description="the feed-forward "
                                                         "network's nonlinearity (Marian: swish)")
    sinusoids: Literal["interleaved", "halves"] = Field(
        "interleaved", description="the sinusoidal table's layout: sin and cos alternating per "
        "dimension pair (Vaswani et al.), or all sines then all cosines (Marian, OPUS-MT)")

    @model_validator(mode="after")
    def _heads_divide(self) -> TransformerBlocks:
        if self.d_model % self.heads:
            raise ValueError(f"heads: {self.heads} does not divide d_model ({self.d_model}): "
                             "each head gets an equal slice")
        return self


class TransformerConfig(TransformerBlocks):
    """The Transformer (Vaswani et al. 2017)."""

    type: Literal["transformer"] = "transformer"
    encoder_layers: int = Field(3, ge=1, le=256, description="encoder layers")
    decoder_layers: int = Field(3, ge=1, le=256, description="decoder layers")
    share_embeddings: bool = Field(False, description="one embedding table for source and target "
                                   "(needs vocab.joint)")
    tie_output: bool = Field(True, description="the target embedding is also the output layer")
    scale_embeddings: bool = Field(True, description="multiply token embeddings by sqrt(d_model) "
                                   "before adding positions (off in some imported models)")


class DecoderOnlyConfig(TransformerBlocks):
    """The decoder-only Transformer (GPT): one stack of masked self-attention layers over one
    sequence, a language model, or a translator reading `source </s> target </s>`."""

    type: Literal["decoder_only"] = "decoder_only"
    layers: int = Field(6, ge=1, le=256, description="decoder layers (self-attention, feed-forward)")
    prefix_lm: bool = Field(False, description="translation: the source positions attend to each "
                            "other both ways (a prefix language model); the target stays causal")
    tie_output: bool = Field(True, description="the embedding is also the output layer")


ModelConfig = Annotated[RNNConfig | TransformerConfig | DecoderOnlyConfig, Field(discriminator="type")]


class EarlyStoppingConfig(Section):
    metric: Literal["bleu", "loss", "ppl"] = Field("bleu", description="what `best` and early "
                                                   "stopping follow (loss if BLEU is off)")
    patience: int = Field(0, ge=0, description="validations without improvement; 0 = never stop")
    target: float | None = Field(None, description="stop once the valid metric reaches this (BLEU "
                                 "at least, loss or ppl at most): training ends on the quality "
                                 "reached, however fast the machine; null = no target")


class ScheduledSamplingConfig(Section):
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


class TrainingConfig(Section):
    out_dir: Path = Field(Path("runs/default"), description="the run folder: checkpoints, log, curves")
    seed: int = Field(1234, ge=0, le=2**63 - 1, description="seeds the weights, dropout and the batch order")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when there is one")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "fp32", description="auto: bf16 where the CPU (AVX512-BF16, AMX) or GPU computes it natively, "
        "fp32 elsewhere; bf16: autocast (emulated, slower, on other CPUs); checkpoints stay fp32")
    max_tokens: int = Field(4096, ge=1, description="tokens per batch: sentences x the longer side "
                            "(+1), padding included")
    max_epochs: int = Field(10, ge=1, description="stop after this many passes over the data")
    max_steps: int = Field(0, ge=0, description="stop after this many updates; 0 = no limit")
    max_minutes: float = Field(0.0, ge=0.0, description="stop after this wall time; 0 = no limit")
    optimizer: Literal["adam", "adamw"] = Field("adam", description="adamw: decoupled weight decay")
    lr: float = Field(1e-3, gt=0.0, description="the peak learning rate")
    betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = (
        0.9, 0.98)
    weight_decay: float = Field(0.0, ge=0.0, description="L2 (adam) or decoupled (adamw)")
    schedule: Literal["constant", "noam", "cosine", "plateau"] = Field(
        "constant", description="noam: linear warm-up, then 1/sqrt(update); cosine: warm-up, then "
        "down to min_lr at the last update; plateau: halve when validation stalls")
    warmup_steps: int = Field(0, ge=0, description="updates of linear warm-up to lr")
    min_lr: float = Field(0.0, ge=0.0, description="the floor of cosine and plateau")
    plateau_factor: float = Field(0.5, gt=0.0, lt=1.0, description="plateau: lr multiplier")
    plateau_patience: int = Field(2, ge=0, description="plateau: stalled validations before it acts")
    clip_norm: float = Field(1.0, ge=0.0, description="0 = no clipping")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="probability mass spread over "
                                   "the other words (0.1 is usual)")
    update_freq: int = Field(1, ge=1, description="batches accumulated per update")
    ema_decay: float = Field(
        0.0, ge=0.0, lt=1.0, description="keep an exponential moving average of the weights "
        "(decay per update, e.g. 0.999; warmed up as min(decay, (1+t)/(10+t))): validation and "
        "checkpoints use it; 0 = off")
    teacher_forcing_ratio: float = Field(
        1.0, ge=0.0, le=1.0, description="a fixed probability of feeding the gold previous token "
        "(1: teacher forcing); for a decaying one see scheduled_sampling")
    scheduled_sampling: ScheduledSamplingConfig | None = Field(
        None, description="decaying teacher forcing (Bengio et al. 2015): decay, k, c, min_ratio")
    max_bad_steps: int = Field(5, ge=1, description="stop after this many non-finite losses in a row")
    valid_every: int = Field(0, ge=0, description="validate every N updates; 0 = each epoch")
    valid_bleu: bool = Field(True, description="greedy BLEU at each validation (besides the loss)")
    bleu_tokenize: Literal["13a", "intl", "char", "zh", "none"] = Field(
        "13a", description="sacreBLEU tokenizer; `char` for targets written without spaces"
    )
    valid_max_sentences: int = Field(0, ge=0, description="BLEU on the first N; 0 = all")
    early_stopping: EarlyStoppingConfig = Field(EarlyStoppingConfig(), description="metric, patience")
    keep_best: int = Field(1, ge=1, description="best checkpoints kept")
    keep_last: int = Field(1, ge=1, description="newest checkpoints kept (for averaging: more)")
    log_every: int = Field(50, ge=1, description="updates between log.jsonl rows")
    num_threads: int = Field(0, ge=0, description="torch CPU threads; 0 = torch's default")

    @model_validator(mode="after")
    def _target_is_measured(self) -> TrainingConfig:
        if self.early_stopping.target is not None and self.early_stopping.metric == "bleu" \
                and not self.valid_bleu:
            raise ValueError("early_stopping.target: a BLEU target needs valid_bleu: true "
                             "(validation computes no BLEU without it)")
        return self

    @model_validator(mode="after")
    def _one_way_to_feed(self) -> TrainingConfig:
        if self.scheduled_sampling is not None and self.teacher_forcing_ratio < 1.0:
            raise ValueError("teacher_forcing_ratio: a fixed ratio and scheduled_sampling exclude "
                             "each other; set one")
        return self


class DecodingConfig(Section):
    """Defaults for translating with a checkpoint (validation uses greedy search and max_len_*)."""

    beam: int = Field(1, ge=1, le=1024, description="beam size; 1 = greedy search")
    length_penalty: float = Field(1.0, ge=0.0, description="GNMT alpha; 0 = none")
    max_len_a: float = Field(1.5, ge=0.0, description="output of at most a * source length + b tokens")
    max_len_b: int = Field(10, ge=0, description="see max_len_a")
    batch_tokens: int = Field(4096, ge=1, description="source tokens per batch, padding included")
    max_input_len: int = Field(
        0, ge=0, description="longest input in subword tokens; 0 = data.max_len (the longest "
        "the model was trained on); the model's positions cap it")
    too_long: Literal["truncate", "skip", "error"] = Field(
        "truncate", description="an input longer than that: cut to the limit (and warn), give "
        "an empty translation (and warn), or stop with an error")


class Config(Section):
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
        # a decoder-only model reads source and target in one sequence: twice the length
        one = self.model.type == "decoder_only"
        need = 2 * (self.data.max_len + 1) if one else self.data.max_len + 2
        if positions is not None and getattr(self.model, "positional", "none") != "none" \
                and need > positions:
            raise ValueError(f"data.max_len: {self.data.max_len} needs {need} positions (with </s>"
                             f"{', source and target in one sequence' if one else ''}), more than "
                             f"model.max_positions ({positions}): lower data.max_len or raise "
                             "model.max_positions")
        if self.model.type == "decoder_only" and not self.vocab.joint:
            raise ValueError("vocab.joint: a decoder-only model reads source and target in one "
                             "sequence, so it needs one (joint) vocabulary")
        if self.data.monolingual and self.model.type != "decoder_only":
            raise ValueError(f"data.train: text of one language trains a language model "
                             f"(model.type: decoder_only), not a {self.model.type}")
        return self


MODEL_CONFIGS: dict[str, type[BaseModel]] = {"rnn": RNNConfig, "transformer": TransformerConfig,
                                              "decoder_only": DecoderOnlyConfig}
# keys of one model family that the other spells differently
ANALOGUES = {"hidden_size": "d_model", "embed_size": "d_model", "d_model": "hidden_size / embed_size"}


def _section_class(loc: tuple[Any, ...], root: type[BaseModel]) -> tuple[type[BaseModel] | None, str | None]:
    """The config class holding the key at loc[-1], and the model type if in `model`."""
    cls = root
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


def _unknown_key_hint(loc: tuple[Any, ...], root: type[BaseModel]) -> str:
    """'did you mean ...?', or which model family the key belongs to."""
    key = str(loc[-1])
    cls, tag = _section_class(loc, root)
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


def _format_error(err: ValidationError, source: str, root: type[BaseModel] = Config) -> str:
    lines = []
    for e in err.errors():
        parts = tuple(p for p in e["loc"] if not str(p).startswith("function-"))
        # drop the union tag pydantic inserts ("model.rnn.hidden_size" -> "model.hidden_size")
        shown = [str(p) for i, p in enumerate(parts) if not (i == 1 and parts[0] == "model"
                                                               and p in MODEL_CONFIGS)]
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key" + _unknown_key_hint(parts, root)
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
        if not all(part.strip() for part in parts):
            what = "is empty" if not key.strip() else "has an empty part"
            raise NMTKitError(f"--set {item!r}: the key {what} (expected KEY.PATH=VALUE, such as "
                              "training.lr=0.001)")
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


def validated(cls: type[S], raw: dict[str, Any], source: str) -> S:
    """`cls` made from `raw`, or one NMTKitError naming each wrong key."""
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        raise NMTKitError(_format_error(err, source, cls)) from None


def config_from_dict(raw: dict[str, Any], source: str = "<config>") -> Config:
    return validated(Config, raw, source)


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


def load_config(path: str | Path, overrides: list[str] | None = None,
                model: dict[str, Any] | None = None) -> Config:
    """Read a YAML config; relative data paths are resolved against the current directory.
    model: the model section to use when the file has none (fine-tuning with --init-from takes
    the checkpoint's, so that a user need not copy it out of checkpoint.json)."""
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
    if model is not None and "model" not in raw:
        raw["model"] = model
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, str(path))


# ---- the reference of every key, for docs/reference/config.md ----

README_START = "<!-- config reference: generated by `python -m nmtkit.config`, do not edit -->"
README_END = "<!-- end of config reference -->"


def _allowed(field: Any) -> str:
    annotation = field.annotation
    choices = typing.get_args(annotation) if typing.get_origin(annotation) is Literal else ()
    if choices:
        return " \\| ".join(f"`{c}`" for c in choices)
    bounds = []
    for m in field.metadata:
        for name, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(m, name, None)
            if value is not None:
                bounds.append(f"{sign} {value:,}" if isinstance(value, int) else f"{sign} {value:g}")
    kind = {int: "integer", float: "number", bool: "true/false", Path: "path",
            bool | None: "true/false"}.get(annotation)
    if kind is None and "Path" in str(annotation):
        kind = "path"
    if kind is None and "tuple" in str(annotation):
        kind = "two numbers in [0, 1)"
    return ", ".join(x for x in [kind, *bounds] if x) or ""


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.default
    if isinstance(value, BaseModel):
        return "see below"
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return "[" + ", ".join(f"{v:g}" for v in value) + "]"
    return f"`{json.dumps(value) if isinstance(value, bool) else value}`"


def _table(title: str, cls: type[BaseModel], prefix: str) -> list[str]:
    rows = [f"**{title}**", "", "| key | default | allowed | what |", "|---|---|---|---|"]
    for name, field in cls.model_fields.items():
        if name == "type" and prefix == "model.":
            continue  # the table's title says it
        what = (field.description or "").replace("|", "\\|").replace("<", "&lt;")
        rows.append(f"| `{prefix}{name}` | {_default(field)} | {_allowed(field)} | {what} |")
    return rows + [""]


def config_reference() -> str:
    """Markdown tables of every config key with its default, range and meaning."""
    parts: list[str] = []
    for title, cls, prefix in (
        ("data", DataConfig, "data."), ("vocab", VocabConfig, "vocab."),
        ("model, type: rnn", RNNConfig, "model."), ("model, type: transformer", TransformerConfig, "model."),
        ("model, type: decoder_only", DecoderOnlyConfig, "model."),
        ("training", TrainingConfig, "training."),
        ("training.early_stopping", EarlyStoppingConfig, "training.early_stopping."),
        ("training.scheduled_sampling", ScheduledSamplingConfig, "training.scheduled_sampling."),
        ("decoding", DecodingConfig, "decoding."),
    ):
        parts += _table(title, cls, prefix)
    return "\n".join(parts).rstrip() + "\n"


def update_readme(path: Path) -> bool:
    """Rewrite the reference between the markers in `path`; True if it changed."""
    text = path.read_text(encoding="utf-8")
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    new = text[:start] + "\n" + config_reference() + text[end:]
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":  # python -m nmtkit.config [FILE]: refresh the site's config reference
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/reference/config.md")
    print(f"{target}: {'updated' if update_readme(target) else 'up to date'}")
