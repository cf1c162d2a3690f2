"""`longshort export`: the cold-start sets in TRL's standard prompt-completion form go through TRL's own
dataset preparation as they are and train on exactly the tokens `longshort sft` trains on; the
LLaMA-Factory files have its alpaca structure and encode to the same tokens; bad input and
overwrites are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longshort.cli import main
from longshort.dialogue.protocol import render_input
from longshort.engines.base import render_chat
from longshort.io import write_jsonl_atomic
from longshort.models import load_tokenizer
from longshort.thoughts.chunking import ChunkConfig, chunk_records
from longshort.thoughts.coldstart import synthesize
from longshort.thoughts.synthetic import generate
from longshort.training.export import export_role, llamafactory_tokens, trl_tokens
from longshort.training.sft import SFTRunConfig, make_trainer, tokenize_example

pytestmark = pytest.mark.usefixtures("one_thread")


def _coldstart(tmp_path: Path, n: int = 3) -> Path:
    """A tiny cold-start set as `longshort coldstart` writes it, from synthetic traces whose
    scores alternate high and low: dialogues of 4+ turns, so most examples of both roles continue
    a transcript (an `assistant_prefix`)."""
    recs = chunk_records(generate(n, seed=0), ChunkConfig(method="gold"))
    for r in recs:
        for i, t in enumerate(r["thoughts"]):
            t["e"] = t["score"] = 0.5 if i % 2 == 0 else 0.05
    long_ex, short_ex, _ = synthesize(recs)
    assert any(ex["assistant_prefix"] for ex in long_ex) and all(ex["assistant_prefix"] for ex in short_ex)
    cs = tmp_path / "cs"
    write_jsonl_atomic(cs / "sft_long.jsonl", long_ex)
    write_jsonl_atomic(cs / "sft_short.jsonl", short_ex)
    return cs


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _labels(ids, mask):
    return [i if m else -100 for i, m in zip(ids, mask, strict=True)]


def test_our_records_do_not_fit_trl_conversational_form():
    """Why the export exists (checked against the installed TRL): our records as they are raise or
    pass unrendered, and TRL's conversational prompt-completion renders a later turn as a new assistant message instead
    of continuing the transcript, so it is not what the role sees at inference."""
    from trl.data_utils import maybe_apply_chat_template

    tok = load_tokenizer("tiny-random")
    messages, prefix = render_input("short", "1+1?", ["<think>\nit is 2\n</think>"])
    turn = "<answer>\n\\boxed{2}\n</answer>"
    raw = {"prompt": messages, "assistant_prefix": prefix, "completion": turn}
    try:  # TRL's is_conversational looks at one key of a set: `prompt` (a list) or `completion` (a str)
        passed = maybe_apply_chat_template(raw, tok)
    except TypeError:  # list + str
        pass
    else:
        assert passed == raw  # taken for a standard example: nothing rendered
    conv = maybe_apply_chat_template({"prompt": messages + [{"role": "assistant", "content": prefix}],
                                      "completion": [{"role": "assistant", "content": turn}]}, tok)
    assert conv["prompt"] + conv["completion"] != render_chat(tok, messages, prefix) + turn + tok.eos_token
    assert not conv["completion"].startswith(turn)


def test_trl_export_goes_through_sfttrainer_as_it_is(tmp_path, capsys):
    """The exported TRL files, loaded by `datasets` and prepared by TRL's own SFTTrainer (no
    conversion step), give per example exactly the input ids and loss labels of `longshort sft`;
    the long role uses another tokenizer (--long-model) to show the check is per model."""
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer
    from trl.data_utils import maybe_apply_chat_template

    from longshort.training.common import load_for_training

    cs = _coldstart(tmp_path)
    out = tmp_path / "export"
    assert main(["export", "-i", str(cs), "-o", str(out), "--model", "tiny-random",
                 "--long-model", "tiny-random-bytes", "--format", "trl"]) == 0
    assert "exported" in capsys.readouterr().out
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["formats"] == ["trl"] and not (out / "llamafactory").exists()
    for role, spec in (("long", "tiny-random-bytes"), ("short", "tiny-random")):
        st = manifest["roles"][role]
        assert st["model"] == spec and st["mismatches"] == {"trl": 0} and st["dropped_over_max_length"] == 0
        source = _read(cs / f"sft_{role}.jsonl")
        ds = load_dataset("json", data_files=str(out / "trl" / f"sft_{role}.jsonl"), split="train",
                          cache_dir=str(tmp_path / "hf"))
        assert ds.column_names == ["id", "prompt", "completion"] and len(ds) == len(source) == st["exported"]
        model, tok = load_for_training(spec)
        for ex in ds:  # TRL's per-example chat-template step leaves the standard form as it is
            assert maybe_apply_chat_template(ex, tok) == ex
        args = SFTConfig(output_dir=str(tmp_path / f"trl_{role}"), report_to="none", bf16=False,
                         **manifest["trl"]["sft_config"])
        theirs = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok).train_dataset
        ours = make_trainer(SFTRunConfig(role=role, data=str(cs / f"sft_{role}.jsonl"), model=spec,
                                         out=str(tmp_path / f"ours_{role}"), report_to="none",
                                         max_length=4096)).train_dataset
        assert len(theirs) == len(ours) == len(source)
        for t, o, rec in zip(theirs, ours, source, strict=True):
            assert t["input_ids"] == o["input_ids"], rec["id"]
            assert t["labels"] == o["labels"], rec["id"]  # the loss falls on the same tokens
            expected = tokenize_example(tok, rec)
            assert t["labels"] == _labels(expected["input_ids"], expected["completion_mask"])
            learned = [i for i, lab in zip(t["input_ids"], t["labels"], strict=True) if lab != -100]
            assert tok.decode(learned) == rec["completion"] + tok.eos_token


def test_trl_prompt_leaves_the_bos_to_a_tokenizer_that_adds_one():
    """A tokenizer that adds a BOS itself (Llama 3 style) would get it twice from TRL: the exported
    prompt starts after the template's BOS, and the tokens still match `longshort sft`."""
    tok = load_tokenizer("tiny-random")
    try:
        tok.add_bos_token = True
    except (AttributeError, ValueError):
        pytest.skip("this transformers cannot switch the BOS on")
    if tok("a")["input_ids"][:1] != [tok.bos_token_id]:
        pytest.skip("this transformers cannot switch the BOS on")
    messages, prefix = render_input("short", "1+1?", ["<think>\nit is 2\n</think>"])
    rec = {"id": "a", "role": "short", "prompt": messages, "assistant_prefix": prefix,
           "completion": "<answer>\n\\boxed{2}\n</answer>"}
    rendered = render_chat(tok, messages, prefix)
    assert rendered.startswith(tok.bos_token)
    trl_rows, lf_rows, st = export_role([rec], tok, max_length=4096)
    assert trl_rows[0]["prompt"] == rendered[len(tok.bos_token):] and lf_rows[0]["instruction"] == rendered
    assert st["mismatches"] == {"trl": 0, "llamafactory": 0}
    ids, mask = trl_tokens(tok, trl_rows[0]["prompt"], trl_rows[0]["completion"])
    assert ids.count(tok.bos_token_id) == rendered.count(tok.bos_token)
    ours = tokenize_example(tok, rec)
    assert (ids, mask) == (ours["input_ids"], ours["completion_mask"])


def test_llamafactory_export_structure(tmp_path):
    """alpaca rows {id, instruction, output} named by dataset_info.json; instruction = the rendered
    prompt, output = turn + EOS; encoded as LLaMA-Factory does under `template: empty` they are the
    tokens of `longshort sft`."""
    from datasets import load_dataset

    cs = _coldstart(tmp_path, n=3)
    out = tmp_path / "export"
    assert main(["export", "-i", str(cs / "sft_long.jsonl"), "-i", str(cs / "sft_short.jsonl"), "-o", str(out),
                 "--model", "tiny-random", "-f", "llamafactory", "--name", "ls_demo"]) == 0
    manifest = json.loads((out / "export.json").read_text())
    lf = out / "llamafactory"
    assert manifest["llamafactory"]["dataset_dir"] == "llamafactory"
    assert manifest["llamafactory"]["train_args"] == {"template": "empty", "train_on_prompt": False,
                                                      "packing": False, "cutoff_len": 4096}
    info = json.loads((lf / "dataset_info.json").read_text())
    assert sorted(info) == manifest["llamafactory"]["datasets"] == ["ls_demo_long", "ls_demo_short"]
    tok = load_tokenizer("tiny-random")
    for role in ("long", "short"):
        entry = info[f"ls_demo_{role}"]
        assert entry == {"file_name": f"ls_demo_{role}.jsonl", "formatting": "alpaca",
                         "columns": {"prompt": "instruction", "response": "output"}}
        rows = _read(lf / entry["file_name"])
        source = _read(cs / f"sft_{role}.jsonl")
        assert len(rows) == len(source) and manifest["roles"][role]["mismatches"] == {"llamafactory": 0}
        ds = load_dataset("json", data_files=str(lf / entry["file_name"]), split="train",
                          cache_dir=str(tmp_path / "hf"))
        assert set(entry["columns"].values()) <= set(ds.column_names)
        for row, rec in zip(rows, source, strict=True):
            assert set(row) == {"id", "instruction", "output"} and row["id"] == rec["id"]
            assert row["instruction"] == render_chat(tok, rec["prompt"], rec["assistant_prefix"])
            assert row["output"] == rec["completion"] + tok.eos_token
            ours = tokenize_example(tok, rec)
            assert llamafactory_tokens(tok, row["instruction"], row["output"]) == \
                (ours["input_ids"], ours["completion_mask"])


def test_dataset_info_is_merged_and_conflicts_refused(tmp_path, capsys):
    cs = _coldstart(tmp_path, n=2)
    out = tmp_path / "export"
    (out / "llamafactory").mkdir(parents=True)
    other = {"alpaca_en_demo": {"file_name": "alpaca_en_demo.json"}}
    (out / "llamafactory" / "dataset_info.json").write_text(json.dumps(other))
    args = ["export", "-i", str(cs), "-o", str(out), "--model", "tiny-random", "-f", "llamafactory"]
    assert main(args) == 0
    info = json.loads((out / "llamafactory" / "dataset_info.json").read_text())
    assert info["alpaca_en_demo"] == other["alpaca_en_demo"] and "longshort_long" in info
    assert main(args) == 0 and "already up to date" in capsys.readouterr().out  # same data: nothing changes
    info["longshort_short"]["formatting"] = "sharegpt"
    (out / "llamafactory" / "dataset_info.json").write_text(json.dumps(info))
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dataset_info.json: field 'longshort_short'" in err


def test_bad_input_and_overwrite_are_refused(tmp_path, capsys):
    cs = _coldstart(tmp_path, n=2)
    rows = (cs / "sft_short.jsonl").read_text().splitlines()
    bad = json.loads(rows[1])
    bad["assistant_prefix"] = 3
    bad_file = tmp_path / "bad.jsonl"
    bad_file.write_text("\n".join([rows[0], json.dumps(bad)] + rows[2:]) + "\n")
    out = tmp_path / "export"
    assert main(["export", "-i", str(bad_file), "-o", str(out), "--model", "tiny-random"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad_file}:2: field 'assistant_prefix'" in err
    assert not out.exists()  # nothing written
    no_role = tmp_path / "no_role.jsonl"
    rec = json.loads(rows[0])
    del rec["role"]
    no_role.write_text(json.dumps(rec) + "\n")
    assert main(["export", "-i", str(no_role), "-o", str(out), "--model", "tiny-random"]) == 1
    assert f"{no_role}:1: field 'role'" in capsys.readouterr().err
    assert main(["export", "-i", str(tmp_path), "-o", str(out), "--model", "tiny-random"]) == 1
    assert "no sft_long.jsonl or sft_short.jsonl" in capsys.readouterr().err
    # --skip-bad exports the rest; a later export of other data never replaces those files
    assert main(["export", "-i", str(bad_file), "-o", str(out), "--model", "tiny-random", "--skip-bad"]) == 0
    assert len(_read(out / "trl" / "sft_short.jsonl")) == len(rows) - 1
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["export", "-i", str(cs), "-o", str(out), "--model", "tiny-random"]) == 1
    err = capsys.readouterr().err
    assert "already exists with other content" in err and "sft_" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert main(["export", "-i", str(cs), "-o", str(out), "-f", "parquet"]) == 1
    assert "unknown --format 'parquet'" in capsys.readouterr().err
