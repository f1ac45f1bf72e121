"""grpc.health.v1 through grpcio-health-checking, and server reflection
through grpcio-reflection: generic clients that know nothing of weft."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

import weftlib

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _http_health(c):
    try:
        with urllib.request.urlopen(f"{c.http_url}/health", timeout=10) as r:
            return r.status, json.load(r)["status"]
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)["status"]


def _check(stub, service):
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def test_health_not_serving_until_the_worker_loaded(tmp_path):
    """A coordinator without workers answers NOT_SERVING; once a worker
    started by hand has registered, loaded and run the canary step, the
    status turns SERVING (seen both through Watch and Check)."""
    c = weftlib.Coordinator(tmp_path / "coordinator.log", local_workers=False)
    try:
        c.wait_listening(timeout=60)
        # The HTTP /health tells the same: 503 with the reason.
        assert _http_health(c) == (503, "not_serving")
        with c.channel() as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            for service in ("", "weft.v1.Generation", "weft.v1.Models"):
                assert _check(stub, service) == NOT_SERVING, service
            # A service the server does not have.
            with pytest.raises(grpc.RpcError) as e:
                _check(stub, "no.such.Service")
            assert e.value.code() == grpc.StatusCode.NOT_FOUND

            # Watch from before the worker exists: the first message is the
            # current status, then SERVING once the group is up.
            watch = stub.Watch(
                health_pb2.HealthCheckRequest(service="weft.v1.Generation"), timeout=120
            )
            seen = []
            first = threading.Event()

            def consume():
                try:
                    for r in watch:
                        seen.append(r.status)
                        first.set()
                        if r.status == SERVING:
                            return
                except grpc.RpcError as err:
                    seen.append(err)
                finally:
                    first.set()

            t = threading.Thread(target=consume, daemon=True)
            t.start()
            assert first.wait(10), "Watch sent nothing"
            assert seen[0] == NOT_SERVING, seen

            c.start_worker(rank=0)
            t.join(timeout=125)
            assert not t.is_alive(), "Watch did not report SERVING within 120 s"
            assert seen[-1] == SERVING, f"{seen}\n{c.proc.log_tail()}"
            watch.cancel()

            for service in ("", "weft.v1.Generation", "weft.v1.Models"):
                assert _check(stub, service) == SERVING, service
        assert _http_health(c) == (200, "serving")
        # The ready line comes with SERVING.
        c.wait_ready(timeout=10)
    finally:
        rc = c.stop()
    assert rc == 0, f"coordinator exited with {rc} on SIGTERM\n{c.proc.log_tail()}"


def test_reflection_lists_services(server):
    with server.channel() as ch:
        db = ProtoReflectionDescriptorDatabase(ch)
        services = set(db.get_services())
    assert {"weft.v1.Generation", "weft.v1.Models", "grpc.health.v1.Health"} <= services


def test_generate_through_reflection_only(server):
    """Generate called with message classes built from reflected
    descriptors and a generic unary call: no generated stubs."""
    with server.channel() as ch:
        db = ProtoReflectionDescriptorDatabase(ch)
        pool = descriptor_pool.DescriptorPool(db)
        service = pool.FindServiceByName("weft.v1.Generation")
        method = service.methods_by_name["Generate"]
        assert pool.FindMethodByName("weft.v1.Generation.Generate") is not None
        assert not method.client_streaming and not method.server_streaming
        Request = message_factory.GetMessageClass(method.input_type)
        Reply = message_factory.GetMessageClass(method.output_type)
        assert method.input_type.full_name == "weft.v1.GenerateRequest"

        call = ch.unary_unary(
            f"/{service.full_name}/{method.name}",
            request_serializer=Request.SerializeToString,
            response_deserializer=Reply.FromString,
        )
        req = Request(text="Hello, my name is", max_tokens=4, ignore_eos=True)
        reply = call(req, timeout=60)
    assert reply.text
    assert len(reply.tokens) == 4
    assert "".join(t.text for t in reply.tokens) + reply.finished.trailing_text == reply.text
    length = pool.FindEnumTypeByName("weft.v1.FinishReason").values_by_name[
        "FINISH_REASON_LENGTH"
    ].number
    assert reply.finished.reason == length
    assert reply.finished.usage.completion_tokens == 4
