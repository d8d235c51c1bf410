"""The shipped Prometheus rules: valid (`promtool check rules`), behaving as their unit
tests say (`promtool test rules`), and naming only metrics the real app exports.

promtool comes from Debian's `prometheus` package (scripts/test.sh installs it where it
can); without it the promtool tests skip, loudly.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

RULES = Path(__file__).resolve().parents[2] / "ops" / "prometheus"
PROMTOOL = shutil.which("promtool")
NO_PROMTOOL = "promtool not found (Debian: apt-get install prometheus): rules NOT CHECKED"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if PROMTOOL is None:
        print(f"WARNING: {NO_PROMTOOL}", file=sys.stderr)
        pytest.skip(NO_PROMTOOL)
    return subprocess.run(
        [PROMTOOL, *args], cwd=RULES, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_rules_are_valid() -> None:
    result = promtool("check", "rules", "gateway.rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_rules_fire_as_their_unit_tests_say() -> None:
    result = promtool("test", "rules", "gateway.rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def _metric_names(expr: str) -> set[str]:
    """Exported metrics an expression reads (recorded `gateway:` series are the file's own)."""
    return set(re.findall(r"\b(gateway_[a-z_]+)\b", expr))


def test_every_metric_the_rules_read_is_exported_by_the_app(
    client: TestClient, auth: Callable[..., dict[str, str]]
) -> None:
    rules = yaml.safe_load((RULES / "gateway.rules.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    wanted = set().union(*(_metric_names(expr) for expr in exprs))
    text = client.get("/metrics", headers=auth(("admin",))).text
    exported: set[str] = set()
    for family in text_string_to_metric_families(text):
        exported.add(family.name)
        exported.update(sample.name for sample in family.samples)
        if family.type == "counter":
            exported.add(f"{family.name}_total")
        if family.type == "histogram":
            exported.update(f"{family.name}_{suffix}" for suffix in ("bucket", "count", "sum"))
    assert wanted - exported == set()
    assert len(wanted) >= 10


def test_the_dashboards_queries_parse_and_read_what_exists(tmp_path: Path) -> None:
    """Each panel query of ops/grafana becomes a recording rule that promtool parses; the
    series it reads are exported by the app or recorded by the rules file."""
    dashboard = json.loads((RULES.parent / "grafana" / "gateway-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 12
    rules = yaml.safe_load((RULES / "gateway.rules.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    used = set().union(*(set(re.findall(r"\b(gateway:[a-z_0-9:]+)", e)) for e in exprs))
    assert used <= recorded
    probes = [{"record": f"dashboard:panel_{i}", "expr": e} for i, e in enumerate(exprs)]
    probe = {"groups": [{"name": "dashboard", "rules": probes}]}
    (tmp_path / "dashboard.rules.yml").write_text(yaml.safe_dump(probe))
    if PROMTOOL is None:
        print(f"WARNING: {NO_PROMTOOL}", file=sys.stderr)
        pytest.skip(NO_PROMTOOL)
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(tmp_path / "dashboard.rules.yml")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
