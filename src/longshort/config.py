"""The pipeline's configuration: one YAML recipe, validated up front (DESIGN §8, issue 6).

A recipe (`configs/*.yaml`) has one section per stage, and each section *is* that stage's own
config class (the thoughts, training and dialogue areas define them next to their code), so a
recipe can never hold a second copy of a default. The pipeline adds only what ties the stages
together: which models, which data, which evaluation sets, which baseline.

`load_config(path)` reads the YAML and checks everything before any work starts: unknown keys,
wrong types and out-of-range values (pydantic, `extra="forbid"` throughout), and files that do
not exist. Every error is one line naming the YAML file and the field, e.g.
`configs/x.yaml: field 'score.rollouts': Input should be greater than or equal to 1`.
Relative paths in a recipe are resolved against the current working directory (where the
`longshort` command runs, as for every other path on the command line).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from longshort.dialogue.collab import CollabConfig
from longshort.errors import InputError, LongshortError
from longshort.io import compose_yaml, read_yaml
from longshort.io.fields import check_url
from longshort.models import spec_problem
from longshort.thoughts.chunking import ChunkConfig
from longshort.thoughts.coldstart import ColdStartConfig
from longshort.thoughts.importance import ImportanceConfig
from longshort.thoughts.synthetic import SynthConfig
from longshort.training.rl_config import RLRunConfig
from longshort.training.sft import SFTRunConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelsConfig(_Strict):
    """Which models play which part."""

    base: str = Field("smollm2-135m", description="starting point of both roles' SFT; the embedded "
                      "model by default because it runs anywhere without downloads")
    scorer: str | None = Field(None, description="model that scores importance; None = `base` (the paper "
                               "scores with the model that will learn the split); `baseline` = the pipeline's own "
                               "long-CoT baseline, fine-tuned on the traces first (a model that knows the task "
                               "sees what each thought adds); or any model spec")
    pair_init: Literal["base", "baseline"] = Field("base", description="what both roles' cold-start SFT "
                                                   "starts from: `base`, or the pipeline's long-CoT `baseline` "
                                                   "(fine-tuned on the whole traces first; it already knows the "
                                                   "task, so the split is learnt in fewer steps)")
    engine: Literal["transformers", "hf", "vllm", "openai"] = Field(
        "transformers", description="generation engine for scoring and evaluation; transformers "
        "works on CPU, vllm is the fast choice on GPUs")
    base_url: str | None = Field(None, description="server URL for engine 'openai' (e.g. a vllm serve); "
                                 "None = each role's own URL below (no default server: one must be named)")
    long_base_url: str | None = Field(None, description="the long model's own server (engine 'openai'); None "
                                      "= base_url. Also serves the stages' own work (scoring, llm chunking and "
                                      "compression) when base_url is not set")
    short_base_url: str | None = Field(None, description="the short model's own server (engine 'openai'); "
                                       "None = base_url (one server for both roles)")
    engine_options: dict[str, Any] = Field(default_factory=dict, description="extra keyword "
                                           "arguments for the engine (e.g. batch_size, gpu_memory_utilization; "
                                           "vllm: long_/short_gpu_memory_utilization for the pair)")

    @model_validator(mode="after")
    def _check_engine(self) -> ModelsConfig:
        urls = ("base_url", "long_base_url", "short_base_url")
        for u in urls:
            if getattr(self, u) is not None:
                try:
                    check_url(getattr(self, u), field=f"models.{u}")
                except InputError as exc:
                    raise ValueError(str(exc)) from None
        if self.engine != "openai":
            given = [u for u in urls if getattr(self, u)]
            if given:
                raise ValueError(f"models.{given[0]} is only used with engine 'openai' (engine is {self.engine!r})")
        else:  # the pipeline always evaluates the pair, so both roles need a server
            missing = [f"models.{r}_base_url" for r in ("long", "short")
                       if not (getattr(self, f"{r}_base_url") or self.base_url)]
            if missing:
                raise ValueError(f"engine 'openai' needs models.base_url, or a server per role: "
                                 f"{' and '.join(missing)} missing")
        if self.engine == "vllm":  # the eval stage runs two models on one GPU: refuse a split that cannot fit
            from longshort.engines.vllm import pair_options

            try:
                pair_options(self.engine_options, two=True)
            except LongshortError as exc:
                raise ValueError(f"models.engine_options: {exc}") from None
        return self


class EvalSet(_Strict):
    """One evaluation set: the held-out synthetic problems, a named benchmark or a JSONL file."""

    name: str = Field(description="'synthetic' (held-out planted-importance problems), a benchmark "
                      "name (gsm8k, math500, ...) or a JSONL path with problem/answer")
    limit: int | None = Field(None, ge=1, description="first N problems; None = all")


class DataConfig(_Strict):
    """Where the long-CoT training traces and the evaluation problems come from."""

    source: Literal["synthetic", "file"] = Field("synthetic", description="planted-importance task "
                                                 "(known truth, measurable) or a long-CoT JSONL file")
    train: int = Field(64, ge=1, le=1_000_000, description="synthetic traces to generate (source "
                       "'synthetic'), or the most traces read from the file (at most a million: a larger "
                       "number is a typo, and the synthetic task would fill the disk first)")
    synthetic: SynthConfig = Field(default_factory=SynthConfig, description="knobs of the synthetic task")
    traces: Path | None = Field(None, description="long-CoT JSONL (source 'file'): "
                                "{id?, problem, answer, response}")
    skip_bad: bool = Field(False, description="skip and count bad trace records instead of stopping")
    decontaminate: bool = Field(True, description="drop training traces whose problem (normalised text) is in "
                                "an evaluation set or in `decontaminate_against`, and count them")
    decontaminate_against: list[str] = Field(default_factory=list, description="more benchmarks (names or "
                                             "JSONL paths) no training problem may come from, e.g. [aime24, math500]")
    data_dir: Path | None = Field(None, description="benchmark directory; None = $LONGSHORT_DATA or "
                                  "../shared/benchmarks")
    eval: list[EvalSet] = Field(default_factory=lambda: [EvalSet(name="synthetic", limit=32)],
                                description="evaluation sets, each scored for every system")

    @model_validator(mode="after")
    def _file_needs_traces(self) -> DataConfig:
        if self.source == "file" and self.traces is None:
            raise ValueError("source 'file' needs data.traces (a long-CoT JSONL path)")
        if not self.eval:
            raise ValueError("data.eval needs at least one evaluation set")
        return self


class EvalStageConfig(_Strict):
    """How the tuned pair and the baselines are evaluated."""

    samples: int = Field(1, ge=1, description="samples per problem for Pass@1 (the paper uses several; "
                         "1 keeps CPU runs short)")
    collab: CollabConfig = Field(default_factory=CollabConfig, description="solver settings for every system")
    baseline: Literal["distill", "base"] = Field(
        "distill", description="the long-CoT baseline: 'distill' = the base model fine-tuned on the full "
        "traces (the analogue of the paper's R1-Distill baseline: same data, no split), 'base' = the "
        "untuned base model answering in long CoT")
    systems: list[Literal["pair", "baseline", "short", "pair_sft"]] = Field(
        default_factory=lambda: ["pair", "baseline", "short"],
        description="what to evaluate: the tuned pair, the long-CoT baseline, the short model alone, "
        "and optionally the pair after SFT only (before RL)")

    @model_validator(mode="after")
    def _needs_baseline(self) -> EvalStageConfig:
        if "pair" not in self.systems or "baseline" not in self.systems:
            raise ValueError("eval.systems must include 'pair' and 'baseline' (AES compares them)")
        return self


class LaunchConfig(_Strict):
    """How the stages run: each stage that loads models in a child process of its own (or all in this
    process), training in that process (CPU, one GPU) or under `accelerate launch`."""

    stage_processes: bool = Field(True, description="run each stage that loads models (chunk, baseline, score, "
                                  "coldstart, sft, rl, eval) in a fresh child process, so that what one stage "
                                  "leaves in memory (allocator arenas, cached kernels) is not under the next "
                                  "stage's peak; false = all in this process (debuggers, profilers)")

    accelerate_config: Path | None = Field(None, description="accelerate config (e.g. configs/accelerate/"
                                           "zero3.yaml): SFT and RL then run as `accelerate launch ... -m "
                                           "longshort.cli sft|rl`; None = in-process, enough for one device")
    num_processes: int | None = Field(None, ge=1, description="processes (GPUs) for accelerate launch; "
                                      "None = what the accelerate config says")


class QualityConfig(_Strict):
    """Extra measurements of the score stage on planted traces (they cost scoring time)."""

    gold_boundaries: bool = Field(True, description="also score the planted traces with their gold "
                                  "boundaries, separating chunking error from scoring error")
    gold_traces: int | None = Field(None, ge=1, description="score only the first N planted traces with "
                                    "the gold boundaries (None = all)")
    compare_traces: int = Field(0, ge=0, description="score the first N traces with a second estimator too "
                                "(`compare_estimator`), for its AUROC and the rank agreement; 0 = off (rollouts "
                                "are costly on CPU)")
    compare_estimator: Literal["rollout", "forced", "ablation"] | None = Field(
        None, description="the second estimator; None = rollout, or forced when the main one is rollout")


class ReportConfig(_Strict):
    """What the report shows."""

    example_dialogues: int = Field(1, ge=0, description="example dialogues printed in report.md")
    max_example_chars: int = Field(4000, ge=200, description="cut long example turns to this many characters")


# ----------------------------------------------------------------------------- stage templates


def _template(cls: type[BaseModel], drop: tuple[str, ...], name: str, doc: str) -> type[BaseModel]:
    """`cls` without the fields the pipeline fills in itself (paths, role, models): the recipe
    sets only hyperparameters, with the defaults and help texts of `cls` itself."""
    fields = {k: (f.annotation, f) for k, f in cls.model_fields.items() if k not in drop}
    model = create_model(name, __config__=ConfigDict(extra="forbid"), __doc__=doc, **fields)
    return model


# filled in by the pipeline: paths, roles, starting models, resume, and the seed (the run's seed)
SFT_RUN_FIELDS = ("role", "data", "model", "out", "resume", "seed")
RL_RUN_FIELDS = ("long", "short", "data", "out", "resume", "seed")
SFTSettings = _template(SFTRunConfig, SFT_RUN_FIELDS, "SFTSettings",
                        "Cold-start SFT hyperparameters (`training.sft.SFTRunConfig` without the paths, "
                        "role, model and seed, which the pipeline fills in); used for both roles and the "
                        "distilled baseline.")
RLSettings = _template(RLRunConfig, RL_RUN_FIELDS, "RLSettings",
                       "Multi-turn RL hyperparameters (`training.rl.RLRunConfig` without the paths, "
                       "starting models and seed, which the pipeline fills in).")


def sft_run_config(config: PipelineConfig, *, role: str, data: str, model: str, out: str,
                   baseline: bool = False) -> SFTRunConfig:
    """The SFT stage's own config for one model of this run (`baseline`: the long-CoT baseline's)."""
    settings = config.baseline_sft if baseline and config.baseline_sft is not None else config.sft
    values = settings.model_dump()
    if values.get("push_to_hub"):  # one section trains several models: each gets its own repository
        values["hub_model_id"] = (values.get("hub_model_id") or config.name) + ("-baseline" if baseline else f"-sft-{role}")
    return SFTRunConfig(role=role, data=data, model=model, out=out, resume=True, seed=config.seed, **values)


def rl_run_config(config: PipelineConfig, *, long: str, short: str, data: str, out: str) -> RLRunConfig:
    """The RL stage's own config for this run."""
    values = config.rl.model_dump()
    if values.get("push_to_hub") and not values.get("hub_model_id"):
        values["hub_model_id"] = config.name  # the roles are pushed as <name>-long / <name>-short
    return RLRunConfig(long=long, short=short, data=data, out=out, resume=True, seed=config.seed, **values)


# ----------------------------------------------------------------------------- the recipe


class PipelineConfig(_Strict):
    """A whole pipeline run: `longshort pipeline RECIPE.yaml` (see docs/pipeline.md)."""

    name: str = Field("run", description="run name; the default output directory is runs/<name>")
    seed: int = Field(0, description="global seed (Python, NumPy, torch) and the base of every stage's seed")
    models: ModelsConfig = Field(default_factory=ModelsConfig, description="which models")
    launch: LaunchConfig = Field(default_factory=LaunchConfig, description="how training stages are launched")
    data: DataConfig = Field(default_factory=DataConfig, description="training traces and evaluation sets")
    chunk: ChunkConfig = Field(default_factory=ChunkConfig, description="splitting traces into thoughts")
    score: ImportanceConfig = Field(default_factory=ImportanceConfig, description="Monte Carlo importance")
    coldstart: ColdStartConfig = Field(default_factory=ColdStartConfig,
                                       description="assigning thoughts to roles, building the SFT sets")
    sft: SFTSettings = Field(default_factory=SFTSettings, description="cold-start SFT (both roles)")
    baseline_sft: SFTSettings | None = Field(None, description="SFT of the long-CoT baseline on the whole "
                                             "traces; None = the `sft` section (set it when the pair starts "
                                             "from the baseline and needs fewer epochs than the baseline)")
    rl: RLSettings = Field(default_factory=RLSettings, description="alternating multi-turn RL")
    eval: EvalStageConfig = Field(default_factory=EvalStageConfig, description="evaluation of the systems")
    quality: QualityConfig = Field(default_factory=QualityConfig, description="extra quality measurements")
    report: ReportConfig = Field(default_factory=ReportConfig, description="the report")
    stop_after: str | None = Field(None, description="end the run after this stage (data, chunk, baseline, "
                                   "score, ...); None = run every stage")

    @model_validator(mode="after")
    def _check_templates(self) -> PipelineConfig:
        # build the stages' own run configs once, so their cross-field rules fail now, not hours in
        sft_run_config(self, role="long", data="-", model=self.models.base, out="-")
        rl_run_config(self, long="-", short="-", data="-", out="-")
        return self


def load_config(path: str | os.PathLike) -> PipelineConfig:
    """Read and validate a recipe; `InputError` naming the file and field on any problem."""
    p = Path(path)
    if not p.exists():
        raise InputError("config file not found", path=str(p))
    if p.is_dir():
        raise InputError("is a directory, expected a YAML recipe", path=str(p))
    # no aliases (alias bombs), capped depth and size, a key given twice is an error
    raw = read_yaml(p)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(f"expected a mapping of sections at the top, got {type(raw).__name__}", path=str(p))
    unknown = _unknown_key(PipelineConfig, raw, ())
    if unknown is not None:
        raise InputError("unknown key (check the spelling; see docs/pipeline.md for the accepted keys)",
                         path=str(p), line=_line_of(p, unknown), field=".".join(str(x) for x in unknown))
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err.get("loc", ()))
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            msg = "unknown key (check the spelling; see docs/pipeline.md for the accepted keys)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise InputError(f"{msg}{more}", path=str(p), line=_line_of(p, err.get("loc", ())),
                         field=loc or None) from None
    _check_paths(config, p)
    return config


def _model_classes(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models inside an annotation (X, X | None, list[X], dict[str, X])."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [c for arg in get_args(annotation) for c in _model_classes(arg)]


def _unknown_key(cls: type[BaseModel], data: Any, loc: tuple) -> tuple | None:
    """The location of the first key that `cls` does not define, recursing into nested models.
    The stage configs of other areas may ignore extra keys; a recipe must not (typos would be
    silently dropped), so this check covers every level."""
    if not isinstance(data, dict):
        return None
    fields = cls.model_fields
    names = {f.alias or k: k for k, f in fields.items()} | {k: k for k in fields}
    for key, value in data.items():
        if key not in names:
            return (*loc, key)
        annotation = fields[names[key]].annotation
        for sub in _model_classes(annotation):
            items = value if isinstance(value, list) and get_origin(annotation) is not dict else [value]
            for i, item in enumerate(items):
                where = (*loc, key, i) if isinstance(value, list) else (*loc, key)
                found = _unknown_key(sub, item, where)
                if found is not None:
                    return found
    return None


def _line_of(path: Path, loc: tuple) -> int | None:
    """Best effort: the line of the YAML key at `loc` (the last string key found in order)."""
    try:
        node = compose_yaml(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, InputError, UnicodeDecodeError, OSError):
        return None
    line = None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(key):
                    line, node = k.start_mark.line + 1, v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _looks_local(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.endswith(".gguf")


def _check_paths(config: PipelineConfig, path: Path) -> None:
    def missing(field: str, value: str | os.PathLike, what: str) -> InputError:
        loc = tuple(int(x) if x.isdigit() else x for x in field.split("."))
        return InputError(f"{what} not found: {value}", path=str(path), line=_line_of(path, loc), field=field)

    d = config.data
    if d.source == "file" and d.traces is not None and not Path(d.traces).expanduser().is_file():
        raise missing("data.traces", d.traces, "trace file")
    if d.data_dir is not None and not Path(d.data_dir).expanduser().is_dir():
        raise missing("data.data_dir", d.data_dir, "benchmark directory")
    for i, ev in enumerate(d.eval):
        if ev.name.endswith((".jsonl", ".jsonl.gz", ".json")) and not Path(ev.name).expanduser().is_file():
            raise missing(f"data.eval.{i}.name", ev.name, "evaluation file")
        why = _eval_set_problem(ev.name)
        if why:
            loc = ("data", "eval", i, "name")
            raise InputError(why, path=str(path), line=_line_of(path, loc), field=f"data.eval.{i}.name")
    acc = config.launch.accelerate_config
    if acc is not None and not Path(acc).expanduser().is_file():
        raise missing("launch.accelerate_config", acc, "accelerate config")
    for field in ("base", "scorer"):
        spec = getattr(config.models, field)
        if field == "scorer" and spec == "baseline":  # the run's own long-CoT baseline, trained first
            continue
        if spec and _looks_local(spec) and not Path(spec).expanduser().exists():
            raise missing(f"models.{field}", spec, "model path")
        why = spec_problem(spec) if spec else None
        if why:
            raise InputError(why, path=str(path), line=_line_of(path, ("models", field)), field=f"models.{field}")


def _eval_set_problem(name: str) -> str | None:
    """Why an evaluation set name names nothing (None when it is fine): 'synthetic', a registered
    benchmark, a hub dataset or an existing file."""
    from longshort.evaluation.benchmarks import benchmark_spec, known_benchmarks

    if name == "synthetic" or benchmark_spec(name) is not None or name.startswith("hub:"):
        return None
    p = Path(name).expanduser()
    if p.is_file():
        return None
    if p.is_dir():
        return f"{name!r} is a directory, expected a JSONL file of problems"
    return (f"unknown evaluation set {name!r}; expected 'synthetic', a benchmark "
            f"({', '.join(known_benchmarks())}), hub:DATASET[:CONFIG][@SPLIT] or an existing JSONL path")


def dump_config(config: PipelineConfig) -> str:
    """The resolved config as YAML (every default written out), for the run directory."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
