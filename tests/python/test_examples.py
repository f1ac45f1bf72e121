"""The Python example runs against a real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import weftlib

EXAMPLE = weftlib.REPO_ROOT / "examples" / "python" / "client.py"


def _run(args, env=None, cwd=None):
    base = {k: v for k, v in os.environ.items() if k not in ("WEFT_API_KEY", "WEFT_ADDR")}
    return subprocess.run(
        [sys.executable, EXAMPLE, *args], env={**base, **(env or {})}, cwd=cwd,
        capture_output=True, text=True, timeout=120,
    )


def test_client_example(server, tmp_path):
    # From another folder, so that nothing depends on the working directory.
    r = _run([server.grpc_addr], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith("assistant: ")
    m = re.search(r"\[finished: FINISH_REASON_(EOS|LENGTH|STOP), (\d+) prompt \+ (\d+) completion tokens\]", out)
    assert m, out
    assert int(m.group(2)) > 0 and 0 < int(m.group(3)) <= 32
    answer = out[len("assistant: "): m.start()].strip()
    assert answer, out
    m = re.search(r"tokenize 'Hello, weft!': (\d+) tokens \[([\d, ]+)\]", out)
    assert m, out
    assert int(m.group(1)) == len(m.group(2).split(","))
    assert f"model {server.model_name}: llama" in out, out


def test_client_example_address_from_env(server):
    r = _run([], env={"WEFT_ADDR": server.grpc_addr})
    assert r.returncode == 0, r.stderr
    assert server.model_name in r.stdout


def test_client_example_reports_an_unreachable_server():
    (port,) = weftlib.free_ports(1)
    r = _run([f"127.0.0.1:{port}"])
    assert r.returncode != 0
    assert "UNAVAILABLE" in r.stderr
