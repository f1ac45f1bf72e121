"""Static checks of the plain Kubernetes manifests in deploy/k8s (no cluster,
no binaries, no model needed).

The checks themselves live in deploychecks.py, shared with test_helm.py, which
runs them over renderings of the Helm chart: strict schema validation of every
core object (LeaderWorkerSet pod templates wrapped into PodTemplates), then
what matters for weft: probes on the truthful /health, the drain grace,
/dev/shm, GPUs, listen addresses, no inline secret, mutual TLS, and the etcd
that holds the ranks' claims.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("yaml")
pytest.importorskip("kubernetes_validate")

import deploychecks as dc  # noqa: E402  (after the skips)

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
DOCS = dc.load_dir(K8S)


def test_manifests_exist():
    assert DOCS, f"no manifests in {K8S}"
    assert dc.lws_objects(DOCS), "no LeaderWorkerSet in deploy/k8s"
    assert dc.etcd_statefulsets(DOCS), "no etcd StatefulSet in deploy/k8s"


@pytest.mark.parametrize(
    "doc",
    [d for d in DOCS if d.get("kind") != "LeaderWorkerSet"],
    ids=dc.name_of,
)
def test_core_objects_validate_strictly(doc):
    dc.validate_strictly([doc])


def test_lws_pod_templates_validate_strictly():
    dc.validate_strictly(dc.lws_objects(DOCS))


@pytest.mark.parametrize("check", dc.ALL_CHECKS, ids=lambda f: f.__name__.removeprefix("check_"))
def test_weft_check(check):
    check(DOCS)


def test_plain_manifests_use_their_etcd():
    """The coordinator and every worker point at Service weft-etcd."""
    want = "http://weft-etcd:2379"
    seen = dc.weft_flags(DOCS)
    assert len(seen) == 2, seen  # one coordinator, one worker template
    for label, f in seen:
        assert f.get("--etcd-endpoints") == want, label
    (etcd,) = dc.etcd_statefulsets(DOCS)
    assert etcd["spec"]["replicas"] == 3
    image = etcd["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.startswith("gcr.io/etcd-development/etcd:v3.5."), image


def test_checks_catch_a_broken_manifest():
    """The shared checks fail on what they are meant to catch (guards against
    a check that silently passes)."""
    import copy

    def broken(mutate):
        docs = copy.deepcopy(DOCS)
        mutate(docs)
        return docs

    def lws(docs):
        return dc.lws_objects(docs)[0]["spec"]["leaderWorkerTemplate"]

    def coord(docs):
        return lws(docs)["leaderTemplate"]["spec"]["containers"][0]

    def drop_etcd_on_worker(docs):
        c = lws(docs)["workerTemplate"]["spec"]["containers"][0]
        c["args"] = [" ".join(w for w in c["args"][0].split() if not w.startswith("--etcd-"))]

    cases = [
        (dc.check_group_size_is_tp_plus_leader, lambda d: lws(d).update(size=5)),
        (dc.check_termination_grace_exceeds_drain_grace,
         lambda d: lws(d)["leaderTemplate"]["spec"].update(terminationGracePeriodSeconds=30)),
        (dc.check_coordinator_probes_hit_health_on_http_port,
         lambda d: coord(d)["livenessProbe"].update(httpGet={"path": "/health", "port": "http"})),
        (dc.check_etcd_wiring, drop_etcd_on_worker),
        (dc.check_etcd_wiring, lambda d: coord(d)["args"].__setitem__(
            coord(d)["args"].index("--etcd-endpoints=http://weft-etcd:2379"), "--etcd-endpoints=http://other:2379")),
        (dc.check_etcd_statefulset, lambda d: dc.etcd_statefulsets(d)[0]["spec"].update(replicas=2)),
        (dc.check_no_unintended_unspecified_binds, lambda d: dc.etcd_statefulsets(d)[0]["spec"]["template"]["spec"]
         ["containers"][0]["args"].append("--listen-client-urls=http://0.0.0.0:2379")),
        (dc.validate_strictly, lambda d: dc.etcd_statefulsets(d)[0]["spec"].update(replica=3)),
    ]
    for check, mutate in cases:
        with pytest.raises(AssertionError):
            check(broken(mutate))
