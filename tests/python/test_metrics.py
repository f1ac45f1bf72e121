"""/metrics: Prometheus text that prometheus_client parses, with counters
that move by exactly what the requests did.

The session's server serves one test at a time, so between two scrapes
only this test's requests run. Counters are updated as tokens are
produced, possibly a moment after the response went out, so the second
scrape is polled until the expected values show (and must then be exact).
"""

from __future__ import annotations

import pytest

import weftlib

N_REQUESTS = 2
MAX_TOKENS = 5
PROMPTS = ["The quick brown fox", "Once upon a time, in a small village,"]


def _key(model, name, **labels):
    labels["model_name"] = model
    return (name, tuple(sorted(labels.items())))


def _counters(server):
    s = weftlib.samples(weftlib.scrape(server.http_url))
    m = server.model_name
    return {
        "prompt": s.get(_key(m, "weft:prompt_tokens_total")),
        "generation": s.get(_key(m, "weft:generation_tokens_total")),
        "length": s.get(_key(m, "weft:request_success_total", finished_reason="length")),
        "stop": s.get(_key(m, "weft:request_success_total", finished_reason="stop")),
        "abort": s.get(_key(m, "weft:request_success_total", finished_reason="abort")),
        "ttft_count": s.get(_key(m, "weft:time_to_first_token_seconds_count")),
        "running": s.get(_key(m, "weft:num_requests_running")),
    }


def test_metrics_parse_and_names(server):
    text = weftlib.scrape(server.http_url)
    from prometheus_client.parser import text_string_to_metric_families

    fams = {f.name: f for f in text_string_to_metric_families(text)}
    # prometheus_client strips the _total suffix from counter family names.
    assert fams["weft:prompt_tokens"].type == "counter"
    assert fams["weft:generation_tokens"].type == "counter"
    assert fams["weft:request_success"].type == "counter"
    assert fams["weft:time_to_first_token_seconds"].type == "histogram"
    assert fams["weft:num_requests_running"].type == "gauge"
    reasons = {s.labels.get("finished_reason") for s in fams["weft:request_success"].samples}
    assert {"stop", "length", "abort"} <= reasons
    for f in fams.values():
        for s in f.samples:
            assert s.labels.get("model_name") == server.model_name, s


def _run_http(server, client):
    prompt_tokens = 0
    for p in PROMPTS[:N_REQUESTS]:
        r = client.completions.create(
            model=server.model_name, prompt=p, max_tokens=MAX_TOKENS, temperature=0,
            extra_body={"ignore_eos": True},
        )
        assert r.choices[0].finish_reason == "length"
        assert r.usage.completion_tokens == MAX_TOKENS
        prompt_tokens += r.usage.prompt_tokens
    return prompt_tokens


def _run_grpc(server, pb, generation):
    prompt_tokens = 0
    for p in PROMPTS[:N_REQUESTS]:
        r = generation.Generate(
            pb.GenerateRequest(text=p, max_tokens=MAX_TOKENS, ignore_eos=True), timeout=60
        )
        assert r.finished.reason == pb.FINISH_REASON_LENGTH
        assert r.finished.usage.completion_tokens == MAX_TOKENS
        prompt_tokens += r.finished.usage.prompt_tokens
    return prompt_tokens


@pytest.mark.parametrize("api", ["grpc", "http"])
def test_counters_move_by_the_requests(api, server, request):
    before = _counters(server)
    assert None not in before.values(), before
    if api == "http":
        prompt_tokens = _run_http(server, request.getfixturevalue("openai_client"))
    else:
        prompt_tokens = _run_grpc(
            server, request.getfixturevalue("pb"), request.getfixturevalue("generation")
        )
    want = {
        "prompt": before["prompt"] + prompt_tokens,
        "generation": before["generation"] + N_REQUESTS * MAX_TOKENS,
        "length": before["length"] + N_REQUESTS,
        "ttft_count": before["ttft_count"] + N_REQUESTS,
    }

    def reached():
        now = _counters(server)
        return now if all(now[k] >= v for k, v in want.items()) else None

    try:
        after = weftlib.wait_until(reached, timeout=10, what="the expected counters")
    except TimeoutError:
        after = _counters(server)
    for k, v in want.items():
        assert after[k] == v, (k, before, after)
    assert after["stop"] == before["stop"]
    assert after["abort"] == before["abort"]
    assert after["running"] is not None and after["running"] >= 0
