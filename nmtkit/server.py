"""`nmtkit serve`: translations over HTTP (FastAPI + uvicorn), and a page to see and steer them.

    POST /translate     {"text": ["..."], "beam": 5, "nbest": 1, "prefix": null,
                         "constraints": null, "attention": false, "alignment": false}
    POST /alternatives  {"source": "...", "prefix": "...", "k": 5, "constraints": null}
    POST /score         {"source": ["..."], "target": ["..."]}
    GET  /health, /info, /metrics (Prometheus), /docs (OpenAPI, served offline), / (the page)

Cross-request batching: translations, alternatives and scores that arrive within `batch_wait_ms`
of each other and share their decoding options go to the model as one call, up to
`max_batch_tokens` source tokens, so requests from different users share the cost of each
decoder step. The model runs in one worker thread that a queue feeds, so the event loop keeps
accepting; a full queue answers 503 at once, a request that waits longer than `timeout_s` 504.
Requests and responses are pydantic models: they validate, name the field in every error, and
make the OpenAPI page. A body is refused (413) by its Content-Length, or while it streams, past
a limit sized from max_sentences x max_chars, before it is parsed. An unexpected error is a 500
with a request id; the log has the details under that id.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import hashlib
import io
import json
import logging
import math
import socket
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from nmtkit.constraints import phrase_alternatives
from nmtkit.errors import NMTKitError, NMTKitWarning
from nmtkit.glossary import Glossary, merge
from nmtkit.model import count_parameters
from nmtkit.translator import Translation, Translator
from nmtkit.vocabulary import check_text

log = logging.getLogger("nmtkit.serve")

# ---- settings, requests, responses ----


class ServeSettings(BaseModel):
    """What a server allows and how it batches (the `nmtkit serve` options)."""

    batching: bool = Field(True, description="translate requests that arrive together in one call")
    batch_wait_ms: float = Field(10.0, ge=0, description="how long a batch waits for more requests")
    max_batch_tokens: int = Field(4096, ge=1, description="source tokens per model call")
    queue_limit: int = Field(256, ge=1, description="requests waiting before 503")
    timeout_s: float = Field(30.0, gt=0, description="a request's longest wait (queue and model) before 504")
    max_sentences: int = Field(64, ge=1, description="sentences per request")
    max_chars: int = Field(2000, ge=1, description="characters per sentence")
    max_beam: int = Field(16, ge=1)
    max_nbest: int = Field(16, ge=1)
    max_k: int = Field(50, ge=1, description="alternatives per request")
    too_long: str = Field("truncate", pattern="^(truncate|skip|error)$",
                          description="an input longer than the model's limit")

    @property
    def max_body_bytes(self) -> int:
        """The largest request body: two lists (text and prefix, or source and target) of
        max_sentences sentences of max_chars characters, each character at most 6 bytes of JSON
        (a \\uXXXX escape), and 64 KiB for the rest."""
        return 2 * self.max_sentences * (6 * self.max_chars + 16) + 65536


class _Body(BaseModel):
    # strict: "5" or true is not a beam, "yes" not a flag (a wrong type is 422, as documented)
    model_config = ConfigDict(extra="forbid", strict=True)


class AnyOf(_Body):
    any: list[str] = Field(min_length=1, description="alternative phrases: one of them must appear")


class TranslateRequest(_Body):
    text: list[str] = Field(min_length=1, description="sentences, translated one by one")
    beam: int | None = Field(None, ge=1, description="beam size; default: the model's config")
    nbest: int = Field(1, ge=1, description="the n best translations of each sentence")
    prefix: list[str] | None = Field(None, description="per sentence, text the translation must "
                                     "begin with (a last word typed in part is completed)")
    attention: bool = Field(False, description="return the attention: every layer and head, and "
                            "the default view (the last layer, the mean of its heads)")
    alignment: bool = Field(False, description="return word alignments (source, target) from the attention")
    constraints: list[list[str | AnyOf]] | None = Field(
        None, description="per sentence, target phrases that must appear as whole words (a phrase, "
        "or {\"any\": [phrases]}: one of them); the server's glossary adds its own")


class TranslationOut(BaseModel):
    text: str
    score: float
    tokens: list[str]
    source_tokens: list[str]
    attention: list[list[float]] | None = None
    attention_layers: list[list[list[list[float]]]] | None = None
    alignment: list[tuple[int, int]] | None = None
    nbest: list[TranslationOut] = []
    truncated: bool = Field(False, description="the sentence was longer than the model reads "
                            "(/info: max_input_tokens): only its first subword tokens were translated")

    @classmethod
    def of(cls, t: Translation, truncated: bool = False) -> TranslationOut:
        """With its n-best list (which starts with the translation itself)."""
        out = cls(text=t.text, score=t.score, tokens=t.tokens, source_tokens=t.source_tokens,
                  attention=t.attention, attention_layers=t.attention_layers, alignment=t.alignment,
                  truncated=truncated)
        out.nbest = [out.model_copy() if x is t else cls.of(x, truncated) for x in t.nbest]
        return out


class TranslateResponse(BaseModel):
    translations: list[TranslationOut]


class AlternativesRequest(_Body):
    source: str
    prefix: str = ""
    k: int = Field(5, ge=1)
    beam: int | None = Field(None, ge=1, description="the beam for each alternative's translation")
    constraints: list[str | AnyOf] | None = Field(None, description="the sentence's constraints, "
                                                  "which the alternatives' translations meet")


class AlternativeOut(BaseModel):
    word: str
    probability: float
    translation: str
    prefix: str


class AlternativesResponse(BaseModel):
    alternatives: list[AlternativeOut]


class ScoreRequest(_Body):
    source: list[str] = Field(min_length=1)
    target: list[str] = Field(min_length=1)


class ScoreOut(BaseModel):
    log_prob: float
    normalized: float
    tokens: list[str]
    token_scores: list[float]
    truncated: bool = Field(description="the target was longer than the model's outputs: only its "
                            "first pieces were scored")
    unknown: int = Field(description="target pieces the vocabulary cannot spell (scored as <unk>)")


class ScoreResponse(BaseModel):
    scores: list[ScoreOut]


# ---- the queue and the worker that runs the model ----


@dataclass
class _Job:
    kind: str  # "translate", "score" or "alternatives"
    key: tuple  # jobs with equal keys may share a model call
    payload: dict[str, Any]
    size: int  # source tokens it brings
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class Batcher:
    """One worker thread runs the model; requests wait in a queue, and those of a kind that
    share their options are taken together."""

    def __init__(self, translator: Translator, settings: ServeSettings, metrics: _Metrics) -> None:
        self.translator, self.settings, self.metrics = translator, settings, metrics
        self.pending: collections.deque[_Job] = collections.deque()
        self.cond = threading.Condition()
        self.stopping = False
        self.model_calls = 0
        self.thread = threading.Thread(target=self._run, name="nmtkit-model", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Finish what is queued, then end the worker."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.thread.join(timeout=self.settings.timeout_s + 5)

    def submit(self, job: _Job) -> concurrent.futures.Future:
        with self.cond:
            if self.stopping:
                raise HTTPException(503, "the server is shutting down")
            if len(self.pending) >= self.settings.queue_limit:
                raise HTTPException(503, f"the server is busy: {len(self.pending)} requests are "
                                         "waiting (the queue limit); try again shortly",
                                    headers={"Retry-After": "1"})
            self.pending.append(job)
            self.metrics.queue.set(len(self.pending))
            self.cond.notify()
        return job.future

    def _next_group(self) -> list[_Job] | None:
        with self.cond:
            while not self.pending:
                if self.stopping:
                    return None
                self.cond.wait()
            first = self.pending.popleft()
            self.metrics.queue.set(len(self.pending))  # the gauge follows every change
        group, tokens = [first], first.size
        if not self.settings.batching:
            return group
        end = time.monotonic() + self.settings.batch_wait_ms / 1000
        with self.cond:
            while tokens < self.settings.max_batch_tokens:
                match = next((j for j in self.pending if j.key == first.key and
                              tokens + j.size <= self.settings.max_batch_tokens), None)
                if match is not None:
                    self.pending.remove(match)
                    group.append(match)
                    tokens += match.size
                    continue
                remaining = end - time.monotonic()
                if remaining <= 0 or self.stopping:
                    break
                self.cond.wait(remaining)
            self.metrics.queue.set(len(self.pending))
        return group

    def _run(self) -> None:
        while (group := self._next_group()) is not None:
            group = [j for j in group if j.future.set_running_or_notify_cancel()]  # not timed out
            if not group:
                continue
            try:
                with torch.inference_mode(), warnings.catch_warnings():
                    warnings.simplefilter("ignore", NMTKitWarning)
                    try:
                        results = self._call(group)
                    except NMTKitError:  # one request's mistake: the others still get answers
                        if len(group) == 1:
                            raise
                        results = [self._alone(job) for job in group]
                for job, result in zip(group, results, strict=True):
                    if isinstance(result, Exception):  # this job's own error (see _alternatives)
                        job.future.set_exception(result)
                    else:
                        job.future.set_result(result)
            except Exception as err:  # noqa: BLE001 - each waiting request gets the error
                for job in group:
                    job.future.set_exception(err)

    def _alone(self, job: _Job) -> Any:
        """A job's own result, or its own error, from a model call of its own."""
        try:
            return self._call([job])[0]
        except NMTKitError as err:
            return err

    def _call(self, group: list[_Job]) -> list[Any]:
        """One model call for the whole group; each job's part of the result."""
        self.model_calls += 1
        t = self.translator
        first = group[0]
        if first.kind == "alternatives":
            return self._alternatives(group)
        sizes = [len(j.payload["sources"]) for j in group]
        self.metrics.batch.observe(sum(sizes))
        sources = [s for j in group for s in j.payload["sources"]]
        if first.kind == "score":
            targets = [s for j in group for s in j.payload["targets"]]
            out: list[Any] = t.score(sources, targets, too_long=self.settings.too_long)
        else:
            prefixes = [p for j in group for p in j.payload["prefix"]]
            constraints = [c for j in group for c in j.payload.get("constraints") or
                           [[]] * len(j.payload["sources"])]
            out = t.translate(sources, return_details=True, prefix=prefixes,
                              too_long=self.settings.too_long, **first.payload["options"],
                              constraints=constraints if any(constraints) else None)
            cut = set(t.last_too_long) if self.settings.too_long == "truncate" else set()
            out = [(x, i in cut) for i, x in enumerate(out)]
        parts, start = [], 0
        for n in sizes:
            parts.append(out[start : start + n])
            start += n
        return parts

    def _alternatives(self, group: list[_Job]) -> list[Any]:
        """The requests' next words in shared decoder steps, then the translations that follow
        from all of them in one search (Translator.alternatives_batch); a request's own mistake
        (too long with too_long: error) is its own answer."""
        results = self.translator.alternatives_batch(
            [(j.payload["source"], j.payload["prefix"], j.payload["k"]) for j in group],
            constraints=[j.payload.get("constraints") for j in group], errors="return",
            beam=group[0].payload["beam"], too_long=self.settings.too_long)
        self.metrics.batch.observe(len(group))  # the candidate words' call
        self.metrics.batch.observe(sum(len(r) for r in results if not isinstance(r, Exception)))
        return results


def _constraints(translator: Translator, glossary: Glossary | None, text: list[str],
                 given: list[list] | None, prefix: list[str]) -> list[list] | None:
    """The request's constraints (as plain phrases and {"any": [...]}) with the glossary's, each
    checked (422 naming the field) before it joins a batch: spelled by the vocabulary, and the
    sentence's all together fitting in its output after its prefix."""
    if given is not None and len(given) != len(text):
        raise HTTPException(422, [{"field": "constraints", "message": f"{len(given)} constraint "
                                   f"lists for {len(text)} sentences"}])
    plain = [[c if isinstance(c, str) else {"any": c.any} for c in cs] for cs in given] \
        if given is not None else None
    merged = merge(glossary, text, plain)
    for i, wanted in enumerate(merged or []):
        for j, c in enumerate(wanted):
            where = f"constraints[{i}][{j}]"
            try:
                for phrase in phrase_alternatives(c, where):
                    translator.constraint_ids(phrase, where)
            except NMTKitError as err:
                raise HTTPException(422, [{"field": where, "message": str(err)}]) from None
        if wanted:
            try:
                translator.check_constraints(text[i], wanted, prefix[i])
            except NMTKitError as err:
                raise HTTPException(422, [{"field": f"constraints[{i}]", "message": str(err)}]) from None
    return merged


def _check_prefixes(translator: Translator, prefixes: list[str]) -> None:
    """422 naming the field for a prefix the model cannot produce, before it joins a batch."""
    for i, prefix in enumerate(prefixes):
        try:
            translator.check_prefix(prefix)
        except NMTKitError as err:
            raise HTTPException(422, [{"field": f"prefix[{i}]", "message": str(err)}]) from None


class _Metrics:
    """Prometheus metrics in a registry of this app's own (no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("nmtkit_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("nmtkit_request_seconds", "request latency by route", ["route"],
                                 registry=self.registry,
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.batch = Histogram("nmtkit_batch_sentences", "sentences per model call", registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.queue = Gauge("nmtkit_queue_length", "requests waiting for the model", registry=self.registry)


# ---- the app ----


def create_app(translator: Translator, settings: ServeSettings | None = None,
               glossary: Glossary | None = None) -> FastAPI:
    """The FastAPI app for one Translator (tests call it through TestClient); a glossary adds
    its constraints to every translation."""
    settings = settings or ServeSettings()
    metrics = _Metrics()
    batcher = Batcher(translator, settings, metrics)

    async def lifespan(app: FastAPI):
        batcher.start()
        # the page's Hangul font takes a few seconds to build: not on a person's first visit
        threading.Thread(target=hangul_font, name="nmtkit-font", daemon=True).start()
        yield
        batcher.stop()  # after uvicorn has let the requests in flight finish
        log.info("stopped")

    # /docs from the swagger-ui-bundle package's files, not from a CDN (a server without internet
    # showed a blank page); ReDoc has no such package, so /redoc is off
    app = FastAPI(title="nmtkit", description="Neural machine translation: translate, steer, score.",
                  lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batcher = batcher
    app.state.translator = translator
    app.state.draining = threading.Event()  # set by SIGTERM: requests get 503, then the server stops
    app.state.in_flight = 0
    web = resources.files("nmtkit") / "web"
    app.mount("/static", StaticFiles(directory=str(web)), name="static")
    swagger = _swagger_ui_files()
    if swagger is not None:
        app.mount("/docs-assets", StaticFiles(directory=str(swagger)), name="docs-assets")
    app.add_middleware(_BodyLimit, limit=settings.max_body_bytes)

    @app.middleware("http")
    async def count(request: Request, call_next):
        """Every response is counted, the 500s too: an unexpected error is logged under a
        request id, and its response says only that id."""
        start = time.perf_counter()
        request_id = uuid.uuid4().hex[:12]
        if app.state.draining.is_set():
            response: Response = JSONResponse(
                {"detail": "the server is shutting down; try again shortly"}, status_code=503,
                headers={"Connection": "close", "Retry-After": "5"})
        elif (refusal := _content_type_refusal(request)) is not None:
            response = refusal
        else:
            app.state.in_flight += 1
            try:
                response = await call_next(request)
            except Exception as err:  # noqa: BLE001 - logged with its traceback, answered 500
                log.error("request %s: %s %s failed", request_id, request.method, request.url.path,
                          exc_info=err)
                response = JSONResponse({"detail": f"internal error (request id {request_id}); the "
                                         "server's log has the details under this id",
                                         "request_id": request_id}, status_code=500)
            finally:
                app.state.in_flight -= 1
        response.headers["X-Request-ID"] = request_id
        route = request.url.path if request.url.path in _ROUTES else "other"
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - start)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]}
                  for e in err.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        if err.status_code == 400:  # a body that is not JSON at all (bytes that are not UTF-8...)
            return JSONResponse({"detail": [{"field": "body", "message": f"not valid JSON: {err.detail}"}]},
                                status_code=422)
        return JSONResponse({"detail": err.detail}, status_code=err.status_code, headers=err.headers)

    async def run(job: _Job) -> Any:
        future = batcher.submit(job)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), settings.timeout_s)
        except TimeoutError:
            future.cancel()
            raise HTTPException(504, f"no answer within {settings.timeout_s:g} s (timeout_s)") from None
        except NMTKitError as err:  # e.g. an input too long with too_long: error
            raise HTTPException(422, str(err)) from None
        # any other error: the model failed; this request is a 500 (see count), the server goes on

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(web / "index.html"))

    @app.get("/fonts/hangul.ttf", include_in_schema=False)
    async def hangul(request: Request) -> Response:
        """4.3 MB: cached by the browser, revalidated by its ETag (the content's hash)."""
        font = await asyncio.to_thread(hangul_font)
        if font is None:
            return Response(status_code=404)
        tag = f'"{hashlib.sha256(font).hexdigest()[:20]}"'
        headers = {"ETag": tag, "Cache-Control": "public, max-age=86400"}
        if request.headers.get("if-none-match") == tag:
            return Response(status_code=304, headers=headers)
        return Response(font, media_type="font/ttf", headers=headers)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        if swagger is None:
            return PlainTextResponse("The API page needs the swagger-ui-bundle package (pip install "
                                     "'nmtkit[serve]'); the schema is at /openapi.json", status_code=404)
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title="nmtkit API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "stopping" if batcher.stopping else "ok", "queue": len(batcher.pending)}

    @app.get("/info")
    async def info() -> dict[str, Any]:
        ckpt = translator.ckpt
        return {
            "model": ckpt.config.model.type,
            "config": ckpt.config.model.model_dump(mode="json"),
            "checkpoints": [str(c.path) for c in translator.checkpoints],
            "step": ckpt.info.get("step"),
            "parameters": sum(count_parameters(m) for m in translator.members),
            "vocab": {"source": len(translator.src_tok), "target": len(translator.tgt_tok)},
            "attention": {"layers": translator.decoder_layers, "heads": translator.heads},
            "decoding": ckpt.config.decoding.model_dump(mode="json"),
            "max_input_tokens": translator.max_input_tokens,
            "limits": {**settings.model_dump(mode="json"), "max_body_bytes": settings.max_body_bytes},
        }

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/translate", response_model=TranslateResponse, response_model_exclude_none=True)
    async def translate(req: TranslateRequest) -> TranslateResponse:
        _check_sentences("text", req.text, settings)
        beam = req.beam if req.beam is not None else translator.decoding.beam
        _limit("beam", beam, settings.max_beam)
        _limit("nbest", req.nbest, min(settings.max_nbest, beam))
        prefix = req.prefix if req.prefix is not None else [""] * len(req.text)
        if len(prefix) != len(req.text):
            raise HTTPException(422, [{"field": "prefix", "message": f"{len(prefix)} prefixes for "
                                       f"{len(req.text)} sentences"}])
        _check_prefixes(translator, prefix)
        constraints = _constraints(translator, glossary, req.text, req.constraints, prefix)
        options = {"beam": beam, "nbest": req.nbest, "all_attention": req.attention,
                   "attention": req.attention, "alignment": req.alignment}
        job = _Job("translate", ("translate", *sorted(options.items())),
                   {"sources": req.text, "prefix": prefix, "options": options, "constraints": constraints},
                   _tokens(translator, req.text))
        result = await run(job)
        return TranslateResponse(translations=[TranslationOut.of(t, cut) for t, cut in result])

    @app.post("/alternatives", response_model=AlternativesResponse)
    async def alternatives(req: AlternativesRequest) -> AlternativesResponse:
        _check_sentences("source", [req.source], settings)
        _limit("k", req.k, settings.max_k)
        beam = req.beam if req.beam is not None else translator.decoding.beam
        _limit("beam", beam, settings.max_beam)
        _check_prefixes(translator, [req.prefix])
        constraints = _constraints(translator, glossary, [req.source],
                                   [req.constraints] if req.constraints is not None else None,
                                   [req.prefix])
        job = _Job("alternatives", ("alternatives", beam),
                   {"source": req.source, "prefix": req.prefix, "k": req.k, "beam": beam,
                    "constraints": constraints[0] if constraints else None},
                   req.k * _tokens(translator, [req.source]))
        result = await run(job)
        return AlternativesResponse(alternatives=[AlternativeOut(**a.__dict__) for a in result])

    @app.post("/score", response_model=ScoreResponse)
    async def score(req: ScoreRequest) -> ScoreResponse:
        _check_sentences("source", req.source, settings)
        _check_sentences("target", req.target, settings)
        if len(req.source) != len(req.target):
            raise HTTPException(422, [{"field": "target", "message": f"{len(req.target)} targets for "
                                       f"{len(req.source)} sources"}])
        if settings.too_long == "error":  # before the batch: the error names this request's target
            for i, target in enumerate(req.target):
                if len(translator.tgt_tok.encode(target)) > translator.longest_output:
                    raise HTTPException(422, [{"field": f"target.{i}", "message": "more subword tokens "
                                               f"than the model's outputs ({translator.longest_output}; "
                                               "too_long: error)"}])
        job = _Job("score", ("score",), {"sources": req.source, "targets": req.target},
                   _tokens(translator, req.source))
        result = await run(job)
        return ScoreResponse(scores=[ScoreOut(**s.__dict__) for s in result])

    return app


# the page's @font-face unicode-range for this font (nmtkit/web/style.css): Hangul jamo,
# compatibility jamo, extended jamo A and B, and the syllables
HANGUL_RANGES = ((0x1100, 0x11FF), (0x3130, 0x318F), (0xA960, 0xA97F), (0xAC00, 0xD7AF), (0xD7B0, 0xD7FF))
_font_lock = threading.Lock()


def hangul_font() -> bytes | None:
    """The NanumGothic font that koreanize-matplotlib ships (nmtkit's heatmaps use it too), for
    the page: cut to the Hangul that the page asks it for (1.3 MB instead of 4.3 MB: no Hanja,
    Latin or hinting), which also drops its empty VTT hinting tables (TSI*), for which browsers
    refuse the font. Built once (a few seconds), in a thread when the server starts."""
    with _font_lock:  # the startup thread and a first visitor build it once
        return _hangul_font()


@functools.cache
def _hangul_font() -> bytes | None:
    from fontTools import subset
    from fontTools.ttLib import TTFont

    from nmtkit.plotting import hangul_font_file

    path = hangul_font_file()
    if path is None:
        return None
    font = TTFont(str(path))
    for table in [t for t in font.keys() if t.startswith("TSI")]:
        del font[table]
    options = subset.Options()
    options.hinting = False
    options.name_IDs = ["*"]
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=[u for low, high in HANGUL_RANGES for u in range(low, high + 1)])
    subsetter.subset(font)
    out = io.BytesIO()
    font.save(out)
    return out.getvalue()


_ROUTES = {"/", "/translate", "/alternatives", "/score", "/health", "/info", "/metrics", "/docs"}
_JSON_ROUTES = {"/translate", "/alternatives", "/score"}


def _swagger_ui_files() -> Any:
    """The folder of Swagger UI's files in the swagger-ui-bundle package (None without it)."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return swagger_ui_path


def _content_type_refusal(request: Request) -> Response | None:
    """415 for a POST whose body is not declared JSON (FastAPI would read it as one string and
    answer 422 naming no field); None when it is."""
    if request.method != "POST" or request.url.path not in _JSON_ROUTES:
        return None
    declared = request.headers.get("content-type", "")
    kind = declared.split(";")[0].strip().lower()
    if kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json")):
        return None
    said = f"Content-Type {declared!r}" if declared else "no Content-Type"
    return JSONResponse({"detail": [{"field": "Content-Type", "message": f"the body came with {said}; "
                         "send JSON with Content-Type: application/json (curl: --json or -H "
                         "'Content-Type: application/json')"}]}, status_code=415)


class _BodyLimit:
    """ASGI middleware: a request body larger than `limit` bytes is refused with 413 before it
    is read, by its Content-Length, or, sent in chunks, as soon as its chunks pass the limit
    (what was read is dropped), so a 20 MB body never sits in memory."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await self._refuse(send, length.decode("latin-1"))
        seen, over, started = 0, False, False

        async def limited_receive() -> dict:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise _TooLarge
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal started
            if over:  # the app's own answer to the broken-off body is replaced by the 413
                return
            started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            pass
        if over and not started:
            await self._refuse(send, f"more than {seen}")

    async def _refuse(self, send: Any, size: str) -> None:
        body = json.dumps({"detail": [{"field": "body", "message": f"{size} bytes; at most "
                                       f"{self.limit} per request (from max_sentences x max_chars)"}]})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body.encode()})


class _TooLarge(Exception):
    """A streamed body passed the limit (raised into the app's read, caught by _BodyLimit)."""


def _check_sentences(name: str, sentences: list[str], settings: ServeSettings) -> None:
    if len(sentences) > settings.max_sentences:
        raise HTTPException(413, [{"field": name, "message": f"{len(sentences)} sentences; at most "
                                   f"{settings.max_sentences} per request (max_sentences)"}])
    for i, s in enumerate(sentences):
        if len(s) > settings.max_chars:
            raise HTTPException(413, [{"field": f"{name}.{i}", "message": f"{len(s)} characters; at "
                                       f"most {settings.max_chars} per sentence (max_chars)"}])
        try:
            check_text(s, "the sentence")
        except NMTKitError as err:
            raise HTTPException(422, [{"field": f"{name}.{i}", "message": str(err)}]) from None


def _limit(name: str, value: int, most: int) -> None:
    if value > most:
        raise HTTPException(422, [{"field": name, "message": f"{value}; at most {most} here"}])


def _tokens(translator: Translator, sentences: list[str]) -> int:
    """Source tokens a request brings, padding as its batch will have it."""
    lengths = [min(len(translator.src_tok.encode(s)), translator.max_input_tokens) + 1 for s in sentences]
    return len(lengths) * max(lengths)


def serve(translator: Translator, settings: ServeSettings, listener: socket.socket, threads: int,
          glossary: Glossary | None = None, started: str = "") -> None:
    """Run the server on a bound, listening socket (nmtkit.loading.listen) until SIGINT/SIGTERM:
    then the requests in flight finish, new ones are refused, and the worker ends. `started`:
    the startup's timings, for the first line."""
    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    host, port = listener.getsockname()[:2]
    print(f"nmtkit serve: http://{host}:{port}/ (API docs at /docs); the model runs in one worker "
          f"with {threads} thread{'s' * (threads > 1)}{'; ' + started if started else ''}", flush=True)
    if not log.handlers:  # the drain and the 500s' details, on stderr beside uvicorn's warnings
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s nmtkit serve: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    app = create_app(translator, settings, glossary)
    config = uvicorn.Config(app, log_level="warning",
                            timeout_graceful_shutdown=math.ceil(settings.timeout_s) + 5)
    _DrainingServer(config, app, settings.timeout_s + 5).run(sockets=[listener])


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, with a drain before it stops: on SIGTERM (or SIGINT) it stops listening,
    answers any request that still comes on an open keep-alive connection with 503 and
    `Connection: close`, lets the requests in flight finish (at most `longest` seconds), and
    then stops as uvicorn does. A second SIGINT stops at once."""

    def __init__(self, config: Any, app: FastAPI, longest: float) -> None:
        super().__init__(config)
        self.app, self.longest = app, longest

    def handle_exit(self, sig: int, frame: Any) -> None:
        draining = self.app.state.draining
        if draining.is_set():
            return super().handle_exit(sig, frame)
        draining.set()
        log.info("draining %d request%s", self.app.state.in_flight, "s" * (self.app.state.in_flight != 1))
        loop = asyncio.get_running_loop()  # a signal handler runs in the loop's thread
        for server in getattr(self, "servers", []):
            loop.call_soon_threadsafe(server.close)  # no new connections
        threading.Thread(target=self._stop_when_idle, args=(sig, frame), daemon=True).start()

    def _stop_when_idle(self, sig: int, frame: Any) -> None:
        end = time.monotonic() + self.longest
        while self.app.state.in_flight and time.monotonic() < end:
            time.sleep(0.05)
        super().handle_exit(sig, frame)
