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


# where a label's first Hangul character is drawn, and the same character drawn upright in a
# line of its own (the reference), in the label's font
_GLYPH_BOXES = """th => {
  const text = [...th.childNodes].find((n) => n.nodeType === 3 && /[\\uac00-\\ud7a3]/.test(n.textContent));
  const i = text.textContent.search(/[\\uac00-\\ud7a3]/);
  const range = document.createRange();
  range.setStart(text, i);
  range.setEnd(text, i + 2);
  const [first, second] = [0, 1].map((k) => {
    const r = document.createRange();
    r.setStart(text, i + k);
    r.setEnd(text, i + k + 1);
    return r.getBoundingClientRect();
  });
  const style = getComputedStyle(th);
  const ref = document.createElement("span");
  ref.id = "reference-glyph";
  ref.textContent = text.textContent[i];
  Object.assign(ref.style, { position: "fixed", left: "10px", top: "10px", background: "white",
    fontFamily: style.fontFamily, fontSize: style.fontSize, lineHeight: "1.4", padding: "4px" });
  document.body.appendChild(ref);
  const box = (b) => ({ x: b.x, y: b.y, width: b.width, height: b.height });
  return { first: box(first), second: box(second), reference: box(ref.getBoundingClientRect()) };
}"""


def _ink(png: bytes):
    """A glyph's ink, cropped and scaled to 32 x 32 grey levels (for comparing shapes)."""
    import io

    from PIL import Image, ImageOps

    image = ImageOps.invert(Image.open(io.BytesIO(png)).convert("L"))
    image = image.point(lambda v: 255 if v > 80 else 0)
    return image.crop(image.getbbox()).resize((32, 32))


def test_heatmap_column_labels_read_the_right_way_up(page) -> None:
    from PIL import ImageChops, ImageStat

    page.set_viewport_size({"width": 1100, "height": 900})
    page.fill("#source", SOURCE)
    page.press("#source", "Enter")
    page.wait_for_selector(".heatmap td.cell")
    page.evaluate("document.fonts.ready")
    header = page.locator(".heatmap thead th.source-token").filter(has_text="오")
    header.scroll_into_view_if_needed()
    boxes = header.evaluate(_GLYPH_BOXES)
    try:
        # Hangul runs down the column in reading order (a label turned over runs up)
        assert boxes["second"]["y"] > boxes["first"]["y"] + 2, boxes
        label = page.screenshot(clip=boxes["first"])
        reference = page.screenshot(clip=boxes["reference"])
    finally:
        page.evaluate("document.getElementById('reference-glyph')?.remove()")
    # and each character stands upright: its ink matches the upright character best, not the
    # character turned a quarter or half
    glyph, upright = _ink(label), _ink(reference)
    differences = {angle: ImageStat.Stat(ImageChops.difference(glyph, upright.rotate(angle))).mean[0]
                   for angle in (0, 90, 180, 270)}
    assert min(differences, key=differences.get) == 0, differences
    # Latin labels are turned a quarter as usual: taller than wide
    end = page.locator(".heatmap thead th.source-token").last.bounding_box()
    assert end["height"] > end["width"]
    # the word-start mark is drawn quietly, not as a black bar
    mark = page.locator(".heatmap thead th.source-token .word-start").first
    assert float(mark.evaluate("m => getComputedStyle(m).opacity")) < 0.6
    assert page.locator(".heatmap thead th.source-token").first.text_content().startswith("\u2581")
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator(".heatmap thead").screenshot(path=str(ARTIFACTS / "heatmap-header.png"))
