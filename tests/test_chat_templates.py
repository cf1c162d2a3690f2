"""Chat templates that open ``<think>`` themselves or strip earlier reasoning (issue 12, part 1).

The templates are the real ones (tests/data/chat_templates/, sources in SOURCES.md there):

- DeepSeek-R1-Distill-Qwen: the generation prompt is ``<｜Assistant｜><think>\\n``; earlier
  assistant messages lose everything up to their last ``</think>``;
- QwQ-32B: the generation prompt is ``<|im_start|>assistant\\n<think>\\n``; earlier assistant
  messages lose their reasoning;
- Qwen3: the generation prompt is plain ChatML (``enable_thinking`` is never passed); reasoning
  of assistant messages before the last user message is dropped.

Each is set on the tiny test tokenizer, with the template's markers (``<｜User｜>``,
``<｜Assistant｜>``, ``<think>``, ...) added as tokens, as the real tokenizers have them. Checked:
the model sees exactly one opening tag (text and token ids) for dialogue turns, solo answers and
the scoring prompt; the transcript reaches the model whole (it lives in the assistant prefix,
which no template rewrites); an SFT example is the engine's inference text of the same turn.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
from tokenizers import AddedToken

from longshort.dialogue.protocol import ANSWER_OPEN, THINK_OPEN, render_input
from longshort.engines.base import GenerationRequest, SamplingParams, chat_prompt, render_chat
from longshort.models.builtin import CHATML_TEMPLATE

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"
#: template file -> (text that starts the assistant's reply, what the template adds after it)
FAMILIES = {
    "deepseek-r1-distill-qwen": ("<｜Assistant｜>", "<think>\n"),
    "qwq-32b": ("<|im_start|>assistant\n", "<think>\n"),
    "qwen3": ("<|im_start|>assistant\n", ""),
}
R1_TOKENS = ["<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"]
QUESTION = "What is 6 times 7?"
LONG_1 = "<think>\nSix sevens: 6*7 = 42. Check: 7*6 = 42.\n</think>"
SHORT_1 = "<answer>\nThe product still needs a check against 40 + 2.\n</rethink>"
LONG_2 = "<think>\n40 + 2 = 42, so 42 is right.\n</think>"
SHORT_FINAL = "<answer>\n\\boxed{42}\n</answer>"
#: (role, earlier turns, the turn the role writes)
TURNS = [("long", [], LONG_1), ("short", [LONG_1], SHORT_1), ("long", [LONG_1, SHORT_1], LONG_2),
         ("short", [LONG_1, SHORT_1, LONG_2], SHORT_FINAL)]


@pytest.fixture(scope="module")
def base_tokenizer():
    from longshort.models import load_tokenizer

    return load_tokenizer("tiny-random")


def with_template(base, name: str):
    """The tiny tokenizer with the real template `name` and that family's markers as added tokens
    (the R1 distills have ``<｜User｜>`` and ``<｜Assistant｜>`` as non-special added tokens,
    ``<｜begin▁of▁sentence｜>`` as BOS; Qwen3/QwQ have ``<think>``/``</think>`` as added tokens)."""
    tok = copy.deepcopy(base)
    tok.chat_template = (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
    markers = ["<think>", "</think>"] + (R1_TOKENS if name.startswith("deepseek") else [])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in markers])
    if name.startswith("deepseek"):
        tok.add_special_tokens({"bos_token": "<｜begin▁of▁sentence｜>"})
    return tok


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, base_tokenizer):
    return request.param, with_template(base_tokenizer, request.param)


@pytest.fixture(scope="module")
def tiny_model():
    from longshort.models import load_model

    model, _ = load_model("tiny-random", dtype="float32", device="cpu")
    return model


def engine_for(model, tok):
    """A transformers engine on a copy of the tiny model whose embeddings cover `tok`'s added tokens."""
    from longshort.engines.hf import HFEngine

    m = copy.deepcopy(model)
    m.resize_token_embeddings(len(tok))
    return HFEngine.from_model(m, tok)


def reply_part(name: str, text: str) -> str:
    """The assistant's side of a rendered prompt: what follows the template's last reply marker."""
    marker = FAMILIES[name][0]
    assert marker in text, text[-200:]
    return text.rsplit(marker, 1)[1]


# --------------------------------------------------------------------------- the fixtures


def test_templates_do_what_their_sources_say(family):
    """The fixture texts behave as the real templates: R1-distill and QwQ open <think> in the
    generation prompt; all three drop the reasoning of an earlier assistant message."""
    name, tok = family
    marker, opened = FAMILIES[name]
    msgs = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "<think>\nsecret\n</think>\n\nA1"},
            {"role": "user", "content": "q2"}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text.endswith(marker + opened)
    assert "secret" not in text and "A1" in text
    if name.startswith("deepseek"):
        assert text.startswith("<｜begin▁of▁sentence｜><｜User｜>q1<｜Assistant｜>")


def test_transcript_as_an_assistant_message_would_be_cut(family):
    """Why the transcript must stay in the assistant prefix: as a final assistant message
    (`continue_final_message`, the OpenAI-server convention) R1-distill and Qwen3 rewrite it, so
    transformers (and vLLM, which renders with it) refuse it; QwQ keeps a final message as is."""
    name, tok = family
    msgs, prefix = render_input("short", QUESTION, [LONG_1, SHORT_1, LONG_2], open_tag=True)
    final = msgs + [{"role": "assistant", "content": prefix}]
    if name == "qwq-32b":
        text = tok.apply_chat_template(final, continue_final_message=True, tokenize=False)
        assert text.endswith(prefix)
    else:
        with pytest.raises(ValueError, match="final message does not appear"):
            tok.apply_chat_template(final, continue_final_message=True, tokenize=False)


# --------------------------------------------------------------------------- one opening tag


@pytest.mark.parametrize("force", [True, False], ids=["forced-tag", "free"])
@pytest.mark.parametrize("step", range(len(TURNS)), ids=[f"turn{i + 1}" for i in range(len(TURNS))])
def test_dialogue_turn_sees_one_opening_tag(family, step, force):
    """Every turn's rendered text is the template's generation prompt without its own <think>,
    then the transcript (whole, verbatim) and, forced, the role's tag: never two <think>."""
    from longshort.engines.hf import HFEngine

    name, tok = family
    role, earlier, _ = TURNS[step]
    msgs, prefix = render_input(role, QUESTION, earlier, open_tag=force)
    req = GenerationRequest(messages=msgs, assistant_prefix=prefix)
    text = HFEngine.render(SimpleNamespace(tokenizer=tok), req)
    assert text == render_chat(tok, msgs, prefix)
    reply = reply_part(name, text)
    assert reply == prefix  # the assistant side is exactly our transcript (+ tag): nothing added, nothing cut
    assert reply.count(THINK_OPEN) == sum(t.startswith(THINK_OPEN) for t in earlier) + (force and role == "long")
    if step == 0:
        assert reply == (THINK_OPEN if force else "")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    think_id = tok.convert_tokens_to_ids(THINK_OPEN)
    assert ids.count(think_id) == reply.count(THINK_OPEN) + msgs[0]["content"].count(THINK_OPEN)
    assert tok.decode(ids, skip_special_tokens=False) == text  # the markers are text, and round-trip


def test_vllm_engine_renders_the_same(family):
    from longshort.engines.vllm import VLLMEngine

    name, tok = family
    for role, earlier, _ in TURNS:
        msgs, prefix = render_input(role, QUESTION, earlier, open_tag=True)
        req = GenerationRequest(messages=msgs, assistant_prefix=prefix)
        assert VLLMEngine.render(SimpleNamespace(tokenizer=tok), req) == render_chat(tok, msgs, prefix)


@pytest.mark.parametrize("role", ["long", "short"])
def test_solo_prompt_sees_one_opening_tag(family, role):
    name, tok = family
    msgs, prefix = render_input(role, QUESTION, solo=True, open_tag=True)
    reply = reply_part(name, render_chat(tok, msgs, prefix))
    assert reply == (THINK_OPEN if role == "long" else ANSWER_OPEN)


def test_scoring_prompt_sees_one_think(family):
    """The long-CoT prompt of thought scoring (`thoughts.scoring`: solo messages + "<think>\\n"
    + thoughts) has the one <think> of its prefix, as the template itself would have it."""
    from longshort.thoughts.importance import solo_messages

    name, tok = family
    prefix = THINK_OPEN + "\nFirst thought.\nSecond thought."
    text = render_chat(tok, solo_messages(QUESTION), prefix)
    assert reply_part(name, text) == prefix
    if FAMILIES[name][1]:  # a template that opens <think> gives this very text for its own opening
        own = tok.apply_chat_template(solo_messages(QUESTION), add_generation_prompt=True, tokenize=False)
        assert own + prefix[len(THINK_OPEN + "\n"):] == text


# --------------------------------------------------------------------------- SFT == inference


def test_sft_example_is_the_inference_text(family):
    """A cold-start SFT record of each turn (`prompt, assistant_prefix = render_input(role, problem,
    earlier)`, completion = the turn) trains on exactly the text, and the token ids, the engine
    gives the model for that turn, with or without the forced opening tag; the exports too."""
    from longshort.engines.hf import HFEngine
    from longshort.training.export import export_role
    from longshort.training.sft import tokenize_example

    name, tok = family
    eng = SimpleNamespace(tokenizer=tok)
    for role, earlier, turn in TURNS:
        msgs, prefix = render_input(role, QUESTION, earlier)
        rec = {"id": f"{role}{len(earlier)}", "role": role, "prompt": msgs, "assistant_prefix": prefix,
               "completion": turn}
        ex = tokenize_example(tok, rec, add_eos=False)
        sft_text = tok.decode(ex["input_ids"], skip_special_tokens=False)
        n_prompt = ex["completion_mask"].index(1)

        free = HFEngine.render(eng, GenerationRequest(messages=msgs, assistant_prefix=prefix))
        assert free + turn == sft_text
        assert tok(free, add_special_tokens=False)["input_ids"] == ex["input_ids"][:n_prompt]
        _, forced_prefix = render_input(role, QUESTION, earlier, open_tag=True)
        forced = HFEngine.render(eng, GenerationRequest(messages=msgs, assistant_prefix=forced_prefix))
        tag = forced_prefix[len(prefix):]
        assert tag and turn.startswith(tag)
        assert forced + turn[len(tag):] == sft_text  # the forced tag + the generated rest = the SFT turn
        assert reply_part(name, sft_text).count(THINK_OPEN) == reply_part(name, free + turn).count(THINK_OPEN)

        trl, lf, stats = export_role([rec], tok, max_length=10_000)
        assert trl[0]["prompt"] + trl[0]["completion"] == free + turn + tok.eos_token
        assert lf[0]["instruction"] == free
        assert stats["mismatches"] == {"trl": 0, "llamafactory": 0}


def test_engine_generates_from_the_rendered_ids(family, tiny_model):
    """The transformers engine's prompt is `render_chat`'s text, encoded: its prompt-token count
    for each turn equals that text's token count (one <think>, not the template's second one)."""
    name, tok = family
    eng = engine_for(tiny_model, tok)
    reqs = []
    for role, earlier, _ in TURNS:
        msgs, prefix = render_input(role, QUESTION, earlier, open_tag=True)
        reqs.append(GenerationRequest(messages=msgs, assistant_prefix=prefix,
                                      params=SamplingParams(temperature=0, max_new_tokens=2)))
    for req, res in zip(reqs, eng.generate(reqs), strict=True):
        text = render_chat(tok, req.messages, req.assistant_prefix)
        assert res.prompt_tokens == len(tok(text, add_special_tokens=False)["input_ids"])
        assert res.completions[0].num_tokens >= 1


# --------------------------------------------------------------------------- what is left alone


def test_plain_chatml_is_unchanged(base_tokenizer):
    tok = copy.deepcopy(base_tokenizer)
    tok.chat_template = CHATML_TEMPLATE
    msgs, prefix = render_input("short", QUESTION, [LONG_1], open_tag=True)
    plain = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert render_chat(tok, msgs, prefix) == plain + prefix
    assert chat_prompt(tok, msgs) == plain


def test_a_tag_in_the_last_message_is_kept(base_tokenizer):
    """Only a tag the generation prompt writes is cut: a template without a generation prompt and
    a message that ends with <think> keep it."""
    tok = copy.deepcopy(base_tokenizer)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    msgs = [{"role": "user", "content": "say <think>"}]
    assert render_chat(tok, msgs, "x") == "say <think>x"


def test_the_tags_templates_open_are_the_protocols_long_tag():
    """engines.base cannot import the protocol (layers); the tag it cuts must stay the long role's."""
    from longshort.dialogue.protocol import OPEN_TAGS
    from longshort.engines.base import TEMPLATE_OPEN_TAGS

    assert TEMPLATE_OPEN_TAGS == (OPEN_TAGS["long"],)
