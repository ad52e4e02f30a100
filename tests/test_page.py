"""The page in a real browser: Playwright drives Debian's chromium (headless) against
`nmtkit serve` on 127.0.0.1, with a small checkpoint trained for the tests.

Skipped with a reason where chromium is not installed (`apt-get install chromium`; CI installs
it). A screenshot is saved as test-artifacts/page.png."""

import re
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
    assert page.locator(".heatmap th.target-token.hovered").count() == 1
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
    assert page.locator(".sentence .prefix").input_value() == f"three hundred {chosen} "  # a whole word
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
    # tab from the text box reaches the beam, the n best, the Translate button, then the words
    page.focus("#source")
    focused = []
    for _ in range(4):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.id || document.activeElement.className"))
    assert focused == ["beam", "nbest", "translate", "word"]
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


def _ink(png: bytes, size: tuple[int, int] = (32, 32)):
    """Ink (a glyph's, a line's), cropped and scaled to `size` grey levels (to compare shapes)."""
    import io

    from PIL import Image, ImageOps

    image = ImageOps.invert(Image.open(io.BytesIO(png)).convert("L"))
    image = image.point(lambda v: 255 if v > 80 else 0)
    return image.crop(image.getbbox()).resize(size)


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


def translate_on_the_page(page, text: str) -> list[str]:
    page.fill("#source", text)
    page.press("#source", "Enter")
    page.wait_for_function("document.getElementById('status').textContent.endsWith('translated.')"
                           " || document.getElementById('status').classList.contains('error')")
    return page.locator(".sentence .translation .word").all_inner_texts()


def test_beam_5_n_best_control_labelled_scores_and_readable_errors(page) -> None:
    page.reload()
    page.wait_for_function("document.getElementById('model-info').textContent.includes('parameters')")
    assert page.input_value("#beam") == "5"  # not the model's default (1: a list of one)
    page.fill("#nbest", "4")
    translate_on_the_page(page, SOURCE)
    items = page.locator(".sentence .nbest li")
    assert items.count() == 4
    assert items.first.locator(".score").text_content().startswith("score -")
    assert "log-probability" in page.locator(".sentence .nbest-box").text_content()

    status = page.locator("#status")
    for beam in ("17", "0"):  # visible feedback, in words
        page.fill("#beam", beam)
        translate_on_the_page(page, SOURCE)
        assert "error" in status.get_attribute("class") and "beam must be a whole number from 1 to 16" in \
            status.inner_text(), status.inner_text()
    page.fill("#beam", "5")
    page.fill("#nbest", "6")
    page.fill("#beam", "2")
    translate_on_the_page(page, SOURCE)
    assert "n best must be a whole number from 1 to 2" in status.inner_text()
    page.fill("#beam", "5")
    page.fill("#nbest", "3")

    translate_on_the_page(page, "사" * 2001)  # the server's max_chars is 2000
    assert status.inner_text().startswith("Sentence 1 is too long") and "at most 2000 characters" in \
        status.inner_text(), status.inner_text()
    page.route("**/translate", lambda route: route.abort())
    try:
        translate_on_the_page(page, SOURCE)
        assert status.inner_text() == "The server is not reachable. Is `nmtkit serve` still running?"
    finally:
        page.unroute("**/translate")


def test_a_truncated_sentence_says_so_beside_it(page) -> None:
    translate_on_the_page(page, f"{SOURCE}\n" + " ".join(["삼십사만"] * 40))
    notes = page.locator(".sentence .truncated")
    assert not notes.nth(0).is_visible()
    assert notes.nth(1).is_visible() and "only its first 40 subword tokens were read" in notes.nth(1).inner_text()


def test_alternatives_small_probabilities_and_the_keyboard(page) -> None:
    words = translate_on_the_page(page, SOURCE)
    page.locator(".sentence .translation .word").nth(2).focus()
    page.keyboard.press("Enter")
    page.wait_for_selector(".alternatives .choice")
    labels = page.locator(".alternatives .choice").all_inner_texts()
    assert not any(label.endswith(" 0.0%") for label in labels), labels
    assert any(label.endswith("<0.1%") or label.endswith("%") for label in labels)
    # Escape closes the alternatives and gives the keyboard back to the word
    page.keyboard.press("Escape")
    assert page.locator(".alternatives").is_hidden()
    assert page.evaluate("document.activeElement.textContent") == words[2]
    # picking one (Enter) re-translates, and the focus returns to the translation's word
    page.keyboard.press("Enter")
    page.wait_for_selector(".alternatives .choice")
    page.keyboard.press("Tab")  # from the first alternative to the second
    chosen = page.evaluate("document.activeElement.textContent").split()[0]
    page.keyboard.press("Enter")
    page.wait_for_function("document.activeElement.classList.contains('word')")
    assert page.evaluate("document.activeElement.textContent") == \
        page.locator(".sentence .translation .word").nth(2).inner_text()
    assert page.locator(".sentence .translation .word").nth(2).inner_text().startswith(chosen)

    # the heatmap from the keyboard: focus it, and the arrow keys walk its cells
    page.focus(".sentence .heatmap")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowDown")
    active = page.locator(".heatmap td.cell.active")
    assert active.count() == 1 and active.get_attribute("data-row") == "1" and \
        active.get_attribute("data-column") == "1"
    assert " → " in page.locator(".sentence .heatmap-reading").inner_text()
    assert page.locator(".heatmap th.source-token.hovered").count() == 1


def test_a_hovered_source_token_is_plainly_highlighted(page) -> None:
    translate_on_the_page(page, SOURCE)
    header = page.locator(".heatmap thead th.source-token").nth(1)
    header.hover()
    background = header.evaluate("th => getComputedStyle(th).backgroundColor")
    alpha = float(background.split(",")[3].rstrip(")")) if background.startswith("rgba") else 1.0
    assert background != "rgba(0, 0, 0, 0)" and alpha > 0.9, background
    assert header.evaluate("th => getComputedStyle(th).outlineStyle") != "none"


def test_the_layer_and_head_stay_chosen_across_translations(page) -> None:
    """A two-layer, two-head model's view (the numbers model has one of each: /info and
    /translate are widened in the browser to two, each a copy of the one)."""
    import json as _json

    def widen_info(route):
        data = route.fetch().json()
        data["attention"] = {"layers": 2, "heads": 2}
        route.fulfill(json=data)

    def widen_translation(route):
        data = route.fetch().json()
        for t in data["translations"]:
            layer = t["attention_layers"][0]
            t["attention_layers"] = [[layer[0], layer[0]]] * 2
        route.fulfill(body=_json.dumps(data), content_type="application/json")

    page.route("**/info", widen_info)
    page.route("**/translate", widen_translation)
    try:
        page.reload()
        page.wait_for_function("document.getElementById('model-info').textContent.includes('parameters')")
        translate_on_the_page(page, SOURCE)
        page.select_option(".sentence .layer", "0")
        page.select_option(".sentence .head", "1")
        page.fill(".sentence .prefix", "three hundred ")
        page.click(".prefix-form button")
        page.wait_for_function("document.getElementById('status').textContent === 'Translated.'")
        assert page.input_value(".sentence .layer") == "0" and page.input_value(".sentence .head") == "1"
        translate_on_the_page(page, "사천칠십일")  # a new translation keeps them too
        assert page.input_value(".sentence .layer") == "0" and page.input_value(".sentence .head") == "1"
    finally:
        page.unroute("**/info")
        page.unroute("**/translate")
        page.reload()
        page.wait_for_function("document.getElementById('model-info').textContent.includes('parameters')")


def test_pasted_korean_is_drawn_not_boxes(page) -> None:
    """Pasted Hangul showed as empty boxes in the text box while the same text elsewhere on the
    page was drawn: the box's first line must look as the same text in a paragraph does."""
    fresh = page.context.browser.new_context(viewport={"width": 700, "height": 400})  # an empty cache
    try:
        other = fresh.new_page()
        other.goto(page.url)
        other.focus("#source")
        other.keyboard.insert_text(SOURCE)  # as a paste does: the whole text at once
        other.wait_for_function("""document.fonts.check('1em "nmtkit hangul"', '삼')""", timeout=30_000)
        other.wait_for_timeout(500)
        box = other.locator("#source").bounding_box()
        size = float(other.evaluate("parseFloat(getComputedStyle(document.getElementById('source')).fontSize)"))
        drawn = other.screenshot(clip={"x": box["x"] + 4, "y": box["y"] + 4, "width": box["width"] - 30,
                                       "height": 1.5 * size + 6})
        other.evaluate("""text => {
          const p = document.createElement('p');
          p.id = 'reference-text';
          p.textContent = text;
          Object.assign(p.style, { position: 'fixed', left: '0', top: '0', margin: '0', padding: '4px',
            background: 'white', zIndex: '10', lineHeight: '1.45', fontFamily: '"nmtkit hangul", sans-serif', fontSize: getComputedStyle(document.getElementById('source')).fontSize });
          document.body.appendChild(p);
        }""", SOURCE)
        other.wait_for_timeout(300)
        ref = other.locator("#reference-text").bounding_box()
        expected = other.screenshot(clip={"x": ref["x"], "y": ref["y"], "width": ref["width"],
                                          "height": 1.5 * size + 6})
    finally:
        fresh.close()
    from PIL import ImageChops, ImageStat

    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "pasted.png").write_bytes(drawn)
    (ARTIFACTS / "pasted-expected.png").write_bytes(expected)
    difference = ImageStat.Stat(ImageChops.difference(_ink(drawn, (240, 20)), _ink(expected, (240, 20)))).mean[0]
    assert difference < 40, difference  # empty boxes differ by ~100


def test_choosing_an_alternative_gives_exactly_that_word(page) -> None:
    """'eight' in place of 'seventy' continued as 'eighty-three' (the chosen word glued to
    what the model wanted next)."""
    source = "구십칠만 삼천이백일"
    translate_on_the_page(page, source)
    page.click(".sentence .translation .word >> nth=2")
    page.wait_for_selector(".alternatives .choice")
    choice = page.locator(".alternatives .choice").filter(has_text=re.compile(r"^eight\s"))
    assert choice.count() == 1, page.locator(".alternatives .choice").all_inner_texts()
    choice.click()
    page.wait_for_function("document.getElementById('status').textContent === 'Translated.'")
    assert page.locator(".sentence .translation .word").nth(2).inner_text() == "eight"


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


def test_the_glossary_box_follows_the_rules_of_glossary_files(page) -> None:
    """As `--glossary`: a term given twice is one constraint (one of its targets), the longest
    term at a place wins over a term inside it, and a line that is no pair is an error naming
    it (the box enforced both targets and both terms, and dropped a broken line unsaid)."""
    import json

    page.evaluate("document.getElementById('glossary-box').open = true")
    page.fill("#source", SOURCE)
    page.fill("#glossary", f"{SOURCE} = six hundred\n오천육백칠십팔 = five\n{SOURCE} = seventy-eight")
    with page.expect_request(lambda r: r.url.endswith("/translate")) as request:
        page.click("#translate")
    assert json.loads(request.value.post_data)["constraints"] == [[{"any": ["six hundred", "seventy-eight"]}]]
    page.wait_for_function("document.getElementById('status').textContent === '1 sentence translated.'")
    page.fill("#glossary", "사천 = four\nno pair here")
    page.click("#translate")
    page.wait_for_function("document.getElementById('status').textContent.includes('Glossary line 2')")
    page.fill("#glossary", "")
