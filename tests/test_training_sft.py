"""Cold-start SFT on the tiny random model: loss mask, a 2-step run, resume rules, bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from longshort.dialogue.protocol import render_input
from longshort.errors import InputError, LongshortError
from longshort.models import load_model, resolve_model_path
from longshort.training.sft import SFTRunConfig, load_sft_records, make_trainer, run_sft

pytestmark = pytest.mark.usefixtures("one_thread")

def _records(role="long", n=4):
    recs = []
    for i in range(n):
        q = f"What is {i} + {i}?"
        earlier = [] if i % 2 == 0 else ["<think>\nadd them\n</think>", "<answer>carry on</rethink>"]
        messages, prefix = render_input(role, q, earlier)
        body = f"<think>\n{i} plus {i} is {2 * i}.\n</think>" if role == "long" else f"<answer>\\boxed{{{2 * i}}}</answer>"
        recs.append({"id": f"{role}-{i}", "role": role, "problem": q, "answer": str(2 * i), "prompt": messages,
                     "assistant_prefix": prefix, "completion": body})
    return recs


def _write(path: Path, recs) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def _config(tmp_path, data, **kw) -> SFTRunConfig:
    base = dict(role="long", data=str(data), model="tiny-random", out=str(tmp_path / "out"), max_steps=2,
                batch_size=2, report_to="none", save_steps=1, logging_steps=1, max_length=512, lr=1e-3, warmup=0)
    return SFTRunConfig(**(base | kw))


def test_loss_mask_covers_exactly_the_completion(tmp_path):
    recs = _records()
    cfg = _config(tmp_path, _write(tmp_path / "long.jsonl", recs))
    trainer = make_trainer(cfg)
    tok = trainer.processing_class
    assert len(trainer.train_dataset) == len(recs)
    by_prompt = {}
    for rec in recs:
        prompt = tok.apply_chat_template(rec["prompt"], add_generation_prompt=True, tokenize=False) \
            + rec["assistant_prefix"]
        by_prompt[tuple(tok(prompt, add_special_tokens=False)["input_ids"])] = rec
    for ex in trainer.train_dataset:
        labels, ids = ex["labels"], ex["input_ids"]
        learned = [i for i, lab in enumerate(labels) if lab != -100]
        # one contiguous block at the very end ...
        assert learned == list(range(learned[0], len(ids)))
        rec = by_prompt[tuple(ids[:learned[0]])]  # everything before the block is exactly the prompt
        # ... holding exactly the turn's tokens and EOS, with labels equal to the inputs there
        expected = tok(rec["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert [ids[i] for i in learned] == expected
        assert [labels[i] for i in learned] == expected
        assert tok.decode([ids[i] for i in learned[:-1]]) == rec["completion"]


def test_two_steps_with_resume_save_a_loadable_model(tmp_path):
    data = _write(tmp_path / "long.jsonl", _records())
    cfg = _config(tmp_path, data, max_steps=1)
    out = Path(run_sft(cfg))
    assert (out / "checkpoints" / "checkpoint-1" / "trainer_state.json").exists()
    # Simulate an interrupted longer run: drop the finished marker, keep checkpoint-1.
    (out / "longshort_run.json").unlink()
    cfg = cfg.model_copy(update={"max_steps": 2})
    with pytest.raises(LongshortError, match="checkpoint-1"):
        run_sft(cfg)  # never silently restarts over an earlier run
    run_sft(cfg.model_copy(update={"resume": True}))
    run = json.loads((out / "longshort_run.json").read_text())
    assert run["metrics"]["resumed_from"].endswith("checkpoint-1") and run["metrics"]["global_step"] == 2
    history = json.loads((out / "metrics.json").read_text())["log_history"]
    assert [h["step"] for h in history if "loss" in h] == [1, 2]  # step 1 from the checkpoint, then step 2
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (out / name).exists(), name
    model, tok = load_model(str(out), device="cpu")  # a normal model directory
    base, _ = load_model("tiny-random", device="cpu")
    base_params = dict(base.named_parameters())
    assert any(not torch.equal(p, base_params[n]) for n, p in model.named_parameters())
    assert tok.eos_token_id is not None and tok.chat_template
    # A finished output is neither overwritten nor retrained by accident.
    with pytest.raises(LongshortError, match="--resume"):
        run_sft(cfg)
    before = (out / "model.safetensors").stat().st_mtime_ns
    assert run_sft(cfg.model_copy(update={"resume": True})) == str(out)
    assert (out / "model.safetensors").stat().st_mtime_ns == before


def test_empty_dataset_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputError, match="empty.jsonl.*no training examples"):
        run_sft(_config(tmp_path, empty))
    assert not (tmp_path / "out").exists()


def test_wrong_role_and_bad_record_are_clear_errors(tmp_path):
    data = _write(tmp_path / "short.jsonl", _records(role="short"))
    with pytest.raises(InputError, match="no examples of role 'long'"):
        load_sft_records(str(data), "long")
    bad = _records()
    bad[1]["prompt"] = "not messages"
    with pytest.raises(InputError, match=r"bad.jsonl:2: field 'prompt'"):
        load_sft_records(str(_write(tmp_path / "bad.jsonl", bad)), "long")
    assert len(load_sft_records(str(tmp_path / "bad.jsonl"), "long", skip_bad=True)) == 3


def test_model_dir_without_tokenizer_is_a_clear_error(tmp_path):
    src = Path(resolve_model_path("tiny-random"))
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in src.iterdir():
        if f.name in ("config.json", "model.safetensors", "generation_config.json"):
            shutil.copy(f, bare / f.name)
    data = _write(tmp_path / "long.jsonl", _records())
    with pytest.raises(LongshortError, match="no tokenizer"):
        run_sft(_config(tmp_path, data, model=str(bare)))


def test_cli_reports_errors_on_one_line(tmp_path, capsys):
    from longshort.cli import main

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code = main(["sft", "--role", "long", "--data", str(empty), "--model", "tiny-random",
                 "--out", str(tmp_path / "o"), "--report-to", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error:") and "no training examples" in err[0]
    code = main(["sft", "--role", "middle", "--data", str(empty), "--model", "tiny-random",
                 "--out", str(tmp_path / "o")])
    assert code == 1 and "--role" in capsys.readouterr().err


def test_lora_run_saves_merged_plain_model(tmp_path):
    data = _write(tmp_path / "short.jsonl", _records(role="short"))
    out = Path(run_sft(_config(tmp_path, data, role="short", lora=True, max_steps=1, lora_r=4)))
    assert not (out / "adapter_config.json").exists()  # merged: a plain transformers directory
    model, _ = load_model(str(out), device="cpu")
    base, _ = load_model("tiny-random", device="cpu")
    assert not any("lora" in n for n, _ in model.named_parameters())
    base_params = dict(base.named_parameters())
    assert any(not torch.equal(p, base_params[n]) for n, p in model.named_parameters())


def test_bf16_is_mixed_precision_with_fp32_master_weights(tmp_path, monkeypatch):
    from longshort import models
    from longshort.training.common import precision_flags

    monkeypatch.delenv(models.PRECISION_ENV, raising=False)
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: True)
    if not torch.cuda.is_available():
        assert precision_flags("auto") == {"bf16": True, "fp16": False, "use_cpu": True}
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: False)
    if not torch.cuda.is_available():
        assert precision_flags("auto") == {"bf16": False, "fp16": False}
    assert precision_flags("fp32") == {"bf16": False, "fp16": False}
    cfg = _config(tmp_path, _write(tmp_path / "long.jsonl", _records()), max_steps=1, precision="bf16")
    trainer = make_trainer(cfg)
    assert trainer.args.bf16
    trainer.train()
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}  # master weights stay fp32
    assert trainer.state.log_history and math.isfinite(trainer.state.log_history[0]["loss"])


def test_cpu_bf16_pads_batch_lengths_unless_the_recipe_says(tmp_path):
    from longshort.training.common import CPU_BF16_PAD_MULTIPLE

    data = _write(tmp_path / "long.jsonl", _records())
    bf16 = make_trainer(_config(tmp_path, data, max_steps=1, precision="bf16"))
    if torch.cuda.is_available():
        pytest.skip("the padding is for CPU training")
    assert bf16.args.pad_to_multiple_of == CPU_BF16_PAD_MULTIPLE
    batch = bf16.data_collator([bf16.train_dataset[i] for i in range(2)])
    assert batch["input_ids"].shape[1] % CPU_BF16_PAD_MULTIPLE == 0  # every batch, one of few lengths
    assert make_trainer(_config(tmp_path, data, max_steps=1, precision="fp32")).args.pad_to_multiple_of is None
    own = make_trainer(_config(tmp_path, data, max_steps=1, precision="bf16", trainer={"pad_to_multiple_of": 8}))
    assert own.args.pad_to_multiple_of == 8


def test_examples_over_max_length_are_dropped_and_counted_never_cut(tmp_path, caplog):
    from longshort.training.sft import build_dataset, tokenize_example

    recs = _records(n=4)
    recs[1]["completion"] = "<think>\n" + "and then we add once more " * 40 + "\n</think>"
    tok = load_model("tiny-random", device="cpu")[1]
    lengths = [len(tokenize_example(tok, r)["input_ids"]) for r in recs]
    limit = sorted(lengths)[-2]  # the long one is over, every other example fits exactly or under
    with caplog.at_level("WARNING"):
        ds, dropped = build_dataset(tok, recs, max_length=limit)
    assert dropped == 1 and len(ds) == 3
    assert "dropped 1 of 4 examples longer than max_length" in caplog.text
    eos = tok.eos_token_id
    assert all(ex["input_ids"][-1] == eos and len(ex["input_ids"]) <= limit for ex in ds)  # whole, EOS kept
    with pytest.raises(LongshortError, match="all 4 examples are longer than max_length"):
        build_dataset(tok, recs, max_length=min(lengths) - 1)
    cfg = _config(tmp_path, _write(tmp_path / "long.jsonl", recs), max_steps=1, max_length=limit)
    out = Path(run_sft(cfg))
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert (metrics["examples"], metrics["examples_trained"], metrics["dropped_over_max_length"]) == (4, 3, 1)


def test_trainer_mapping_passes_trl_arguments_and_refuses_typos_and_ours(tmp_path, capsys, monkeypatch):
    """`trainer:` reaches SFTConfig as it is; a key SFTConfig lacks, or one our config sets, is
    refused with one line before the model loads (also through `sft --config`)."""
    data = _write(tmp_path / "long.jsonl", _records())
    trainer = make_trainer(_config(tmp_path, data, trainer={"weight_decay": 0.05, "lr_scheduler_type": "cosine"}))
    assert trainer.args.weight_decay == 0.05 and trainer.args.lr_scheduler_type == "cosine"

    import longshort.training.sft as sft_mod

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the trainer mapping was checked")

    monkeypatch.setattr(sft_mod, "load_for_training", boom)
    for extra, needle in (({"wieght_decay": 0.1}, "trainer.wieght_decay: SFTConfig has no such argument"),
                          ({"learning_rate": 1.0}, "trainer.learning_rate: set `lr` instead"),
                          ({"packing": True}, "trainer.packing: longshort sets it")):
        with pytest.raises(LongshortError, match=needle.replace(".", r"\.")):
            make_trainer(_config(tmp_path, data, trainer=extra))
    from longshort.cli import main

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("trainer:\n  wieght_decay: 0.1\n")
    capsys.readouterr()  # what the trainer built above printed
    code = main(["sft", "--role", "long", "--data", str(data), "--model", "tiny-random", "--out", str(tmp_path / "o2"),
                 "--config", str(cfg_file)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "trainer.wieght_decay" in err[0], err


def test_model_init_kwargs_reach_from_pretrained(tmp_path):
    """`model_init_kwargs` (TRL's name) choose the attention backend and the weights' dtype; a
    placement key, an unknown dtype and `trainer.model_init_kwargs` are refused before loading."""
    import torch
    from pydantic import ValidationError

    data = _write(tmp_path / "long.jsonl", _records())
    trainer = make_trainer(_config(tmp_path, data, model_init_kwargs={"attn_implementation": "eager",
                                                                      "dtype": "bfloat16"}))
    assert trainer.model.config._attn_implementation == "eager"
    assert next(trainer.model.parameters()).dtype == torch.bfloat16
    assert next(make_trainer(_config(tmp_path, data)).model.parameters()).dtype == torch.float32
    for bad, needle in (({"device_map": "auto"}, "model_init_kwargs.device_map"),
                        ({"dtype": "float8"}, "unknown dtype")):
        with pytest.raises(ValidationError, match=needle):
            _config(tmp_path, data, model_init_kwargs=bad)
    with pytest.raises(LongshortError, match=r"trainer\.model_init_kwargs: set `model_init_kwargs` instead"):
        make_trainer(_config(tmp_path, data, trainer={"model_init_kwargs": {"dtype": "bfloat16"}}))


def test_training_trims_the_c_heap_after_every_micro_batch(tmp_path, monkeypatch):
    """CPU training's resident memory otherwise grows step after step (glibc keeps freed,
    fragmented autograd buffers): the trainer carries a callback that trims the heap after each
    micro-batch and each optimizer step."""
    from longshort import models

    calls = []
    monkeypatch.setattr(models, "trim_heap", lambda: calls.append(1))
    data = _write(tmp_path / "long.jsonl", _records())
    run_sft(_config(tmp_path, data, max_steps=2, batch_size=1, grad_accum=2))
    # per step: a substep end after each micro-batch but the last, whose end is the step end; then
    # release_memory's trim when the run ends
    assert len(calls) == 2 * 2 + 1
    monkeypatch.undo()
    models.trim_heap()  # the real one is harmless wherever it runs (a no-op without glibc)


def test_compact_head_loss_and_gradients_equal_trls_fused_head(tmp_path):
    """The CPU loss (`training.lm_head`: the completion's logits only) is TRL's loss: same value,
    same gradients (fp32), same metrics; the default picks it off CUDA/XPU only."""
    from longshort.training.lm_head import use_compact_head

    assert use_compact_head(None, "cpu") and not use_compact_head(None, "cuda")
    assert use_compact_head(True, "cuda") and not use_compact_head(False, "cpu")
    data = _write(tmp_path / "long.jsonl", _records(n=6))
    results = {}
    for compact in (True, False):
        trainer = make_trainer(_config(tmp_path, data, precision="fp32", compact_head=compact))
        assert (type(trainer).__name__ == "CompactHeadSFTTrainer") == compact
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        assert (batch["labels"] == -100).any() and (batch["labels"] != -100).any()  # prompts are masked
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, batch, num_items_in_batch=int((batch["labels"][:, 1:] != -100).sum()))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        results[compact] = (loss.item(), grads, {k: v[-1] for k, v in trainer._metrics["train"].items()})
    (loss_c, grads_c, metrics_c), (loss_t, grads_t, metrics_t) = results[True], results[False]
    assert loss_c == pytest.approx(loss_t, rel=1e-5) and loss_c > 0
    assert grads_c.keys() == grads_t.keys()
    for name in grads_t:
        torch.testing.assert_close(grads_c[name], grads_t[name], rtol=1e-4, atol=1e-6, msg=name)
    for key in ("entropy", "mean_token_accuracy", "num_tokens"):
        assert metrics_c[key] == pytest.approx(metrics_t[key], rel=1e-5), key
