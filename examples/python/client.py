"""A small client of weft's gRPC API (weft.v1): streams a chat answer, then
tokenizes a text and lists the served models.

    python examples/python/client.py [ADDRESS]

ADDRESS defaults to $WEFT_ADDR, else 127.0.0.1:50051. When the server
requires an API key, put it in $WEFT_API_KEY. Needs grpcio and grpcio-tools
(scripts/python-env.sh installs them into .venv/).
"""

import os
import sys
import tempfile
from pathlib import Path

import grpc

PROTO_DIR = Path(os.environ.get("WEFT_PROTO_DIR", Path(__file__).resolve().parents[2] / "proto"))


def load_stubs():
    """Imports the generated weft.v1 modules; when they are not installed,
    compiles them from the repository's proto into a temporary folder."""
    try:
        from weft.v1 import generation_pb2, generation_pb2_grpc
        return generation_pb2, generation_pb2_grpc
    except ImportError:
        pass
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="weft-stubs-")
    rc = protoc.main([
        "protoc", f"-I{PROTO_DIR}", f"--python_out={out}", f"--grpc_python_out={out}",
        str(PROTO_DIR / "weft" / "v1" / "generation.proto"),
    ])
    if rc != 0:
        sys.exit(f"could not compile {PROTO_DIR}/weft/v1/generation.proto")
    sys.path.insert(0, out)
    from weft.v1 import generation_pb2, generation_pb2_grpc
    return generation_pb2, generation_pb2_grpc


def main():
    address = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("WEFT_ADDR", "127.0.0.1:50051")
    pb, rpc = load_stubs()
    key = os.environ.get("WEFT_API_KEY")
    metadata = [("authorization", f"Bearer {key}")] if key else None

    with grpc.insecure_channel(address) as channel:
        generation = rpc.GenerationStub(channel)
        models = rpc.ModelsStub(channel)

        # 1. A short conversation, answered token by token.
        conversation = [
            pb.ChatMessage(role=pb.ROLE_SYSTEM, content="You are a helpful assistant."),
            pb.ChatMessage(role=pb.ROLE_USER, content="What is the capital of France?"),
        ]
        request = pb.ChatRequest(
            messages=conversation,
            max_tokens=32,
            sampling=pb.SamplingParams(temperature=0.7, top_p=0.9, seed=42),
        )
        print("assistant: ", end="", flush=True)
        for event in generation.ChatStream(request, metadata=metadata, timeout=120):
            if event.HasField("token"):
                print(event.token.text, end="", flush=True)
            else:
                done = event.finished
                print(done.trailing_text)
                print(f"[finished: {pb.FinishReason.Name(done.reason)}, "
                      f"{done.usage.prompt_tokens} prompt + "
                      f"{done.usage.completion_tokens} completion tokens]")

        # 2. Tokenize a text.
        text = "Hello, weft!"
        ids = generation.Tokenize(pb.TokenizeRequest(text=text), metadata=metadata).ids
        print(f"tokenize {text!r}: {len(ids)} tokens {list(ids)}")

        # 3. The served models.
        for m in models.ListModels(pb.ListModelsRequest(), metadata=metadata).models:
            print(f"model {m.name}: {m.architecture}, context {m.max_model_len}, "
                  f"tensor-parallel {m.tensor_parallel_size}")


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as e:
        sys.exit(f"\nerror: {e.code().name}: {e.details()}")
