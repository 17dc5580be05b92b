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
TOLERATED = re.compile(r"net::ERR_(NAME_NOT_RESOLVED|INTERNET_DISCONNECTED|CONNECTION_REFUSED|ADDRESS_UNREACHABLE|BLOCKED_BY_CLIENT)")

if CHROMIUM is None:
    if os.environ.get("CI"):
        pytest.fail("Chromium is missing in CI: .ci/run must install it (apt-get install chromium)", pytrace=False)
    pytest.skip("Chromium not found: install it with `apt-get install chromium` to run the browser test",
                allow_module_level=True)

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
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield browser
        browser.close()


def _titles():
    """Each page's first heading, from its source file."""
    titles = {}
    for page in PAGES:
        path = next(p for p in (ROOT / f"{page}.md", ROOT / f"{page}.ipynb") if p.exists())
        if path.suffix == ".ipynb":
            cells = json.loads(path.read_text())["cells"]
            text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        else:
            text = path.read_text()
        heading = re.search(r"^# (.+)$", text, re.M).group(1).strip()
        titles[page] = heading.replace("`", "")  # inline code marks are not part of the rendered text
    return titles


TITLES = _titles()


@pytest.mark.parametrize("page", PAGES)
def test_page_renders(page, base_url, browser):
    SHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    errors = []
    tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    tab.on("pageerror", lambda exc: errors.append(f"script error: {exc}"))
    failed = []
    tab.on("requestfailed", lambda req: failed.append(req.url) if req.url.startswith(base_url) else None)
    tab.on("response", lambda res: failed.append(f"{res.status} {res.url}") if res.status >= 400 else None)
    tab.goto(f"{base_url}/{page}.html", wait_until="load")
    tab.evaluate("() => window.MathJax?.startup?.promise ?? null")   # MathJax typesets after load: wait for it
    height = tab.evaluate("() => document.documentElement.scrollHeight")
    print(f"{page}: rendered page height {height} px")   # pytest -s shows it (issue 9 records it)

    assert TITLES[page] in tab.title(), f"title {tab.title()!r} lacks {TITLES[page]!r}"
    article = tab.inner_text("article")
    assert "google.colab" not in article, "the Colab bootstrap cell must be hidden in the book (tag it remove-cell)"
    formulas = tab.eval_on_selector_all(".math", "els => els.length")
    typeset = tab.eval_on_selector_all("mjx-container", "els => els.length")
    assert typeset >= formulas, f"{formulas} formulas on the page, {typeset} typeset by MathJax"
    # MathJax shows a macro it cannot use in text mode (\\_ inside \\text{...}) as its source: a backslash
    raw = tab.eval_on_selector_all("mjx-assistive-mml", "els => els.map(e => e.textContent).filter(t => t.includes('\\\\'))")
    assert not raw, f"formulas that render with a literal backslash: {raw}"
    errors_in_math = tab.eval_on_selector_all("mjx-merror", "els => els.map(e => e.getAttribute('data-mjx-error'))")
    assert not errors_in_math, f"MathJax errors: {errors_in_math}"
    # Readable at this window size: no formula runs past the article, no figure is shrunk so far that its
    # labels become a few pixels high (a figure drawn wider than about 11 inches is).
    too_wide = tab.eval_on_selector_all(
        "div.math mjx-container",
        "els => els.filter(e => e.querySelector('mjx-math').getBoundingClientRect().width > e.clientWidth + 1)"
        ".map(e => `${Math.round(e.querySelector('mjx-math').getBoundingClientRect().width)} px in ${e.clientWidth} px`)")
    assert not too_wide, f"display formulas wider than the article, cut at its edge (split them): {too_wide}"
    shrunk = tab.eval_on_selector_all(
        "article img", "imgs => imgs.filter(i => i.clientWidth > 0 && i.naturalWidth / i.clientWidth > 1.6)"
                       ".map(i => `${i.naturalWidth} px shown at ${i.clientWidth} px`)")
    assert not shrunk, f"figures shrunk more than 1.6 times, their text unreadable: {shrunk}"
    broken = tab.eval_on_selector_all("img", "imgs => imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
    assert not broken, f"images that did not load: {broken}"
    sidebar = tab.inner_text("nav.bd-links")
    for other in PAGES:
        if other != TOC["root"]:
            assert TITLES[other] in sidebar, f"sidebar lacks {TITLES[other]!r}"
    assert not failed, f"local files missing or failing: {failed}"
    real = [e for e in errors if not TOLERATED.search(e)]
    assert not real, f"console errors: {real}"
    colab = tab.eval_on_selector_all("a[href*='colab.research.google.com']", "links => links.map(a => a.href)")
    if (ROOT / page).with_suffix(".ipynb").exists():  # a notebook: Colab can open it
        repo = CONFIG["repository"]["url"].removeprefix("https://github.com/").rstrip("/")
        expected = f"https://colab.research.google.com/github/{repo}/blob/main/{page}.ipynb"
        assert expected in colab, f"Colab button {colab} should open {expected}"
    else:
        assert not colab, "a prose (Markdown) page has no notebook to launch"
    # Every line visible: no code or output block scrolls sideways (its content wider than its box)
    scrolling = tab.eval_on_selector_all(
        "article div.highlight pre, article div.cell_output pre, article pre",
        "els => els.filter(e => e.scrollWidth > e.clientWidth + 1)"
        ".map(e => `${e.scrollWidth} px in ${e.clientWidth} px: ${e.textContent.trim().slice(0, 50)}`)")
    assert not scrolling, f"code or output blocks that scroll sideways (lines > 88 characters): {scrolling}"
    tab.screenshot(path=str(SHOTS / f"{page.replace('/', '_')}.png"), full_page=True)
    context.close()
