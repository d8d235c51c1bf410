"""The A/B report page in a real browser: Debian's headless chromium loads the page
`gateway ab report --html` writes, its DOM must carry the table and the three plots,
and its screenshot must be a real rendering (not blank, the arms' colours painted).

Skipped, loudly, where no chromium binary is installed (`apt-get install chromium`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from defusedxml import ElementTree

from models.experiments.html import COLOURS, render_html
from models.experiments.sim import (
    Misbehaviour,
    demo_arms,
    make_pool,
    outcome_report,
    replay_world,
    run_experiment,
)
from policies import ExperimentPolicy, Guardrails
from tests.audit.test_report import Page
from tests.audit.test_report_browser import chromium, load, png_pixels  # noqa: F401 - fixture

ARMS = ("model", "popularity")


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    world = replay_world()
    _, scorers = demo_arms(world)
    pool = make_pool(world, scorers, requests=3000, seed=2)
    policy = ExperimentPolicy(
        guardrails=Guardrails(max_error_rate=0.02, max_p99_ms=500, min_requests=200, action="stop")
    )
    outcome = run_experiment(
        pool,
        ARMS,
        policy,
        requests=1500,
        seed=4,
        misbehaviour={"popularity": Misbehaviour(error_rate=0.01)},
        stop_on_decision=False,
    )
    path = tmp_path_factory.mktemp("ab") / "report.html"
    path.write_text(render_html(outcome_report(outcome, ARMS, policy)), encoding="utf-8")
    return path


def _hex(colour: str) -> tuple[int, int, int]:
    return (int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16))


def test_the_page_is_self_contained(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert text.count("<svg") == 3
    for forbidden in ("<script", "<link", "<img", "<iframe", "url(", "@import"):
        assert forbidden not in text
    bare = text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "http://" not in bare
    assert "https://" not in bare
    assert "default-src 'none'" in text  # and the page's CSP would refuse any fetch
    # Each plot is well-formed SVG with something drawn in it.
    for chunk in text.split("<svg")[1:]:
        svg = ElementTree.fromstring("<svg" + chunk.split("</svg>")[0] + "</svg>")
        drawn = [e for e in svg.iter() if e.tag.endswith(("polyline", "polygon", "rect"))]
        assert len(drawn) >= 2


def test_chromium_renders_the_report(
    chromium: str,  # noqa: F811 - the imported fixture
    page: Path,
    tmp_path: Path,
) -> None:
    dom, shot = load(chromium, page, tmp_path)
    words = Page(dom).visible
    assert words.startswith("A/B report: demo-ranker")
    for text in ("Cumulative CTR per arm", "Sequential test", "Guardrails", "worse"):
        assert text in dom
    assert shot.stat().st_size > 20_000, "screenshot too small to be a rendered page"
    _, _, rows = png_pixels(shot, 1400)
    colours = {pixel for row in rows[::5] for pixel in row[::5]}
    assert len(colours) > 50, "screenshot is nearly blank"
    # The two arms' lines are painted (antialiasing: allow a little).
    everything = {pixel for row in rows for pixel in row[::2]}
    for colour in COLOURS[:2]:
        want = _hex(colour)
        assert any(all(abs(p - c) <= 8 for p, c in zip(px, want, strict=True)) for px in everything)


def test_text_from_the_data_is_escaped(tmp_path: Path) -> None:
    world = replay_world()
    _, scorers = demo_arms(world)
    hostile = {
        "<script>alert(1)</script>": scorers["model"],
        '"><img src=x>': scorers["popularity"],
    }
    pool = make_pool(world, hostile, requests=400, seed=2)
    arms = ("<script>alert(1)</script>", '"><img src=x>')
    outcome = run_experiment(pool, arms, ExperimentPolicy(), requests=300, seed=1)
    text = render_html(outcome_report(outcome, arms, ExperimentPolicy(), model="<i>m</i>"))
    for raw in ("<script", "<img", "<i>m</i>"):
        assert raw not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
