"""The rendered book in a real browser: Debian's Chromium driven by Playwright.

Serves ``_build/html`` on 127.0.0.1 and opens every page. For each page:
the title, every image loaded, the sidebar lists every chapter, no console
error that points at a broken page, the Colab button's target; a screenshot
goes to ``_build/screenshots/``.

Run after ``make book``. Without Chromium this test is skipped outside CI
(install it with ``apt-get install chromium``) and fails in CI.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import pathlib
import re
import shutil
import struct
import threading

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
PAGES = [TOC["root"]] + [entry["file"] for entry in TOC.get("chapters", [])]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# The only console errors tolerated: resources outside 127.0.0.1 that this
# machine's closed network blocks (none are needed to read the book).
TOLERATED = re.compile(
    r"net::ERR_(NAME_NOT_RESOLVED|INTERNET_DISCONNECTED|CONNECTION_REFUSED|ADDRESS_UNREACHABLE|BLOCKED_BY_CLIENT)"
)

if CHROMIUM is None:
    if os.environ.get("CI"):
        pytest.fail(
            "Chromium is missing in CI: .ci/run must install it (apt-get install chromium)",
            pytrace=False,
        )
    pytest.skip(
        "Chromium not found: install it with `apt-get install chromium` to run the browser test",
        allow_module_level=True,
    )

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def base_url():
    assert (HTML / "index.html").exists(), "build the book first: make book"
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()


def _titles():
    """Each page's first heading, from its source file."""
    titles = {}
    for page in PAGES:
        path = next(
            p for p in (ROOT / f"{page}.md", ROOT / f"{page}.ipynb") if p.exists()
        )
        if path.suffix == ".ipynb":
            cells = json.loads(path.read_text())["cells"]
            text = "\n".join(
                "".join(c["source"]) for c in cells if c["cell_type"] == "markdown"
            )
        else:
            text = path.read_text()
        heading = re.search(r"^# (.+)$", text, re.M).group(1).strip()
        # inline code marks are not part of the rendered text
        titles[page] = heading.replace("`", "")
    return titles


TITLES = _titles()

# Legend and tick text must be at least this many CSS pixels high on the page (issue 9). A figure's
# text is (its size in points) x (the PNG's dots per inch / 72) x (shown width / natural width):
# the last two are measured, the points are matplotlib's default (10, for ticks and legends) unless
# the figure's cell sets a smaller one explicitly (fontsize=, labelsize=, set_fontsize(...)).
FONT_PX = 9
DEFAULT_PT = 10.0
NAMED_PT = {
    "xx-small": 5.79,
    "x-small": 6.94,
    "small": 8.33,
    "medium": 10.0,
    "large": 12.0,
    "x-large": 14.4,
    "xx-large": 17.28,
}
EXPLICIT_PT = re.compile(
    r"\b(?:fontsize|labelsize)\s*=\s*([\d.]+|[\"'][\w-]+[\"'])|set_fontsize\(\s*([\d.]+)"
)


def _smallest_pt(source: str) -> float:
    sizes = [DEFAULT_PT]
    for number, call in EXPLICIT_PT.findall(source):
        value = (number or call).strip("\"'")
        sizes.append(NAMED_PT[value] if value in NAMED_PT else float(value))
    return min(sizes)


def _figure_sources(page: str) -> list[str]:
    """The source of the cell behind each figure of a notebook page, in page order."""
    path = (ROOT / page).with_suffix(".ipynb")
    if not path.exists():
        return []
    sources = []
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] != "code" or "remove-cell" in cell["metadata"].get(
            "tags", []
        ):
            continue
        for out in cell.get("outputs", []):
            if "image/png" in out.get("data", {}):
                sources.append("".join(cell["source"]))
    return sources


def _png_dpi(path: pathlib.Path) -> float:
    """Dots per inch from a PNG's pHYs chunk (matplotlib writes it), else matplotlib's 100."""
    data = path.read_bytes()
    at = data.find(b"pHYs")
    if at < 0:
        return 100.0
    per_metre, _, unit = struct.unpack(">IIB", data[at + 4 : at + 13])
    return per_metre * 0.0254 if unit == 1 else 100.0


@pytest.mark.parametrize("page", PAGES)
def test_page_renders(page, base_url, browser):
    SHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    errors = []
    tab.on(
        "console", lambda msg: errors.append(msg.text) if msg.type == "error" else None
    )
    tab.on("pageerror", lambda exc: errors.append(f"script error: {exc}"))
    failed = []
    tab.on(
        "requestfailed",
        lambda req: failed.append(req.url) if req.url.startswith(base_url) else None,
    )
    tab.on(
        "response",
        lambda res: (
            failed.append(f"{res.status} {res.url}") if res.status >= 400 else None
        ),
    )
    tab.goto(f"{base_url}/{page}.html", wait_until="load")
    # MathJax typesets after load: wait for it
    tab.evaluate("() => window.MathJax?.startup?.promise ?? null")
    height = tab.evaluate("() => document.documentElement.scrollHeight")
    # pytest -s shows it (issue 9 records it)
    print(f"{page}: rendered page height {height} px")

    assert TITLES[page] in tab.title(), f"title {tab.title()!r} lacks {TITLES[page]!r}"
    article = tab.inner_text("article")
    assert "google.colab" not in article, (
        "the Colab bootstrap cell must be hidden in the book (tag it remove-cell)"
    )
    formulas = tab.eval_on_selector_all(".math", "els => els.length")
    typeset = tab.eval_on_selector_all("mjx-container", "els => els.length")
    assert typeset >= formulas, (
        f"{formulas} formulas on the page, {typeset} typeset by MathJax"
    )
    # MathJax shows a macro it cannot use in text mode (\\_ inside \\text{...}) as its source: a backslash
    raw = tab.eval_on_selector_all(
        "mjx-assistive-mml",
        "els => els.map(e => e.textContent).filter(t => t.includes('\\\\'))",
    )
    assert not raw, f"formulas that render with a literal backslash: {raw}"
    errors_in_math = tab.eval_on_selector_all(
        "mjx-merror", "els => els.map(e => e.getAttribute('data-mjx-error'))"
    )
    assert not errors_in_math, f"MathJax errors: {errors_in_math}"
    # Readable at this window size: no formula runs past the article, no figure is shrunk so far that its
    # labels become a few pixels high (a figure drawn wider than about 11 inches is).
    too_wide = tab.eval_on_selector_all(
        "div.math mjx-container",
        "els => els.filter(e => e.querySelector('mjx-math').getBoundingClientRect().width > e.clientWidth + 1)"
        ".map(e => `${Math.round(e.querySelector('mjx-math').getBoundingClientRect().width)} px in ${e.clientWidth} px`)",
    )
    assert not too_wide, (
        f"display formulas wider than the article, cut at its edge (split them): {too_wide}"
    )
    shrunk = tab.eval_on_selector_all(
        "article img",
        "imgs => imgs.filter(i => i.clientWidth > 0 && i.naturalWidth / i.clientWidth > 1.6)"
        ".map(i => `${i.naturalWidth} px shown at ${i.clientWidth} px`)",
    )
    assert not shrunk, (
        f"figures shrunk more than 1.6 times, their text unreadable: {shrunk}"
    )
    figures = tab.eval_on_selector_all(
        "article div.cell_output img",
        "imgs => imgs.map(i => [new URL(i.src).pathname, i.naturalWidth, i.clientWidth])",
    )
    sources = _figure_sources(page)
    assert len(figures) == len(sources), (
        f"{len(figures)} figures on the page, {len(sources)} in the notebook"
    )
    small = []
    for number, ((src, natural, shown), source) in enumerate(zip(figures, sources)):
        dpi = _png_dpi(HTML / src.lstrip("/"))
        points = _smallest_pt(source)
        pixels = points * dpi / 72 * shown / max(natural, 1)
        if pixels < FONT_PX:
            small.append(
                f"figure {number + 1} ({natural} px shown at {shown} px, {dpi:.0f} dpi, "
                f"{points:g} pt): {pixels:.1f} px"
            )
    assert not small, (
        f"figure text below {FONT_PX} px (make the figure narrower or its text larger): {small}"
    )
    broken = tab.eval_on_selector_all(
        "img",
        "imgs => imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)",
    )
    assert not broken, f"images that did not load: {broken}"
    sidebar = tab.inner_text("nav.bd-links")
    for other in PAGES:
        if other != TOC["root"]:
            assert TITLES[other] in sidebar, f"sidebar lacks {TITLES[other]!r}"
    assert not failed, f"local files missing or failing: {failed}"
    real = [e for e in errors if not TOLERATED.search(e)]
    assert not real, f"console errors: {real}"
    colab = tab.eval_on_selector_all(
        "a[href*='colab.research.google.com']", "links => links.map(a => a.href)"
    )
    if (ROOT / page).with_suffix(".ipynb").exists():  # a notebook: Colab can open it
        repo = (
            CONFIG["repository"]["url"].removeprefix("https://github.com/").rstrip("/")
        )
        expected = (
            f"https://colab.research.google.com/github/{repo}/blob/main/{page}.ipynb"
        )
        assert expected in colab, f"Colab button {colab} should open {expected}"
    else:
        assert not colab, "a prose (Markdown) page has no notebook to launch"
    # Every line visible: no code or output block scrolls sideways (its content wider than its box)
    scrolling = tab.eval_on_selector_all(
        "article div.highlight pre, article div.cell_output pre, article pre",
        "els => els.filter(e => e.scrollWidth > e.clientWidth + 1)"
        ".map(e => `${e.scrollWidth} px in ${e.clientWidth} px: ${e.textContent.trim().slice(0, 50)}`)",
    )
    assert not scrolling, (
        f"code or output blocks that scroll sideways (lines > 88 characters): {scrolling}"
    )
    tab.screenshot(path=str(SHOTS / f"{page.replace('/', '_')}.png"), full_page=True)
    context.close()
