"""weft-load's JSON reports validate against the documented schema
(loadgen/report.schema.json), for a single run and for a sweep, with and
without the optional sections (correctness, fault, request log)."""

from __future__ import annotations

import json
import subprocess

import jsonschema
import pytest

import weftlib

SCHEMA_PATH = weftlib.REPO_ROOT / "loadgen" / "report.schema.json"


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def load(args: list[str], out, timeout: float = 60) -> tuple[int, dict | list]:
    cmd = [str(weftlib.bin_dir() / "weft-load"), "--no-progress", "--json", str(out), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert out.exists(), f"no report; stderr: {proc.stderr}"
    return proc.returncode, json.loads(out.read_text())


def test_single_run_with_every_section_validates(server, tmp_path, validator):
    expected = tmp_path / "expected.jsonl"
    rc, _ = load(
        ["--target", f"grpc://{server.grpc_addr}", "--dataset", "conversations",
         "--requests", "3", "--max-tokens", "4", "--record-expected", str(expected)],
        tmp_path / "record.json",
    )
    assert rc == 0
    rc, report = load(
        ["--target", f"grpc://{server.grpc_addr}", "--dataset", "jsonl",
         "--dataset-path", str(expected), "--check", "--requests", "6", "--concurrency", "3",
         "--fault-at-s", "0", "--fault-cmd", "true", "--goodput", "ttft:60000",
         "--price-per-hour", "2", "--gpus", "1"],
        tmp_path / "check.json",
    )
    assert rc == 0, report
    validator.validate(report)
    assert report["correctness"]["mismatched"] == 0
    assert report["correctness"]["checked"] == 6
    assert len(report["request_log"]) == 6
    assert report["fault"]["exit_code"] == 0
    assert report["cost_per_million_output_tokens"] > 0
    # Strict: a field the schema does not document, at the top or nested,
    # makes a real report invalid, so schema and report cannot drift apart.
    for where in (report, report["config"], report["correctness"]):
        where["undocumented"] = 1
        assert not validator.is_valid(report)
        del where["undocumented"]
    validator.validate(report)


def test_sweep_over_http_validates(server, tmp_path, validator):
    rc, reports = load(
        ["--target", server.http_url, "--sweep-concurrency", "1,2", "--requests", "2",
         "--max-tokens", "3", "--request-log"],
        tmp_path / "sweep.json",
    )
    assert rc == 0
    assert isinstance(reports, list) and len(reports) == 2
    validator.validate(reports)
    assert [r["config"]["concurrency"] for r in reports] == [1, 2]
    assert all(r["correctness"] is None and r["fault"] is None for r in reports)


def test_empty_sweep_is_invalid(validator):
    assert not validator.is_valid([])
