"""The whole Long⊗Short pipeline in one command (DESIGN §1, §8).

    data → chunk → baseline → score → coldstart → sft (long, short) → rl → eval → report

`run_pipeline(config_path, out_dir, resume)` validates the recipe (`longshort.config`), then runs
each stage as a call into that stage's library function, with its outputs in its own
subdirectory of the run directory:

    OUT/config.yaml       the resolved config (every default written out)
    OUT/manifest.json     the environment manifest (`longshort.rundir`), stage timings, peak memory
    OUT/pipeline.log      everything the stages printed (the terminal shows one line per stage)
    OUT/data/             traces.jsonl (long-CoT, with planted truth for the synthetic task), eval/*.jsonl
    OUT/chunk/            chunks.jsonl (+ quality.json: boundary F1 against the planted truth)
    OUT/baseline/         the long-CoT baseline: the base model tuned on the whole traces
    OUT/score/            scored.jsonl (importance; + quality.json: AUROC, estimator comparison)
    OUT/coldstart/        long.jsonl, short.jsonl (SFT sets), stats.json
    OUT/sft/              long/, short/
    OUT/rl/               the alternating multi-turn RL; its final long and short models
    OUT/eval/SET/SYSTEM/  predictions.jsonl, metrics.json per evaluation set and system
    OUT/metrics.json      every headline number; OUT/report.md + OUT/report/*.png

The baseline trains before scoring so that it can be the scoring model (`models.scorer:
baseline`: a model that has learnt the task scores what each thought adds).

A stage is finished when its `DONE` file exists (JSON: seconds, summary, a fingerprint of the
config it ran with). With `resume` finished stages are skipped, an unfinished one restarts and
its own resumable writers skip the records already written; a stage finished under a different
config is an error (start a new run directory). Without `resume`, a run directory that already
holds a run is refused, so nothing written is overwritten. `stop_after` ends the run after a
named stage (e.g. `score`, for a cost plan and importance on real traces).

Modules: `context` (RunContext, Stage, engine pool, quiet console), `stages` (data, chunk,
baseline, score, coldstart), `training` (sft, rl), `evaluate` (eval), `report` and `markdown`
(metrics.json, report.md), `run` (the stage list and the loop).
"""

from longshort.pipeline.run import STAGE_NAMES, STAGES, check_run_dir, run_pipeline
from longshort.pipeline.stages import baseline_examples

__all__ = ["STAGES", "STAGE_NAMES", "baseline_examples", "check_run_dir", "run_pipeline"]
