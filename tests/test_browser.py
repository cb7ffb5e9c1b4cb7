"""The demo page in a real browser: Debian's chromium driven by Playwright, against the
test server of test_app.py (requests to anything but 127.0.0.1 are blocked and counted).

Screenshots go to the pytest tmp dir and are copied to /tmp/dmdnet_screenshots/.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from test_app import start_app

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path("/tmp/dmdnet_screenshots")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "real45_19.png"
RUN_TIMEOUT_MS = 300_000
VIEW_TIMEOUT_MS = 30_000

pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(),
                                reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")


@pytest.fixture(scope="module")
def server(seeded_checkpoints, tmp_path_factory, request):
    return start_app(seeded_checkpoints, tmp_path_factory, request.config)


@pytest.fixture(scope="module")
def browser(server):
    """A page on the app, plus the list of outside URLs it tried to reach."""
    outside: list[str] = []

    def only_local(route) -> None:
        url = route.request.url
        if url.startswith(("http://127.0.0.1", "data:", "blob:")):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = chromium.new_page(viewport={"width": 1440, "height": 1000})
        page.route("**/*", only_local)
        page.goto(server.url)
        page.wait_for_selector("#separate", timeout=VIEW_TIMEOUT_MS)
        yield page, outside
        chromium.close()


@pytest.fixture(scope="module")
def small_example(tmp_path_factory) -> Path:
    """A bundled example, downscaled so the released-size model runs in seconds."""
    path = tmp_path_factory.mktemp("upload") / EXAMPLE.name
    with Image.open(EXAMPLE) as image:
        image.convert("RGB").resize((96, 86), Image.Resampling.LANCZOS).save(path)
    return path


def _screenshot(page, folder: Path, name: str) -> None:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENSHOTS / path.name)


def _src(page, selector: str) -> str | None:
    image = page.locator(f"{selector} img").first
    return image.get_attribute("src") if image.count() else None


def _wait_for_new_src(page, selector: str, old: str | None) -> str:
    page.wait_for_function(
        """([selector, old]) => { const img = document.querySelector(selector + ' img');
                                   return img && img.src && img.getAttribute('src') !== old; }""",
        arg=[selector, old], timeout=VIEW_TIMEOUT_MS)
    return _src(page, selector)


def _open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def _runs(server) -> int:
    return len(list(server.runs.glob("run-*")))


def test_upload_run_and_every_output(browser, server, small_example, tmp_path):
    page, outside = browser
    page.locator("#photo input[type=file]").set_input_files(str(small_example))
    page.wait_for_selector("#photo img", timeout=VIEW_TIMEOUT_MS)
    page.locator("#separate").click()
    page.wait_for_selector("#summary :text('Separated')", timeout=RUN_TIMEOUT_MS)
    assert "96x86" in page.locator("#summary").inner_text()

    for slider in ("#slider-t", "#slider-r"):
        page.wait_for_function("s => document.querySelectorAll(s + ' img').length >= 2", arg=slider,
                               timeout=VIEW_TIMEOUT_MS)
    assert _src(page, "#remix")
    for layer in ("transmission", "reflection"):
        link = page.locator(f"#{layer}-file a[download]")
        assert link.get_attribute("download") == f"real45_19_{layer}.png"
    _screenshot(page, tmp_path, "1_layers")

    _open_tab(page, "Depth & scan order")
    for figure in ("#depth", "#scan", "#animation"):
        page.wait_for_selector(f"{figure} img", timeout=VIEW_TIMEOUT_MS)
    assert _src(page, "#animation").endswith(".gif")
    page.get_by_text("All levels at a glance").click()
    page.wait_for_selector("#overview img", timeout=VIEW_TIMEOUT_MS)
    _screenshot(page, tmp_path, "2_depth_and_scan_order")

    _open_tab(page, "Memory experts")
    page.wait_for_selector("#experts img", timeout=VIEW_TIMEOUT_MS)
    page.wait_for_selector("#gates img", timeout=VIEW_TIMEOUT_MS)
    assert page.locator("#call input").input_value() == "L1 main · T"
    _screenshot(page, tmp_path, "3_memory_experts")

    _open_tab(page, "API")
    assert "mecm_gates" in page.locator("#details").inner_text()
    _screenshot(page, tmp_path, "4_api")
    assert outside == [], f"the page tried to reach outside 127.0.0.1: {outside}"


def test_selectors_redraw_without_running_again(browser, server, tmp_path):
    page, _ = browser
    runs, summary = _runs(server), page.locator("#summary").inner_text()

    _open_tab(page, "Depth & scan order")
    scan, animation = _src(page, "#scan"), _src(page, "#animation")
    page.locator("#stream label", has_text="R · global").click()
    scan = _wait_for_new_src(page, "#scan", scan)
    animation = _wait_for_new_src(page, "#animation", animation)

    page.locator("#level input[type=range]").fill("5")
    scan = _wait_for_new_src(page, "#scan", scan)
    page.locator("#site input").click()
    options = page.locator("ul[role=listbox] li")
    assert options.count() == 6  # four main decoder blocks and the depth branch for T and for R
    page.get_by_role("option", name="depth branch for T · block 1").click()
    _wait_for_new_src(page, "#scan", scan)
    _screenshot(page, tmp_path, "5_level5_depth_branch")

    _open_tab(page, "Memory experts")
    experts = _src(page, "#experts")
    page.locator("#call input").click()
    page.get_by_role("option", name="L1 main · R").click()
    _wait_for_new_src(page, "#experts", experts)

    _open_tab(page, "Layers")
    remix = _src(page, "#remix")
    page.locator("#alpha input[type=range]").fill("1")
    _wait_for_new_src(page, "#remix", remix)

    assert _runs(server) == runs, "a selector ran the network again"
    assert page.locator("#summary").inner_text() == summary


def test_bad_upload_shows_a_message_and_the_page_keeps_working(browser, tmp_path):
    page, _ = browser
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("plain text, not a picture\n")
    page.locator("#photo button[aria-label='Remove Image']").click()
    page.locator("#photo input[type=file]").set_input_files(str(not_an_image))
    page.locator("#separate").click()
    toast = page.locator(".toast-body", has_text="not an image this demo can read")
    toast.wait_for(timeout=VIEW_TIMEOUT_MS)
    assert "Traceback" not in toast.inner_text()
    assert toast.locator(".toast-title").inner_text().strip() == "DMDNet"  # Gradio's own title is "Error"
    _screenshot(page, tmp_path, "6_bad_upload")
    _open_tab(page, "Depth & scan order")
    page.locator("#level input[type=range]").fill("2")
    page.wait_for_selector("#scan img", timeout=VIEW_TIMEOUT_MS)
