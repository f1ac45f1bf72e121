"""Static checks of the Kubernetes manifests in deploy/k8s (no cluster, no
binaries, no model needed).

Every core-kind object is validated against a recent Kubernetes schema,
strictly (an unknown or misspelt field fails). A LeaderWorkerSet is a CRD
that kubernetes-validate has no schema for: its leader and worker templates
are each wrapped into a core `PodTemplate` and validated as such, and its
own top-level fields are checked by hand. Then what matters for weft: the
probes, the drain grace, /dev/shm, the listen addresses, and that no secret
is written inline.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# A recent release; kubernetes-validate 1.37.0 ships schemas up to 1.37.
K8S_VERSION = "1.35.0"

LWS_API = "leaderworkerset.x-k8s.io/v1"
HTTP_PORT = 8000

# Listen flags whose value may be 0.0.0.0 / [::] in a pod, and why. Inside a
# pod, the unspecified address is the pod's own network namespace: binding it
# is what makes a port reachable on the pod IP, and who may connect is decided
# by the Service and the NetworkPolicy (networkpolicy.yaml). Any other flag
# binding an unspecified address fails the test.
UNSPECIFIED_OK = {
    ("weft-coordinator", "--listen"): "client gRPC, behind Service weft",
    ("weft-coordinator", "--http-listen"): "client HTTP, behind Service weft",
    ("weft-coordinator", "--cluster-listen"): "cluster API, NetworkPolicy: LWS pods only",
    ("weft-worker", "--listen"): "worker gRPC, NetworkPolicy; needs --advertise-host",
    ("weft-worker", "--comm-listen"): "collectives, NetworkPolicy; needs --advertise-host",
}
LISTEN_FLAGS = {"--listen", "--http-listen", "--cluster-listen", "--comm-listen"}


def manifests():
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def lws_objects():
    return [d for _, d in manifests() if d.get("kind") == "LeaderWorkerSet"]


def name_of(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def pod_templates():
    """(label, pod template) of every LWS leader and worker template."""
    out = []
    for lws in lws_objects():
        t = lws["spec"]["leaderWorkerTemplate"]
        for role in ("leaderTemplate", "workerTemplate"):
            if role in t:
                out.append((f"{name_of(lws)}.{role}", t[role]))
    return out


def containers():
    for label, tmpl in pod_templates():
        spec = tmpl["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            yield label, spec, c


def command_line(c) -> list[str]:
    """The container's argv as flags; a `sh -c` script is split into words."""
    argv = list(c.get("command", [])) + list(c.get("args", []))
    if argv[:2] in (["/bin/sh", "-c"], ["sh", "-c"]):
        argv = shlex.split(" ".join(argv[2:]))
    return argv


def program(argv) -> str:
    for w in argv:
        base = w.rsplit("/", 1)[-1]
        if base.startswith("weft-"):
            return base
    return ""


def flags(argv) -> dict[str, str]:
    """--flag=value and --flag value forms, as {flag: value}."""
    out = {}
    for i, w in enumerate(argv):
        if not w.startswith("--"):
            continue
        if "=" in w:
            k, v = w.split("=", 1)
        else:
            nxt = argv[i + 1] if i + 1 < len(argv) else ""
            k, v = w, ("" if nxt.startswith("--") else nxt)
        out[k] = v
    return out


def test_manifests_exist():
    docs = manifests()
    assert docs, f"no manifests in {K8S}"
    assert lws_objects(), "no LeaderWorkerSet in deploy/k8s"


@pytest.mark.parametrize(
    "doc",
    [d for _, d in manifests() if d.get("kind") != "LeaderWorkerSet"],
    ids=lambda d: name_of(d),
)
def test_core_objects_validate_strictly(doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("label,tmpl", pod_templates(), ids=lambda x: x if isinstance(x, str) else "")
def test_lws_pod_templates_validate_strictly(label, tmpl):
    wrapped = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": label.replace(".", "-").replace("/", "-").lower()},
        "template": tmpl,
    }
    kubernetes_validate.validate(wrapped, K8S_VERSION, strict=True)


def test_lws_top_level_fields():
    allowed_spec = {
        "replicas", "leaderWorkerTemplate", "rolloutStrategy", "startupPolicy",
        "networkConfig",
    }
    allowed_template = {
        "size", "restartPolicy", "leaderTemplate", "workerTemplate", "subGroupPolicy",
    }
    for lws in lws_objects():
        assert lws["apiVersion"] == LWS_API
        assert lws["kind"] == "LeaderWorkerSet"
        assert lws["metadata"]["name"]
        spec = lws["spec"]
        assert set(spec) <= allowed_spec, set(spec) - allowed_spec
        assert isinstance(spec["replicas"], int) and spec["replicas"] >= 1
        t = spec["leaderWorkerTemplate"]
        assert set(t) <= allowed_template, set(t) - allowed_template
        assert isinstance(t["size"], int) and t["size"] >= 2
        assert "workerTemplate" in t and "leaderTemplate" in t
        assert t.get("restartPolicy", "None") in ("None", "RecreateGroupOnPodRestart")
        assert spec.get("startupPolicy", "LeaderCreated") in ("LeaderCreated", "LeaderReady")


def test_group_size_is_tp_plus_leader():
    """Index 0 runs the coordinator only; indices 1..N run ranks 0..N-1."""
    for lws in lws_objects():
        t = lws["spec"]["leaderWorkerTemplate"]
        leader = t["leaderTemplate"]["spec"]["containers"]
        coord = [flags(command_line(c)) for c in leader if program(command_line(c)) == "weft-coordinator"]
        assert len(coord) == 1
        assert int(coord[0]["--tp"]) == t["size"] - 1
        for c in t["workerTemplate"]["spec"]["containers"]:
            f = flags(command_line(c))
            if program(command_line(c)) == "weft-worker":
                assert f["--rank"] == "$$((LWS_WORKER_INDEX-1))"
                assert f["--coordinator"] == "http://$(LWS_LEADER_ADDRESS):50052"


def test_coordinator_probes_hit_health_on_http_port():
    seen = 0
    for _, _, c in containers():
        argv = command_line(c)
        if program(argv) != "weft-coordinator":
            continue
        seen += 1
        f = flags(argv)
        assert f["--http-listen"].rsplit(":", 1)[1] == str(HTTP_PORT)
        # /health must stay open for the kubelet (no API key on probes).
        assert "--auth-health" not in f
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        for probe in ("startupProbe", "readinessProbe"):
            get = c[probe]["httpGet"]
            assert get["path"] == "/health", probe
            port = get["port"]
            assert ports.get(port, port) == HTTP_PORT, probe
        # Readiness is truthful: one 503 (NOT_SERVING) takes it out.
        assert c["readinessProbe"].get("failureThreshold", 3) <= 3
        # Liveness must not kill a coordinator that is re-forming its group
        # (NOT_SERVING on purpose): no /health, a TCP check instead.
        live = c["livenessProbe"]
        assert "httpGet" not in live, "liveness on /health would kill a re-forming group"
        assert ports.get(live["tcpSocket"]["port"], live["tcpSocket"]["port"]) == HTTP_PORT
        # The startup probe allows a long load (>= 10 minutes).
        s = c["startupProbe"]
        assert s.get("periodSeconds", 10) * s.get("failureThreshold", 3) >= 600
    assert seen, "no weft-coordinator container"


def test_termination_grace_exceeds_drain_grace():
    for label, spec, c in containers():
        f = flags(command_line(c))
        if program(command_line(c)) != "weft-coordinator":
            continue
        drain = int(f.get("--drain-grace-s", 30))  # 30: the binary's default
        grace = spec.get("terminationGracePeriodSeconds", 30)
        assert grace > drain, f"{label}: terminationGracePeriodSeconds {grace} <= drain {drain}"


def test_dev_shm_is_memory_emptydir():
    for label, spec, c in containers():
        if program(command_line(c)) != "weft-worker":
            continue
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        assert "/dev/shm" in mounts, f"{label}: no /dev/shm mount"
        vol = {v["name"]: v for v in spec["volumes"]}[mounts["/dev/shm"]]
        assert vol["emptyDir"]["medium"] == "Memory"
        assert vol["emptyDir"].get("sizeLimit"), "an unbounded /dev/shm can take the node's memory"


def test_gpu_workers_ask_for_one_gpu_and_use_it():
    for label, _, c in containers():
        argv = command_line(c)
        if program(argv) != "weft-worker":
            continue
        f = flags(argv)
        res = c["resources"]
        assert str(res["limits"]["nvidia.com/gpu"]) == "1", label
        assert f["--device"] == "cuda:0", label


def test_no_unintended_unspecified_binds():
    for label, _, c in containers():
        argv = command_line(c)
        prog = program(argv)
        f = flags(argv)
        for flag in LISTEN_FLAGS & set(f):
            host = f[flag].rsplit(":", 1)[0]
            if host in ("0.0.0.0", "[::]", "::", ""):
                assert (prog, flag) in UNSPECIFIED_OK, f"{label}: {prog} {flag}={f[flag]}"
        if prog == "weft-worker":
            binds_any = any(
                f.get(k, "127.0.0.1:0").rsplit(":", 1)[0] in ("0.0.0.0", "[::]", "::")
                for k in ("--listen", "--comm-listen")
            )
            if binds_any:
                assert f.get("--advertise-host") == "$(POD_IP)", label
                env = {e["name"]: e for e in c.get("env", [])}
                assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


SECRETISH = re.compile(r"(api[_-]?key|token|password|secret|private[_-]?key)", re.I)


def test_no_inline_secrets():
    for fname, doc in manifests():
        # No Secret object with data in the repository.
        if doc.get("kind") == "Secret":
            assert not doc.get("data") and not doc.get("stringData"), f"{fname}: inline Secret data"
        text = yaml.safe_dump(doc)
        assert "BEGIN" not in text or "PRIVATE KEY" not in text, f"{fname}: a PEM key inline"
    for label, spec, c in containers():
        argv = command_line(c)
        f = flags(argv)
        # Keys never on the command line (the binaries refuse --api-key anyway).
        assert "--api-key" not in f, label
        for e in c.get("env", []):
            if SECRETISH.search(e["name"]):
                assert "value" not in e, f"{label}: secret-looking env {e['name']} inline"
            assert e["name"] != "WEFT_API_KEY", f"{label}: WEFT_API_KEY in env; mount a file"
        for ef in c.get("envFrom", []):
            assert "secretRef" not in ef, f"{label}: secrets as environment; mount a file"
        if program(argv) == "weft-coordinator":
            # The API key file comes from a mounted Secret volume.
            key_file = f["--api-key-file"]
            mounts = [m for m in c["volumeMounts"] if key_file.startswith(m["mountPath"].rstrip("/") + "/")]
            assert mounts, f"{label}: --api-key-file {key_file} is not on a mounted volume"
            vol = {v["name"]: v for v in spec["volumes"]}[mounts[0]["name"]]
            assert "secret" in vol, f"{label}: --api-key-file is not on a Secret volume"
            assert mounts[0].get("readOnly") is True
