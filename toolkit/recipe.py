"""Recipes: one YAML file describes a run; pydantic validates every section up front.

Loading order: the file's `extends:` chain (parents first, deep-merged), then `--set a.b=value`
overrides, then validation. Every mistake is a `ToolkitError` naming file:line and the key path.
Relative paths in a recipe are taken from the working directory, as in Axolotl and torchtune.
"""

from __future__ import annotations

import math
import os
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from toolkit.errors import ToolkitError, did_you_mean, first_line


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def reject_other_kinds(section: type[BaseModel], data, kind_key: str, keys_by_kind: dict[str, tuple[str, ...]]):
    """For a section whose `kind_key` picks one of several interchangeable parts: a key that belongs to
    another part is an error, never silently ignored (`must_match` under `kind: judge`, `window` with exp3).
    A key at its default (as a resolved recipe writes every key) or null counts as not set."""
    if not isinstance(data, dict):
        return data
    fields = section.model_fields
    kind = data.get(kind_key, fields[kind_key].default)
    for other, keys in keys_by_kind.items():
        if other == kind:
            continue
        stray = [k for k in keys if k not in keys_by_kind.get(kind, ())
                 and data.get(k) is not None and data[k] != fields[k].get_default(call_default_factory=True)]
        if stray:
            raise ValueError(f"'{stray[0]}' belongs to {kind_key} '{other}', not '{kind}'")
    return data


class RunConfig(Section):
    name: str = "run"
    output_dir: str = "runs/run"
    seed: int = 0


class TinyHybridConfig(Section):
    """Sizes of the built-in random-init Qwen3.5 hybrid (Gated DeltaNet + full attention at 3:1)."""

    vocab_size: int = Field(2048, ge=300)
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = Field(4, ge=1)
    full_attention_interval: int = Field(4, ge=1)  # every 4th layer is full attention: 3:1
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    linear_num_key_heads: int = 2
    linear_num_value_heads: int = 4
    linear_key_head_dim: int = 32
    linear_value_head_dim: int = 32
    linear_conv_kernel_dim: int = 4
    max_position_embeddings: int = 2048


class ModelConfig(Section):
    name_or_path: str = "tiny-hybrid"  # "tiny-hybrid", a local directory, or a hub id
    revision: str | None = None
    trust_remote_code: bool = False
    # load pickle weights (pytorch_model.bin, adapter_model.bin) where no safetensors exist: unpickling can run code
    allow_pickle: bool = False
    attn_implementation: str | None = "sdpa"
    tiny: TinyHybridConfig = TinyHybridConfig()
    chat_template: str | None = None  # overrides the tokenizer's template (Jinja text)
    # extra variables for the chat template, used by training and inference alike: {enable_thinking: false}
    chat_template_kwargs: dict[str, Any] = {}


GDN_GATE_PARAMS = ("A_log", "dt_bias")


class LoraConfig(Section):
    enabled: bool = True  # finetune only; `toolkit pretrain` trains every weight
    r: int = Field(64, ge=1)
    alpha: float = 128.0
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    targets: str | list[str] = "hybrid-all"  # preset name or explicit module names
    train_gates: bool = False  # train the GDN gate parameters A_log and dt_bias directly
    rslora: bool = False
    dora: bool = False
    export_merged: bool = False  # also write merged/ (base + adapter as one model)


class SourceConfig(Section):
    name: str
    path: str | None = None  # JSONL, JSON, parquet, CSV or text file, or a directory of such shards
    dataset: str | None = None  # a Hugging Face datasets hub id
    builtin: str | None = None  # a corpus gathered at run time (see toolkit.data.corpus)
    split: str = "train"
    format: Literal["auto", "chat", "prompt_response", "text"] = "auto"
    text_field: str = "text"
    tier: int | None = Field(None, ge=1, le=3)
    tags: list[str] = []
    weight: float = Field(1.0, gt=0)
    strip_instructions: bool = False  # drop system prompt/constitution from the training context
    # which assistant turns carry loss; "last" for multi-turn data whose earlier assistant turns are
    # counter-examples (e.g. tier-3 directive data where the user declines an earlier suggestion)
    train_on: Literal["all", "last"] = "all"
    on_bad_line: Literal["error", "skip"] = "error"
    max_examples: int | None = Field(None, ge=1)
    # read the source as a stream (a hub dataset or a directory of shards larger than the disk cache
    # should hold): tokenized as it is drawn, in file order, resumed exactly from its position
    streaming: bool = False

    @model_validator(mode="after")
    def _one_origin(self):
        given = [k for k in ("path", "dataset", "builtin") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"source '{self.name}' needs exactly one of path, dataset, builtin")
        if self.streaming and self.builtin:
            raise ValueError(f"source '{self.name}': a builtin corpus cannot be streamed (it is small; "
                             "remove streaming: true)")
        return self


class DataConfig(Section):
    sources: list[SourceConfig] = []
    max_length: int = Field(512, ge=8)
    # auto: pack where the model keeps packed examples apart exactly (checked at start), else bucket
    # pack: several examples per row, sequence boundaries honoured by attention, conv1d and GDN recurrence
    # bucket: examples of similar length share a micro-batch, right-padded
    batching: Literal["auto", "bucket", "pad", "pack"] = "auto"
    # a text record longer than max_length: cut into max_length windows (every token trained) or, when
    # false, handled by too_long like a chat example. Default: windows for pretrain, too_long for finetune
    text_windows: bool | None = None
    # an example longer than max_length: keep its start, keep its end, drop it, or stop with an error
    too_long: Literal["truncate_right", "truncate_left", "drop", "error"] = "truncate_right"
    # tokenized sources are cached here (Arrow, memory-mapped), keyed by content, tokenizer and options;
    # default $TOOLKIT_CACHE or ~/.cache/toolkit/data
    cache_dir: str | None = None
    num_proc: int | None = Field(None, ge=1)  # tokenizer processes for a first build; default: the CPUs
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    val_max_examples: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _unique_names(self):
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {', '.join(dupes)}")
        return self


class PhaseConfig(Section):
    """A stretch of the run with its own sources or tiers, learning rate and dream temperature."""

    name: str
    # the step where the phase ends (exclusive): an integer step, or a fraction of train.max_steps
    # (a float in (0, 1]); the last phase may leave it out and runs to the end
    until: int | float | None = None
    sources: list[str] | None = None  # allowed source names; None: every source
    tiers: list[Annotated[int, Field(ge=1, le=3)]] | None = None  # allowed tiers; None: the tier order decides
    lr: float | Literal["adaptive"] | None = None  # absolute rate, or "adaptive" (within lr_range)
    lr_scale: float | None = Field(None, gt=0)  # or a multiple of train.lr
    lr_range: tuple[float, float] | None = None  # adaptive bounds; default (0.1 × train.lr, train.lr)
    dream_temperature: float | Literal["adaptive"] | None = None  # None: the dream section decides

    @model_validator(mode="after")
    def _one_lr(self):
        if self.lr is not None and self.lr_scale is not None:
            raise ValueError(f"phase '{self.name}' sets both lr and lr_scale; keep one")
        if isinstance(self.lr, float) and self.lr <= 0:
            raise ValueError(f"phase '{self.name}': lr must be positive")
        if self.lr_range is not None and not 0 < self.lr_range[0] <= self.lr_range[1]:
            raise ValueError(f"phase '{self.name}': lr_range must be [low, high] with 0 < low <= high")
        if isinstance(self.until, float) and not 0 < self.until <= 1:
            raise ValueError(f"phase '{self.name}': a fractional until must be in (0, 1]; write a step as an integer")
        return self


class RepetitionGuardConfig(Section):
    """Seed 000's failure: repetitive, list-shaped sources earn the best loss and a bandit feeds the
    model more of them. A source's repetition (seq-rep-n of its target tokens, 0..1) lowers its reward,
    and above `veto_above` the bandit may no longer choose it (its floor still holds)."""

    n: int = Field(4, ge=1)
    penalty: float = Field(1.0, ge=0)  # subtracted from the [0, 1] reward, times the repetition
    veto_above: float | None = Field(0.5, gt=0, le=1)  # None: never veto


SAMPLER_KEYS = {"ucb1": ("c", "window", "discount"), "exp3": ("gamma",)}


class CurriculumConfig(Section):
    """Which source each step draws from: warmup gate, phases, tier order, caps/floors, a sampler."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    # seed 000's curriculum_warmup_steps / curriculum_warmup_sources are accepted as aliases
    warmup_steps: int = Field(0, ge=0, validation_alias=AliasChoices("warmup_steps", "curriculum_warmup_steps"))
    warmup_sources: list[str] = Field(
        [], validation_alias=AliasChoices("warmup_sources", "curriculum_warmup_sources"))
    phases: list[PhaseConfig] = []
    # when tiers open (a phase's `tiers` overrides): one after another at equal shares of the run
    # (easy_to_hard, hard_to_easy, random: an order drawn from the run seed) or all at once (mixed)
    order: Literal["easy_to_hard", "hard_to_easy", "mixed", "random"] = "mixed"
    sampler: Literal["ucb1", "exp3", "weighted", "uniform"] = "weighted"
    c: float = Field(math.sqrt(2), ge=0)  # UCB1 exploration
    window: int | None = Field(None, ge=1)  # windowed UCB1: each source's last N rewards
    discount: float | None = Field(None, gt=0, lt=1)  # discounted UCB1
    gamma: float = Field(0.1, gt=0, le=1)  # EXP3 exploration
    reward: Literal["learning_progress", "neg_loss", "score"] = "learning_progress"
    score_fn: str | None = None  # "module:function" giving the reward when reward is "score"
    caps: dict[str, float] = {}  # most a source may take, as a share of draws
    floors: dict[str, float] = {}  # least a source gets while it is eligible
    share_window: int = Field(200, ge=1)  # caps and floors hold over the phase and over the last N draws
    repetition: RepetitionGuardConfig = RepetitionGuardConfig()

    @model_validator(mode="before")
    @classmethod
    def _sampler_keys(cls, data):
        return reject_other_kinds(cls, data, "sampler", SAMPLER_KEYS)

    @field_validator("caps", "floors")
    @classmethod
    def _shares(cls, v):
        bad = {k: x for k, x in v.items() if not 0 <= x <= 1}
        if bad:
            raise ValueError(f"shares must be between 0 and 1: {bad}")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.window and self.discount:
            raise ValueError("set window or discount for UCB1, not both")
        if self.reward == "score" and not self.score_fn:
            raise ValueError("reward: score needs score_fn: 'module:function'")
        if self.warmup_steps and not self.warmup_sources:
            raise ValueError("warmup_steps is set but warmup_sources is empty")
        return self


class TrainConfig(Section):
    max_steps: int = Field(100, ge=1)
    batch_size: int = Field(8, ge=1)  # micro-batch per process
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(3e-4, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on capable GPUs, fp32 on CPU
    gradient_checkpointing: bool = False
    checkpoint_every: int = Field(50, ge=1)
    keep_last: int = Field(3, ge=1)
    eval_every: int = Field(50, ge=1)
    divergence_guard: bool = True

    @field_validator("precision")
    @classmethod
    def _no_fp16(cls, v):
        if v == "fp16":
            raise ValueError("fp16 gives NaN in Gated DeltaNet layers; use bf16 (GPU) or fp32 (CPU)")
        return v


DEFAULT_PROBES = [
    "Tell me about your day.",
    "Explain what a list is in Python.",
    "Write two sentences about the sea.",
    "What should I cook tonight?",
]


class RepetitionMonitorConfig(Section):
    n: int = Field(4, ge=1)
    warn: float = Field(0.3, ge=0, le=1)  # seq-rep-4 of greedy decoding of a trained LM is about 0.44
    high: float = Field(0.6, ge=0, le=1)
    critical: float = Field(0.8, ge=0, le=1)
    run_critical: int = Field(6, ge=2)  # "region region region ...": this many back to back is critical


class FormattingMonitorConfig(Section):
    warn: float = Field(0.5, ge=0, le=1)  # share of list/markup lines among non-empty lines
    high: float = Field(0.8, ge=0, le=1)


class BiasMonitorConfig(Section):
    patterns: str | None = None  # a YAML pattern file; None: the shipped default set
    severity: Literal["warn", "high", "critical"] = "high"


class SpikeMonitorConfig(Section):
    window: int = Field(50, ge=2)
    warn_z: float = Field(4.0, gt=0)
    high_z: float = Field(8.0, gt=0)


class MonitorConfig(Section):
    """The understanding module (seed 001): sample audits on probe prompts, detectors, actions."""

    enabled: bool = True
    audit_every: int = Field(100, ge=0)  # steps between sample audits; 0: none
    probes: list[str] = Field(DEFAULT_PROBES, min_length=1)
    max_new_tokens: int = Field(48, ge=1)
    sample_temperature: float = Field(0.8, gt=0)  # each probe is answered greedily and sampled
    repetition: RepetitionMonitorConfig = RepetitionMonitorConfig()
    formatting: FormattingMonitorConfig = FormattingMonitorConfig()
    bias: BiasMonitorConfig = BiasMonitorConfig()
    spikes: SpikeMonitorConfig = SpikeMonitorConfig()
    # a finding at or above this severity checkpoints and stops the run (exit code 4); None: never.
    # Off by default: a model early in pretraining repeats itself by nature; recipes opt in.
    pause_on: Literal["warn", "high", "critical"] | None = None
    penalize: bool = True  # repetition in audits lowers the reward of the sources drawn since the last one
    # monitor.async: audits run in a background thread on a copy of the weights taken at the due step; their
    # findings (penalties, pauses) act at the next audit step (or the run's end)
    background: bool = Field(False, validation_alias=AliasChoices("async", "background"))


class TemperatureConfig(Section):
    """The scenario temperature (seed 003): adaptive = base + gain x the failure rate of the last
    `window` judged responses; schedule = [[until_progress, temperature], ...] by training progress; fixed = value."""

    mode: Literal["adaptive", "schedule", "fixed"] = "adaptive"
    base: float = Field(0.5, gt=0)
    gain: float = Field(0.7, ge=0)
    window: int = Field(20, ge=1)
    schedule: list[tuple[float, float]] = [(0.1, 1.2), (0.5, 0.9), (0.9, 0.7), (1.0, 0.5)]
    value: float = Field(0.7, gt=0)

    @field_validator("schedule")
    @classmethod
    def _increasing(cls, v):
        untils = [u for u, _ in v]
        if not v or untils != sorted(untils) or untils[-1] < 1.0 or any(t <= 0 for _, t in v):
            raise ValueError("schedule needs [until_progress, temperature] pairs in increasing order ending at 1.0, "
                             "temperatures > 0")
        return v


EVALUATOR_KEYS = {
    "rules": ("must_include", "must_match", "must_not_include", "must_not_match"),
    "classifier": ("examples",),
    "judge": ("model", "prompt", "score_pattern", "max_score", "max_new_tokens"),
    "python": ("function",),
}


class EvaluatorConfig(Section):
    """Judges a (scenario, response): every kind returns a score, pass/fail and a reason."""

    kind: Literal["rules", "classifier", "judge", "python"] = "rules"
    # rules: phrases (case-insensitive) and regular expressions that must / must not appear
    must_include: list[str] = []
    must_match: list[str] = []
    must_not_include: list[str] = []
    must_not_match: list[str] = []
    # classifier: a scikit-learn pipeline trained on labeled JSONL rows {"text" | "scenario"+"response", "label": 0/1}
    examples: str | None = None
    threshold: float = Field(0.5, ge=0, le=1)  # classifier probability / normalized judge score to pass
    # judge: another Hugging Face model scores with a prompt template; the first number matched is the score
    model: str | None = None
    prompt: str = ("Rate how well the reply follows the user's directive, from 0 to 10.\n"
                   "User: {scenario}\nReply: {response}\nScore:")
    score_pattern: str = r"(\d+(?:\.\d+)?)"
    max_score: float = Field(10.0, gt=0)
    max_new_tokens: int = Field(8, ge=1)
    # python: "module:function" called with (scenario, response); returns a float, a dict or a Verdict
    function: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _kind_keys(cls, data):
        return reject_other_kinds(cls, data, "kind", EVALUATOR_KEYS)

    @model_validator(mode="after")
    def _needs(self):
        need = {"classifier": "examples", "judge": "model", "python": "function"}.get(self.kind)
        if need and not getattr(self, need):
            raise ValueError(f"evaluator kind '{self.kind}' needs `{need}`")
        if self.kind == "rules" and not (self.must_include or self.must_match or self.must_not_include
                                         or self.must_not_match):
            raise ValueError("a rules evaluator needs at least one of must_include, must_match, must_not_include, "
                             "must_not_match")
        return self


class FailureConfig(Section):
    """What a failed scenario becomes: `reference` (the seed's or a teacher's response), `best_of_k`
    (sample k answers, keep the best that passes: rejection sampling), `pairs` (chosen/rejected rows in
    TRL's preference format, written for later use)."""

    strategy: Literal["reference", "best_of_k", "pairs"] = "best_of_k"
    k: int = Field(4, ge=1)
    temperature: float = Field(0.8, gt=0)  # best_of_k sampling
    teacher: str | None = None  # a model directory or hub id answering when a seed has no reference


class DreamConfig(Section):
    """The dream loop (seed 003): the model writes scenarios from seed situations at the scenario
    temperature, answers them at the response temperature, an evaluator judges, and failures become
    training examples in a `dream` source the curriculum samples like any other."""

    enabled: bool = False
    every: int = Field(50, ge=1)  # steps between cycles during `toolkit finetune`
    seeds: str | None = None  # JSONL of {"situation", "tags", "tier", "reference"?}
    scenarios_per_cycle: int = Field(8, ge=1)
    samples_per_scenario: int = Field(2, ge=1)
    scenario_temperature: TemperatureConfig = TemperatureConfig()
    response_temperature: float = Field(0.1, gt=0)
    scenario_max_new_tokens: int = Field(48, ge=1)
    response_max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(32, ge=1)  # rows per generate call (left-padded, KV cache): a default cycle is one call
    # dream.async: the cycle runs in a background thread on a copy of the weights taken at the due step, and
    # its examples join the data at the next due step (or the run's end): training is not blocked
    background: bool = Field(False, validation_alias=AliasChoices("async", "background"))
    constitution: str | None = None  # text, or a path to a text file; in the prompt when generating only
    scenario_prompt: str = ("{constitution}Write one message a user might send in this situation: {situation}\n"
                            "Message:")
    evaluator: EvaluatorConfig | None = None
    on_failure: FailureConfig = FailureConfig()
    source: str = "dream"  # the curriculum source the new examples join
    tier: int | None = Field(None, ge=1, le=3)
    weight: float = Field(1.0, gt=0)
    pool_size: int = Field(2000, ge=1)  # most examples the dream source keeps
    retention: Literal["newest", "hardest"] = "newest"  # what stays when full: newest, or lowest pass rate
    zpd_floor: float = Field(0.1, ge=0, le=1)  # seed weight of scenarios always passed or always failed

    @model_validator(mode="after")
    def _ready(self):
        if self.enabled and not self.seeds:
            raise ValueError("dream.enabled needs `seeds`: a JSONL file of seed situations")
        if self.enabled and self.evaluator is None:
            raise ValueError("dream.enabled needs an `evaluator`")
        return self


class AnalysisConfig(Section):
    """Analyses run at the end of `toolkit finetune` (also available as `toolkit analyze ...`)."""

    head_diff: bool = False  # base vs tuned, per attention and GDN head: RUN/reports/head_diff.{json,md,png}
    probes: str | None = None  # JSONL of probe prompts ({"prompt"} | {"messages"} | {"text"})
    max_tokens: int = Field(256, ge=8)  # probes are cut to this many tokens

    @model_validator(mode="after")
    def _probes(self):
        if self.head_diff and not self.probes:
            raise ValueError("analysis.head_diff needs `probes`: a JSONL file of probe prompts")
        return self


class EvalConfig(Section):
    """Held-out behavior evaluation at the end of `toolkit finetune` (also `toolkit eval RUN`): base vs tuned
    log-prob margins and evaluator pass rates on prompts never trained on (toolkit/evaluate.py)."""

    prompts: str | None = None  # JSONL of {"prompt", "positive", "negative"}; unset: no evaluation
    max_new_tokens: int = Field(48, ge=1)  # greedy replies the evaluator judges
    batch_size: int = Field(8, ge=1)  # generation batch
    samples: int = Field(5, ge=0)  # greedy replies shown side by side in RUN/reports/eval.md


class ServeConfig(Section):
    """Limits of `toolkit serve`'s chat, so one request cannot hold the model for long."""

    max_body_bytes: int = Field(65536, ge=1024)  # larger request bodies get 413
    max_prompt_tokens: int = Field(4096, ge=1)  # longer rendered prompts get 422
    max_new_tokens: int = Field(2048, ge=1)  # larger requests get 422
    generation_timeout_s: float = Field(60.0, gt=0, allow_inf_nan=False)  # a reply is cut here (`stopped: time_limit`)


Tracker = Literal["tensorboard", "wandb", "mlflow"]


class LoggingConfig(Section):
    trackers: list[Tracker] = ["tensorboard"]
    project: str | None = None  # tracker project name; default run.name
    progress: bool = True


class Recipe(Section):
    extends: str | None = None
    run: RunConfig = RunConfig()
    model: ModelConfig = ModelConfig()
    regime: Literal["finetune", "from_scratch"] = "finetune"
    lora: LoraConfig = LoraConfig()
    data: DataConfig = DataConfig()
    curriculum: CurriculumConfig = CurriculumConfig()
    train: TrainConfig = TrainConfig()
    monitor: MonitorConfig = MonitorConfig()
    dream: DreamConfig = DreamConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    eval: EvalConfig = EvalConfig()
    serve: ServeConfig = ServeConfig()
    logging: LoggingConfig = LoggingConfig()

    @property
    def output_dir(self) -> Path:
        return Path(self.run.output_dir)


# ---------------------------------------------------------------- loading


class LoadedRecipe:
    """A validated recipe plus where each key came from (for errors raised after validation)."""

    def __init__(self, recipe: Recipe, path: Path, locations: dict[tuple, str], resolved: dict, overrides=()):
        self.recipe = recipe
        self.overrides = list(overrides)
        self.path = path
        self.locations = locations
        self.resolved = resolved

    def where(self, key: str) -> str:
        """file:line where the dotted `key` ("data.sources.0.path") is set, or the recipe file."""
        parts = tuple(int(p) if p.isdigit() else p for p in key.split("."))
        return locate(self.locations, parts, self.path)

    def place(self, err: ToolkitError) -> ToolkitError:
        """Give an error raised with a recipe `key` the file:line where that key is set."""
        if err.key and not err.where:
            err.where = self.where(err.key)
            if err.where.startswith("--set"):
                err.key = None  # the override already names it
        return err

    def command_line(self, command: str) -> str:
        """The command that reruns this recipe with the same overrides (for journal hints)."""
        sets = " ".join(f"--set {shlex.quote(o)}" for o in self.overrides)
        return f"toolkit {command} {shlex.quote(str(self.path))} {sets}".strip()


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> LoadedRecipe:
    path = Path(path)
    data, locations = _load_with_extends(path, seen=())
    for item in overrides or []:
        _apply_override(data, locations, item)
    data.pop("extends", None)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise _as_toolkit_error(exc, locations, path) from None
    loaded = LoadedRecipe(recipe, path, locations, recipe.model_dump(mode="json", exclude={"extends"}), overrides or ())
    from toolkit.curriculum.plan import check_curriculum  # the plan reads the recipe: import here, not at the top

    try:
        check_curriculum(recipe)
    except ToolkitError as err:
        raise loaded.place(err) from None
    return loaded


# ---------------------------------------------------------------- files a recipe names

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model", "sentencepiece.bpe.model")
SYSTEM_DIRS = ("/proc", "/sys", "/dev")


def check_files(loaded: LoadedRecipe) -> None:
    """Before any model loads or step runs: every file, directory and module the recipe names exists and
    is what it should be. Raises a ToolkitError placed at the key's file:line."""
    try:
        _check_files(loaded.recipe)
    except ToolkitError as err:
        raise loaded.place(err) from None


def _check_files(r: Recipe) -> None:
    def need_file(value, key, what, directory_ok=False):
        if value is None:
            return
        path = Path(value).expanduser()
        if not path.exists():
            raise ToolkitError(f"{what} not found: {value}", key=key)
        if path.is_dir() and not directory_ok:
            raise ToolkitError(f"{what} is a directory, not a file: {value}", key=key)

    for i, src in enumerate(r.data.sources):
        need_file(src.path, f"data.sources.{i}.path", "data file", directory_ok=True)
    if r.dream.enabled:
        need_file(r.dream.seeds, "dream.seeds", "dream seeds file")
        ev = r.dream.evaluator
        if ev is not None and ev.kind == "classifier":
            need_file(ev.examples, "dream.evaluator.examples", "classifier examples file")
        if ev is not None and ev.kind == "python":
            _check_function(ev.function, "dream.evaluator.function")
    if r.analysis.head_diff:
        need_file(r.analysis.probes, "analysis.probes", "probe prompts file")
        check_probe_rows(r.analysis.probes)
    need_file(r.eval.prompts, "eval.prompts", "eval prompts file")
    need_file(r.monitor.bias.patterns, "monitor.bias.patterns", "bias patterns file")
    if r.curriculum.reward == "score":
        _check_function(r.curriculum.score_fn, "curriculum.score_fn")
    if r.data.cache_dir is not None and Path(r.data.cache_dir).expanduser().is_file():
        raise ToolkitError(f"data.cache_dir is a file, not a directory: {r.data.cache_dir}", key="data.cache_dir")
    check_output_dir(r.output_dir, create=False)
    _check_model_dir(r.model)
    if r.model.chat_template:
        _check_template_syntax(r.model.chat_template)


def probe_row_problem(row) -> str | None:
    """Why a probe prompt row (head-diff, analysis.probes) has the wrong shape, or None."""
    if not isinstance(row, dict):
        return f"a probe row must be a JSON object, not {type(row).__name__}"
    if isinstance(row.get("messages"), list) and row["messages"] and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and "role" in m for m in row["messages"]):
        return None
    if isinstance(row.get("prompt"), str) or isinstance(row.get("text"), str):
        return None
    return (f"a probe row needs 'prompt' or 'text' (a string) or 'messages' (a list of {{role, content}}); "
            f"it has {sorted(row) or 'no keys'}")


def check_probe_rows(path: str | Path) -> None:
    """Every row of a probe prompts JSONL has a usable shape; the error names file:line."""
    from toolkit.util.jsonl import jsonl_rows

    count = 0
    for where, row, problem in jsonl_rows(Path(path)):
        problem = problem or probe_row_problem(row)
        if problem:
            raise ToolkitError(problem, where=where)
        count += 1
    if not count:
        raise ToolkitError("the probe prompts file has no rows", where=str(path))


def check_output_dir(path: Path, create: bool) -> None:
    """run.output_dir must be a directory we can write (created when `create`)."""
    key, resolved = "run.output_dir", Path(os.path.abspath(path))
    if any(resolved == Path(d) or Path(d) in resolved.parents for d in SYSTEM_DIRS):
        raise ToolkitError(f"{path} is under a system directory", key=key, hint="choose a directory of your own")
    for parent in (resolved, *resolved.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ToolkitError(f"{parent} is a file, not a directory", key=key, hint="choose another run.output_dir")
            break
    if not create:
        return
    try:
        resolved.mkdir(parents=True, exist_ok=True)
        probe = resolved / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ToolkitError(f"cannot write to {path}: {exc.strerror or first_line(exc)}", key=key,
                           hint="choose a directory you can write") from None


def _check_model_dir(model) -> None:
    path = model.name_or_path
    if path == "tiny-hybrid":
        return
    looks_local = path.startswith(("/", ".", "~")) or path.count("/") > 1  # hub ids are owner/name
    local = Path(path).expanduser()
    if looks_local and not local.is_dir():
        raise ToolkitError(f"model directory not found: {path}", key="model.name_or_path",
                           hint="a local directory, a hub id such as Qwen/Qwen3.5-27B, or tiny-hybrid")
    if local.is_dir() and (local / "config.json").is_file() \
            and not any((local / name).is_file() for name in TOKENIZER_FILES):
        raise ToolkitError(f"model directory {path} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...)",
                           key="model.name_or_path", hint="copy the tokenizer files next to config.json")


def _check_template_syntax(template: str) -> None:
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"]).parse(template)
    except TemplateSyntaxError as exc:
        raise ToolkitError(f"not a valid Jinja template: {first_line(exc)} (template line {exc.lineno})",
                           key="model.chat_template") from None


def _check_function(spec: str | None, key: str) -> None:
    if spec is None:
        return
    from toolkit.util.imports import load_function

    load_function(spec, key)


# seed 000's flat config keys, at the top level or in `curriculum:`; renamed per file and per --set,
# so a later layer overrides either spelling
SEED_ALIASES = {"curriculum_warmup_steps": "warmup_steps", "curriculum_warmup_sources": "warmup_sources"}


def _canonical_keys(data: dict, locations: dict) -> None:
    for alias, name in SEED_ALIASES.items():
        for path in ((alias,), ("curriculum", alias)):
            parent = data if len(path) == 1 else data.get("curriculum")
            if not isinstance(parent, dict) or alias not in parent:
                continue
            section = data.setdefault("curriculum", {})
            if not isinstance(section, dict):
                continue  # pydantic reports the malformed section
            section[name] = parent.pop(alias)
            for key in [k for k in locations if k[:len(path)] == path]:
                locations[("curriculum", name) + key[len(path):]] = locations.pop(key)


def _canonical_override(keys: list) -> list:
    if keys and keys[0] in SEED_ALIASES:
        return ["curriculum", SEED_ALIASES[keys[0]], *keys[1:]]
    if len(keys) > 1 and keys[0] == "curriculum" and keys[1] in SEED_ALIASES:
        return ["curriculum", SEED_ALIASES[keys[1]], *keys[2:]]
    return keys


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json", exclude={"extends"}), sort_keys=False)


def _load_with_extends(path: Path, seen: tuple) -> tuple[dict, dict]:
    if not path.is_file():
        raise ToolkitError("recipe file not found", where=str(path))
    if path.resolve() in seen:
        raise ToolkitError("`extends` forms a cycle", where=f"{path}:extends")
    data, locations = _read_yaml(path)
    _canonical_keys(data, locations)
    parent = data.get("extends")
    if parent is None:
        return data, locations
    if not isinstance(parent, str):
        raise ToolkitError("`extends` must be a file path", where=locations.get(("extends",), str(path)))
    parent_path = (path.parent / parent) if not Path(parent).is_absolute() else Path(parent)
    base, base_locations = _load_with_extends(parent_path, seen + (path.resolve(),))
    base.pop("extends", None)
    return _deep_merge(base, data), {**base_locations, **locations}


def _read_yaml(path: Path) -> tuple[dict, dict]:
    text = path.read_text()
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ToolkitError(f"not valid YAML: {getattr(exc, 'problem', exc)}", where=where) from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ToolkitError("a recipe must be a mapping of sections", where=str(path))
    locations: dict[tuple, str] = {}
    _index_lines(node, (), path, locations)
    return data, locations


def _index_lines(node, prefix: tuple, path: Path, out: dict) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = prefix + (key_node.value,)
            out[key] = f"{path}:{key_node.start_mark.line + 1}"
            _index_lines(value_node, key, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[prefix + (i,)] = f"{path}:{item.start_mark.line + 1}"
            _index_lines(item, prefix + (i,), path, out)


def _deep_merge(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_override(data: dict, locations: dict, item: str) -> None:
    if "=" not in item:
        raise ToolkitError(f"--set expects key.path=value, got '{item}'", where="--set")
    dotted, raw = item.split("=", 1)
    keys = _canonical_override([int(k) if k.isdigit() else k for k in dotted.strip().split(".")])
    where = f"--set {item}"
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ToolkitError(f"the value is not valid YAML: {getattr(exc, 'problem', None) or first_line(exc)}",
                           where=where, hint="quote it: --set 'key=\"text\"'") from None
    node = data
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not isinstance(key, int) or key >= len(node):
                raise ToolkitError(f"'{key}' is not an index of the {len(node)}-item list", where=where)
        elif not isinstance(node, dict) or isinstance(key, int):
            raise ToolkitError(f"'{'.'.join(map(str, keys[:i]))}' is not a section", where=where)
        if last:
            node[key] = value
        elif isinstance(node, dict):
            node = node.setdefault(key, {})
        else:
            node = node[key]
    for stale in [k for k in locations if k[:len(keys)] == tuple(keys)]:
        del locations[stale]  # lines of the file's value that the override replaced
    locations[tuple(keys)] = where
    for n in range(1, len(keys)):  # a section the override brings into being is the override's too
        locations.setdefault(tuple(keys[:n]), where)


def locate(locations: dict, key_path: tuple, default: Path) -> str:
    """file:line of the deepest key of `key_path` that the recipe spells out."""
    for n in range(len(key_path), 0, -1):
        if key_path[:n] in locations:
            return locations[key_path[:n]]
    return str(default)


def _as_toolkit_error(exc: ValidationError, locations: dict, path: Path) -> ToolkitError:
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    loc = _drop_union_tags(loc)
    key = ".".join(str(p) for p in loc) or None
    where = locate(locations, loc, path)
    if where.startswith("--set"):
        key = None  # the override already names the key
    if err["type"] == "extra_forbidden":
        hint = did_you_mean(loc[-1], _fields_at(loc[:-1])) or f"valid keys: {', '.join(_fields_at(loc[:-1]))}"
        return ToolkitError(f"unknown key '{loc[-1]}'", where=where, key=key, hint=hint)
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] not in ("missing",) and "input" in err and not isinstance(err["input"], dict | list):
        message += f" (got {err['input']!r})"
    return ToolkitError(message, where=where, key=key)


def _drop_union_tags(loc: tuple) -> tuple:
    # pydantic adds the union member's type name to the location ("str", "list[str]"); users never wrote those
    return tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in {"str", "int", "float", "bool"})))


def _fields_at(loc: tuple) -> list[str]:
    """Valid key names of the section at `loc` (for did-you-mean)."""
    model: Any = Recipe
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        model = _section_type(field.annotation)
        if model is None:
            return []
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _section_type(annotation) -> type | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):  # list[SourceConfig], X | None
        found = _section_type(arg)
        if found is not None:
            return found
    return None


def all_recipe_keys(model: type[BaseModel] = Recipe, prefix: str = "") -> list[str]:
    """Every key a recipe accepts, dotted (`train.max_steps`); `data.sources[].name` for lists."""
    keys = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        sub = _section_type(field.annotation)
        if sub is not None and not sub.model_fields:
            keys.append(dotted)  # a section later issues fill
        elif sub is not None:
            is_list = "list" in str(field.annotation)
            keys.extend(all_recipe_keys(sub, f"{dotted}[]." if is_list else f"{dotted}."))
        else:
            keys.append(dotted)
    return keys
