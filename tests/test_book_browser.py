"""Open every chapter of the built book in headless Chromium, offline, and check it renders.

The pages are the ones listed in ``_toc.yml`` (parsed here, never hard-coded); the HTML is the one
``make book`` / ``make test`` builds into ``_build/html``. For each page the test checks that it
loads with a title, that MathJax (the local copy under ``_static/mathjax``; the browser has no
network) typeset every math node with no TeX error and its fonts loaded, that no raw ``$$``,
``\\begin{``, inline TeX or Markdown table is left in the visible text, that every image of the
main content loaded, that the page requested nothing over the network and threw no JavaScript
error, that every figure a code cell drew shows its smallest text (7 pt) at 9 px or more, and that
no code line is clipped at the column width. It then checks that nothing is cut off, with every
folded block (hidden inputs, solutions) unfolded: at 1280 px wide, no display equation, table or
code block is wider than the text column; at 390 px (a phone), the page itself does not scroll
sideways, anything wider than the screen sits inside a box that scrolls sideways, and such a box
that hides content shows the fade of ``_static/scroll-cue.js``. It saves full-page screenshots of
each page at both widths to ``artifacts/screenshots/<page>.1280.png`` and ``<page>.390.png``.

Without a browser, it checks that every page of the toc is linked from the text of another page
(no orphan: the sidebar alone does not count), and that every notebook page offers its ``.ipynb``
(``book/_ext/downloads.py``) next to its ``.md``. With one, it serves the book over HTTP
(``make serve`` does the same) and checks that a search finds a page and shows an excerpt of it.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (``make test`` installs them when
run as root) and a built book. Where either is missing the test skips with the reason, except in
CI (``CI=true``), where it fails.
"""
from __future__ import annotations

import base64
import html.parser
import http.server
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from guiding_nc.companions.plotting.style import MIN_FONT_PT, MIN_TEXT_PX, SCREEN_DPI

ROOT = Path(__file__).resolve().parents[1]
# The built book (BOOK_HTML: another build of it, e.g. a copy kept while the next one runs).
HTML_DIR = Path(os.environ.get("BOOK_HTML", ROOT / "_build" / "html"))
SCREENSHOT_DIR = ROOT / "artifacts" / "screenshots"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--window-size=1280,900",
    # No network: every host name fails to resolve. Pages are loaded over file://, and the search
    # page from the test's own server on 127.0.0.1.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
MAX_SCREENSHOT_HEIGHT = 16000  # Chromium cannot capture much taller surfaces
# The widths every page is checked and photographed at: a laptop and a phone (CSS pixels), with
# the height of each screen.
WIDE, NARROW = 1280, 390
SCREEN_HEIGHT = {WIDE: 900, NARROW: 844}

pytestmark = pytest.mark.browser

IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def unavailable(reason: str):
    """Fail in CI, skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


# --------------------------------------------------------------------------- pages from _toc.yml


def toc_pages(toc_path: Path = ROOT / "_toc.yml") -> list[str]:
    """Source paths (without extension, relative to the root) of every page listed in the toc."""
    toc = yaml.safe_load(toc_path.read_text())
    pages: list[str] = []

    def add(path: str) -> None:
        path = re.sub(r"\.(md|ipynb|rst)$", "", str(path).strip().removeprefix("./"))
        if path not in pages:
            pages.append(path)

    def walk(node) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            if "file" in node:
                add(node["file"])
            if "glob" in node:
                for src in sorted(ROOT.glob(node["glob"])):
                    if src.suffix in {".md", ".ipynb", ".rst"}:
                        add(src.relative_to(ROOT).with_suffix("").as_posix())
            for key in ("parts", "chapters", "sections", "subtrees", "entries"):
                if key in node:
                    walk(node[key])

    if toc.get("root"):
        add(toc["root"])
    walk(toc)
    return pages


PAGES = toc_pages()


def screenshot_name(page: str, width: int = WIDE) -> str:
    return page.removeprefix("book/").replace("/", "__") + f".{width}.png"


def test_toc_lists_pages():
    assert PAGES, "_toc.yml lists no pages"
    for page in PAGES:
        assert any((ROOT / f"{page}{ext}").is_file() for ext in (".md", ".ipynb", ".rst")), (
            f"_toc.yml lists {page!r} but there is no such source file"
        )


# --------------------------------------------------------------------------- static check: no CDN


class _ExternalRefs(html.parser.HTMLParser):
    """Collects <script src>, <link href> (stylesheets, preloads, icons), <img src> and
    <iframe src> that point off the machine."""

    def __init__(self) -> None:
        super().__init__()
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        url = {"script": attrs.get("src"), "link": attrs.get("href"), "img": attrs.get("src"),
               "iframe": attrs.get("src")}.get(tag)
        if url and re.match(r"^(https?:)?//", url.strip(), re.I):
            self.external.append(f"<{tag}> {url}")


def built_html_files() -> list[Path]:
    if not HTML_DIR.is_dir():
        unavailable(f"the book is not built ({HTML_DIR} is missing): run `make book`")
    return sorted(HTML_DIR.rglob("*.html"))


def test_built_html_loads_nothing_from_the_network():
    files = built_html_files()
    assert files
    offenders = {}
    for path in files:
        parser = _ExternalRefs()
        parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        if parser.external:
            offenders[str(path.relative_to(HTML_DIR))] = parser.external
    assert not offenders, f"pages load scripts/styles/images from the network: {offenders}"
    assert (HTML_DIR / "_static" / "mathjax" / "tex-chtml.js").is_file(), "local MathJax missing"


# --------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        unavailable(
            f"{' and '.join(missing)} not found: install the Debian packages chromium and "
            "chromium-driver (`make test` does it when run as root)"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:  # pragma: no cover - selenium is in the test extra
        unavailable("selenium is not installed (pip install -e .[test])")

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(90)
    try:
        yield driver
    finally:
        driver.quit()


# Runs in the page once it has loaded: waits for MathJax and for fonts and images, then reports.
PAGE_REPORT_JS = r"""
const done = arguments[arguments.length - 1];
const main = document.querySelector("article.bd-article") || document.querySelector("main")
             || document.body;
const timeout = (ms) => new Promise((resolve) => setTimeout(() => resolve("timeout"), ms));
(async () => {
  const mathNodes = [...document.querySelectorAll(".math")];
  const report = {title: document.title, mathNodes: mathNodes.length, mathjax: false};
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    report.mathjax = (await Promise.race([MathJax.startup.promise.then(() => true), timeout(60000)]))
                     === true;
  }
  await Promise.race([document.fonts.ready, timeout(20000)]);
  report.untypeset = mathNodes.filter((n) => !n.querySelector("mjx-container"))
                              .map((n) => n.textContent.trim().slice(0, 80));
  report.mathjaxContainers = document.querySelectorAll("mjx-container").length;
  report.texErrors = [...document.querySelectorAll("mjx-merror, [data-mjx-error]")]
                     .map((n) => (n.getAttribute("data-mjx-error") || n.textContent).slice(0, 120));
  // MathJax's noundefined package renders an unknown macro as its name, in red, without an error
  report.texErrors.push(...[...document.querySelectorAll('mjx-assistive-mml mtext[mathcolor]')]
                     .filter((n) => /^\\[A-Za-z]+$/.test(n.textContent.trim()))
                     .map((n) => "undefined macro " + n.textContent.trim()));
  report.failedFonts = [...document.fonts].filter((f) => f.status === "error")
                       .map((f) => f.family);
  const imgs = [...main.querySelectorAll("img")];
  imgs.forEach((img) => { img.loading = "eager"; });
  await Promise.race([Promise.all(imgs.map((img) => img.decode().catch(() => null))),
                      timeout(20000)]);
  report.images = imgs.length;
  report.brokenImages = imgs.filter((img) => !(img.complete && img.naturalWidth > 0))
                            .map((img) => img.getAttribute("src"));
  // Figures: natural and displayed width of every image a code cell drew.
  report.figures = [...main.querySelectorAll(".cell_output img")]
                   .map((img) => ({src: (img.getAttribute("src") || "").split("/").pop(),
                                   natural: img.naturalWidth, shown: img.clientWidth}));
  // Code (inputs, outputs, shell blocks) whose lines run past the column behind a scroll bar.
  report.clipped = [...main.querySelectorAll("pre")]
                   .filter((pre) => pre.scrollWidth > pre.clientWidth + 1)
                   .map((pre) => pre.textContent.split("\n")
                                    .reduce((a, b) => (b.length > a.length ? b : a), "")
                                    .slice(0, 90));
  const clone = main.cloneNode(true);
  clone.querySelectorAll("pre, code, script, style, mjx-container, .highlight")
       .forEach((n) => n.remove());
  report.text = clone.textContent;
  return report;
})().then(done, (err) => done({error: String(err)}));
"""


def network_requests(driver) -> list[str]:
    """URLs the browser requested over the network since the last call (drains the log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if re.match(r"^(https?|wss?|ftp):", url, re.I):
                urls.append(url)
    return urls


def set_viewport(driver, width: int, height: int | None = None) -> None:
    """Lay the page out for a screen ``width`` CSS pixels wide (a phone below 600 px)."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height or SCREEN_HEIGHT.get(width, 900), "deviceScaleFactor": 1,
         "mobile": width < 600},
    )
    next_frames(driver)


def next_frames(driver) -> None:
    """Let a relayout paint: two animation frames."""
    driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "requestAnimationFrame(() => requestAnimationFrame(() => done(true)));"
    )


def full_page_screenshot(driver, path: Path, width: int = WIDE) -> None:
    """Screenshot of the whole page at ``width``: the viewport is made as tall as the page, then
    set back to a screen's height.

    (Page.captureScreenshot's captureBeyondViewport mis-renders this theme: the article comes out
    shifted sideways, so the page is laid out at full height instead.)"""
    set_viewport(driver, width)
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    height = max(1, min(int(size["height"]), MAX_SCREENSHOT_HEIGHT))
    set_viewport(driver, width, height)
    try:
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
    finally:
        set_viewport(driver, width)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))


# Unfolds every folded block (hidden cell inputs, solutions, dropdowns), so it is measured too.
UNFOLD_JS = r"""
document.querySelectorAll("details").forEach((d) => { d.open = true; });
document.querySelectorAll(".toggle-hidden").forEach((e) => e.classList.remove("toggle-hidden"));
"""

# Measures what does not fit, at the current width: arguments[0] is "column" (every display
# equation, table and code block fits the text column) or "screen" (the page does not scroll
# sideways; whatever is wider than the screen is inside a box that scrolls sideways, and such a
# box that hides content shows its cue); arguments[1] is the screen's width. (A phone lays out a
# page too wide for it at the page's width and zooms out, so the window's own width says nothing.)
FIT_REPORT_JS = r"""
const mode = arguments[0], screenWidth = arguments[1];
const main = document.querySelector("article.bd-article") || document.querySelector("main")
             || document.body;
const visible = (el) => el.getClientRects().length > 0;
const describe = (el) => {
  const cls = (el.getAttribute("class") || "").trim().split(/\s+/)[0];
  const text = (el.textContent || "").trim().replace(/\s+/g, " ").slice(0, 70);
  return `${el.tagName.toLowerCase()}${cls ? "." + cls : ""} "${text}"`;
};
const style = getComputedStyle(main);
const box = main.getBoundingClientRect();
const left = box.left + parseFloat(style.paddingLeft);
const right = box.right - parseFloat(style.paddingRight);
const report = {column: right - left, screen: screenWidth,
                page: document.documentElement.scrollWidth, problems: []};
if (mode === "column") {
  for (const el of main.querySelectorAll('mjx-container[display="true"], table, pre')) {
    if (!visible(el)) continue;
    const r = el.getBoundingClientRect();
    const width = Math.max(el.scrollWidth, r.width);
    if (width > report.column + 1 || r.right > right + 1) {
      report.problems.push(`${describe(el)} is ${Math.round(width)} px wide`);
    }
  }
} else {
  const scrolls = (el) => ["auto", "scroll"].includes(getComputedStyle(el).overflowX);
  const fits = (r) => r.left >= -1 && r.right <= screenWidth + 1;
  const reported = [];
  for (const el of main.querySelectorAll("*")) {
    const mjx = el.closest("mjx-container");
    if ((mjx && mjx !== el) || !visible(el) || reported.some((p) => p.contains(el))) continue;
    if (fits(el.getBoundingClientRect())) continue;
    let a = el.parentElement, boxed = false;
    while (a && a !== document.documentElement && !boxed) {
      boxed = scrolls(a) && fits(a.getBoundingClientRect());
      a = a.parentElement;
    }
    if (!boxed) {
      reported.push(el);
      report.problems.push(`${describe(el)} runs past the screen, in no box that scrolls`);
    }
  }
  const cued = 'mjx-container[display="true"], .pst-scrollable-table-container, ' +
               "div.cell_output .output.text_html, span.math";
  for (const el of main.querySelectorAll(cued)) {
    if (visible(el) && el.scrollWidth > el.clientWidth + 12 && el.scrollLeft < 1 &&
        !el.classList.contains("scroll-cue-right")) {
      report.problems.push(`${describe(el)} scrolls sideways without its fade`);
    }
  }
}
return report;
"""


@pytest.fixture(scope="module")
def screenshot_dir():
    if SCREENSHOT_DIR.exists():  # screenshots of pages no longer in the toc would mislead
        shutil.rmtree(SCREENSHOT_DIR)
    SCREENSHOT_DIR.mkdir(parents=True)
    return SCREENSHOT_DIR


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_chapter_renders_offline(page, request, screenshot_dir):
    html_path = HTML_DIR / f"{page}.html"
    if not html_path.is_file():
        unavailable(f"{html_path.relative_to(ROOT)} is not built: run `make book`")
    # Requested here rather than as an argument, so a missing Chromium fails the test in CI
    # (a failing fixture would be reported as an error).
    browser = request.getfixturevalue("browser")

    network_requests(browser)  # drain whatever came before this page
    browser.get_log("browser")
    set_viewport(browser, WIDE)
    browser.get(html_path.as_uri())
    report = browser.execute_async_script(PAGE_REPORT_JS)
    # As a reader first sees it, at both widths; then unfolded, measured at both.
    full_page_screenshot(browser, screenshot_dir / screenshot_name(page, WIDE), WIDE)
    full_page_screenshot(browser, screenshot_dir / screenshot_name(page, NARROW), NARROW)
    browser.execute_script(UNFOLD_JS)
    next_frames(browser)
    on_phone = browser.execute_script(FIT_REPORT_JS, "screen", NARROW)
    set_viewport(browser, WIDE)
    on_laptop = browser.execute_script(FIT_REPORT_JS, "column", WIDE)
    requested = network_requests(browser)
    script_errors = [e["message"][:200] for e in browser.get_log("browser") if e["level"] == "SEVERE"]

    assert "error" not in report, report.get("error")
    problems = []
    if not report["title"].strip():
        problems.append("the page has no <title>")
    if report["mathNodes"]:
        if not report["mathjax"]:
            problems.append("MathJax did not load or did not finish typesetting")
        if report["untypeset"]:
            problems.append(f"math left untypeset: {report['untypeset'][:5]}")
    if report["texErrors"]:
        problems.append(f"TeX errors: {report['texErrors'][:5]}")
    if report["failedFonts"]:
        problems.append(f"fonts failed to load: {sorted(set(report['failedFonts']))}")
    for raw in ("$$", "\\begin{"):
        if raw in report["text"]:
            i = report["text"].index(raw)
            snippet = " ".join(report["text"][max(0, i - 60): i + 60].split())
            problems.append(f"raw {raw!r} in the visible text: ...{snippet}...")
    # Markdown that reached the page without being parsed (e.g. a code cell's Markdown output)
    raw_tex = re.search(r"\$[^$\s][^$]{0,300}?[\\^_{][^$]{0,300}?\$", report["text"])
    if raw_tex:
        problems.append(f"raw inline TeX in the visible text: {raw_tex.group(0)[:120]!r}")
    raw_table = re.search(r"\|\s*:?[-\u2013\u2014]+:?\s*\|", report["text"])
    if raw_table:
        i = raw_table.start()
        snippet = " ".join(report["text"][max(0, i - 60): i + 60].split())
        problems.append(f"raw Markdown table in the visible text: ...{snippet}...")
    if report["brokenImages"]:
        problems.append(f"images that did not load: {report['brokenImages']}")
    if requested:
        problems.append(f"the page tried to use the network: {requested[:5]}")
    if script_errors:
        problems.append(f"JavaScript errors: {script_errors[:3]}")
    small = [f"{f['src']} ({f['natural']} px shown at {f['shown']} px: {smallest_text_px(f):.1f} px)"
             for f in report["figures"] if f["natural"] and smallest_text_px(f) < MIN_TEXT_PX - 1e-9]
    if small:
        problems.append(f"figures whose {MIN_FONT_PT:g}-pt text displays under {MIN_TEXT_PX:g} px: {small[:4]}")
    if report["clipped"]:
        problems.append(f"code lines clipped at the column width: {report['clipped'][:3]}")
    if on_laptop["problems"]:
        problems.append(f"at {WIDE} px, wider than the {on_laptop['column']:.0f}-px column: "
                        f"{on_laptop['problems'][:4]}")
    if on_phone["page"] > on_phone["screen"] + 1:
        problems.append(f"at {NARROW} px the page scrolls sideways ({on_phone['page']} px wide)")
    if on_phone["problems"]:
        problems.append(f"at {NARROW} px: {on_phone['problems'][:4]}")
    # The machine that built the book: its checkout and its Python environment (folded cells too).
    source = html_path.read_text(errors="replace")
    local = sorted({p for p in (str(ROOT), os.path.realpath(sys.prefix)) if p + os.sep in source})
    if local:
        i = source.index(local[0] + os.sep)
        problems.append(f"a local path in the page: ...{source[max(0, i - 60): i + 60]!r}...")
    assert not problems, f"{page}: " + "; ".join(problems)


def smallest_text_px(figure: dict) -> float:
    """Displayed height of the smallest text the plotting functions use, in an image of a figure:
    drawn at ``SCREEN_DPI`` (the notebook's inline resolution), scaled by the page to ``shown``."""
    return MIN_FONT_PT * SCREEN_DPI / 72.0 * figure["shown"] / figure["natural"]


CODE_LINE_MAX = 88  # characters: a code line that long fits the column at the book's code size


@pytest.mark.parametrize("source", sorted((ROOT / "book").glob("*.md")), ids=lambda p: p.stem)
def test_code_cells_fit_the_column(source):
    """Every line of every code cell is at most CODE_LINE_MAX characters (the browser check above
    sees only the pages' rendered lines; this one holds for the sources, folded cells included)."""
    cells = re.findall(r"```\{code-cell\}[^\n]*\n(.*?)```", source.read_text(), re.S)
    long = [f"{len(line)}: {line.strip()[:60]}" for cell in cells for line in cell.splitlines()
            if len(line) > CODE_LINE_MAX]
    assert not long, f"{source.name}: code lines over {CODE_LINE_MAX} characters: {long[:5]}"


# --------------------------------------------------------------------------- links and downloads


def article_of(html: str) -> str:
    """The page's own text (the article), without the sidebars and the header."""
    start = html.find('<article class="bd-article"')
    end = html.find("</article>", start)
    return html[start:end] if start >= 0 else ""


def test_no_page_is_an_orphan():
    """Every page of the toc but the first is linked from the text of another page: a reader
    following the prose reaches it, not only one scanning the sidebar."""
    built_html_files()
    linked = set()
    for page in PAGES:
        path = HTML_DIR / f"{page}.html"
        if not path.is_file():
            unavailable(f"{path.relative_to(ROOT)} is not built: run `make book`")
        for href in re.findall(r'href="([^"#]+)(?:#[^"]*)?"', article_of(path.read_text())):
            target = (path.parent / href).resolve()
            if target != path.resolve():
                linked.add(target)
    orphans = [p for p in PAGES[1:] if (HTML_DIR / f"{p}.html").resolve() not in linked]
    assert not orphans, f"pages no other page's text links to: {orphans}"


def test_every_notebook_page_offers_its_ipynb():
    """The download button of a MyST notebook page offers the page as .md and as .ipynb; the
    .ipynb is the page converted by jupytext, with its code cells, and it opens as a notebook."""
    import nbformat

    built_html_files()
    for page in PAGES:
        source = ROOT / f"{page}.md"
        html = (HTML_DIR / f"{page}.html").read_text()
        if "kernelspec:" not in source.read_text()[:2000]:
            continue
        for suffix in (".ipynb", ".md"):
            assert f'_sources/{page}{suffix}"' in html, f"{page}: no {suffix} download link"
        notebook = nbformat.read(HTML_DIR / "_sources" / f"{page}.ipynb", as_version=4)
        nbformat.validate(notebook)
        assert notebook.metadata["kernelspec"]["name"] == "python3"
        code = [c for c in notebook.cells if c.cell_type == "code"]
        assert code and any("parameters" in c.metadata.get("tags", []) for c in code), page


# --------------------------------------------------------------------------- search, served


@pytest.fixture(scope="module")
def served_book():
    """The built book over HTTP on 127.0.0.1 (what `make serve` does), for the search page."""
    import functools
    import threading

    built_html_files()
    handler = functools.partial(_QuietHandler, directory=str(HTML_DIR))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


SEARCH_JS = r"""
const done = arguments[arguments.length - 1];
const deadline = Date.now() + 60000;
(function poll() {
  const items = [...document.querySelectorAll("#search-results li")];
  const status = document.querySelector("#search-results .search-summary, #search-results p");
  const finished = status && /found|did not match/i.test(status.textContent);
  if ((finished && items.length) || Date.now() > deadline) {
    done({items: items.map((li) => ({
            title: (li.querySelector("a") || li).textContent.trim(),
            excerpt: ((li.querySelector("p.context") || {}).textContent || "").trim()})),
          status: status ? status.textContent.trim() : ""});
  } else {
    setTimeout(poll, 250);
  }
})();
"""


@pytest.mark.slow
def test_search_finds_pages_with_excerpts(request, served_book):
    browser = request.getfixturevalue("browser")
    set_viewport(browser, WIDE)
    browser.get_log("browser")
    browser.get(f"{served_book}/search.html?q=Procrustes")
    result = browser.execute_async_script(SEARCH_JS)
    # (Over HTTP the browser also asks for /favicon.ico, which the book has none of.)
    errors = [e["message"][:200] for e in browser.get_log("browser")
              if e["level"] == "SEVERE" and "/favicon.ico" not in e["message"]]
    assert result["items"], f"no search result for 'Procrustes': {result['status']!r}"
    titles = [i["title"] for i in result["items"]]
    assert any("nearest simplex ETF" in t for t in titles), titles
    with_excerpt = [i for i in result["items"] if "procrustes" in i["excerpt"].lower()]
    assert with_excerpt, f"no result shows an excerpt with the word: {result['items'][:3]}"
    assert not errors, f"JavaScript errors on the search page: {errors[:3]}"
