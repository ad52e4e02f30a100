"""`nmtkit serve`: translations over HTTP (FastAPI + uvicorn), and a page to see and steer them.

    POST /translate     {"text": ["..."], "beam": 5, "nbest": 1, "prefix": null,
                         "constraints": null, "attention": false, "alignment": false}
    POST /alternatives  {"source": "...", "prefix": "...", "k": 5, "constraints": null}
    POST /score         {"source": ["..."], "target": ["..."]}
    GET  /health, /info, /metrics (Prometheus), /docs (OpenAPI), / (the page)

Cross-request batching: translations (and scores) that arrive within `batch_wait_ms` of each
other and share their decoding options go to the model as one call, up to `max_batch_tokens`
source tokens, so requests from different users share the cost of each decoder step. The model
runs in one worker thread that a queue feeds, so the event loop keeps accepting; a full queue
answers 503 at once, a request that waits longer than `timeout_s` 504. Requests and responses
are pydantic models: they validate, name the field in every error, and make the OpenAPI page.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import io
import math
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
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

    @classmethod
    def of(cls, t: Translation) -> TranslationOut:
        """With its n-best list (which starts with the translation itself)."""
        out = cls(text=t.text, score=t.score, tokens=t.tokens, source_tokens=t.source_tokens,
                  attention=t.attention, attention_layers=t.attention_layers, alignment=t.alignment)
        out.nbest = [out.model_copy() if x is t else cls.of(x) for x in t.nbest]
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
    batches (translate, score) and share their options are taken together."""

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
        group, tokens = [first], first.size
        if not (self.settings.batching and first.kind in ("translate", "score")):
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
                    results = self._call(group)
                for job, result in zip(group, results, strict=True):
                    job.future.set_result(result)
            except Exception as err:  # noqa: BLE001 - each waiting request gets the error
                for job in group:
                    job.future.set_exception(err)

    def _call(self, group: list[_Job]) -> list[Any]:
        """One model call for the whole group; each job's part of the result."""
        self.model_calls += 1
        t = self.translator
        first = group[0]
        if first.kind == "alternatives":
            p = first.payload
            return [t.alternatives(p["source"], p["prefix"], p["k"], beam=p["beam"],
                                   too_long=self.settings.too_long, constraints=p.get("constraints"))]
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
        parts, start = [], 0
        for n in sizes:
            parts.append(out[start : start + n])
            start += n
        return parts


def _constraints(translator: Translator, glossary: Glossary | None, text: list[str],
                 given: list[list] | None) -> list[list] | None:
    """The request's constraints (as plain phrases and {"any": [...]}) with the glossary's, each
    checked (422 naming the field) before it joins a batch."""
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
        yield
        batcher.stop()  # after uvicorn has let the requests in flight finish

    app = FastAPI(title="nmtkit", description="Neural machine translation: translate, steer, score.",
                  lifespan=lifespan)
    app.state.batcher = batcher
    app.state.translator = translator
    web = resources.files("nmtkit") / "web"
    app.mount("/static", StaticFiles(directory=str(web)), name="static")

    @app.middleware("http")
    async def count(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
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

    @app.exception_handler(Exception)
    async def internal(request: Request, err: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"internal error: {type(err).__name__}: {err}"}, status_code=500)

    async def run(job: _Job) -> Any:
        future = batcher.submit(job)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), settings.timeout_s)
        except TimeoutError:
            future.cancel()
            raise HTTPException(504, f"no answer within {settings.timeout_s:g} s (timeout_s)") from None
        except NMTKitError as err:  # e.g. an input too long with too_long: error
            raise HTTPException(422, str(err)) from None
        except Exception as err:  # the model failed: this request fails, the server goes on
            raise HTTPException(500, f"internal error: {type(err).__name__}: {err}") from None

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(web / "index.html"))

    @app.get("/fonts/hangul.ttf", include_in_schema=False)
    async def hangul() -> Response:
        font = hangul_font()
        return Response(font, media_type="font/ttf") if font else Response(status_code=404)

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
            "limits": settings.model_dump(mode="json"),
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
        constraints = _constraints(translator, glossary, req.text, req.constraints)
        options = {"beam": beam, "nbest": req.nbest, "all_attention": req.attention,
                   "attention": req.attention, "alignment": req.alignment}
        job = _Job("translate", ("translate", *sorted(options.items())),
                   {"sources": req.text, "prefix": prefix, "options": options, "constraints": constraints},
                   _tokens(translator, req.text))
        result = await run(job)
        return TranslateResponse(translations=[TranslationOut.of(t) for t in result])

    @app.post("/alternatives", response_model=AlternativesResponse)
    async def alternatives(req: AlternativesRequest) -> AlternativesResponse:
        _check_sentences("source", [req.source], settings)
        _limit("k", req.k, settings.max_k)
        beam = req.beam if req.beam is not None else translator.decoding.beam
        _limit("beam", beam, settings.max_beam)
        _check_prefixes(translator, [req.prefix])
        constraints = _constraints(translator, glossary, [req.source],
                                   [req.constraints] if req.constraints is not None else None)
        job = _Job("alternatives", ("alternatives", id(req)),
                   {"source": req.source, "prefix": req.prefix, "k": req.k, "beam": beam,
                    "constraints": constraints[0] if constraints else None}, 1)
        result = await run(job)
        return AlternativesResponse(alternatives=[AlternativeOut(**a.__dict__) for a in result])

    @app.post("/score", response_model=ScoreResponse)
    async def score(req: ScoreRequest) -> ScoreResponse:
        _check_sentences("source", req.source, settings)
        _check_sentences("target", req.target, settings)
        if len(req.source) != len(req.target):
            raise HTTPException(422, [{"field": "target", "message": f"{len(req.target)} targets for "
                                       f"{len(req.source)} sources"}])
        job = _Job("score", ("score",), {"sources": req.source, "targets": req.target},
                   _tokens(translator, req.source))
        result = await run(job)
        return ScoreResponse(scores=[ScoreOut(**s.__dict__) for s in result])

    return app


@functools.cache
def hangul_font() -> bytes | None:
    """The NanumGothic font that koreanize-matplotlib ships (nmtkit's heatmaps use it too), for
    the page, without its empty VTT hinting tables (TSI*), for which browsers refuse the font."""
    from fontTools.ttLib import TTFont

    from nmtkit.plotting import hangul_font_file

    path = hangul_font_file()
    if path is None:
        return None
    font = TTFont(str(path))
    for table in [t for t in font.keys() if t.startswith("TSI")]:
        del font[table]
    out = io.BytesIO()
    font.save(out)
    return out.getvalue()


_ROUTES = {"/", "/translate", "/alternatives", "/score", "/health", "/info", "/metrics"}


def _check_sentences(name: str, sentences: list[str], settings: ServeSettings) -> None:
    if len(sentences) > settings.max_sentences:
        raise HTTPException(413, [{"field": name, "message": f"{len(sentences)} sentences; at most "
                                   f"{settings.max_sentences} per request (max_sentences)"}])
    for i, s in enumerate(sentences):
        if len(s) > settings.max_chars:
            raise HTTPException(413, [{"field": f"{name}.{i}", "message": f"{len(s)} characters; at "
                                       f"most {settings.max_chars} per sentence (max_chars)"}])


def _limit(name: str, value: int, most: int) -> None:
    if value > most:
        raise HTTPException(422, [{"field": name, "message": f"{value}; at most {most} here"}])


def _tokens(translator: Translator, sentences: list[str]) -> int:
    """Source tokens a request brings, padding as its batch will have it."""
    lengths = [min(len(translator.src_tok.encode(s)), translator.max_input_tokens) + 1 for s in sentences]
    return len(lengths) * max(lengths)


def serve(translator: Translator, settings: ServeSettings, host: str, port: int, threads: int,
          glossary: Glossary | None = None) -> None:
    """Run the server until SIGINT/SIGTERM: then the requests in flight finish, new ones are
    refused, and the worker ends."""
    import uvicorn

    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    try:  # bind first, so that a port in use or an unknown host is one clear error
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.create_server((host, port), family=family)
    except OSError as err:
        raise NMTKitError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    print(f"nmtkit serve: http://{host}:{port}/ (API docs at /docs); the model runs in one worker "
          f"with {threads} thread{'s' * (threads > 1)}", flush=True)
    config = uvicorn.Config(create_app(translator, settings, glossary), log_level="warning",
                            timeout_graceful_shutdown=math.ceil(settings.timeout_s) + 5)
    uvicorn.Server(config).run(sockets=[listener])
