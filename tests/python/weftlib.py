"""Helpers of weft's Python tests: starting and stopping the real binaries,
free ports, gRPC stubs generated from the repository's proto at test time,
and Prometheus scraping.

Every process started here runs in its own process group, and stopping
one ends its whole group (the coordinator's local workers included), so
nothing outlives the test session even when a test fails.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO_ROOT / "proto"
READY_PREFIX = "weft-coordinator ready:"
# gRPC channels of the tests go straight to loopback, whatever the
# environment says about proxies.
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]


def bin_dir() -> Path:
    d = Path(os.environ.get("WEFT_BIN_DIR", "target/release"))
    return d if d.is_absolute() else REPO_ROOT / d


def model_path() -> Path:
    p = Path(os.environ.get("WEFT_TEST_MODEL", "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    return p if p.is_absolute() else REPO_ROOT / p


def binary(name: str) -> Path:
    p = bin_dir() / name
    if not p.is_file():
        raise FileNotFoundError(
            f"{p} not found: build it with `cargo build --release --bins` "
            "or point WEFT_BIN_DIR at the folder that holds it"
        )
    return p


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (bound to port 0, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


_live: set["Proc"] = set()


class Proc:
    """A child process in its own process group; stderr goes to a file,
    stdout is read line by line by a thread."""

    def __init__(self, args: list[str], log_path: Path, env: dict | None = None):
        self.args = [str(a) for a in args]
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "ab")
        # env: variables to set; a value None removes the variable.
        full_env = dict(os.environ)
        for k, v in (env or {}).items():
            if v is None:
                full_env.pop(k, None)
            else:
                full_env[k] = str(v)
        self.stdout_lines: list[str] = []
        self._cond = threading.Condition()
        self.popen = subprocess.Popen(
            self.args,
            cwd=REPO_ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
        )
        _live.add(self)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in self.popen.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._cond:
                self.stdout_lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for_line(self, prefix: str, timeout: float) -> str:
        """The first stdout line that starts with prefix; fails when the
        process exits or the timeout passes first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.stdout_lines:
                    if line.startswith(prefix):
                        return line
                # (Not waiting for EOF: children may hold the pipe open.)
                if self.popen.poll() is not None:
                    raise RuntimeError(
                        f"{self.args[0]} exited with {self.popen.returncode} before "
                        f"printing {prefix!r}\n{self.log_tail()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{self.args[0]} did not print {prefix!r} within {timeout} s\n"
                        f"{self.log_tail()}"
                    )
                self._cond.wait(min(left, 0.5))

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_bytes().decode("utf-8", "replace")

    def log_tail(self, n: int = 40) -> str:
        lines = self.log_text().splitlines()
        return "--- stderr (last lines) ---\n" + "\n".join(lines[-n:])

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds; then SIGKILL to
        whatever is left of the process group (children it started)."""
        pgid = self.popen.pid  # start_new_session: the group id is the pid
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._reader.join(timeout=5)
        self._log.close()
        _live.discard(self)
        return self.popen.returncode


@atexit.register
def _kill_leftovers():
    for p in list(_live):
        try:
            p.stop(grace=2)
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


def _on_termination(signum, _frame):
    # SIGTERM/SIGHUP (e.g. from `timeout`) would end the interpreter without
    # running fixture teardown or atexit: end the children first, then die
    # of the same signal.
    _kill_leftovers()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


for _sig in (signal.SIGTERM, signal.SIGHUP):
    if signal.getsignal(_sig) in (signal.SIG_DFL, None):
        signal.signal(_sig, _on_termination)


class Coordinator:
    """A weft-coordinator on free loopback ports."""

    def __init__(
        self,
        log_path: Path,
        *,
        local_workers: bool = True,
        extra_args: list[str] = (),
        env: dict | None = None,
    ):
        self.grpc_port, self.cluster_port, self.http_port = free_ports(3)
        self.grpc_addr = f"127.0.0.1:{self.grpc_port}"
        self.cluster_url = f"http://127.0.0.1:{self.cluster_port}"
        self.http_url = f"http://127.0.0.1:{self.http_port}"
        self.model_name = model_path().stem
        args = [
            binary("weft-coordinator"),
            "--model", model_path(),
            "--tp", "1",
            "--listen", self.grpc_addr,
            "--cluster-listen", f"127.0.0.1:{self.cluster_port}",
            "--http-listen", f"127.0.0.1:{self.http_port}",
        ]
        if local_workers:
            args += ["--local-workers", "--worker-bin", binary("weft-worker")]
        args += list(extra_args)
        if not model_path().is_file():
            raise FileNotFoundError(f"{model_path()} not found: run scripts/fetch-model.sh")
        # Keys from the caller's environment would lock the tests out.
        env = {"WEFT_API_KEY": None, "WEFT_API_KEY_FILE": None, "WEFT_AUTH_HEALTH": None,
               **(env or {})}
        self.proc = Proc(args, log_path, env)
        self.workers: list[Proc] = []

    def wait_ready(self, timeout: float = 120.0) -> str:
        return self.proc.wait_for_line(READY_PREFIX, timeout)

    def wait_listening(self, timeout: float = 60.0):
        """Waits until the client gRPC API accepts connections (it does so
        before the model is loaded)."""
        with self.channel() as ch:
            try:
                grpc.channel_ready_future(ch).result(timeout=timeout)
            except grpc.FutureTimeoutError:
                if self.proc.popen.poll() is not None:
                    raise RuntimeError(f"coordinator exited\n{self.proc.log_tail()}") from None
                raise TimeoutError(f"gRPC API not up within {timeout} s\n{self.proc.log_tail()}")

    def start_worker(self, rank: int = 0, log_path: Path | None = None) -> Proc:
        w = Proc(
            [
                binary("weft-worker"),
                "--coordinator", self.cluster_url,
                "--rank", str(rank),
            ],
            log_path or self.proc.log_path,
        )
        self.workers.append(w)
        return w

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.grpc_addr, options=CHANNEL_OPTIONS)

    def log_text(self) -> str:
        return self.proc.log_text()

    def stop(self) -> int | None:
        rc = self.proc.stop()
        for w in self.workers:
            w.stop()
        return rc


def generate_stubs(out_dir: Path):
    """Compiles proto/weft/v1/generation.proto with grpc_tools into out_dir
    and imports it; returns (generation_pb2, generation_pb2_grpc)."""
    from grpc_tools import protoc
    import importlib

    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(PROTO_DIR / "weft" / "v1" / "generation.proto"),
        ]
    )
    if rc != 0:
        raise RuntimeError(f"grpc_tools.protoc failed with {rc}")
    sys.path.insert(0, str(out_dir))
    importlib.invalidate_caches()
    pb2 = importlib.import_module("weft.v1.generation_pb2")
    pb2_grpc = importlib.import_module("weft.v1.generation_pb2_grpc")
    return pb2, pb2_grpc


def bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


def scrape(http_url: str, headers: dict | None = None) -> str:
    req = urllib.request.Request(f"{http_url}/metrics", headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode("utf-8")


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a Prometheus text exposition, keyed by (sample name,
    sorted labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def wait_until(pred, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Polls pred() until it returns a truthy value, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        time.sleep(interval)
