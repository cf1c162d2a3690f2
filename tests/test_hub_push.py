"""push_to_hub / hub_model_id (TRL's names) on SFT and RL: the finished model directory goes to the
hub without its checkpoints and logs; anything that would make the push fail is refused before a
model loads. The hub itself is replaced by a recorder of `HfApi.create_repo` / `upload_folder`
(no network here); which files would go up is decided by huggingface_hub's own pattern filter."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import constants
from huggingface_hub.utils import filter_repo_objects

from longshort.config import PipelineConfig, rl_run_config, sft_run_config
from longshort.errors import LongshortError
from longshort.training import common, sft
from longshort.training.rl import RLRunConfig, run_rl
from longshort.training.sft import SFTRunConfig, run_sft

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def hub(monkeypatch):
    """A logged-in, online hub that records what would be created and uploaded."""
    calls: dict[str, list] = {"create": [], "upload": []}

    def create_repo(self, repo_id, **kw):
        calls["create"].append((repo_id, kw))
        full = repo_id if "/" in repo_id else f"tester/{repo_id}"  # a bare name: the token's namespace
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{full}")

    def upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, **kw):
        root = Path(folder_path)
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        sent = sorted(filter_repo_objects(files, ignore_patterns=ignore_patterns))
        calls["upload"].append({"repo_id": repo_id, "folder": str(root), "files": sent, **kw})
        return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return calls


def _sft_data(tmp_path: Path) -> Path:
    from longshort.dialogue.protocol import render_input

    path = tmp_path / "long.jsonl"
    with path.open("w") as fh:
        for i in range(4):
            messages, prefix = render_input("long", f"What is {i} + {i}?", [])
            fh.write(json.dumps({"role": "long", "prompt": messages, "assistant_prefix": prefix,
                                 "completion": f"<think>\n{i} plus {i} is {2 * i}.\n</think>"}) + "\n")
    return path


def _sft(tmp_path: Path, **kw) -> SFTRunConfig:
    base = dict(role="long", data=str(_sft_data(tmp_path)), model="tiny-random", out=str(tmp_path / "my-long"),
                max_steps=1, batch_size=2, report_to="none", save_steps=1, logging_steps=1, max_length=256,
                lr=1e-3, warmup=0, push_to_hub=True)
    return SFTRunConfig(**(base | kw))


def test_sft_pushes_the_finished_model_without_checkpoints(tmp_path, hub):
    out = Path(run_sft(_sft(tmp_path, hub_private_repo=True)))
    assert (out / "checkpoints").is_dir()  # save_steps=1: a checkpoint exists locally
    assert hub["create"] == [("my-long", {"private": True, "exist_ok": True, "repo_type": "model"})]
    (up,) = hub["upload"]
    assert up["repo_id"] == "tester/my-long" and up["folder"] == str(out)
    assert "config.json" in up["files"] and "model.safetensors" in up["files"]
    assert "longshort_run.json" in up["files"] and "tokenizer_config.json" in up["files"]
    assert not any(f.startswith(("checkpoints/", "logs/")) for f in up["files"])


def test_sft_hub_model_id_names_the_repository(tmp_path, hub):
    run_sft(_sft(tmp_path, hub_model_id="someone/longshort-long"))
    assert [u["repo_id"] for u in hub["upload"]] == ["someone/longshort-long"]


@pytest.mark.parametrize("case, match", [
    ("no token", "needs a Hugging Face token"),
    ("offline", "offline mode"),
    ("bad id", "not a valid hub repository id"),
])
def test_a_push_that_would_fail_is_refused_before_any_model_loads(tmp_path, hub, monkeypatch, case, match):
    if case == "no token":
        monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    if case == "offline":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def no_load(*a, **kw):
        raise AssertionError("a model was loaded before the hub check")

    monkeypatch.setattr(sft, "make_trainer", no_load)
    cfg = _sft(tmp_path, hub_model_id="a/b/c" if case == "bad id" else None)
    with pytest.raises(LongshortError, match=match):
        run_sft(cfg)
    assert not hub["upload"]


def test_a_failed_upload_keeps_the_model_and_says_how_to_push_it(tmp_path, hub, monkeypatch):
    def broken(self, **kw):
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", broken)
    with pytest.raises(LongshortError, match=r"model is saved there, push it with `hf upload my-long "):
        run_sft(_sft(tmp_path))
    assert common.is_finished(tmp_path / "my-long")  # finished and resumable: nothing lost


def test_trl_own_push_arguments_are_refused_in_the_trainer_mapping(tmp_path, hub):
    with pytest.raises(LongshortError, match="trainer.push_to_hub: set `push_to_hub` instead"):
        sft.make_trainer(_sft(tmp_path, trainer={"push_to_hub": True}), [])


def test_the_pipeline_gives_each_trained_model_its_own_repository():
    cfg = PipelineConfig(name="demo", sft={"push_to_hub": True}, rl={"push_to_hub": True, "hub_model_id": "me/pair"})
    ids = {r: sft_run_config(cfg, role=r, data="d", model="m", out="o").hub_model_id for r in ("long", "short")}
    assert ids == {"long": "demo-sft-long", "short": "demo-sft-short"}
    assert sft_run_config(cfg, role="long", data="d", model="m", out="o", baseline=True).hub_model_id == "demo-baseline"
    assert rl_run_config(cfg, long="l", short="s", data="d", out="o").hub_model_id == "me/pair"
    assert sft_run_config(PipelineConfig(), role="long", data="d", model="m", out="o").push_to_hub is False


def test_rl_pushes_each_trained_role_final_model(tmp_path, hub):
    problems = tmp_path / "p.jsonl"
    problems.write_text("".join(json.dumps({"id": f"p{i}", "problem": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n"
                                for i in range(4)))
    out = tmp_path / "rl"
    cfg = RLRunConfig(long="tiny-random", short="tiny-random", data=str(problems), out=str(out), iterations=2,
                      first="short", max_steps=1, num_generations=2, batch_size=2, report_to="none",
                      dialogue={"max_turns": 1, "max_new_tokens_long": 8, "max_new_tokens_short": 8},
                      push_to_hub=True, hub_model_id="me/pair")
    run_rl(cfg)
    assert [(u["repo_id"], Path(u["folder"]).name) for u in hub["upload"]] == [
        ("me/pair-short", "iter0_short"), ("me/pair-long", "iter1_long")]
    assert all("model.safetensors" in u["files"] for u in hub["upload"])
