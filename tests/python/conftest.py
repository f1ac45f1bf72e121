"""Fixtures of weft's Python tests.

The binaries come from $WEFT_BIN_DIR (default target/release, relative to
the repository root); the model from $WEFT_TEST_MODEL (default
models/SmolLM2-135M-Instruct.Q4_1.gguf, fetched by scripts/fetch-model.sh).
"""

from __future__ import annotations

import pytest

import weftlib


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One coordinator with a local worker, open (no API key), shared by
    the whole session."""
    log = tmp_path_factory.mktemp("server") / "coordinator.log"
    c = weftlib.Coordinator(log)
    try:
        c.wait_ready(timeout=120)
        yield c
    finally:
        rc = c.stop()
    # SIGTERM is a graceful shutdown: exit status 0.
    assert rc == 0, f"coordinator exited with {rc} on SIGTERM\n{c.proc.log_tail()}"


@pytest.fixture(scope="session")
def stubs(tmp_path_factory):
    """(generation_pb2, generation_pb2_grpc), compiled from proto/ into a
    temporary folder."""
    return weftlib.generate_stubs(tmp_path_factory.mktemp("stubs"))


@pytest.fixture(scope="session")
def pb(stubs):
    return stubs[0]


@pytest.fixture(scope="session")
def channel(server):
    ch = server.channel()
    yield ch
    ch.close()


@pytest.fixture(scope="session")
def generation(stubs, channel):
    return stubs[1].GenerationStub(channel)


@pytest.fixture(scope="session")
def models_stub(stubs, channel):
    return stubs[1].ModelsStub(channel)


@pytest.fixture(scope="session")
def openai_client(server):
    import openai

    return openai.OpenAI(
        base_url=f"{server.http_url}/v1",
        api_key="unused-no-key-is-configured",
        max_retries=0,
        timeout=60,
    )
