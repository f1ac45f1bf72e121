"""API keys: a coordinator started with --api-key-file refuses requests
without the right `authorization: Bearer` key on both APIs, accepts the
right one, and never writes a presented key to its log, even at
RUST_LOG=debug (which reaches its workers too)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import grpc
import openai
import pytest

import weftlib

# Random per run, so that a hit in the log cannot be a coincidence.
KEY = "weft-test-key-" + secrets.token_hex(16)
WRONG_KEY = "weft-wrong-key-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("auth")
    key_file = d / "keys"
    key_file.write_text(f"# test keys\n{KEY}\n")
    key_file.chmod(0o600)
    env = {"RUST_LOG": "debug", "WEFT_API_KEY": None, "WEFT_API_KEY_FILE": None}
    c = weftlib.Coordinator(
        d / "coordinator.log", extra_args=["--api-key-file", key_file], env=env
    )
    try:
        c.wait_ready(timeout=120)
        yield c
    finally:
        c.stop()


def _client(server, key):
    return openai.OpenAI(
        base_url=f"{server.http_url}/v1", api_key=key, max_retries=0, timeout=60
    )


def test_grpc_needs_the_key(auth_server, stubs):
    pb, pb_grpc = stubs
    with auth_server.channel() as ch:
        gen = pb_grpc.GenerationStub(ch)
        models = pb_grpc.ModelsStub(ch)
        req = pb.GenerateRequest(text="Hello", max_tokens=2)
        for meta in (None, weftlib.bearer(WRONG_KEY), [("authorization", KEY)]):
            for call, arg in ((gen.Generate, req), (models.ListModels, pb.ListModelsRequest())):
                with pytest.raises(grpc.RpcError) as e:
                    call(arg, metadata=meta, timeout=30)
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, meta
                assert KEY not in (e.value.details() or "")
                assert WRONG_KEY not in (e.value.details() or "")
        # Streams are refused too.
        with pytest.raises(grpc.RpcError) as e:
            list(gen.GenerateStream(req, metadata=weftlib.bearer(WRONG_KEY), timeout=30))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED

        ok = gen.Generate(req, metadata=weftlib.bearer(KEY), timeout=60)
        assert ok.finished.usage.completion_tokens >= 1
        names = [m.name for m in models.ListModels(pb.ListModelsRequest(),
                                                   metadata=weftlib.bearer(KEY)).models]
        assert auth_server.model_name in names
        stream = list(gen.GenerateStream(req, metadata=weftlib.bearer(KEY), timeout=60))
        assert stream[-1].WhichOneof("event") == "finished"


def test_grpc_health_is_open_without_auth_health(auth_server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with auth_server.channel() as ch:
        r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert r.status == health_pb2.HealthCheckResponse.SERVING


def test_http_needs_the_key(auth_server):
    m = auth_server.model_name
    with pytest.raises(openai.AuthenticationError) as e:
        _client(auth_server, WRONG_KEY).models.list()
    assert e.value.status_code == 401
    assert WRONG_KEY not in str(e.value)
    with pytest.raises(openai.AuthenticationError) as e:
        _client(auth_server, WRONG_KEY).chat.completions.create(
            model=m, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
    assert e.value.status_code == 401
    # No key at all: the SDK is told to send no Authorization header.
    with pytest.raises(openai.AuthenticationError) as e:
        _client(auth_server, "placeholder").completions.create(
            model=m, prompt="Hi", max_tokens=2,
            extra_headers={"Authorization": openai.Omit()},
        )
    assert e.value.status_code == 401

    good = _client(auth_server, KEY)
    assert m in [x.id for x in good.models.list()]
    r = good.chat.completions.create(
        model=m, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert r.usage.completion_tokens >= 1


def test_example_client_uses_WEFT_API_KEY(auth_server):
    script = weftlib.REPO_ROOT / "examples" / "python" / "client.py"
    env = {k: v for k, v in os.environ.items() if k != "WEFT_API_KEY"}
    ok = subprocess.run(
        [sys.executable, script, auth_server.grpc_addr],
        env={**env, "WEFT_API_KEY": KEY}, capture_output=True, text=True, timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    refused = subprocess.run(
        [sys.executable, script, auth_server.grpc_addr],
        env={**env, "WEFT_API_KEY": WRONG_KEY}, capture_output=True, text=True, timeout=120,
    )
    assert refused.returncode != 0
    assert "UNAUTHENTICATED" in refused.stderr
    assert WRONG_KEY not in refused.stderr + refused.stdout


def test_log_never_shows_a_key(auth_server, stubs):
    """Runs last in this module: one more wrong and right call, then stops
    the server (flushing its log) and searches the whole stderr of the
    coordinator and its worker."""
    pb, pb_grpc = stubs
    with auth_server.channel() as ch:
        gen = pb_grpc.GenerationStub(ch)
        req = pb.GenerateRequest(text="Hi", max_tokens=1)
        with pytest.raises(grpc.RpcError):
            gen.Generate(req, metadata=weftlib.bearer(WRONG_KEY), timeout=30)
        gen.Generate(req, metadata=weftlib.bearer(KEY), timeout=60)
    assert auth_server.stop() == 0, "no graceful exit on SIGTERM"
    log = auth_server.log_text()
    # The log is real: debug level, from the coordinator and the worker.
    assert "DEBUG" in log, log[-2000:]
    assert "weft_worker" in log, log[-2000:]
    assert KEY not in log
    assert WRONG_KEY not in log
    # Nor the random halves alone (e.g. a key cut at the prefix).
    assert KEY.rsplit("-", 1)[1] not in log
    assert WRONG_KEY.rsplit("-", 1)[1] not in log
