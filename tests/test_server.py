"""The REST service, through FastAPI's TestClient: good and bad requests, limits, batching,
metrics; and `nmtkit serve` as a real process (graceful shutdown)."""

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from nmtkit.server import ServeSettings, create_app
from nmtkit.translator import Translator

REPO = Path(__file__).resolve().parents[1]
NUMBERS = ["삼십사만 오천육백칠십팔", "사천칠십일", "구십칠만 삼천이백일"]


@pytest.fixture(scope="module")
def translator(numbers_checkpoint) -> Translator:
    return Translator.load(numbers_checkpoint)


@pytest.fixture
def client(translator):
    settings = ServeSettings(max_sentences=4, max_chars=100, max_beam=8, max_nbest=4, max_k=10)
    with TestClient(create_app(translator, settings)) as c:
        yield c


def test_translate_alternatives_and_score(client, translator) -> None:
    r = client.post("/translate", json={"text": NUMBERS, "beam": 4, "nbest": 2})
    assert r.status_code == 200, r.text
    out = r.json()["translations"]
    assert [t["text"] for t in out] == translator.translate(NUMBERS, beam=4)
    assert all(len(t["nbest"]) == 2 and t["nbest"][0]["text"] == t["text"] for t in out)
    assert "attention" not in out[0]  # only when asked

    r = client.post("/translate", json={"text": NUMBERS[:1], "attention": True, "alignment": True,
                                        "prefix": ["three hundred fo"]})
    (t,) = r.json()["translations"]
    assert t["text"].startswith("three hundred fo")
    assert len(t["attention"]) == len(t["tokens"]) + 1 and len(t["attention"][0]) == len(t["source_tokens"])
    assert len(t["attention_layers"]) == 1 and len(t["alignment"]) == len(t["text"].split())

    r = client.post("/alternatives", json={"source": NUMBERS[0], "prefix": "three hundred ", "k": 3})
    alts = r.json()["alternatives"]
    assert alts[0]["word"] == "forty-five" and alts[0]["translation"].startswith("three hundred forty-five")

    assert all(a["prefix"] == f"three hundred {a['word']} " for a in alts)  # the word is whole

    # a prefix that ends in a space: the next piece begins a new word (not "three-...")
    r = client.post("/translate", json={"text": NUMBERS, "beam": 4, "prefix": ["three ", "zero ", "five "]})
    for t in r.json()["translations"]:
        prefix_pieces = 1  # "three", "zero", "five" are one piece each in this vocabulary
        assert len(t["tokens"]) == prefix_pieces or t["tokens"][prefix_pieces].startswith("\u2581"), t["tokens"]

    r = client.post("/score", json={"source": NUMBERS[:2], "target": ["three hundred", "four thousand seventy-one"]})
    scores = r.json()["scores"]
    assert scores[1]["log_prob"] > scores[0]["log_prob"] and scores[1]["tokens"][-1] == "</s>"


def test_health_info_metrics_docs_and_page(client) -> None:
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/info").json()
    assert info["model"] == "rnn" and info["vocab"]["source"] > 0 and info["parameters"] > 1000
    assert info["attention"] == {"layers": 1, "heads": 1} and info["step"] == 300
    client.post("/translate", json={"text": NUMBERS[:1]})
    metrics = client.get("/metrics").text
    assert 'nmtkit_requests_total{route="/translate",status="200"} 1.0' in metrics
    assert "nmtkit_batch_sentences_count 1.0" in metrics and "nmtkit_queue_length" in metrics
    assert "nmtkit_request_seconds_bucket" in metrics
    assert client.get("/openapi.json").json()["paths"]["/translate"]
    # the API page works offline: Swagger UI from the package, nothing from a CDN; no ReDoc
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert "http://" not in docs.text and "https://" not in docs.text
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/redoc").status_code == 404
    # the page's Hangul font is cached by the browser and revalidated by its ETag
    font = client.get("/fonts/hangul.ttf")
    if font.status_code == 200:
        assert "max-age" in font.headers["cache-control"] and font.headers["etag"]
        assert len(font.content) < 2_000_000  # Hangul only (the whole font is 4.3 MB)
        from fontTools.ttLib import TTFont

        cmap = TTFont(io.BytesIO(font.content)).getBestCmap()
        assert all(ord(c) in cmap for c in "".join(NUMBERS).replace(" ", "")) and ord("A") not in cmap
        again = client.get("/fonts/hangul.ttf", headers={"If-None-Match": font.headers["etag"]})
        assert again.status_code == 304 and not again.content
    page = client.get("/")
    assert page.status_code == 200 and "<textarea id=\"source\"" in page.text
    assert client.get("/static/app.js").status_code == 200


@pytest.mark.parametrize("body, status, field", [
    ({"text": ["a"] * 5}, 413, "text"),
    ({"text": ["x" * 101]}, 413, "text.0"),
    ({"text": NUMBERS, "beam": 9}, 422, "beam"),
    ({"text": NUMBERS, "beam": 4, "nbest": 5}, 422, "nbest"),
    ({"text": NUMBERS, "beam": 0}, 422, "beam"),
    ({"text": "not a list"}, 422, "text"),
    ({"text": [3]}, 422, "text.0"),
    ({"text": []}, 422, "text"),
    ({"text": NUMBERS, "prefix": ["a"]}, 422, "prefix"),
    ({"text": NUMBERS, "colour": "red"}, 422, "colour"),
    ({"text": NUMBERS, "beam": "5"}, 422, "beam"),
    ({"text": NUMBERS, "beam": True}, 422, "beam"),
    ({"text": NUMBERS, "attention": "yes"}, 422, "attention"),
    ({"text": NUMBERS[:1], "prefix": ["two ☃ "]}, 422, "prefix[0]"),
    ({"text": NUMBERS[:2], "prefix": ["", "one " * 300]}, 422, "prefix[1]"),  # past the longest output
])
def test_bad_requests_name_the_field(client, body, status, field) -> None:
    r = client.post("/translate", json=body)
    assert r.status_code == status, r.text
    assert any(d["field"] == field for d in r.json()["detail"]), r.json()


def test_malformed_json_huge_k_and_bad_score_requests(client) -> None:
    r = client.post("/translate", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    r = client.post("/translate", content=b'{"text": ["\xff\xfe"]}', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] in ("body", ""), r.text
    r = client.post("/alternatives", json={"source": NUMBERS[0], "prefix": "☃", "k": 3})
    assert r.status_code == 422 and "cannot spell" in r.json()["detail"][0]["message"]
    r = client.post("/alternatives", json={"source": NUMBERS[0], "k": 10**9})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "k"
    r = client.post("/score", json={"source": ["a", "b"], "target": ["a"]})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "target"
    # a lone surrogate (a JSON escape can make one) is not text: 422 naming the field, not a 500
    for route, body, field in (("/translate", b'{"text": ["\\ud800"]}', "text.0"),
                               ("/translate", b'{"text": ["a"], "prefix": ["b\\udfff"]}', "prefix[0]"),
                               ("/alternatives", b'{"source": "\\ud800"}', "source.0"),
                               ("/alternatives", b'{"source": "a", "prefix": "\\ud800"}', "prefix[0]"),
                               ("/score", b'{"source": ["a"], "target": ["\\ud800"]}', "target.0")):
        r = client.post(route, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == field, (route, r.text)
        assert "lone surrogate" in r.json()["detail"][0]["message"]


def test_an_internal_error_is_500_with_a_request_id_logged_and_counted(client, translator, monkeypatch,
                                                                      caplog) -> None:
    original = translator.translate

    def broken(*args, **kwargs):
        raise RuntimeError("Unable to cast the model")

    monkeypatch.setattr(translator, "translate", broken)
    with caplog.at_level("ERROR", logger="nmtkit.serve"):
        r = client.post("/translate", json={"text": NUMBERS[:1]})
    # the response says an id, not the internal exception; the log has it under that id
    assert r.status_code == 500 and "Unable to cast" not in r.text, r.text
    request_id = r.json()["request_id"]
    assert request_id in r.json()["detail"] and r.headers["X-Request-ID"] == request_id
    (record,) = [x for x in caplog.records if request_id in x.getMessage()]
    assert "Unable to cast" in str(record.exc_info[1])
    assert 'nmtkit_requests_total{route="/translate",status="500"} 1.0' in client.get("/metrics").text
    monkeypatch.setattr(translator, "translate", original)
    assert client.post("/translate", json={"text": NUMBERS[:1]}).status_code == 200  # the service goes on


def _gauge(client, name: str = "nmtkit_queue_length") -> float:
    line = next(x for x in client.get("/metrics").text.splitlines() if x.startswith(name + " "))
    return float(line.split()[1])


@pytest.mark.parametrize("batching", [True, False])
def test_the_queue_gauge_returns_to_zero_after_traffic(translator, batching) -> None:
    with TestClient(create_app(translator, ServeSettings(batching=batching, batch_wait_ms=20))) as c:
        asks = [("/alternatives", {"source": NUMBERS[0], "prefix": "three ", "k": 2}),
                ("/translate", {"text": NUMBERS[:2]}),
                ("/score", {"source": NUMBERS[:1], "target": ["three"]})] * 3
        codes: list[int] = []
        threads = [threading.Thread(target=lambda path, body: codes.append(c.post(path, json=body).status_code),
                                    args=ask) for ask in asks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert codes == [200] * len(asks)
        assert c.get("/health").json()["queue"] == 0
        assert _gauge(c) == 0.0


def _same_alternatives(got: list[list[dict]], expected: list[list[dict]]) -> None:
    """The same words, translations and prefixes; the probabilities to float32 rounding (a
    batch's matrix products may round the last bit differently from one request's)."""
    def plain(x):
        return [[{k: v for k, v in a.items() if k != "probability"} for a in alts] for alts in x]

    assert plain(got) == plain(expected)
    assert [[a["probability"] for a in alts] for alts in got] == \
        [[pytest.approx(a["probability"], rel=1e-5, abs=1e-9) for a in alts] for alts in expected]


def test_alternatives_of_different_requests_share_a_model_call(translator, monkeypatch) -> None:
    asks = [(NUMBERS[0], ""), (NUMBERS[0], "three "), (NUMBERS[1], "four thousand "),
            (NUMBERS[0], "three hundred fo"), (NUMBERS[2], "nine")]
    expected = [[a.__dict__ for a in translator.alternatives(s, p, 3, beam=2)] for s, p in asks]
    encoded: list[int] = []  # the sentences of each encoder call
    encode = translator.model.encode
    monkeypatch.setattr(translator.model, "encode",
                        lambda src, lengths: (encoded.append(src.size(0)), encode(src, lengths))[1])
    with TestClient(create_app(translator, ServeSettings(batch_wait_ms=300))) as c:
        answers: dict[int, list] = {}

        def ask(i: int) -> None:
            r = c.post("/alternatives", json={"source": asks[i][0], "prefix": asks[i][1], "k": 3, "beam": 2})
            answers[i] = r.json()["alternatives"]

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(asks))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        calls = c.app.state.batcher.model_calls
    _same_alternatives([answers[i] for i in range(len(asks))], expected)  # each its own, as alone
    assert calls < len(asks)
    # per model call, one encoder call for all the requests' candidate words (their decoder
    # steps shared), one for all their translations; not one per request
    assert len(encoded) == 2 * calls, encoded
    assert sum(encoded[::2]) == len(asks)
    # one request's mistake in a batch is its own: an over-long source under too_long: error
    settings = ServeSettings(batch_wait_ms=300, too_long="error", max_chars=10_000)
    with TestClient(create_app(translator, settings)) as c:
        codes: dict[str, int] = {}
        sources = {"short": NUMBERS[0], "long": " ".join(["삼십사만"] * 60)}
        threads = [threading.Thread(target=lambda name: codes.__setitem__(name, c.post(
            "/alternatives", json={"source": sources[name], "k": 2}).status_code), args=(name,))
            for name in sources]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert codes == {"short": 200, "long": 422}, codes


def test_a_body_past_the_limit_is_413_before_it_is_parsed(client) -> None:
    limit = client.get("/info").json()["limits"]["max_body_bytes"]
    assert limit == 2 * 4 * (6 * 100 + 16) + 65536  # from max_sentences x max_chars
    padded = b'{"text": ["' + NUMBERS[1].encode() + b'"]' + b" " * (limit + 1) + b"}"  # valid JSON
    r = client.post("/translate", content=padded, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["detail"][0]["field"] == "body", r.text
    assert f"at most {limit}" in r.json()["detail"][0]["message"]

    def chunks():  # no Content-Length: sent in chunks, refused as they pass the limit
        yield b'{"text": ["' + NUMBERS[1].encode() + b'"]'
        for _ in range(limit // 4096 + 2):
            yield b" " * 4096
        yield b"}"

    r = client.post("/translate", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["detail"][0]["field"] == "body", r.text
    assert 'status="413"' in client.get("/metrics").text
    small = b'{"text": ["' + NUMBERS[1].encode() + b'"]}'
    r = client.post("/translate", content=iter([small]), headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_not_declared_json_is_415_naming_the_content_type(client, content_type) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    r = client.post("/translate", content=json.dumps({"text": NUMBERS[:1]}).encode(), headers=headers)
    assert r.status_code == 415, r.text
    (detail,) = r.json()["detail"]
    assert detail["field"] == "Content-Type" and "application/json" in detail["message"]
    assert (content_type or "no Content-Type") in detail["message"]
    r = client.post("/translate", content=json.dumps({"text": NUMBERS[:1]}).encode(),
                    headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 200


def test_too_long_inputs_and_targets_follow_the_policy(translator) -> None:
    long = " ".join(["삼십사만"] * 60)
    long_target = " ".join(["nine"] * 200)
    for policy, status in (("truncate", 200), ("skip", 200), ("error", 422)):
        with TestClient(create_app(translator, ServeSettings(too_long=policy, max_chars=10_000))) as c:
            r = c.post("/translate", json={"text": [NUMBERS[0], long]})
            assert r.status_code == status, r.text
            if policy == "skip":
                assert r.json()["translations"][1]["text"] == ""
            if policy == "truncate":  # the response says which sentence was cut
                assert [t["truncated"] for t in r.json()["translations"]] == [False, True]
                assert c.get("/info").json()["max_input_tokens"] == translator.max_input_tokens
            # a long target is cut to the model's outputs, and each score says whether it was
            r = c.post("/score", json={"source": [NUMBERS[0], NUMBERS[1]], "target": ["four", long_target]})
            if policy == "error":
                assert r.status_code == 422 and r.json()["detail"][0]["field"] == "target.1", r.text
            else:
                assert [s["truncated"] for s in r.json()["scores"]] == [False, True], r.text
                assert len(r.json()["scores"][1]["tokens"]) == translator.longest_output + 1
            r = c.post("/score", json={"source": [NUMBERS[0]], "target": ["three 三百"]})
            assert r.json()["scores"][0]["unknown"] >= 1  # scored as <unk>: the response says so


def test_a_full_queue_is_503_and_a_slow_answer_504(translator, monkeypatch) -> None:
    gate = threading.Event()
    original = translator.translate

    def slow(*args, **kwargs):
        gate.wait(5)
        return original(*args, **kwargs)

    monkeypatch.setattr(translator, "translate", slow)
    settings = ServeSettings(queue_limit=1, timeout_s=0.5, batching=False)
    with TestClient(create_app(translator, settings)) as c:
        codes = []
        threads = [threading.Thread(target=lambda: codes.append(
            c.post("/translate", json={"text": NUMBERS[:1]}).status_code)) for _ in range(4)]
        for t in threads:
            t.start()
            time.sleep(0.05)
        for t in threads:
            t.join()
        gate.set()
    assert 503 in codes and 504 in codes, codes


def test_concurrent_requests_share_model_calls_and_each_gets_its_own(translator) -> None:
    settings = ServeSettings(batch_wait_ms=200)
    sentences = [[s] for s in NUMBERS * 4]  # 12 requests of one sentence
    expected = translator.translate([s[0] for s in sentences], beam=2)
    with TestClient(create_app(translator, settings)) as c:
        results: dict[int, str] = {}

        def ask(i: int) -> None:
            r = c.post("/translate", json={"text": sentences[i], "beam": 2})
            results[i] = r.json()["translations"][0]["text"]

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(sentences))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        calls = c.app.state.batcher.model_calls
    assert [results[i] for i in range(len(sentences))] == expected  # each caller its own, in order
    assert 1 <= calls < len(sentences)
    # with batching off, every request is a model call of its own
    with TestClient(create_app(translator, ServeSettings(batching=False))) as c:
        for s in sentences[:3]:
            c.post("/translate", json={"text": s})
        assert c.app.state.batcher.model_calls == 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "nmtkit.cli", "serve", "--checkpoint", str(checkpoint),
                             "--port", str(port), "--threads", "1", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
        if proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"the server did not start: {proc.stderr.read()[-2000:]}")


def test_sigterm_lets_requests_in_flight_finish_and_refuses_new_ones(numbers_checkpoint) -> None:
    # the batcher holds a request 2 s for company (it is far from the token limit) before the model
    # call: it is in flight when the signal comes, on any machine
    proc, url = start_server(numbers_checkpoint, "--batch-wait-ms", "2000", "--max-batch-tokens", "100000")
    try:
        long = [" ".join(NUMBERS * 3)] * 64  # a request that takes a while (beam 16, 64 sentences)
        answer: dict = {}

        def slow() -> None:
            answer["r"] = httpx.post(f"{url}/translate", json={"text": long, "beam": 16}, timeout=60)

        with httpx.Client(timeout=10) as kept:  # a keep-alive connection, open before the signal
            assert kept.get(f"{url}/health").status_code == 200
            thread = threading.Thread(target=slow)
            thread.start()
            time.sleep(0.5)  # it is in flight
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            # a request on the open connection is answered, 503, and the connection closed
            assert thread.is_alive(), "the slow request ended before the drain could be seen"
            r = kept.post(f"{url}/translate", json={"text": NUMBERS[:1]})
            assert r.status_code == 503 and r.headers["connection"] == "close", r.text
            with pytest.raises(httpx.TransportError):  # the listening socket is closed
                httpx.post(f"{url}/translate", json={"text": NUMBERS[:1]}, timeout=5)
        thread.join(60)
        assert answer["r"].status_code == 200 and len(answer["r"].json()["translations"]) == 64
        assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn ends by the signal it handled
        log = proc.stderr.read()
        assert "nmtkit serve: draining 1 request" in log and log.rstrip().endswith("nmtkit serve: stopped"), log
    finally:
        proc.kill()


def test_serve_binds_to_this_machine_by_default(numbers_checkpoint) -> None:
    proc, url = start_server(numbers_checkpoint)
    try:
        out = json.loads(httpx.get(f"{url}/info").text)
        assert out["model"] == "rnn"
        listening = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout \
            if Path("/usr/bin/ss").exists() or Path("/bin/ss").exists() else ""
        if listening:
            port = url.rsplit(":", 1)[1]
            lines = [line for line in listening.splitlines() if f":{port} " in line]
            assert lines and all("127.0.0.1" in line for line in lines), lines
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_port_in_use_or_out_of_range_is_one_line(numbers_checkpoint) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        for port, message in ((str(taken.getsockname()[1]), "cannot listen on 127.0.0.1:"),
                              ("99999", "'99999': must be <= 65535")):
            result = subprocess.run([sys.executable, "-m", "nmtkit.cli", "serve", "--checkpoint",
                                     str(numbers_checkpoint), "--port", port], capture_output=True,
                                    text=True, env=env, timeout=120)
            lines = result.stderr.strip().splitlines()
            assert result.returncode == 2 and len(lines) == 1, result.stderr[-1000:]
            assert lines[0].startswith("nmtkit: error: ") and message in lines[0], lines
            assert "http://" not in result.stdout  # it never said it was listening


_SLOW_LOAD = """
import pathlib, sys, time
import nmtkit.cli as cli
load, gate = cli._load_translator, pathlib.Path(sys.argv[1])
def slow(args):  # the model loads once the test says so
    while not gate.exists():
        time.sleep(0.05)
    return load(args)
cli._load_translator = slow
sys.exit(cli.main(sys.argv[2:]))
"""


def test_health_says_loading_until_the_model_is_ready(numbers_checkpoint, tmp_path) -> None:
    """The port answers from the start: while the model loads (held here until the test lets
    it), /health is 503 {"status": "loading"} and any other request 503 with a clear message,
    not a refused connection, a hang or a 500; then "ok", and translations."""
    port, gate = free_port(), tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_LOAD, str(gate), "serve", "--checkpoint",
                             str(numbers_checkpoint), "--port", str(port), "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        health = None
        for _ in range(600):  # Python's start and nmtkit.cli's imports, not torch's
            try:
                health = httpx.get(f"{url}/health", timeout=5)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read()[-2000:]
                time.sleep(0.1)
        assert health is not None and health.status_code == 503, health
        assert health.json() == {"status": "loading"} and health.headers["Retry-After"]
        for r in (httpx.post(f"{url}/translate", json={"text": NUMBERS[:1]}, timeout=5),
                  httpx.post(f"{url}/alternatives", json={"source": NUMBERS[0]}, timeout=5),
                  httpx.get(f"{url}/", timeout=5)):
            assert r.status_code == 503 and "the model is loading" in r.json()["detail"], r.text
        gate.touch()
        for _ in range(1200):
            health = httpx.get(f"{url}/health", timeout=5)
            if health.status_code != 503:
                break
            assert health.json() == {"status": "loading"}
            time.sleep(0.1)
        assert health.status_code == 200 and health.json()["status"] == "ok", health.text
        r = httpx.post(f"{url}/translate", json={"text": NUMBERS[:1]}, timeout=30)
        assert r.status_code == 200 and r.json()["translations"][0]["text"]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "loading the model" in out and "ready" in out, out
