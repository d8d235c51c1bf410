"""The verification report in a real browser: Debian's headless chromium loads the page
the CLI wrote, its DOM must carry the verdict (and the damaged record's index), and its
screenshot must be a real rendering: a PNG of the window's size, with the verdict
banner painted in its colour (green for VERIFIED, red for FAILED).

Skipped, loudly, where no chromium binary is installed (`apt-get install chromium`):
CI machines may lack it, and a skip must never read as a pass.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from tests.audit.test_report import (
    DAMAGED,
    Bundles,
    N,
    Page,
    assert_self_contained,
    bundles,  # noqa: F401 - the fixture, shared with the CLI tests
    verify_cli,
)

WIDTH, HEIGHT = 1100, 1400
TOP = 450  # rows decoded: the heading and the verdict banner
# The verdict banner's background (audit/report.py's CSS: .ok and .bad).
GREEN = (0xE9, 0xF7, 0xEF)
RED = (0xFD, 0xEC, 0xEA)
NO_CHROMIUM = (
    "no chromium binary (Debian: apt-get install chromium): "
    "the HTML report was NOT checked in a real browser"
)


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    print(f"WARNING: {NO_CHROMIUM}", file=sys.stderr)
    pytest.skip(NO_CHROMIUM)


def _browser(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            chromium,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",  # tests may run as root, in a container
            f"--user-data-dir={profile}",  # never the user's own profile
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            # Nothing may reach the network, the page least of all.
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--hide-scrollbars",
            f"--window-size={WIDTH},{HEIGHT}",
            *args,
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )


def load(chromium: str, page: Path, tmp: Path) -> tuple[str, Path]:
    """The DOM chromium built from the page, and a screenshot of it."""
    url = page.resolve().as_uri()
    dom = _browser(chromium, tmp / "profile-dom", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr.decode(errors="replace")[-2000:]
    shot = tmp / f"{page.stem}.png"
    taken = _browser(chromium, tmp / "profile-shot", f"--screenshot={shot}", url)
    assert taken.returncode == 0, taken.stderr.decode(errors="replace")[-2000:]
    return dom.stdout.decode("utf-8"), shot


def png_pixels(path: Path, max_rows: int) -> tuple[int, int, list[list[tuple[int, int, int]]]]:
    """A minimal PNG decoder (8-bit RGB/RGBA, not interlaced): the size, and the top
    `max_rows` rows of pixels (pure Python is slow; the verdict is at the top)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks, header = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert (depth, interlace) == (8, 0)
    assert colour in (2, 6)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * bpp
    rows: list[list[tuple[int, int, int]]] = []
    previous = bytearray(stride)
    for y in range(min(height, max_rows)):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = previous[x]
            c = previous[x - bpp] if x >= bpp else 0
            if kind == 1:
                line[x] = (line[x] + a) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + b) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                predictor = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[x] = (line[x] + predictor) & 0xFF
        rows.append([tuple(line[i : i + 3]) for i in range(0, stride, bpp)])
        previous = line
    return width, height, rows


def _near(pixel: tuple[int, int, int], colour: tuple[int, int, int]) -> bool:
    return all(abs(p - c) <= 3 for p, c in zip(pixel, colour, strict=True))


def check_screenshot(shot: Path, banner: tuple[int, int, int]) -> None:
    assert shot.stat().st_size > 20_000, "screenshot too small to be a rendered page"
    width, height, rows = png_pixels(shot, TOP)
    assert (width, height) == (WIDTH, HEIGHT)
    colours = {pixel for row in rows[::7] for pixel in row[::7]}
    assert len(colours) > 50, "screenshot is nearly blank"
    # The banner sits near the top, under the heading: rows painted in its colour.
    column = [row[WIDTH // 2] for row in rows]
    assert sum(_near(pixel, banner) for pixel in column) > 40, "verdict banner not painted"
    other = RED if banner == GREEN else GREEN
    assert not any(_near(pixel, other) for pixel in column)


@pytest.mark.asyncio
async def test_the_browser_shows_a_verified_bundle_as_verified(
    chromium: str,
    bundles: Bundles,  # noqa: F811 - the imported fixture
    tmp_path: Path,
) -> None:
    report = tmp_path / "verified.html"
    result = verify_cli(str(bundles.good), "--pubkey", bundles.pubkey, "--report", str(report))
    assert result.returncode == 0, result.stderr
    assert_self_contained(report.read_text(encoding="utf-8"))

    dom, shot = load(chromium, report, tmp_path)
    page = Page(dom)
    assert not [tag for tag, _ in page.tags if tag in ("script", "link", "img", "iframe")]
    words = page.visible
    assert words.startswith("Audit bundle verification report")
    assert words.index("VERIFIED") < words.index("What was checked")
    assert "FAILED" not in words
    assert f"Every record from 0 to {N - 1} of the audit log" in words
    check_screenshot(shot, GREEN)


@pytest.mark.asyncio
async def test_the_browser_shows_a_damaged_bundle_as_failed_naming_the_record(
    chromium: str,
    bundles: Bundles,  # noqa: F811 - the imported fixture
    tmp_path: Path,
) -> None:
    report = tmp_path / "damaged.html"
    result = verify_cli(str(bundles.damaged), "--pubkey", bundles.pubkey, "--report", str(report))
    assert result.returncode == 1
    assert_self_contained(report.read_text(encoding="utf-8"))

    dom, shot = load(chromium, report, tmp_path)
    words = Page(dom).visible
    assert words.index("FAILED") < words.index("What was checked")
    assert "VERIFIED" not in words
    assert f"Record {DAMAGED} is missing or altered" in words
    check_screenshot(shot, RED)
