"""The cost plan of importance scoring: estimate vs what a run really generates."""

from __future__ import annotations

import pytest

from longshort.thoughts.chunking import ChunkConfig, chunk_records
from longshort.thoughts.importance import ImportanceConfig, describe_actual, describe_plan, pilot, plan
from longshort.thoughts.scoring import score_record
from longshort.thoughts.synthetic import SynthConfig, generate


@pytest.fixture(scope="module")
def tiny():
    from longshort.engines.hf import HFEngine

    eng = HFEngine("tiny-random")
    yield eng
    eng.close()


def _records(n=2):
    small = SynthConfig(num_ops=1, redundancy=1, vary_ops=False)
    return chunk_records(generate(n, seed=4, config=small), ChunkConfig(method="segment"))


def test_estimate_within_30_percent_of_the_run(tiny):
    recs = _records()
    cfg = ImportanceConfig(rollouts=2, max_new_tokens=12)
    cap = plan(recs, tiny, cfg)
    pl = pilot(recs, tiny, cfg, prefixes=2)
    piloted = plan(recs, tiny, cfg, tokens_per_rollout=pl["tokens_per_rollout"])
    actual = sum(score_record(r, tiny, cfg)["importance"]["generated_tokens"] for r in recs)
    assert cap["estimate_method"] == "cap" and piloted["estimate_method"] == "pilot"
    assert cap["rollouts"] == sum(2 * (len(r["thoughts"]) + 1) for r in recs)
    # the old "rest of the trace" guess is not what small models do; cap and pilot are honest
    for est in (cap, piloted):
        assert 0.7 * actual <= est["est_generated_tokens"] <= 1.3 * actual, (est, actual)
    assert actual <= cap["est_cap_tokens"]
    line = describe_plan(piloted, cfg)
    assert f"x 2 = {cap['rollouts']} rollouts" in line and "pilot" in line
    assert "actual/estimate" in describe_actual(cap, actual)


def test_forced_estimator_plans_no_generation(tiny):
    cfg = ImportanceConfig(estimator="forced")
    p = plan(_records(1), tiny, cfg)
    assert p["estimate_method"] == "forced" and p["est_generated_tokens"] == 0 and p["rollouts"] == 0
    assert p["forward_tokens"] > 0 and "0 generated" in describe_plan(p, cfg)
