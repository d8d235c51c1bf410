"""`gateway audit verify-bundle --report FILE`: the verification as one page a person reads.

A compliance officer who receives an export reads this, not the verifier's one
line: the verdict first, in plain words; then what was checked and how (each
numbered step of `audit.bundle` with its result), which part of which signed
checkpoint the bundle proves, the key that signed it and where that key came
from, the counts, and on failure the damaged record in plain words.

The page is one self-contained HTML file: inline CSS, inline SVG bars, no
script, no link, no image, no font, nothing fetched, so it opens the same way
offline and years later, and can be archived with the bundle. A
Content-Security-Policy that forbids everything but inline style is the second
fence: every value that comes from the bundle is untrusted and is HTML-escaped
where it is written, and even a missed one could not load or run anything.

`ReportInput` is the page's data, built from what `verify_bundle` returned or
raised; `render_html` turns it into bytes; `write_report` writes them as a new
private file (never over an existing one).
"""

from __future__ import annotations

import hashlib
import html
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from audit.bundle import STEPS, BundleInvalid, BundleReport
from gateway.files import write_private

__all__ = [
    "CountTable",
    "ReportInput",
    "SigningKey",
    "StepResult",
    "render_html",
    "report_failed",
    "report_verified",
    "write_report",
]

PASSED = "passed"
FAILED = "failed"
NOT_REACHED = "not reached"
NOT_APPLICABLE = "not applicable"

# More rows than this in one count table are folded into one "others" row: a
# page with a row per client of a large tenant is no longer read.
MAX_ROWS = 25

# Count tables, in the order a reader asks: what was decided, where, by whom, with what.
_TABLES = (
    ("by_decision", "Requests by decision"),
    ("by_route", "Requests by route"),
    ("by_client", "Requests by client"),
    ("by_model", "Requests by model version"),
    ("by_refusal", "Refused requests by reason"),
    ("by_kind", "Records by kind"),
    ("by_pii_type", "Personal data found, by entity type"),
)
_KEY_SOURCES = {
    "argument": "your own copy (--pubkey)",
    "bundle": "the copy inside the bundle (pubkey.txt)",
}
_INDEX = re.compile(r"\bindex (\d+)\b")


@dataclass(frozen=True, slots=True)
class StepResult:
    number: int
    title: str
    outcome: str  # PASSED, FAILED, NOT_REACHED or NOT_APPLICABLE
    detail: str = ""


@dataclass(frozen=True, slots=True)
class SigningKey:
    name: str
    key_hash: str  # 8 hex digits, the C2SP key ID
    text: str  # the whole verifier key
    source: str | None  # "argument", "bundle", or None when verification stopped first


@dataclass(frozen=True, slots=True)
class CountTable:
    title: str
    rows: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class ReportInput:
    """Everything the page shows; None where verification never established it."""

    bundle_name: str
    bundle_sha256: str | None
    bundle_size: int | None
    generated_ms: int
    steps: tuple[StepResult, ...]
    damage: str | None  # plain words; None means verified
    origin: str | None = None
    checkpoint_size: int | None = None
    complete: str | None = None  # "complete: records a..b-1 of checkpoint N"
    range_start: int | None = None  # the bundle holds every leaf of [range_start, range_end)
    range_end: int | None = None
    previous: str | None = None  # plain words about the previous checkpoint
    key: SigningKey | None = None
    records: int | None = None
    erased: int | None = None
    purged: int | None = None
    unopened: int | None = None  # leaves carried as hashes only: the filter did not select them
    first_ts_ms: int | None = None
    last_ts_ms: int | None = None
    counts: tuple[CountTable, ...] = field(default=())

    @property
    def verified(self) -> bool:
        return self.damage is None


# --- building the input ------------------------------------------------------------


def _steps() -> tuple[tuple[int, str], ...]:
    return STEPS


def _is_consistency_step(title: str) -> bool:
    return "consisten" in title.lower() or "previous" in title.lower()


def _file_facts(bundle: Path) -> tuple[str | None, int | None]:
    """The bundle's SHA-256 and size: which file the verdict is about, by content."""
    sha = hashlib.sha256()
    size = 0
    try:
        with bundle.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                sha.update(chunk)
                size += len(chunk)
    except OSError:
        return None, None
    return sha.hexdigest(), size


def _signing_key(text: str, source: str | None) -> SigningKey:
    name, _, rest = text.strip().partition("+")
    key_hash, _, _ = rest.partition("+")
    return SigningKey(name=name, key_hash=key_hash, text=text.strip(), source=source)


def _counts(summary: Mapping[str, Any]) -> tuple[CountTable, ...]:
    tables = []
    for key, title in _TABLES:
        counts = summary.get(key)
        if not isinstance(counts, dict):
            continue
        rows = sorted(
            ((str(name), n) for name, n in counts.items() if isinstance(n, int)),
            key=lambda row: (-row[1], row[0]),
        )
        tables.append(CountTable(title, tuple(rows)))
    return tuple(tables)


def _read_member(bundle: Path, name: str, limit: int) -> bytes | None:
    """One small member of the bundle, or None if it is absent, too big or unreadable."""
    try:
        with zipfile.ZipFile(bundle) as archive:
            info = archive.getinfo(name)
            if info.file_size > limit:
                return None
            return archive.read(info)
    except (OSError, KeyError, ValueError, RuntimeError, EOFError, zipfile.BadZipFile):
        return None


def report_verified(
    bundle: Path, report: BundleReport, *, clock: Callable[[], float]
) -> ReportInput:
    """The page for a bundle that passed every step."""
    sha, size = _file_facts(bundle)
    # Recomputed from the records by the verifier (and equal to the bundle's summary.json).
    summary = report.summary
    steps = []
    for number, title in _steps():
        if _is_consistency_step(title) and report.previous_size is None:
            steps.append(
                StepResult(
                    number,
                    title,
                    NOT_APPLICABLE,
                    "no previous checkpoint was given or bundled, so there was nothing "
                    "to compare with",
                )
            )
        else:
            steps.append(StepResult(number, title, PASSED))
    previous = None
    if report.previous_size is not None:
        whose = (
            "yours (--previous-checkpoint)"
            if report.previous_source == "argument"
            else ("the one inside the bundle (previous.note)")
        )
        previous = (
            f"The log only grew since the previous checkpoint of size {report.previous_size} "
            f"({whose}): the consistency proof to size {report.checkpoint_size} holds."
        )
    time_range = summary.get("time_range")
    first = last = None
    if isinstance(time_range, dict):
        first = _int_or_none(time_range.get("first_ts_ms"))
        last = _int_or_none(time_range.get("last_ts_ms"))
    return ReportInput(
        bundle_name=bundle.name,
        bundle_sha256=sha,
        bundle_size=size,
        generated_ms=int(clock() * 1000),
        steps=tuple(steps),
        damage=None,
        origin=report.origin,
        checkpoint_size=report.checkpoint_size,
        complete=report.complete,
        range_start=report.start,
        range_end=report.end,
        previous=previous,
        key=_signing_key(report.key, report.key_source),
        records=report.records,
        erased=report.erased,
        purged=report.purged,
        unopened=report.unopened,
        first_ts_ms=first,
        last_ts_ms=last,
        counts=_counts(summary),
    )


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def damage_in_words(error: BundleInvalid) -> str:
    """One sentence naming the damage; a record by its index when the verifier named one."""
    index = error.index
    if index is None:
        found = _INDEX.search(error.where) or _INDEX.search(error.detail)
        index = int(found.group(1)) if found is not None else None
    if index is not None:
        return f"Record {index} is missing or altered: {error.detail}."
    return f"The bundle is damaged ({error.where}): {error.detail}."


def report_failed(
    bundle: Path, error: BundleInvalid, *, pubkey: str | None, clock: Callable[[], float]
) -> ReportInput:
    """The page for a bundle that failed a step: what passed, where it failed, what was not run."""
    sha, size = _file_facts(bundle)
    steps = []
    for number, title in _steps():
        if number < error.step:
            steps.append(StepResult(number, title, PASSED))
        elif number == error.step:
            steps.append(StepResult(number, title, FAILED, f"{error.where}: {error.detail}"))
        else:
            steps.append(StepResult(number, title, NOT_REACHED))
    return ReportInput(
        bundle_name=bundle.name,
        bundle_sha256=sha,
        bundle_size=size,
        generated_ms=int(clock() * 1000),
        steps=tuple(steps),
        damage=damage_in_words(error),
        key=_key_after_failure(bundle, error.step, pubkey),
    )


def _signature_step() -> int:
    """The number of the step that checks the checkpoint's signature."""
    for number, title in _steps():
        lowered = title.lower()
        if "signature" in lowered or "signed" in lowered or lowered == "checkpoint":
            return number
    return len(_steps()) + 1  # unknown: treat every failure as before it


def _key_after_failure(bundle: Path, failed: int, pubkey: str | None) -> SigningKey | None:
    """The key, and whether it was used: a failure after the signature step still
    tells the reader which key verified the checkpoint."""
    used = failed > _signature_step()
    if pubkey:
        return _signing_key(pubkey, "argument" if used else None)
    if not used:
        return None
    bundled = _read_member(bundle, "pubkey.txt", 4096)
    try:
        text = bundled.decode("utf-8") if bundled else ""
    except UnicodeDecodeError:
        text = ""
    return _signing_key(text, "bundle") if text.strip() else None


# --- rendering -----------------------------------------------------------------------


def _e(value: object) -> str:
    """Every value from the bundle passes here: text and attribute-safe HTML."""
    return html.escape(str(value), quote=True)


def _when(ts_ms: int | None) -> str:
    if ts_ms is None:
        return "—"
    try:
        moment = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return f"{ts_ms} ms since 1970 (out of calendar range)"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _n(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif;
  color: #1f2328; background: #fff; margin: 0; }
main { max-width: 980px; margin: 0 auto; padding: 28px 32px 48px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 32px 0 10px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 20px 0 6px; }
.sub { color: #59636e; margin: 0 0 20px; }
.verdict { border-radius: 8px; padding: 18px 22px; margin: 0 0 8px; border: 2px solid; }
.verdict .word { font-size: 34px; font-weight: 800; letter-spacing: .04em; margin: 0; }
.verdict p { margin: 6px 0 0; font-size: 16px; }
.ok { background: #e9f7ef; border-color: #1a7f37; color: #0f5323; }
.bad { background: #fdecea; border-color: #cf222e; color: #82071e; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; vertical-align: top; padding: 6px 10px;
  border-bottom: 1px solid #e5e8eb; }
th { background: #f6f8fa; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 6px 18px; margin: 0; }
dt { color: #59636e; }
dd { margin: 0; overflow-wrap: anywhere; }
code { font: 13px/1.4 "DejaVu Sans Mono", Menlo, Consolas, monospace; overflow-wrap: anywhere; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 10px; font-size: 13px;
  font-weight: 600; white-space: nowrap; }
.passed { background: #dafbe1; color: #116329; }
.failed { background: #ffebe9; color: #a40e26; }
.not-reached, .not-applicable { background: #eff2f5; color: #59636e; }
.warn { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: 8px 12px; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 8px 28px; }
.grid section { min-width: 0; }
svg { display: block; }
footer { margin-top: 36px; color: #59636e; font-size: 13px; }
@media print { main { padding: 0; } .verdict { break-inside: avoid; } }
"""


def _verdict(data: ReportInput) -> str:
    if data.verified:
        log = f"the audit log <strong>{_e(data.origin)}</strong>"
        signed = f"its signed checkpoint of size {_n(data.checkpoint_size)}"
        start, end = data.range_start, data.range_end
        if start is not None and end is not None and end > start:
            what = (
                f"All {len(data.steps)} checks passed. Every record from {_n(start)} to "
                f"{_n(end - 1)} of {log} is in this bundle, in order and unaltered, exactly as "
                f"{signed} commits to: none missing, none added, none changed."
            )
        elif start is not None:
            what = (
                f"All {len(data.steps)} checks passed. The log {log} holds no record in this "
                f"bundle's range, as {signed} proves."
            )
        else:
            what = f"All {len(data.steps)} checks passed against {signed} of {log}."
        if data.unopened:
            what += (
                f" {_n(data.unopened)} of them are carried as hashes only: the export's filter"
                " did not select them, so they are proved present but not opened."
            )
        return (
            f'<div class="verdict ok" role="status"><p class="word">VERIFIED</p><p>{what}</p></div>'
        )
    return (
        '<div class="verdict bad" role="alert"><p class="word">FAILED</p>'
        f"<p>{_e(data.damage)}</p>"
        "<p>Do not rely on this bundle: ask for a new export and compare it with the log.</p>"
        "</div>"
    )


def _steps_table(data: ReportInput) -> str:
    rows = "".join(
        f"<tr><td class='num'>{step.number}</td><td>{_e(step.title)}</td>"
        f"<td><span class='badge {step.outcome.replace(' ', '-')}'>{_e(step.outcome)}</span></td>"
        f"<td>{_e(step.detail)}</td></tr>"
        for step in data.steps
    )
    return (
        "<table><thead><tr><th class='num'>#</th><th>Check</th><th>Result</th>"
        f"<th>Detail</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _facts(pairs: Iterable[tuple[str, str]]) -> str:
    """A definition list; values are already escaped HTML."""
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def _key_section(data: ReportInput) -> str:
    key = data.key
    if key is None:
        return "<p>Not established: verification stopped before the signature was checked.</p>"
    if key.source is None:
        source = "the key you gave (--pubkey); verification stopped before it was used"
    else:
        source = _KEY_SOURCES.get(key.source, key.source)
    out = _facts(
        [
            ("Key name", f"<code>{_e(key.name)}</code>"),
            ("Key hash (ID)", f"<code>{_e(key.key_hash)}</code>"),
            ("Verifier key", f"<code>{_e(key.text)}</code>"),
            ("Taken from", _e(source)),
        ]
    )
    if key.source == "bundle":
        out += (
            "<p class='warn'>The signature was checked with the key shipped inside the "
            "bundle. That proves the bundle is consistent with itself, not who signed it: "
            "verify again with <code>--pubkey</code> obtained from the operator out of band."
            "</p>"
        )
    return out


def _bars(table: CountTable) -> str:
    """An inline SVG bar chart of the table's rows (labels escaped, sizes from ints)."""
    rows = _folded(table.rows)
    if not rows:
        return "<p>None.</p>"
    top = max(count for _, count in rows) or 1
    bar_h, gap, label_w, width = 18, 6, 170, 440
    height = len(rows) * (bar_h + gap)
    parts = [f"<svg width='{width}' height='{height}' role='img' aria-label='{_e(table.title)}'>"]
    for i, (name, count) in enumerate(rows):
        y = i * (bar_h + gap)
        length = max(2, round((width - label_w - 70) * count / top))
        label = name if len(name) <= 24 else name[:23] + "…"
        parts.append(
            f"<text x='{label_w - 8}' y='{y + 13}' text-anchor='end' font-size='12' "
            f"fill='#1f2328'>{_e(label)}</text>"
            f"<rect x='{label_w}' y='{y}' width='{length}' height='{bar_h}' rx='3' "
            f"fill='#4f7bd9'/>"
            f"<text x='{label_w + length + 6}' y='{y + 13}' font-size='12' "
            f"fill='#59636e'>{count:,}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _folded(rows: tuple[tuple[str, int], ...]) -> list[tuple[str, int]]:
    if len(rows) <= MAX_ROWS:
        return list(rows)
    kept = list(rows[: MAX_ROWS - 1])
    rest = rows[MAX_ROWS - 1 :]
    kept.append((f"{len(rest):,} others", sum(count for _, count in rest)))
    return kept


def _count_table(table: CountTable) -> str:
    rows = (
        "".join(
            f"<tr><td>{_e(name)}</td><td class='num'>{count:,}</td></tr>"
            for name, count in _folded(table.rows)
        )
        or "<tr><td colspan='2'>None.</td></tr>"
    )
    return (
        f"<section><h3>{_e(table.title)}</h3>{_bars(table)}"
        f"<table><thead><tr><th>{_e(table.title.split(' by ')[-1].capitalize())}</th>"
        f"<th class='num'>Count</th></tr></thead><tbody>{rows}</tbody></table></section>"
    )


def render_html(data: ReportInput) -> bytes:
    verdict_word = "VERIFIED" if data.verified else "FAILED"
    title = f"{verdict_word}: audit bundle {data.bundle_name}"
    bundle_facts = _facts(
        [
            ("File", f"<code>{_e(data.bundle_name)}</code>"),
            ("SHA-256", f"<code>{_e(data.bundle_sha256 or 'unreadable')}</code>"),
            ("Size", f"{_n(data.bundle_size)} bytes"),
            ("Checked", _e(_when(data.generated_ms))),
        ]
    )
    if data.verified:
        checkpoint = _facts(
            [
                ("Log (origin)", f"<code>{_e(data.origin)}</code>"),
                ("Signed checkpoint", f"tree size {_n(data.checkpoint_size)}"),
                ("Completeness", _e(data.complete or "not stated by this bundle")),
                ("Previous checkpoint", _e(data.previous or "none given or bundled")),
                ("First record", _e(_when(data.first_ts_ms))),
                ("Last record", _e(_when(data.last_ts_ms))),
            ]
        )
        leaves = (
            data.range_end - data.range_start
            if data.range_start is not None and data.range_end is not None
            else None
        )
        records = _facts(
            [
                ("Leaves in the range", _n(leaves)),
                ("Records (opened, or purged by retention)", _n(data.records)),
                ("… of which the subject was erased (personal fields destroyed)", _n(data.erased)),
                ("… of which purged by retention (hash only)", _n(data.purged)),
                ("Not selected by the filter (hash only)", _n(data.unopened)),
            ]
        )
        counts = (
            "<div class='grid'>" + "".join(_count_table(t) for t in data.counts) + "</div>"
            if data.counts
            else "<p>No counts in this bundle.</p>"
        )
    else:
        unknown = "<p>Not established: the bundle failed verification, so nothing it claims "
        unknown += "is shown as fact.</p>"
        checkpoint = records = counts = unknown
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{_e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<h1>Audit bundle verification report</h1>
<p class="sub">Checked offline by <code>gateway audit verify-bundle</code>: no database and no
network, only the bundle file and the log's public key.</p>
{_verdict(data)}
<h2>The bundle</h2>
{bundle_facts}
<h2>What was checked, and how</h2>
<p>Each check runs in order; a bundle is verified only if every check passes.</p>
{_steps_table(data)}
<h2>Range and checkpoint</h2>
{checkpoint}
<h2>The key that signed it</h2>
{_key_section(data)}
<h2>Records</h2>
{records}
<h2>Counts</h2>
{counts}
<footer>This page is self-contained: no scripts and no external resources. Values taken from
the bundle are shown as text, never interpreted.</footer>
</main>
</body>
</html>
"""
    return page.encode("utf-8")


def write_report(path: Path, data: ReportInput) -> None:
    """Write the page as a new private file; FileExistsError if anything is at `path`."""
    write_private(path, render_html(data))
