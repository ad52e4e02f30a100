"""The page in a real browser: Playwright drives Debian's chromium (headless) against
`nmtkit serve` on 127.0.0.1, with a small checkpoint trained for the tests.

Skipped with a reason where chromium is not installed (`apt-get install chromium`; CI installs
it). A screenshot is saved as test-artifacts/page.png."""

import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed "
                                "(apt-get install chromium; the README says how)")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
SOURCE = "삼십사만 오천육백칠십팔"


@pytest.fixture(scope="module")
def page(numbers_checkpoint):
    from playwright.sync_api import sync_playwright

    from tests.test_server import start_server

    proc, url = start_server(numbers_checkpoint)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                      "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(url)
            page.wait_for_function("document.getElementById('model-info').textContent.includes('parameters')")
            yield page
            browser.close()
    finally:
        proc.terminate()
        proc.wait(30)


def test_translate_see_the_attention_pick_an_alternative(page) -> None:
    page.fill("#source", SOURCE)
    page.press("#source", "Enter")  # Enter translates
    page.wait_for_selector(".sentence .translation .word")
    words = page.locator(".sentence .translation .word").all_inner_texts()
    assert " ".join(words) == "three hundred forty-five thousand six hundred seventy-eight"

    # one cell per target token (and </s>) x source token (and </s>)
    rows = page.locator(".heatmap tbody tr").count()
    columns = page.locator(".heatmap thead th.source-token").count()
    assert rows >= len(words) + 1 and columns >= 3
    assert page.locator(".heatmap td.cell").count() == rows * columns
    assert page.locator(".sentence .note").inner_text().startswith("Attention is not alignment")

    # hovering a cell lights up the source tokens its target token attends to
    page.hover(".heatmap tbody tr:nth-child(1) td.cell >> nth=0")
    assert page.locator(".heatmap th.source-token.lit").count() == columns
    assert page.locator(".heatmap th.target-token.lit").count() == 1
    page.hover(".heatmap thead th.source-token >> nth=0")  # and the reverse
    assert page.locator(".heatmap th.target-token.lit").count() == rows

    # click the third word, pick the second alternative: the translation now begins with it
    page.click(".sentence .translation .word >> nth=2")
    page.wait_for_selector(".alternatives .choice")
    choice = page.locator(".alternatives .choice").nth(1)
    chosen = choice.inner_text().split()[0]
    assert chosen != words[2]
    choice.click()
    page.wait_for_function(
        "w => document.querySelectorAll('.sentence .translation .word')[2]?.textContent === w", arg=chosen)
    new = page.locator(".sentence .translation .word").all_inner_texts()
    assert new[:3] == words[:2] + [chosen]
    assert page.locator(".sentence .prefix").input_value() == f"three hundred {chosen}"
    ARTIFACTS.mkdir(exist_ok=True)
    page.evaluate("document.fonts.ready")  # Hangul comes from the server's font
    page.screenshot(path=str(ARTIFACTS / "page.png"), full_page=True)


def test_keyboard_alone_and_a_phone_width_window(page) -> None:
    page.set_viewport_size({"width": 380, "height": 800})
    page.fill("#source", "")
    page.focus("#source")
    page.keyboard.type("사천칠십일")
    page.keyboard.press("Enter")
    page.wait_for_function("document.getElementById('status').textContent === '1 sentence translated.'")
    assert page.locator(".sentence .source").inner_text() == "사천칠십일"
    # tab from the text box reaches the beam, the Translate button, then the translation's words
    page.focus("#source")
    focused = []
    for _ in range(4):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.id || document.activeElement.className"))
    assert focused[:3] == ["beam", "translate", "word"]
    page.keyboard.press("Enter")  # Enter on a word asks for its alternatives
    page.wait_for_selector(".alternatives .choice")
    assert page.evaluate("document.documentElement.scrollWidth") <= 380 + 1  # nothing wider than the phone
    page.set_viewport_size({"width": 1100, "height": 900})


def test_glossary_and_must_include_constrain_and_highlight(page) -> None:
    page.fill("#source", "사천칠십일")
    page.click("#glossary-box summary")
    page.fill("#glossary", "사천칠십일 = four thousand")
    page.click("#translate")
    page.wait_for_function("document.getElementById('status').textContent === '1 sentence translated.'")
    words = page.locator(".sentence .translation .word").all_inner_texts()
    assert words[:2] == ["four", "thousand"]  # the glossary's term (the model alone says "seven")
    assert page.locator(".sentence .translation .word.constrained").all_inner_texts() == ["four", "thousand"]
    # a phrase the sentence must include, with a prefix: both kept, the phrase highlighted
    page.fill(".sentence .must-include", "two|nine")
    page.fill(".sentence .prefix", "four thousand ")
    page.click(".sentence .prefix-form button")
    page.wait_for_function("document.getElementById('status').textContent === 'Translated.'")
    words = page.locator(".sentence .translation .word").all_inner_texts()
    marked = " ".join(page.locator(".sentence .translation .word.constrained").all_inner_texts())
    assert words[:2] == ["four", "thousand"]
    assert {"two", "nine"} & set(" ".join(words).replace("-", " ").split())  # "-" ends a word
    assert {"two", "nine"} & set(marked.replace("-", " ").split()) and "four" in marked
    # the alternatives' translations keep the constraints
    page.click(".sentence .translation .word >> nth=1")
    page.wait_for_selector(".alternatives .choice")
    titles = [page.locator(".alternatives .choice").nth(i).get_attribute("title")
              for i in range(page.locator(".alternatives .choice").count())]
    assert titles and all({"two", "nine"} & set(t.replace("-", " ").split()) for t in titles)
    page.fill("#glossary", "")
