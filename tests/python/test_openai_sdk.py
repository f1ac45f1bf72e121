"""The OpenAI-compatible HTTP API, through the official `openai` SDK."""

from __future__ import annotations

import re

import pytest

MESSAGES = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "Name three colors of the rainbow."},
]
PROMPT = "The capital of France is"


def _check_usage(usage, completion_tokens=None):
    assert usage is not None
    assert usage.prompt_tokens > 0
    assert usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if completion_tokens is not None:
        assert usage.completion_tokens == completion_tokens


def _chat_stream(client, model, **kw):
    """(text, finish_reason, usage, chunks) of a streamed chat completion."""
    chunks = list(
        client.chat.completions.create(
            model=model, stream=True, stream_options={"include_usage": True}, **kw
        )
    )
    assert chunks, "no chunk"
    *body, last = chunks
    # With include_usage, the last chunk has no choices and the usage; the
    # others have choices and usage null.
    assert last.choices == []
    for c in body:
        assert c.usage is None
        assert len(c.choices) == 1 and c.choices[0].index == 0
        assert c.object == "chat.completion.chunk"
    text = "".join(c.choices[0].delta.content or "" for c in body)
    reasons = [c.choices[0].finish_reason for c in body if c.choices[0].finish_reason]
    assert len(reasons) == 1, reasons
    assert body[-1].choices[0].finish_reason == reasons[0]
    assert len({c.id for c in chunks}) == 1
    return text, reasons[0], last.usage, chunks


def _completion_stream(client, model, **kw):
    chunks = list(
        client.completions.create(
            model=model, stream=True, stream_options={"include_usage": True}, **kw
        )
    )
    assert chunks, "no chunk"
    *body, last = chunks
    assert last.choices == []
    for c in body:
        assert c.usage is None
        assert len(c.choices) == 1
    text = "".join(c.choices[0].text for c in body)
    reasons = [c.choices[0].finish_reason for c in body if c.choices[0].finish_reason]
    assert len(reasons) == 1, reasons
    return text, reasons[0], last.usage


def test_models_list_has_the_served_model(openai_client, server):
    ids = [m.id for m in openai_client.models.list()]
    assert server.model_name in ids


def test_chat_completion(openai_client, server):
    r = openai_client.chat.completions.create(
        model=server.model_name, messages=MESSAGES, max_tokens=8, temperature=0
    )
    assert r.object == "chat.completion"
    assert r.model == server.model_name
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.message.role == "assistant"
    assert isinstance(c.message.content, str) and c.message.content
    assert c.finish_reason in ("stop", "length")
    _check_usage(r.usage)
    assert r.usage.completion_tokens <= 8
    if c.finish_reason == "length":
        assert r.usage.completion_tokens == 8


def test_chat_completion_stream_with_usage(openai_client, server):
    text, reason, usage, chunks = _chat_stream(
        openai_client, server.model_name, messages=MESSAGES, max_tokens=6,
        extra_body={"ignore_eos": True},
    )
    assert text
    assert reason == "length"
    _check_usage(usage, completion_tokens=6)
    assert chunks[0].choices[0].delta.role == "assistant"


def test_completion(openai_client, server):
    r = openai_client.completions.create(
        model=server.model_name, prompt=PROMPT, max_tokens=5, temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert r.object == "text_completion"
    assert len(r.choices) == 1
    assert r.choices[0].text
    assert r.choices[0].finish_reason == "length"
    _check_usage(r.usage, completion_tokens=5)


def test_completion_stream_with_usage(openai_client, server):
    text, reason, usage = _completion_stream(
        openai_client, server.model_name, prompt=PROMPT, max_tokens=5,
        extra_body={"ignore_eos": True},
    )
    assert text
    assert reason == "length"
    _check_usage(usage, completion_tokens=5)


def test_greedy_stream_equals_non_stream(openai_client, server):
    kw = dict(model=server.model_name, max_tokens=12, temperature=0)
    whole = openai_client.chat.completions.create(messages=MESSAGES, **kw)
    streamed, reason, usage, _ = _chat_stream(openai_client, messages=MESSAGES, **kw)
    assert streamed == whole.choices[0].message.content
    assert reason == whole.choices[0].finish_reason
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens == whole.usage.prompt_tokens

    whole = openai_client.completions.create(prompt=PROMPT, **kw)
    streamed, reason, usage = _completion_stream(openai_client, prompt=PROMPT, **kw)
    assert streamed == whole.choices[0].text
    assert reason == whole.choices[0].finish_reason
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_stop_string(openai_client, server):
    kw = dict(model=server.model_name, prompt=PROMPT, max_tokens=16, temperature=0,
              extra_body={"ignore_eos": True})
    free = openai_client.completions.create(**kw).choices[0].text
    # A word that the greedy continuation contains, not at its very start:
    # with it as a stop string the output must end right before it.
    words = [m for m in re.finditer(r"[A-Za-z]{3,}", free) if m.start() > 0]
    if not words:
        pytest.fail(f"no word to stop at in {free!r}")
    stop = words[0].group()
    cut = free.index(stop)
    r = openai_client.completions.create(stop=[stop], **kw)
    c = r.choices[0]
    assert c.finish_reason == "stop"
    assert stop not in c.text
    assert c.text == free[:cut]

    # The same through chat, streamed and not.
    ckw = dict(model=server.model_name, messages=MESSAGES, max_tokens=16, temperature=0,
               extra_body={"ignore_eos": True})
    free = openai_client.chat.completions.create(**ckw).choices[0].message.content
    words = [m for m in re.finditer(r"[A-Za-z]{3,}", free) if m.start() > 0]
    if not words:
        pytest.fail(f"no word to stop at in {free!r}")
    stop = words[0].group()
    r = openai_client.chat.completions.create(stop=stop, **ckw)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == free[: free.index(stop)]
    text, reason, _, _ = _chat_stream(openai_client, stop=[stop], **ckw)
    assert reason == "stop"
    assert text == free[: free.index(stop)]


def test_seed_reproduces_sampling(openai_client, server):
    kw = dict(model=server.model_name, messages=MESSAGES, max_tokens=12,
              temperature=1.0, seed=1234)
    a = openai_client.chat.completions.create(**kw).choices[0].message.content
    b = openai_client.chat.completions.create(**kw).choices[0].message.content
    assert a == b
    ckw = dict(model=server.model_name, prompt=PROMPT, max_tokens=12, temperature=1.0,
               seed=99)
    a = openai_client.completions.create(**ckw).choices[0].text
    b, _, _ = _completion_stream(openai_client, **ckw)
    assert a == b


def test_chat_logprobs(openai_client, server):
    r = openai_client.chat.completions.create(
        model=server.model_name, messages=MESSAGES, max_tokens=5, temperature=0,
        logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True},
    )
    content = r.choices[0].logprobs.content
    assert len(content) == 5 == r.usage.completion_tokens
    for t in content:
        assert t.logprob <= 0
        assert len(t.top_logprobs) == 3
        assert all(a.logprob <= 0 for a in t.top_logprobs)
        # Greedy: the chosen token is the most likely one.
        assert t.logprob == pytest.approx(t.top_logprobs[0].logprob, abs=1e-4)
        lps = [a.logprob for a in t.top_logprobs]
        assert lps == sorted(lps, reverse=True)
    assert "".join(t.token for t in content) == r.choices[0].message.content


def test_completion_logprobs(openai_client, server):
    r = openai_client.completions.create(
        model=server.model_name, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2,
        extra_body={"ignore_eos": True},
    )
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == 4
    assert all(v <= 0 for v in lp.token_logprobs)
    assert len(lp.top_logprobs) == 4
    for alts in lp.top_logprobs:
        assert 1 <= len(alts) <= 2
        assert all(v <= 0 for v in alts.values())
    assert "".join(lp.tokens) == r.choices[0].text
