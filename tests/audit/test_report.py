"""`gateway audit verify-bundle --report`: the page a compliance officer reads.

Bundles come from a real AuditLog on SQLite through the real exporter; the CLI
runs as a user runs it (a subprocess); the damaged bundle is what an attacker
with the file makes: one record edited and the manifest's digests recomputed,
so only the Merkle checks can catch it. The page is parsed with the standard
library's HTML parser to prove what it contains and what it does not.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import stat
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from audit.bundle import STEPS, BundleInvalid
from audit.checkpoint import NoteSigner
from audit.export import ExportFilter, write_bundle
from audit.log import AuditLog
from audit.record import request_record
from audit.report import (
    FAILED,
    NOT_REACHED,
    PASSED,
    CountTable,
    ReportInput,
    SigningKey,
    StepResult,
    damage_in_words,
    render_html,
)
from audit.sqlite_store import SqliteAuditStore
from audit.subjects import SubjectKeys

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z; record i is stamped T0 + i seconds
N = 600
DAMAGED = 500
ORIGIN = "audit.example.com/prod"
HOSTILE_CLIENT = "<script>alert('client')</script>"
HOSTILE_ROUTE = '/v1/rank"><img src=x onerror=alert(1)>'
ROUTES = ("/v1/rank", "/v2/models/ranker/infer", HOSTILE_ROUTE)
CLIENTS = ("svc-a", "svc-b", HOSTILE_CLIENT)
STATUSES = ((200, "ok"), (200, "ok"), (200, "ok"), (403, "forbidden"), (429, "rate-limited"))
GATEWAY = [sys.executable, "-m", "gateway.cli"]


@dataclass
class Bundles:
    good: Path
    damaged: Path
    pubkey: str
    tmp: Path


def _record(i: int) -> dict[str, object]:
    status, outcome = STATUSES[i % len(STATUSES)]
    return request_record(
        ts_ms=T0 + i * 1000,
        request_id=f"req-{i:04d}",
        route=ROUTES[i % 3],
        action="rank",
        client_id=CLIENTS[i % 3],
        issuer="https://issuer.test",
        subject=None,
        status=status,
        outcome=outcome,
        policy_ids=["default.permit"] if status == 200 else [],
        model={"name": "ranker", "version": str(1 + i % 2)} if status == 200 else None,
        latency_us=100 + i,
        sealed=None,
    )


def rewrite_records(bundle: Path, out: Path, edit: Callable[[dict[str, Any]], bool]) -> None:
    """Edit records.jsonl (`edit` changes an entry in place, or returns False to drop it)
    and recompute the manifest's digests, as an attacker with the file would."""
    with zipfile.ZipFile(bundle) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    lines = []
    for line in members["records.jsonl"].splitlines(keepends=True):
        entry = json.loads(line)
        if edit(entry):
            lines.append(json.dumps(entry).encode() + b"\n")
    members["records.jsonl"] = b"".join(lines)
    manifest = json.loads(members["manifest.json"])
    for name, data in members.items():
        if name in manifest["members"]:
            manifest["members"][name] = {
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
            }
    members["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def alter(index: int) -> Callable[[dict[str, Any]], bool]:
    def edit(entry: dict[str, Any]) -> bool:
        if entry["index"] == index:
            record = json.loads(entry["record"])
            record["latency_us"] += 1
            entry["record"] = json.dumps(record, sort_keys=True, separators=(",", ":"))
        return True

    return edit


def delete(index: int) -> Callable[[dict[str, Any]], bool]:
    return lambda entry: entry["index"] != index


def truncate(keep: int) -> Callable[[dict[str, Any]], bool]:
    return lambda entry: entry["index"] < keep


def damage_record(bundle: Path, out: Path, index: int) -> None:
    rewrite_records(bundle, out, alter(index))


@pytest_asyncio.fixture
async def bundles(tmp_path: Path) -> AsyncIterator[Bundles]:
    store = SqliteAuditStore(tmp_path / "audit.sqlite3")
    subjects = SubjectKeys(store, kek=os.urandom(32), handle_key=os.urandom(32))
    audit_log = AuditLog(
        store,
        signer=NoteSigner.generate(ORIGIN),
        subject_keys=subjects,
        clock=lambda: (T0 + N * 1000 + 60_000) / 1000,
    )
    for start in range(0, N, 100):
        await asyncio.gather(*(audit_log.append(_record(i)) for i in range(start, start + 100)))
    good = tmp_path / "bundle.zip"
    write_bundle(audit_log, ExportFilter(T0, T0 + 10 * N * 1000), good)
    damaged = tmp_path / "damaged.zip"
    damage_record(good, damaged, DAMAGED)
    yield Bundles(good, damaged, audit_log.verifier.verifier_key(), tmp_path)
    await audit_log.close()
    store.close()


def verify_cli(*args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run(
        [*GATEWAY, "audit", "verify-bundle", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean,
        check=False,
    )


class Page(HTMLParser):
    """Every tag and attribute of a page, and the text of its body."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self._in_body = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_body = self._in_body or tag == "body"

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        if self._in_body:  # not the <title> or the <style> sheet
            self.text.append(data)

    @property
    def visible(self) -> str:
        return " ".join(" ".join(self.text).split())


# Everything the page is allowed to contain; anything else is a finding.
ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "body", "main", "h1", "h2", "h3", "p", "div",
    "section", "table", "thead", "tbody", "tr", "th", "td", "dl", "dt", "dd", "code", "span",
    "strong", "footer", "svg", "text", "rect",
}  # fmt: skip


def assert_self_contained(html_text: str) -> Page:
    """No script, no link, no external or data reference, no event handler: nothing to fetch."""
    page = Page(html_text)
    tags = {tag for tag, _ in page.tags}
    assert tags <= ALLOWED_TAGS, tags - ALLOWED_TAGS
    for tag, attrs in page.tags:
        for name, value in attrs.items():
            assert name not in ("src", "href", "xlink:href", "action", "srcset"), (tag, name)
            assert not name.startswith("on"), (tag, name)
            assert "url(" not in (value or "").lower(), (tag, name, value)
    lowered = html_text.lower()
    for needle in ("http://", "https://", "<script", "<link", "@import", "url("):
        # The only URL-like text allowed is the escaped issuer inside a record; the
        # fixture's records never reach the page, so none at all.
        assert needle not in lowered, needle
    csp = [
        a for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"
    ]
    assert csp
    assert csp[0]["content"] == "default-src 'none'; style-src 'unsafe-inline'"
    return page


# --- through the CLI -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_verified_bundle_gets_a_verified_report(bundles: Bundles) -> None:
    report = bundles.tmp / "out" / "report.html"
    result = verify_cli(str(bundles.good), "--pubkey", bundles.pubkey, "--report", str(report))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"ok: {N} records")
    assert stat.S_IMODE(report.stat().st_mode) == 0o600
    text = report.read_text(encoding="utf-8")
    page = assert_self_contained(text)
    visible = page.visible
    # The verdict first: before any other section of the page.
    assert visible.index("VERIFIED") < visible.index("What was checked")
    assert "FAILED" not in visible
    assert (
        f"All {len(STEPS)} checks passed. Every record from 0 to {N - 1} of the audit log "
        f"{ORIGIN} is in this bundle, in order and unaltered" in visible
    )
    assert f"complete: records 0..{N - 1} of checkpoint {N}" in visible
    assert f"tree size {N:,}" in visible
    assert "your own copy (--pubkey)" in visible
    key_name, key_hash, _ = bundles.pubkey.split("+", 2)
    assert key_name in visible
    assert key_hash in visible
    assert hashlib.sha256(bundles.good.read_bytes()).hexdigest() in visible
    assert "2026-01-01 00:00:00 UTC" in visible  # first record
    assert "2026-01-01 00:09:59 UTC" in visible  # last record
    # Counts by decision, client and model version, each row from the verified summary.
    assert "Requests by decision allow 360 deny 120 refuse 120" in visible
    assert "svc-a 200" in visible
    assert "Requests by route" in visible
    assert "/v2/models/ranker/infer 200" in visible
    assert "ranker@1 180" in visible
    # Every numbered step is listed with its result.
    assert "failed" not in visible
    assert "not reached" not in visible


@pytest.mark.asyncio
async def test_a_damaged_bundle_gets_a_failed_report_naming_the_record(bundles: Bundles) -> None:
    report = bundles.tmp / "report.html"
    result = verify_cli(str(bundles.damaged), "--pubkey", bundles.pubkey, "--report", str(report))
    assert result.returncode == 1
    assert result.stderr.startswith("error: bundle invalid:")
    assert f"index {DAMAGED}" in result.stderr
    page = assert_self_contained(report.read_text(encoding="utf-8"))
    visible = page.visible
    assert visible.index("FAILED") < visible.index("What was checked")
    assert "VERIFIED" not in visible
    assert f"Record {DAMAGED} is missing or altered" in visible
    assert "Do not rely on this bundle" in visible
    assert "your own copy (--pubkey)" in visible  # the signature step passed with it
    # Nothing the bundle claims is shown as fact.
    assert "Not established" in visible
    assert "Requests by decision" not in visible
    assert " failed " in visible
    assert "not reached" in visible


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("edit", "named"),
    [(alter(DAMAGED), DAMAGED), (delete(DAMAGED), DAMAGED), (truncate(N - 10), N - 10)],
    ids=["altered", "deleted", "tail-truncated"],
)
async def test_every_kind_of_record_damage_is_named_in_the_report(
    bundles: Bundles, edit: Callable[[dict[str, Any]], bool], named: int
) -> None:
    damaged = bundles.tmp / "edited.zip"
    rewrite_records(bundles.good, damaged, edit)
    report = bundles.tmp / "report.html"
    result = verify_cli(str(damaged), "--pubkey", bundles.pubkey, "--report", str(report))
    assert result.returncode == 1
    visible = assert_self_contained(report.read_text(encoding="utf-8")).visible
    assert f"FAILED Record {named} is missing or altered: " in visible


@pytest.mark.asyncio
async def test_a_file_that_is_no_bundle_gets_a_failed_report(bundles: Bundles) -> None:
    junk = bundles.tmp / "junk.zip"
    junk.write_bytes(b"<html>not a zip</html>")
    report = bundles.tmp / "report.html"
    result = verify_cli(str(junk), "--pubkey", bundles.pubkey, "--report", str(report))
    assert result.returncode == 1
    visible = assert_self_contained(report.read_text(encoding="utf-8")).visible
    assert "FAILED The bundle is damaged (junk.zip): not a readable zip file" in visible
    assert visible.count("not reached") == len(STEPS) - 1
    assert "verification stopped before it was used" in visible


@pytest.mark.asyncio
async def test_the_report_states_consistency_with_a_previous_checkpoint(bundles: Bundles) -> None:
    previous = bundles.tmp / "previous.note"
    with zipfile.ZipFile(bundles.good) as archive:
        previous.write_bytes(archive.read("checkpoint.note"))
    report = bundles.tmp / "report.html"
    result = verify_cli(
        str(bundles.good),
        *("--pubkey", bundles.pubkey, "--previous-checkpoint", str(previous)),
        *("--report", str(report)),
    )
    assert result.returncode == 0, result.stderr
    visible = Page(report.read_text(encoding="utf-8")).visible
    assert f"The log only grew since the previous checkpoint of size {N} " in visible
    assert "not applicable" not in visible  # every step ran, the consistency check too


@pytest.mark.asyncio
async def test_the_report_is_written_without_a_trusted_key_and_says_so(bundles: Bundles) -> None:
    report = bundles.tmp / "report.html"
    result = verify_cli(str(bundles.good), "--report", str(report))
    assert result.returncode == 0, result.stderr
    visible = Page(report.read_text(encoding="utf-8")).visible
    assert "the copy inside the bundle (pubkey.txt)" in visible
    assert "not who signed it" in visible


@pytest.mark.asyncio
async def test_an_existing_report_file_is_never_overwritten(bundles: Bundles) -> None:
    existing = bundles.tmp / "report.html"
    existing.write_text("keep me")
    result = verify_cli(str(bundles.good), "--pubkey", bundles.pubkey, "--report", str(existing))
    assert result.returncode == 2
    assert result.stderr == f"error: report file already exists, not overwritten: {existing}\n"
    assert existing.read_text() == "keep me"

    # A planted symlink: refused too, and its target stays untouched.
    target = bundles.tmp / "elsewhere.txt"
    target.write_text("target")
    link = bundles.tmp / "link.html"
    link.symlink_to(target)
    result = verify_cli(str(bundles.damaged), "--pubkey", bundles.pubkey, "--report", str(link))
    assert result.returncode == 2
    assert "already exists" in result.stderr
    assert target.read_text() == "target"


@pytest.mark.asyncio
async def test_an_unwritable_report_is_one_error_line(bundles: Bundles) -> None:
    blocked = bundles.tmp / "file-not-dir"
    blocked.write_text("")
    result = verify_cli(
        str(bundles.good), "--pubkey", bundles.pubkey, "--report", str(blocked / "r.html")
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: cannot write report ")
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr


# --- escaping: every value from the bundle is untrusted --------------------------------


@pytest.mark.asyncio
async def test_hostile_values_from_the_bundle_are_shown_as_text(bundles: Bundles) -> None:
    report = bundles.tmp / "report.html"
    result = verify_cli(str(bundles.good), "--pubkey", bundles.pubkey, "--report", str(report))
    assert result.returncode == 0, result.stderr
    text = report.read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(&#x27;client&#x27;)&lt;/script&gt;" in text
    assert "/v1/rank&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in text
    assert "<script" not in text.lower()
    page = assert_self_contained(text)
    # Parsed, the hostile strings are text on the page, not markup.
    assert HOSTILE_CLIENT in page.visible
    assert HOSTILE_ROUTE in page.visible


def _hostile_input(verified: bool) -> ReportInput:
    evil = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>"
    return ReportInput(
        bundle_name=f"{evil}.zip",
        bundle_sha256=evil,
        bundle_size=1,
        generated_ms=T0,
        steps=(
            StepResult(1, evil, PASSED),
            StepResult(2, evil, FAILED if not verified else PASSED, evil),
            StepResult(3, evil, NOT_REACHED if not verified else PASSED),
        ),
        damage=None if verified else f"Record 7 is missing or altered: {evil}.",
        origin=evil,
        checkpoint_size=3,
        complete=evil,
        previous=evil,
        key=SigningKey(evil, evil, evil, "bundle"),
        records=3,
        erased=0,
        purged=0,
        first_ts_ms=T0,
        last_ts_ms=10**30,  # out of calendar range: shown as a number, not an error
        counts=(CountTable(evil, ((evil, 2), ("</svg><script>x()</script>", 1))),),
    )


@pytest.mark.parametrize("verified", [True, False])
def test_render_escapes_every_field(verified: bool) -> None:
    text = render_html(_hostile_input(verified)).decode("utf-8")
    page = assert_self_contained(text)
    assert "<script" not in text.lower()
    assert "<img" not in text.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#x27;&gt;&lt;img" in text
    assert "<script>alert(1)</script>" in page.visible
    assert ("VERIFIED" in page.visible) is verified
    assert ("FAILED" in page.visible) is not verified


def test_a_large_count_table_is_folded() -> None:
    rows = tuple((f"client-{i:03d}", 1000 - i) for i in range(300))
    data = dataclasses.replace(
        _hostile_input(True), counts=(CountTable("Requests by client", rows),)
    )
    visible = Page(render_html(data).decode()).visible
    assert "client-023" in visible
    assert "client-024" not in visible
    assert f"276 others {sum(c for _, c in rows[24:]):,}" in visible


# --- damage in plain words ------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (
            BundleInvalid(4, "records.jsonl line 501 (index 500)", "record does not hash"),
            "Record 500 is missing or altered: record does not hash.",
        ),
        (
            BundleInvalid(2, "records.jsonl", "SHA-256 or size differs from the manifest"),
            "The bundle is damaged (records.jsonl): SHA-256 or size differs from the manifest.",
        ),
    ],
)
def test_damage_in_words(error: BundleInvalid, words: str) -> None:
    assert damage_in_words(error) == words
