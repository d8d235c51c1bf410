"""The A/B report as one self-contained HTML page: inline SVG, no script, no external asset.

Three plots people would rather look at than read: each arm's cumulative CTR with its
Wilson interval over the looks, the sequential test's log likelihood ratio against its
boundary log(1/alpha), and each guardrail's value against its limit. Every text that
comes from data is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
WIDTH, HEIGHT, PAD = 640, 260, 48
DASH = "&#8211;"  # an en dash, as an HTML entity


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return DASH
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return escape(str(value))


def _scale(low: float, high: float, out_low: float, out_high: float) -> Any:
    span = (high - low) or 1.0
    return lambda v: out_low + (v - low) / span * (out_high - out_low)


def _axes(title: str, x_label: str, y_low: float, y_high: float) -> list[str]:
    parts = [
        f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" font-weight="bold">'
        f"{escape(title)}</text>",
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - 10}" y2="{HEIGHT - PAD}" '
        'stroke="#333"/>',
        f'<line x1="{PAD}" y1="24" x2="{PAD}" y2="{HEIGHT - PAD}" stroke="#333"/>',
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 12}" text-anchor="middle">{escape(x_label)}</text>',
    ]
    y = _scale(y_low, y_high, HEIGHT - PAD, 24)
    for k in range(5):
        value = y_low + (y_high - y_low) * k / 4
        parts.append(
            f'<text x="{PAD - 4}" y="{y(value) + 4:.1f}" text-anchor="end" font-size="10">'
            f"{value:.3g}</text>"
        )
    return parts


def _svg(parts: Sequence[str]) -> str:
    body = "\n".join(parts)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">'
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#fff"/>{body}</svg>'
    )


def ctr_plot(report: dict[str, Any]) -> str:
    series = report["series"]
    variants = [row["variant"] for row in report["arms"]]
    # The range the intervals span once an arm has `min_samples` impressions, padded:
    # CTRs of 0.4 and 0.5 must not look alike; the first looks' wide bands are clipped.
    bounds = [
        value
        for p in series
        for v in variants
        if (p["arms"].get(v, {}).get("impressions") or 0) >= report["min_samples"]
        for value in (p["arms"][v]["low"], p["arms"][v]["high"])
    ]
    y_low = max(0.0, min(bounds, default=0.0) - 0.02)
    y_high = min(1.0, max(bounds, default=1.0) + 0.02)
    x = _scale(0, max(1, len(series) - 1), PAD, WIDTH - 20)
    scaled = _scale(y_low, y_high, HEIGHT - PAD, 24)

    def y(value: float) -> float:
        return float(scaled(min(y_high, max(y_low, value))))

    parts = _axes("Cumulative CTR per arm (95 % Wilson interval)", "look", y_low, y_high)
    for index, variant in enumerate(variants):
        colour = COLOURS[index % len(COLOURS)]
        points = [
            (i, p["arms"][variant])
            for i, p in enumerate(series)
            if p["arms"][variant]["ctr"] is not None
        ]
        if not points:
            continue
        band = [f"{x(i):.1f},{y(a['high']):.1f}" for i, a in points] + [
            f"{x(i):.1f},{y(a['low']):.1f}" for i, a in reversed(points)
        ]
        parts.append(f'<polygon points="{" ".join(band)}" fill="{colour}" fill-opacity="0.18"/>')
        line = " ".join(f"{x(i):.1f},{y(a['ctr']):.1f}" for i, a in points)
        parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts.append(
            f'<text x="{WIDTH - 60}" y="{40 + 16 * index}" fill="{colour}">'
            f"arm {escape(variant)}</text>"
        )
    return _svg(parts)


def sequential_plot(report: dict[str, Any]) -> str:
    series = report["series"]
    boundary = math.log(1.0 / report["alpha"])
    values = [v for p in series for v in p["log_ratio"].values() if v is not None]
    y_high = max([boundary * 1.3, *values]) if values else boundary * 1.3
    y_low = min([0.0, *values])
    x = _scale(0, max(1, len(series) - 1), PAD, WIDTH - 20)
    y = _scale(y_low, y_high, HEIGHT - PAD, 24)
    parts = _axes(
        "Sequential test: log likelihood ratio vs boundary log(1/alpha)", "look", y_low, y_high
    )
    parts.append(
        f'<line x1="{PAD}" y1="{y(boundary):.1f}" x2="{WIDTH - 20}" y2="{y(boundary):.1f}" '
        f'stroke="#000" stroke-dasharray="6 4"/>'
        f'<text x="{PAD + 6}" y="{y(boundary) - 4:.1f}" font-size="10">boundary</text>'
    )
    others = [row["variant"] for row in report["arms"] if not row["control"]]
    for index, variant in enumerate(others, start=1):
        colour = COLOURS[index % len(COLOURS)]
        points = [
            (i, p["log_ratio"].get(variant))
            for i, p in enumerate(series)
            if p["log_ratio"].get(variant) is not None
        ]
        if points:
            line = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in points)
            parts.append(
                f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>'
            )
            parts.append(
                f'<text x="{WIDTH - 90}" y="{40 + 16 * index}" fill="{colour}">'
                f"{escape(variant)} vs control</text>"
            )
    return _svg(parts)


def guardrail_plot(report: dict[str, Any]) -> str:
    """One bar per arm and guardrail: the value as a fraction of its limit (1 = the limit)."""
    names = ("error_rate", "p99_ms", "flag_rate")
    rows = report["arms"]
    fractions = []
    for row in rows:
        for name in names:
            check = row["guardrails"]["checks"][name]
            value, limit = check["value"], check["limit"]
            fractions.append(value / limit if value is not None and limit else 0.0)
    top = max([1.5, *fractions])
    y = _scale(0.0, top, HEIGHT - PAD, 24)
    parts = _axes("Guardrails: value / limit per arm (over 1 = breached)", "guardrail", 0.0, top)
    parts.append(
        f'<line x1="{PAD}" y1="{y(1.0):.1f}" x2="{WIDTH - 20}" y2="{y(1.0):.1f}" '
        f'stroke="#d62728" stroke-dasharray="6 4"/>'
    )
    group = (WIDTH - PAD - 20) / len(names)
    bar = group / (len(rows) + 1)
    for g, name in enumerate(names):
        parts.append(
            f'<text x="{PAD + g * group + group / 2:.1f}" y="{HEIGHT - PAD + 14}" '
            f'text-anchor="middle" font-size="10">{name}</text>'
        )
        for a in range(len(rows)):
            fraction = fractions[a * len(names) + g]
            left = PAD + g * group + (a + 0.5) * bar
            colour = COLOURS[a % len(COLOURS)]
            parts.append(
                f'<rect x="{left:.1f}" y="{y(fraction):.1f}" width="{bar * 0.9:.1f}" '
                f'height="{y(0.0) - y(fraction):.1f}" fill="{colour}"/>'
            )
    return _svg(parts)


def _table(report: dict[str, Any]) -> str:
    head = (
        "<tr><th>arm</th><th>version</th><th>impressions</th><th>clicks</th><th>CTR</th>"
        "<th>95 % interval</th><th>lift</th><th>always-valid p</th><th>decision</th>"
        "<th>guardrails</th><th>stopped</th></tr>"
    )
    rows = []
    for row in report["arms"]:
        versus = row.get("versus_control") or {}
        interval = row["ctr_interval"]
        shown = DASH if interval is None else f"{interval[0]:.4f} {DASH} {interval[1]:.4f}"
        rows.append(
            "<tr>"
            f"<td>{escape(row['variant'])}{' (control)' if row['control'] else ''}</td>"
            f"<td>{escape(row['version'])}</td><td>{row['impressions']}</td>"
            f"<td>{row['clicks']}</td><td>{_fmt(row['ctr'])}</td>"
            f"<td>{shown}</td>"
            f"<td>{_fmt(versus.get('lift'))}</td><td>{_fmt(versus.get('p_value'))}</td>"
            f"<td>{escape(versus['decision']) if versus else DASH}</td>"
            f"<td>{escape(', '.join(row['guardrails']['breached']) or 'ok')}</td>"
            f"<td>{'yes' if row['stopped'] else 'no'}</td>"
            "</tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def render_html(report: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(report["generated_ms"] / 1000, UTC).isoformat(timespec="seconds")
    title = f"A/B report: {report['model']}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>{escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; background: #fafafa; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #bbb; padding: 4px 8px; text-align: right; }}
th {{ background: #eee; }} svg {{ display: block; margin: 1em 0; border: 1px solid #ddd; }}
</style></head><body>
<h1>{escape(title)}</h1>
<p>Generated {escape(when)}. Sequential test: mSPRT, alpha {report["alpha"]},
mixture sd {report["mixture_sd"]}, first look at {report["min_samples"]} impressions per arm.
Guardrail action: {escape(report["guardrail_action"])}.</p>
{_table(report)}
{ctr_plot(report)}
{sequential_plot(report)}
{guardrail_plot(report)}
</body></html>
"""
