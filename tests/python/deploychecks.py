"""Static checks of weft's Kubernetes objects, shared by test_deploy.py (the
plain manifests in deploy/k8s) and test_helm.py (renderings of the chart in
deploy/helm/weft). Every check takes the list of objects (parsed YAML
documents) and fails with an AssertionError naming the object.

Every core-kind object is validated against a recent Kubernetes schema,
strictly (an unknown or misspelt field fails). A LeaderWorkerSet is a CRD that
kubernetes-validate has no schema for: its leader and worker templates are
each wrapped into a core `PodTemplate` and validated as such, and its own
top-level fields are checked by hand. Then what matters for weft: the probes,
the drain grace, /dev/shm, GPUs, the listen addresses, no secret written
inline, mutual TLS, and the etcd that holds the ranks' claims.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import yaml

# A recent release; kubernetes-validate 1.37.0 ships schemas up to 1.37.
K8S_VERSION = "1.35.0"
LWS_API = "leaderworkerset.x-k8s.io/v1"
HTTP_PORT = 8000
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
ETCD_METRICS_PORT = 2381
WORKLOAD_KINDS = {"StatefulSet", "Deployment", "DaemonSet", "ReplicaSet", "Job"}
# What the LWS controller injects into every container of a group.
LWS_ENV = {"LWS_LEADER_ADDRESS", "LWS_GROUP_SIZE", "LWS_WORKER_INDEX"}

# Listen flags whose value may be 0.0.0.0 / [::] in a pod, and why. Inside a
# pod, the unspecified address is the pod's own network namespace: binding it
# is what makes a port reachable on the pod IP, and who may connect is decided
# by the Service and the NetworkPolicy. Any other flag binding an unspecified
# address fails.
UNSPECIFIED_OK = {
    ("weft-coordinator", "--listen"): "client gRPC, behind the client Service",
    ("weft-coordinator", "--http-listen"): "client HTTP, behind the client Service",
    ("weft-coordinator", "--cluster-listen"): "cluster API, NetworkPolicy: LWS pods only",
    ("weft-worker", "--listen"): "worker gRPC, NetworkPolicy; needs --advertise-host",
    ("weft-worker", "--comm-listen"): "collectives, NetworkPolicy; needs --advertise-host",
}
LISTEN_FLAGS = {"--listen", "--http-listen", "--cluster-listen", "--comm-listen"}
ETCD_LISTEN_FLAGS = ("--listen-client-urls", "--listen-peer-urls", "--listen-metrics-urls")
UNSPECIFIED = ("0.0.0.0", "[::]", "::", "")

# Flags naming a private key (must lie on a read-only Secret-like volume) and
# flags naming certificates (must lie on a read-only mount).
KEY_FLAGS = {"--api-key-file", "--tls-key", "--etcd-key", "--key-file", "--peer-key-file"}
CERT_FLAGS = {
    "--tls-cert", "--tls-ca", "--coordinator-cert", "--etcd-ca", "--etcd-cert",
    "--cert-file", "--trusted-ca-file", "--peer-cert-file", "--peer-trusted-ca-file",
}
SECRET_SOURCES = ("secret", "csi", "projected")


# ------------------------------------------------------------------ loading
def load_yaml_docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def load_dir(path: Path) -> list[dict]:
    docs = []
    for p in sorted(path.glob("*.yaml")):
        docs += load_yaml_docs(p.read_text())
    return docs


def name_of(doc) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def of_kind(docs, kind) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


# ------------------------------------------------------------ pod templates
def lws_objects(docs):
    return of_kind(docs, "LeaderWorkerSet")


def pod_templates(docs):
    """(label, pod template) of every LWS leader/worker template and of every
    workload (StatefulSet, ...) template."""
    out = []
    for lws in lws_objects(docs):
        t = lws["spec"]["leaderWorkerTemplate"]
        for role in ("leaderTemplate", "workerTemplate"):
            if role in t:
                out.append((f"{name_of(lws)}.{role}", t[role]))
    for d in docs:
        if d.get("kind") in WORKLOAD_KINDS:
            out.append((f"{name_of(d)}.template", d["spec"]["template"]))
    return out


def containers(docs):
    """(label, pod spec, container) of every container of every template."""
    for label, tmpl in pod_templates(docs):
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
        if base.startswith("weft-") or base == "etcd":
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


def procs(docs, prog):
    """(label, pod spec, container, flags) of every container running prog."""
    for label, spec, c in containers(docs):
        argv = command_line(c)
        if program(argv) == prog:
            yield label, spec, c, flags(argv)


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def mount_of(path: str, c, spec):
    """(mount, volume) holding the file `path` in container c, or (None, None)."""
    best = None
    for m in c.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/") + "/"
        if path.startswith(mp) and (best is None or len(mp) > len(best["mountPath"])):
            best = m
    if best is None:
        return None, None
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    return best, vols.get(best["name"])


def etcd_statefulsets(docs):
    return [
        d for d in of_kind(docs, "StatefulSet")
        if any(program(command_line(c)) == "etcd" for c in d["spec"]["template"]["spec"]["containers"])
    ]


# ------------------------------------------------------- schema validation
def validate_strictly(docs):
    """Every core object against the Kubernetes schema (strict); every LWS
    pod template wrapped into a PodTemplate."""
    errors = []
    for doc in docs:
        if doc.get("kind") == "LeaderWorkerSet":
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except Exception as e:  # noqa: BLE001 - name the object, keep the message
            errors.append(f"{name_of(doc)}: {e}")
    for label, tmpl in pod_templates(docs):
        if not label.startswith("LeaderWorkerSet/"):
            continue
        wrapped = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": label.replace(".", "-").replace("/", "-").lower()},
            "template": tmpl,
        }
        try:
            kubernetes_validate.validate(wrapped, K8S_VERSION, strict=True)
        except Exception as e:  # noqa: BLE001
            errors.append(f"{label}: {e}")
    assert not errors, "\n".join(errors)


# ------------------------------------------------------------ weft checks
def check_lws_top_level_fields(docs):
    allowed_spec = {"replicas", "leaderWorkerTemplate", "rolloutStrategy", "startupPolicy", "networkConfig"}
    allowed_template = {"size", "restartPolicy", "leaderTemplate", "workerTemplate", "subGroupPolicy"}
    assert lws_objects(docs), "no LeaderWorkerSet"
    for lws in lws_objects(docs):
        assert lws["apiVersion"] == LWS_API
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


def check_group_size_is_tp_plus_leader(docs):
    """Index 0 runs the coordinator only; indices 1..N run ranks 0..N-1."""
    for lws in lws_objects(docs):
        t = lws["spec"]["leaderWorkerTemplate"]
        sub = [lws]
        coord = [f for *_, f in procs(sub, "weft-coordinator")]
        assert len(coord) == 1, f"{name_of(lws)}: {len(coord)} coordinators in the leader template"
        assert int(coord[0]["--tp"]) == t["size"] - 1, f"{name_of(lws)}: size {t['size']} != --tp + 1"
        scheme = "https" if "--tls-cert" in coord[0] else "http"
        workers = [f for label, _, _, f in procs(sub, "weft-worker") if label.endswith("workerTemplate")]
        assert workers, f"{name_of(lws)}: no weft-worker in the worker template"
        for f in workers:
            assert f["--rank"] == "$$((LWS_WORKER_INDEX-1))"
            assert f["--coordinator"] == f"{scheme}://$(LWS_LEADER_ADDRESS):50052"


def check_coordinator_probes_hit_health_on_http_port(docs):
    seen = 0
    for label, _, c, f in procs(docs, "weft-coordinator"):
        seen += 1
        assert f["--http-listen"].rsplit(":", 1)[1] == str(HTTP_PORT), label
        # /health must stay open for the kubelet (no API key on probes).
        assert "--auth-health" not in f, label
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        for probe in ("startupProbe", "readinessProbe"):
            get = c[probe]["httpGet"]
            assert get["path"] == "/health", f"{label}: {probe}"
            assert ports.get(get["port"], get["port"]) == HTTP_PORT, f"{label}: {probe}"
        # Readiness is truthful: one 503 (NOT_SERVING) takes it out.
        assert c["readinessProbe"].get("failureThreshold", 3) <= 3, label
        # Liveness must not kill a coordinator that is re-forming its group
        # (NOT_SERVING on purpose): no /health, a TCP check instead.
        live = c["livenessProbe"]
        assert "httpGet" not in live, f"{label}: liveness on /health would kill a re-forming group"
        assert ports.get(live["tcpSocket"]["port"], live["tcpSocket"]["port"]) == HTTP_PORT
        # The startup probe allows a long load (>= 10 minutes).
        s = c["startupProbe"]
        assert s.get("periodSeconds", 10) * s.get("failureThreshold", 3) >= 600, label
    assert seen, "no weft-coordinator container"


def check_termination_grace_exceeds_drain_grace(docs):
    for label, spec, _, f in procs(docs, "weft-coordinator"):
        drain = int(f.get("--drain-grace-s", 30))  # 30: the binary's default
        grace = spec.get("terminationGracePeriodSeconds", 30)
        assert grace > drain, f"{label}: terminationGracePeriodSeconds {grace} <= drain {drain}"


def check_dev_shm_is_memory_emptydir(docs):
    for label, spec, c, _ in procs(docs, "weft-worker"):
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        assert "/dev/shm" in mounts, f"{label}: no /dev/shm mount"
        vol = {v["name"]: v for v in spec["volumes"]}[mounts["/dev/shm"]]
        assert vol["emptyDir"]["medium"] == "Memory", label
        assert vol["emptyDir"].get("sizeLimit"), f"{label}: an unbounded /dev/shm can take the node's memory"


def check_gpu_workers_ask_for_one_gpu_and_use_it(docs):
    """A CUDA worker asks for exactly one GPU and uses the one it is shown
    (cuda:0); a CPU worker asks for none. The coordinator never gets one."""
    for label, _, c, f in procs(docs, "weft-worker"):
        res = c.get("resources", {})
        gpus = {k: v for part in ("requests", "limits") for k, v in res.get(part, {}).items() if "gpu" in k}
        if f.get("--device", "cpu").startswith("cuda"):
            assert str(res["limits"]["nvidia.com/gpu"]) == "1", label
            assert str(res["requests"].get("nvidia.com/gpu", 1)) == "1", label
            assert f["--device"] == "cuda:0", label
        else:
            assert f.get("--device", "cpu") == "cpu", label
            assert not gpus, f"{label}: a CPU worker asks for {gpus}"
    for label, _, c, _ in procs(docs, "weft-coordinator"):
        res = c.get("resources", {})
        assert not any("gpu" in k for part in res.values() for k in part), f"{label}: GPU on the coordinator"


def check_no_unintended_unspecified_binds(docs):
    for label, _, c in containers(docs):
        argv = command_line(c)
        prog, f = program(argv), flags(argv)
        weft_listens = LISTEN_FLAGS & set(f) if prog.startswith("weft-") else set()
        for flag in weft_listens:
            host = f[flag].rsplit(":", 1)[0]
            if host in UNSPECIFIED:
                assert (prog, flag) in UNSPECIFIED_OK, f"{label}: {prog} {flag}={f[flag]}"
        if prog == "weft-worker":
            binds_any = any(
                f.get(k, "127.0.0.1:0").rsplit(":", 1)[0] in UNSPECIFIED[:3] for k in ("--listen", "--comm-listen")
            )
            if binds_any:
                assert f.get("--advertise-host") == "$(POD_IP)", label
                env = {e["name"]: e for e in c.get("env", [])}
                assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP", label
        if prog == "etcd":
            # etcd's listeners are explicit addresses: the pod IP, loopback.
            for flag in ETCD_LISTEN_FLAGS:
                assert flag in f, f"{label}: etcd without {flag} (its default is loopback only)"
                for url in f[flag].split(","):
                    host = urlsplit(url).hostname or ""
                    assert host not in UNSPECIFIED, f"{label}: etcd {flag}={f[flag]} binds an unspecified address"


def check_env_references_are_defined(docs):
    """Every $(VAR) in a command line is defined in the container's env (or
    injected by the LWS controller): Kubernetes leaves an undefined one as is."""
    ref = re.compile(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
    for label, _, c in containers(docs):
        defined = {e["name"] for e in c.get("env", [])}
        if label.startswith("LeaderWorkerSet/"):
            defined |= LWS_ENV
        for w in list(c.get("command", [])) + list(c.get("args", [])):
            for var in ref.findall(w):
                assert var in defined, f"{label}: $({var}) is not defined in env"


SECRETISH = re.compile(r"(api[_-]?key|token|password|secret|private[_-]?key)", re.I)


def check_no_inline_secrets(docs):
    for doc in docs:
        # No Secret object with data in the repository or the chart.
        if doc.get("kind") == "Secret":
            assert not doc.get("data") and not doc.get("stringData"), f"{name_of(doc)}: inline Secret data"
        text = yaml.safe_dump(doc)
        assert "BEGIN" not in text or "PRIVATE KEY" not in text, f"{name_of(doc)}: a PEM key inline"
    for label, spec, c in containers(docs):
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
            assert "--api-key-file" in f, f"{label}: no --api-key-file"
        # Keys on read-only Secret (or CSI) volumes, certificates on read-only mounts.
        for flag in (KEY_FLAGS | CERT_FLAGS) & set(f):
            mount, vol = mount_of(f[flag], c, spec)
            assert mount, f"{label}: {flag} {f[flag]} is not on a mounted volume"
            assert mount.get("readOnly") is True, f"{label}: {flag} is on a writable mount"
            if flag in KEY_FLAGS:
                assert vol and any(s in vol for s in SECRET_SOURCES), f"{label}: {flag} is not on a Secret volume"
            items = (vol or {}).get("secret", {}).get("items")
            if items:
                rel = f[flag][len(mount["mountPath"].rstrip("/")) + 1:]
                assert rel in {i["path"] for i in items}, f"{label}: {flag} {f[flag]} is not in the volume's items"


def check_cluster_tls(docs):
    """Mutual TLS on the cluster API is all or nothing within a group; a
    worker knows the coordinator's certificate but never gets its key."""
    for lws in lws_objects(docs):
        sub = [lws]
        (clabel, cspec, cc, cf), = list(procs(sub, "weft-coordinator"))
        on = "--tls-cert" in cf
        for flag in ("--tls-cert", "--tls-key", "--tls-ca"):
            assert (flag in cf) == on, f"{clabel}: {flag} without the other TLS flags"
        _, key_vol = mount_of(cf["--tls-key"], cc, cspec) if on else (None, None)
        key_secret = (key_vol or {}).get("secret", {}).get("secretName")
        key_name = cf["--tls-key"].rsplit("/", 1)[-1] if on else None
        for label, spec, _, f in procs(sub, "weft-worker"):
            for flag in ("--tls-cert", "--tls-key", "--tls-ca", "--coordinator-cert"):
                assert (flag in f) == on, f"{label}: {flag} is {'missing' if on else 'set without TLS'}"
            if not on:
                continue
            for v in spec.get("volumes", []):
                s = v.get("secret", {})
                if key_secret and s.get("secretName") == key_secret:
                    items = s.get("items")
                    assert items, f"{label}: the coordinator's Secret {key_secret} is mounted whole (its key too)"
                    assert key_name not in {i["key"] for i in items}, f"{label}: the coordinator's key is mounted"


def weft_flags(docs):
    """(label, flags) of every coordinator and worker."""
    return [
        (label, f)
        for prog in ("weft-coordinator", "weft-worker")
        for label, _, _, f in procs(docs, prog)
    ]


def check_etcd_wiring(docs):
    """All weft processes use etcd or none does; all of a group share the
    endpoints and a per-group prefix; an in-manifest etcd is the one used."""
    weft = weft_flags(docs)
    using = [(label, f) for label, f in weft if "--etcd-endpoints" in f]
    sts = etcd_statefulsets(docs)
    if not using:
        for label, f in weft:
            assert not [k for k in f if k.startswith("--etcd-")], f"{label}: etcd flags without --etcd-endpoints"
        assert not sts, f"{name_of(sts[0])}: an etcd that no weft process uses"
        return
    assert len(using) == len(weft), f"{[lb for lb, f in weft if '--etcd-endpoints' not in f]}: without etcd"
    for key in ("--etcd-endpoints", "--etcd-prefix", "--etcd-lease-ttl-s"):
        values = {f.get(key) for _, f in using}
        assert len(values) == 1, f"{key} differs between coordinator and workers: {values}"
    endpoints = using[0][1]["--etcd-endpoints"].split(",")
    prefix = using[0][1]["--etcd-prefix"]
    # One prefix per group: ranks of two groups must not claim the same keys.
    assert prefix.startswith("/") and prefix.endswith("/$(LWS_LEADER_ADDRESS)"), f"--etcd-prefix={prefix}"
    assert int(using[0][1]["--etcd-lease-ttl-s"]) >= 1
    https = {urlsplit(e).scheme for e in endpoints}
    assert https in ({"http"}, {"https"}), f"mixed or bad etcd endpoints {endpoints}"
    for label, f in using:
        assert ("--etcd-ca" in f) == (https == {"https"}), f"{label}: --etcd-ca must go with https:// endpoints"
        assert ("--etcd-cert" in f) == ("--etcd-key" in f), f"{label}: --etcd-cert without --etcd-key"
    if not sts:
        return
    assert len(sts) == 1, "more than one etcd StatefulSet"
    etcd = sts[0]
    (_, _, _, ef), = list(procs([etcd], "etcd"))
    scheme = urlsplit(ef["--listen-client-urls"].split(",")[0]).scheme
    pod_labels = etcd["spec"]["template"]["metadata"]["labels"]
    client = [
        s for s in of_kind(docs, "Service")
        if s["spec"].get("clusterIP") != "None" and selects(s["spec"].get("selector", {}), pod_labels)
        and ETCD_CLIENT_PORT in [p["port"] for p in s["spec"]["ports"]]
    ]
    assert len(client) == 1, f"{name_of(etcd)}: {len(client)} client Services"
    want = f"{scheme}://{client[0]['metadata']['name']}:{ETCD_CLIENT_PORT}"
    assert endpoints == [want], f"--etcd-endpoints={','.join(endpoints)}, want {want} (Service {name_of(client[0])})"
    if ef.get("--client-cert-auth") == "true":
        for label, f in using:
            assert "--etcd-cert" in f, f"{label}: etcd asks for a client certificate"


def check_etcd_statefulset(docs):
    """The etcd members: odd count, a bootstrap that names each of them on the
    headless Service, probes, data on a PVC, a quorum-keeping PDB, TLS all or
    nothing, and a NetworkPolicy that lets weft in."""
    for etcd in etcd_statefulsets(docs):
        n = name_of(etcd)
        spec = etcd["spec"]
        replicas = spec.get("replicas", 1)
        assert replicas >= 1 and replicas % 2 == 1, f"{n}: {replicas} members (odd, please)"
        pod_labels = spec["template"]["metadata"]["labels"]
        assert selects(spec["selector"]["matchLabels"], pod_labels), n
        svc = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
        headless = svc.get(spec["serviceName"])
        assert headless, f"{n}: serviceName {spec['serviceName']} is not a Service here"
        assert headless["spec"].get("clusterIP") == "None", f"{n}: {spec['serviceName']} is not headless"
        assert headless["spec"].get("publishNotReadyAddresses") is True, \
            f"{n}: the bootstrap needs the unready peers in DNS"
        assert selects(headless["spec"]["selector"], pod_labels), f"{n}: the headless Service misses the members"
        assert spec.get("podManagementPolicy") == "Parallel", f"{n}: members must start together"
        (label, pspec, c, f), = list(procs([etcd], "etcd"))
        env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in c.get("env", [])}
        assert env.get("POD_NAME") == "metadata.name" and env.get("POD_IP") == "status.podIP", label
        assert f["--name"] == "$(POD_NAME)", label
        sts_name, hl = etcd["metadata"]["name"], spec["serviceName"]
        members = [m.split("=", 1) for m in f["--initial-cluster"].split(",")]
        assert [m[0] for m in members] == [f"{sts_name}-{i}" for i in range(replicas)], f"{label}: --initial-cluster"
        for i, (_, url) in enumerate(members):
            u = urlsplit(url)
            assert u.hostname.startswith(f"{sts_name}-{i}.{hl}.") and u.port == ETCD_PEER_PORT, f"{label}: {url}"
        assert f["--initial-advertise-peer-urls"].startswith(f"http://$(POD_NAME).{hl}."), label
        assert f["--initial-cluster-state"] == "new", label
        # Data on the member's own PVC.
        claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
        mount, _ = mount_of(f["--data-dir"] + "/x", c, pspec)
        assert mount and mount["name"] in claims, f"{label}: --data-dir is not on a volumeClaimTemplate"
        # Probes on the metrics listener's /health.
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert urlsplit(f["--listen-metrics-urls"]).port == ETCD_METRICS_PORT, label
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = c[probe]["httpGet"]
            assert get["path"].startswith("/health"), f"{label}: {probe}"
            assert ports.get(get["port"], get["port"]) == ETCD_METRICS_PORT, f"{label}: {probe}"
        assert "serializable=true" in c["livenessProbe"]["httpGet"]["path"], f"{label}: liveness must not need a quorum"
        # Client TLS all or nothing.
        tls = urlsplit(f["--listen-client-urls"].split(",")[0]).scheme == "https"
        for url in f["--listen-client-urls"].split(",") + f["--advertise-client-urls"].split(","):
            assert urlsplit(url).scheme == ("https" if tls else "http"), f"{label}: {url}"
        for flag in ("--cert-file", "--key-file", "--trusted-ca-file"):
            assert (flag in f) == tls, f"{label}: {flag} {'missing' if tls else 'without https'}"
        if tls:
            assert f.get("--client-cert-auth") == "true", f"{label}: TLS without client certificates"
        # A PDB that keeps a quorum.
        pdbs = [
            p for p in of_kind(docs, "PodDisruptionBudget")
            if selects(p["spec"]["selector"]["matchLabels"], pod_labels)
        ]
        assert len(pdbs) == 1, f"{n}: {len(pdbs)} PodDisruptionBudgets"
        assert pdbs[0]["spec"].get("minAvailable") == replicas // 2 + 1, f"{name_of(pdbs[0])}: not a quorum"
        # Network: weft's pods may reach 2379, the members 2379 and 2380.
        policies = of_kind(docs, "NetworkPolicy")
        if policies:
            mine = [p for p in policies if selects(p["spec"]["podSelector"].get("matchLabels", {}), pod_labels)]
            assert mine, f"{n}: NetworkPolicies here, none for etcd"
            allowed = [
                (peer.get("podSelector", {}).get("matchLabels", {}), port["port"])
                for p in mine for rule in p["spec"].get("ingress", [])
                for peer in rule.get("from", []) for port in rule.get("ports", [])
            ]
            for lws in lws_objects(docs):
                lws_pod = {"leaderworkerset.sigs.k8s.io/name": lws["metadata"]["name"]}
                assert any(selects(s, lws_pod) and port == ETCD_CLIENT_PORT for s, port in allowed), \
                    f"{n}: {name_of(lws)} may not reach etcd"
            assert any(selects(s, pod_labels) and port == ETCD_PEER_PORT for s, port in allowed), f"{n}: peers blocked"


ALL_CHECKS = [
    check_lws_top_level_fields,
    check_group_size_is_tp_plus_leader,
    check_coordinator_probes_hit_health_on_http_port,
    check_termination_grace_exceeds_drain_grace,
    check_dev_shm_is_memory_emptydir,
    check_gpu_workers_ask_for_one_gpu_and_use_it,
    check_no_unintended_unspecified_binds,
    check_env_references_are_defined,
    check_no_inline_secrets,
    check_cluster_tls,
    check_etcd_wiring,
    check_etcd_statefulset,
]
