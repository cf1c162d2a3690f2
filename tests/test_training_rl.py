"""Multi-turn GRPO on tiny models: rollout token masks, one real GRPO step, alternation, bad input.

Random tiny models never write a closing tag, so every turn would hit its token limit and end
the dialogue after one turn. `_ending_model` edits a real tiny model's weights so that it ends
each turn with EOS with a chosen probability (a residual dimension held constant feeds an
EOS-only logit): dialogues then run several turns while everything else stays real.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from longshort.dialogue.collab import CollabConfig
from longshort.dialogue.protocol import Turn, render_transcript
from longshort.engines.hf import HFEngine
from longshort.errors import InputError, LongshortError
from longshort.models import load_model
from longshort.training.rl import (
    DialogueRollout,
    RLRunConfig,
    load_problems,
    make_trainer,
    policy_generate,
    run_rl,
)

PROBLEMS = [{"id": "p1", "problem": "What is 2+2?", "answer": "4"},
            {"id": "p2", "problem": "What is 3+5?", "answer": "8"}]



pytestmark = pytest.mark.usefixtures("one_thread")

def _ending_model(spec: str, out: Path, p_eos: float) -> str:
    """Save a copy of `spec` that emits EOS with probability ~`p_eos` at every step."""
    model, tok = load_model(spec, device="cpu")
    eos = tok.eos_token_id
    vocab = model.config.vocab_size
    with torch.no_grad():
        emb = model.get_input_embeddings().weight  # tied with the output layer
        emb[:, 0] = 10.0
        for layer in model.model.layers:  # nothing writes into residual dimension 0
            layer.self_attn.o_proj.weight[0, :] = 0.0
            layer.mlp.down_proj.weight[0, :] = 0.0
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        x = torch.zeros(model.config.hidden_size)  # h0 = x0 / rms(x) for the constant x0 = 10
        x[0] = 10.0
        h0 = float(10.0 / torch.sqrt((x ** 2).mean() + 1e-6))
        gap = math.log(p_eos / (1 - p_eos) * (vocab - 1))  # EOS logit minus every other logit
        emb[eos, 0] = 10.0 + gap / h0
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"long": _ending_model("tiny-random", root / "long", 0.3),
            "short": _ending_model("tiny-random-bytes", root / "short", 0.3)}


@pytest.fixture()
def problems_file(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    return path


def _dialogue_config():
    return CollabConfig(max_turns=3, max_new_tokens_long=12, max_new_tokens_short=12)


def test_policy_generate_stops_at_stop_strings_and_reports_logprobs():
    model, tok = load_model("tiny-random", device="cpu")
    torch.manual_seed(0)
    prompt = tok("Hello there", add_special_tokens=False)["input_ids"]
    outs = policy_generate(model, tok, [prompt, prompt[:1]], max_new_tokens=40, stops=["e"], temperature=1.0)
    for o in outs:
        assert len(o.token_ids) == len(o.logprobs) and all(lp <= 0 for lp in o.logprobs)
        if o.finish_reason == "stop" and o.stop == "e":
            assert "e" not in o.text
            assert "e" not in tok.decode(o.token_ids[:-1])  # it stopped at the first token completing it
        else:
            assert o.finish_reason == "length" and len(o.token_ids) == 40
    assert any(o.stop == "e" for o in outs)


@pytest.mark.parametrize("role", ["long", "short"])
def test_rollout_env_mask_is_one_exactly_on_the_trained_roles_tokens(models, role):
    policy, policy_tok = load_model(models[role], device="cpu")
    partner_role = "short" if role == "long" else "long"
    partner = HFEngine(models[partner_role], device="cpu")
    rollout = DialogueRollout(role, partner, _dialogue_config())
    torch.manual_seed(1)
    out = rollout.play([p["problem"] for p in PROBLEMS] * 3, policy, policy_tok)
    n = len(PROBLEMS) * 3
    assert all(len(out[k]) == n for k in ("prompt_ids", "completion_ids", "env_mask", "logprobs", "turns"))
    multi = 0
    for i in range(n):
        ids, mask, lps, turns = out["completion_ids"][i], out["env_mask"][i], out["logprobs"][i], out["turns"][i]
        assert len(ids) == len(mask) == len(lps)
        own = [t for t in turns if t["role"] == role]
        # the ones are exactly the tokens the policy generated, turn by turn
        assert sum(mask) == sum(t["tokens"] for t in own) == out["role_tokens"][i]
        blocks = _blocks(mask)
        assert [len(b) for b in blocks] == [t["tokens"] for t in own if t["tokens"]]
        assert all(lps[j] == 0.0 for j in range(len(ids)) if mask[j] == 0)
        assert all(lps[j] < 0.0 for j in range(len(ids)) if mask[j] == 1)
        # EOS closes a dialogue that ended by the rules; one cut at a token limit reaches TRL truncated
        assert mask[-1] == 0 or out["end_reason"][i] == "token_limit"
        assert (ids[-1] == policy_tok.eos_token_id) == (out["end_reason"][i] != "token_limit")
        assert out["truncated"][i] == (out["end_reason"][i] == "token_limit")
        # the environment tokens hold the partner's turns (+ newlines / forced tags), in the policy's tokenizer
        env_text = policy_tok.decode([t for t, m in zip(ids, mask, strict=True) if m == 0])
        prompt_text = policy_tok.decode(out["prompt_ids"][i])
        for t in turns:
            if t["role"] == partner_role:  # as the policy's tokenizer can represent it (the same at inference)
                seen = policy_tok.decode(policy_tok(t["text"], add_special_tokens=False)["input_ids"])
                assert seen in env_text or seen in prompt_text
        # each block of ones decodes to the body of the matching turn of the trained role
        for block, t in zip(blocks, [t for t in own if t["tokens"]], strict=True):
            body = policy_tok.decode([ids[j] for j in block], skip_special_tokens=True).strip()
            assert body[:8] in t["text"]
        assert render_transcript(turns) in prompt_text + policy_tok.decode(ids) or out["context_mismatches"][i]
        assert out["dialogue_tokens"][i] == out["tokens_long"][i] + out["tokens_short"][i]
        multi += len(own) > 1
    assert multi, "at least one dialogue should have more than one turn of the trained role"


def _blocks(mask):
    blocks, cur = [], []
    for j, m in enumerate(mask):
        if m:
            cur.append(j)
        elif cur:
            blocks.append(cur)
            cur = []
    if cur:
        blocks.append(cur)
    return blocks


def test_one_grpo_step_changes_the_policy_and_not_the_partner(models, tmp_path, problems_file):
    partner = HFEngine(models["short"], device="cpu")
    partner_before = {k: v.clone() for k, v in partner.model.state_dict().items()}
    cfg = RLRunConfig(long=models["long"], short=models["short"], data=str(problems_file), out=str(tmp_path / "o"),
                      iterations=1, max_steps=1, num_generations=2, batch_size=4, lr=1e-3, report_to="none",
                      dialogue=_dialogue_config())

    def spread(completions, role_tokens, **kwargs):  # a real, varying signal: the policy's token count
        return [float(t) for t in role_tokens]

    trainer = make_trainer(cfg, "long", models["long"], partner, tmp_path / "ckpt", load_problems(str(problems_file)),
                           reward_funcs=[spread])
    policy_before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, policy_before[k])]
    assert changed, "one GRPO step should move the trained role's weights"
    assert all(torch.equal(v, partner_before[k]) for k, v in partner.model.state_dict().items())
    logs = trainer.state.log_history[0]
    for key in ("dialogue/tokens_long", "dialogue/tokens_short", "dialogue/turns", "rewards/spread/mean"):
        assert key in logs, key


def test_compact_head_logprobs_and_entropies_equal_trls_fused_head(tmp_path, problems_file):
    """On the CPU the trained role's log-probabilities come from the completion's logits only
    (`training.lm_head`): equal to TRL's fused head at the sampling temperature, gradients too,
    zero on padding; left-padded prompts, right-padded completions."""
    partner = HFEngine("tiny-random", device="cpu")
    out = {}
    for compact in (True, False):
        cfg = RLRunConfig(long="tiny-random", short="tiny-random", data=str(problems_file), out=str(tmp_path / "o"),
                          iterations=1, max_steps=1, num_generations=2, batch_size=2, report_to="none",
                          precision="fp32", temperature=0.7, compact_head=compact, dialogue=_dialogue_config())
        trainer = make_trainer(cfg, "long", "tiny-random", partner, tmp_path / f"ck{compact}",
                               load_problems(str(problems_file)), reward_funcs=[_length_reward])
        assert type(trainer).__name__.startswith("CompactHead") == compact
        torch.manual_seed(0)
        ids = torch.randint(3, 200, (3, 14))
        mask = torch.ones_like(ids)
        mask[0, :2] = 0  # a left-padded prompt
        mask[1, -3:] = 0  # a completion padded on the right
        trainer.model.zero_grad()
        logps, ents, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, 6, batch_size=2,
                                                                    compute_entropy=True)
        (logps * torch.arange(1.0, 7.0)).sum().backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        out[compact] = (logps.detach(), ents.detach(), grads)
    (lc, ec, gc), (lt, et, gt) = out[True], out[False]
    assert lc.shape == lt.shape == (3, 6) and (lc[1, -3:] == 0).all()
    torch.testing.assert_close(lc, lt, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ec, et, rtol=1e-5, atol=1e-5)
    assert gc.keys() == gt.keys()
    for name in gt:  # sums over the vocabulary in another order: ~1e-5 on gradients up to ~25
        torch.testing.assert_close(gc[name], gt[name], rtol=1e-4, atol=1e-4, msg=name)


def test_alternation_writes_each_iteration_and_swaps_partners(models, tmp_path, problems_file):
    out = tmp_path / "rl"
    cfg = RLRunConfig(long=models["long"], short=models["short"], data=str(problems_file), out=str(out),
                      iterations=3, first="short", max_steps=1, num_generations=2, batch_size=2,
                      report_to="none", dialogue=_dialogue_config())
    run_rl(cfg)
    dirs = ["iter0_short", "iter1_long", "iter2_short"]
    for d in dirs:
        assert (out / d / "longshort_run.json").exists()
        load_model(str(out / d), device="cpu")  # a normal, loadable model directory
    m = [json.loads((out / d / "metrics.json").read_text())["metrics"] for d in dirs]
    assert m[0]["partner"] == models["long"] and m[1]["partner"] == str(out / "iter0_short")
    assert m[2]["partner"] == str(out / "iter1_long") and m[2]["policy_init"] == str(out / "iter0_short")
    final = json.loads((out / "longshort_run.json").read_text())["final"]
    assert final == {"long": str(out / "iter1_long"), "short": str(out / "iter2_short")}
    # different tokenizers: each saved role keeps its own
    assert load_model(final["long"], device="cpu")[1].vocab_size != load_model(final["short"], device="cpu")[1].vocab_size
    # rerunning without --resume refuses to touch it; with --resume every iteration is skipped
    with pytest.raises(LongshortError, match="--resume"):
        run_rl(cfg)
    stamp = (out / "iter2_short" / "model.safetensors").stat().st_mtime_ns
    run_rl(cfg.model_copy(update={"resume": True}))
    assert (out / "iter2_short" / "model.safetensors").stat().st_mtime_ns == stamp


def test_groups_form_over_the_generation_batch():
    """TRL generates batch_size x grad_accum dialogues at once: that product must hold whole groups,
    so a CPU run can take 2 dialogues per forward pass with 4 per group."""
    base = dict(long="tiny-random", short="tiny-random", data="p.jsonl", out="o", num_generations=4)
    RLRunConfig(batch_size=2, grad_accum=16, **base)
    with pytest.raises(ValueError, match=r"2 x 1 = 2 dialogues generated together\) must be a multiple of num_gen"):
        RLRunConfig(batch_size=2, grad_accum=1, **base)


def test_bad_inputs_are_clear_errors(tmp_path, problems_file):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    base = dict(long="tiny-random", short="tiny-random", out=str(tmp_path / "o"), report_to="none")
    with pytest.raises(InputError, match="empty.jsonl.*no problems"):
        run_rl(RLRunConfig(data=str(empty), **base))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "1+1?"}\n')
    with pytest.raises(InputError, match="bad.jsonl:1: field 'answer'"):
        run_rl(RLRunConfig(data=str(bad), **base))
    with pytest.raises(LongshortError, match="one iteration"):
        run_rl(RLRunConfig(data=str(problems_file), partner_base_url="http://127.0.0.1:9/v1", **base))
    # a bad `trainer:` key fails before any model loads (the model spec here does not even exist)
    with pytest.raises(LongshortError, match=r"trainer\.loss_typ: GRPOConfig has no such argument"):
        run_rl(RLRunConfig(data=str(problems_file), **{**base, "long": "no/such-model"}, trainer={"loss_typ": "x"}))
    with pytest.raises(LongshortError, match=r"trainer\.learning_rate: set `lr` instead"):
        run_rl(RLRunConfig(data=str(problems_file), **base, trainer={"learning_rate": 1.0}))
    no_tok = tmp_path / "bare"
    no_tok.mkdir()
    (no_tok / "config.json").write_text("{}")
    with pytest.raises(LongshortError, match="no tokenizer"):
        run_rl(RLRunConfig(data=str(problems_file), **(base | {"short": str(no_tok)})))
    assert not (tmp_path / "o").exists()


class _Server:
    """`longshort serve`'s real app under uvicorn in a thread, stoppable mid-run."""

    def __init__(self, engine, port: int):
        import threading

        import uvicorn

        from longshort.serve import create_app

        self.server = uvicorn.Server(uvicorn.Config(create_app(engine, engine), host="127.0.0.1", port=port,
                                                    log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        import time

        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        assert self.server.started

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_partner_server_dropping_mid_run_is_a_clear_error_and_keeps_checkpoints(models, tmp_path, problems_file):
    port = _free_port()
    engine = HFEngine(models["short"], device="cpu")
    server = _Server(engine, port)
    out = tmp_path / "rl"
    cfg = RLRunConfig(long=models["long"], short="short", data=str(problems_file), out=str(out), iterations=1,
                      max_steps=2, num_generations=2, batch_size=2, save_steps=1, report_to="none",
                      dynamic_sampling=False, partner_base_url=f"http://127.0.0.1:{port}/v1", dialogue=_dialogue_config(),
                      partner_engine_kwargs={"max_retries": 1, "backoff": 0.05})
    calls = []

    def spread(completions, role_tokens, trainer_state, **kwargs):
        calls.append(trainer_state.global_step)
        if trainer_state.global_step == 0:  # scoring step 1: the server goes away before step 2
            server.stop()
        return [float(t) for t in role_tokens]

    try:
        with pytest.raises(LongshortError, match=f"127.0.0.1:{port}.*after 2 attempts"):
            run_rl(cfg, reward_funcs=[spread])
    finally:
        server.stop()
    ckpt = out / "checkpoints" / "iter0_long" / "checkpoint-1"
    assert (ckpt / "trainer_state.json").exists() and (ckpt / "model.safetensors").exists()
    assert not (out / "iter0_long").exists()
    # the server is back: --resume continues from checkpoint-1 and finishes
    server = _Server(engine, port)
    try:
        run_rl(cfg.model_copy(update={"resume": True}), reward_funcs=[spread])
    finally:
        server.stop()
    run = json.loads((out / "iter0_long" / "longshort_run.json").read_text())
    assert run["metrics"]["resumed_from"].endswith("checkpoint-1") and run["metrics"]["global_step"] == 2


def test_rl_cli_errors_are_one_line(tmp_path, problems_file, capsys):
    from longshort.cli import main

    args = ["rl", "--long", "tiny-random", "--short", "tiny-random", "--data", str(problems_file),
            "--out", str(tmp_path / "o"), "--report-to", "none"]
    assert main(args + ["--first", "middle"]) == 1
    assert main(args + ["--format-weight", "2"]) == 1
    assert main(args + ["--num-generations", "3", "--batch-size", "4", "--max-steps", "1"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 3
    assert "--first" in err[0] and "must exceed format_weight" in err[1] and "multiple of num_generations" in err[2]
    assert not (tmp_path / "o" / "iter0_long").exists()


@pytest.mark.slow
def test_embedded_model_trains_sft_then_rl(tmp_path, problems_file):
    """The embedded SmolLM2 (converted from GGUF) trains with both stages and stays loadable."""
    from longshort.dialogue.protocol import render_input
    from longshort.training.sft import SFTRunConfig, run_sft

    messages, prefix = render_input("long", "What is 2+2?", [])
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"role": "long", "prompt": messages, "assistant_prefix": prefix,
                                "completion": "<think>\n2 plus 2 is 4.\n</think>"}) + "\n")
    sft_out = run_sft(SFTRunConfig(role="long", data=str(data), model="smollm2-135m", out=str(tmp_path / "sft"),
                                   max_steps=1, batch_size=1, report_to="none", max_length=512))
    cfg = RLRunConfig(long=sft_out, short="smollm2-135m", data=str(problems_file), out=str(tmp_path / "rl"),
                      iterations=1, max_steps=1, num_generations=2, batch_size=2, report_to="none",
                      dialogue=CollabConfig(max_turns=1, max_new_tokens_long=8, max_new_tokens_short=8))
    run_rl(cfg)
    model, _ = load_model(str(tmp_path / "rl" / "iter0_long"), device="cpu")
    assert getattr(model.config, "quantization_config", None) is None


# ----------------------------------------------------------------------------- sampling, truncation, leaks


def test_policy_logprobs_are_those_trl_recomputes():
    """The sampler is the engine's (`sample_tokens`, nucleus included); the logprob of each
    sampled token is log softmax(logits / T) of a teacher-forced forward pass, as TRL computes it."""
    model, tok = load_model("tiny-random", device="cpu")
    torch.manual_seed(3)
    prompts = [tok("Hello there", add_special_tokens=False)["input_ids"], tok("Hi", add_special_tokens=False)["input_ids"]]
    outs = policy_generate(model, tok, prompts, max_new_tokens=12, stops=[], temperature=0.7, top_p=0.9)
    for prompt, o in zip(prompts, outs, strict=True):
        ids = torch.tensor([prompt + o.token_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float() / 0.7
        again = logits.log_softmax(-1).gather(-1, torch.tensor(o.token_ids)[:, None])[:, 0]
        assert torch.allclose(again, torch.tensor(o.logprobs), atol=1e-4)
    torch.manual_seed(3)
    same = policy_generate(model, tok, prompts, max_new_tokens=12, stops=[], temperature=0.7, top_p=0.9)
    assert [o.token_ids for o in same] == [o.token_ids for o in outs]  # torch's seed fixes the rollout


def _parrot_model(spec: str, out: Path, prompt: str, target: str) -> str:
    """A copy of `spec` fine-tuned (a real optimiser on real weights) until it continues the
    exact text `prompt` with `target` when decoding greedily."""
    model, tok = load_model(spec, device="cpu")
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    t_ids = tok(target, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + t_ids])
    labels = torch.tensor([[-100] * len(p_ids) + t_ids])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(200):
        res = model(input_ids=ids, labels=labels)
        guess = res.logits[0, len(p_ids) - 1:-1].argmax(-1)
        if res.loss.item() < 0.05 and guess.tolist() == t_ids:  # greedy decoding now writes the target
            break
        opt.zero_grad()
        res.loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def test_a_box_in_the_long_turn_earns_no_correctness(models, tmp_path):
    """The leak of issue 9: a long turn that writes \\boxed{gold}. The rollout's `final_answer`
    (what correctness grades) is the committed answer, so that dialogue earns nothing, while a
    short turn that boxes the answer and closes with </answer> earns it."""
    from longshort.dialogue.protocol import final_answer, render_input
    from longshort.engines.base import GenerationRequest, render_chat
    from longshort.training import rewards as R

    question, long_text = "What is 2+2?", " so \\boxed{4}</think>"
    messages, prefix = render_input("long", question, [], open_tag=True)
    engine = HFEngine("tiny-random", device="cpu")
    long_dir = _parrot_model("tiny-random", tmp_path / "long", engine.render(
        GenerationRequest(messages=messages, assistant_prefix=prefix)), long_text)
    partner = HFEngine(long_dir, device="cpu")
    dialogue = CollabConfig(max_turns=1, max_new_tokens_long=16, max_new_tokens_short=10, temperature=0.0)
    # the short role never boxes anything: the only box is the long turn's
    junk = DialogueRollout("short", partner, dialogue, temperature=1.0)
    policy, policy_tok = load_model(models["short"], device="cpu")
    torch.manual_seed(0)
    out = junk.play([question] * 3, policy, policy_tok)
    for turns, answer in zip(out["turns"], out["final_answer"], strict=True):
        assert turns[0]["role"] == "long" and "\\boxed{4}" in turns[0]["text"]
        assert final_answer([Turn.from_dict(t) for t in turns]) == "4"  # evaluation's rule would credit it
        assert answer is None
    assert R.correctness_reward([""] * 3, answer=["4"] * 3, final_answer=out["final_answer"]) == [0.0] * 3
    # a short role that commits to the answer in a finished </answer> turn is paid
    long_turn = out["turns"][0][0]  # the partner decodes greedily: the same long turn every time
    s_messages, s_prefix = render_input("short", question, [long_turn], open_tag=True)
    tok = load_model("tiny-random", device="cpu")[1]
    short_dir = _parrot_model("tiny-random", tmp_path / "short", render_chat(tok, s_messages, s_prefix),
                              " \\boxed{4}</answer>")
    solver = DialogueRollout("short", partner, dialogue, temperature=0.01)
    policy, policy_tok = load_model(short_dir, device="cpu")
    out = solver.play([question] * 2, policy, policy_tok)
    assert out["final_answer"] == ["4", "4"] and out["end_reason"] == ["answer", "answer"]
    assert R.correctness_reward([""] * 2, answer=["4"] * 2, final_answer=out["final_answer"]) == [1.0, 1.0]
    assert all(ids[-1] == policy_tok.eos_token_id for ids in out["completion_ids"])


def _length_reward(completions, **kwargs):  # a real, varying signal: the completion's length in characters
    return [float(len(c)) for c in completions]


@pytest.mark.parametrize("masked", [False, True])
def test_truncated_dialogues_reach_trl_as_truncated(tmp_path, problems_file, masked):
    """The raw tiny model never closes a turn, so every dialogue ends at its token limit: no EOS at
    the end, TRL's `clipped_ratio` is 1, and with `mask_truncated_completions` nothing is learned."""
    partner = HFEngine("tiny-random", device="cpu")
    cfg = RLRunConfig(long="tiny-random", short="tiny-random", data=str(problems_file), out=str(tmp_path / "o"),
                      iterations=1, max_steps=1, num_generations=2, batch_size=2, lr=1e-2, report_to="none",
                      mask_truncated_completions=masked, dynamic_sampling=False,
                      dialogue=CollabConfig(max_turns=1, max_new_tokens_long=6, max_new_tokens_short=6))
    trainer = make_trainer(cfg, "long", "tiny-random", partner, tmp_path / "ckpt", load_problems(str(problems_file)),
                           reward_funcs=[_length_reward])
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    logs = trainer.state.log_history[0]
    assert logs["completions/clipped_ratio"] == 1.0 and logs["dialogue/truncated"] == 1.0
    changed = any(not torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())
    assert changed != masked


# ----------------------------------------------------------------------------- signal: dynamic sampling, filters


def test_dynamic_sampling_replaces_groups_without_signal(models, tmp_path):
    """Problems p1 and p3 give every dialogue the same reward (no advantage); p2 gives its group
    different rewards. With dynamic sampling every step trains on a group with signal (p2 drawn in
    for the others) at a constant learning rate; without it, steps without signal remain."""
    data = tmp_path / "three.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "problem": f"What is {i}+{i}?", "answer": str(2 * i)}) + "\n"
                            for i in (1, 2, 3)))
    seen = []

    def only_p2(completions, id, **kwargs):  # noqa: A002 - TRL passes the dataset's column names
        seen.append(list(id))
        return [float(k) if pid == "p2" else 0.0 for k, pid in enumerate(id)]

    partner = HFEngine(models["short"], device="cpu")
    logs = {}
    for dynamic in (True, False):
        cfg = RLRunConfig(long=models["long"], short=models["short"], data=str(data), out=str(tmp_path / f"o{dynamic}"),
                          iterations=1, max_steps=3, num_generations=2, batch_size=2, lr=1e-3, report_to="none",
                          dynamic_sampling=dynamic, dialogue=CollabConfig(max_turns=1, max_new_tokens_long=4,
                                                                          max_new_tokens_short=4))
        trainer = make_trainer(cfg, "long", models["long"], partner, tmp_path / f"ckpt{dynamic}",
                               load_problems(str(data)), reward_funcs=[only_p2])
        trainer.train()
        logs[dynamic] = [h for h in trainer.state.log_history if "reward" in h]
    with_ds, without = logs[True], logs[False]
    assert len(with_ds) == len(without) == 3
    assert all(h["frac_reward_zero_std"] == 0.0 and h["dynamic/signal_groups"] == 1.0 for h in with_ds)
    assert sum(h["dynamic/zero_std_groups"] for h in with_ds) >= 1  # the epoch holds p1 and p3
    assert all(h["dynamic/resampled_problems"] >= h["dynamic/zero_std_groups"] for h in with_ds)
    assert any(h["frac_reward_zero_std"] == 1.0 for h in without) and "dynamic/signal_groups" not in without[0]
    assert all(h["learning_rate"] == 1e-3 for h in with_ds + without)  # constant schedule by default
    assert ["p2", "p2"] in seen


def test_problem_filter_keeps_intermediate_problems(models, tmp_path, problems_file):
    from longshort.training.rl import keep_intermediate, solve_rates

    ps = [{"id": str(i), "problem": str(i), "answer": "1"} for i in range(6)]
    rates = {"0": 0.0, "1": 0.25, "2": 1.0, "3": 0.5, "4": 0.0, "5": 0.75}
    kept, counts = keep_intermediate(ps, rates, minimum=2)
    assert [p["id"] for p in kept] == ["1", "3", "5"] and counts["topped_up"] == 0
    kept, counts = keep_intermediate(ps, {k: 0.0 for k in rates}, minimum=2, seed=1)
    assert len(kept) == 2 and counts["topped_up"] == 2 and counts["unsolved"] == 6
    # the pre-pass on real models: tiny random models solve nothing, so the step is topped up
    policy, tok = load_model(models["long"], device="cpu")
    rollout = DialogueRollout("long", HFEngine(models["short"], device="cpu"), _dialogue_config())
    got = solve_rates(rollout, load_problems(str(problems_file)), policy, tok, samples=2, batch_dialogues=4)
    assert got == {"p1": 0.0, "p2": 0.0}
    cfg = RLRunConfig(long=models["long"], short=models["short"], data=str(problems_file), out=str(tmp_path / "o"),
                      iterations=1, max_steps=1, num_generations=2, batch_size=2, report_to="none",
                      problem_filter="intermediate", dialogue=_dialogue_config())
    trainer = make_trainer(cfg, "long", models["long"], HFEngine(models["short"], device="cpu"), tmp_path / "ck",
                           load_problems(str(problems_file)))
    stats = trainer.rollout_func.filter_stats
    assert stats["problems"] == 2 and stats["intermediate"] == 0 and stats["kept"] == 1
    assert len(trainer.train_dataset) == 1 and (tmp_path / "ck" / "problem_filter.json").exists()


def test_same_problem_with_two_answers_is_refused(tmp_path):
    bad = tmp_path / "twice.jsonl"
    bad.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "1+1?", "answer": "3"}\n')
    with pytest.raises(InputError, match="twice.jsonl:2: field 'answer'"):
        load_problems(str(bad))
