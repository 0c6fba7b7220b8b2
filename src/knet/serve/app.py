"""The FastAPI application of ``knet serve``: the page, the HTTP API and its error answers.

    app = create_app(knet.Segmenter("knet-r50-fcn", checkpoint="ref.pth"), ServeSettings())
    uvicorn.run(app)                    # what `knet serve` does, on a socket it bound itself

Routes: ``GET /`` (the page; its script and style under ``/static/``, all shipped in the package,
nothing from a CDN), ``POST /v1/segment``, ``GET /v1/model``, ``GET /healthz`` and
``GET /openapi.json`` (FastAPI's ``/docs`` and ``/redoc`` load their scripts from a CDN, so they
are off). Every refusal is a 4xx with a one-line body ``{"error": "..."}``: FastAPI's validation
body is replaced, and unknown paths answer the same way.
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, Literal, MutableMapping, Optional

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..utils.memory import release_free_memory
from .service import Reply, RequestError, SegmentJob, SegmentService, upload_name
from .worker import BatchQueue, QueueFull

STATIC = Path(__file__).resolve().parent / "static"


@dataclass(frozen=True)
class ServeSettings:
    """The server's limits. ``max_pixels``: the largest image (width x height); ``max_upload_mb``:
    the largest request body (MiB); ``queue_size``: requests waiting for the model before 503;
    ``batch_size``: the most images per run of the model; ``release_memory``: hand the free heap
    back to the system whenever the queue drains, so that a burst of large images does not stay
    in the server's resident memory (:func:`knet.utils.memory.release_free_memory`)."""

    max_pixels: int = 4_000_000
    max_upload_mb: float = 20.0
    queue_size: int = 32
    batch_size: int = 4
    release_memory: bool = True

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


# --------------------------------------------------------------------------------------------
# What /openapi.json documents (the handlers build the same objects as plain dicts)
# --------------------------------------------------------------------------------------------
class ErrorBody(BaseModel):
    error: str = Field(description="what was wrong, in one line")


class ClassEntry(BaseModel):
    index: int = Field(description="the model's class index")
    name: str
    fraction: float = Field(description="share of the image's pixels, 0..1")
    colour: List[int] = Field(description="RGB")


class SegmentEntry(BaseModel):
    id: int = Field(description="its value in segment_map (from 1, best score first)")
    label: int = Field(description="the model's class index")
    name: str
    category_id: int = Field(description="the dataset's (COCO) category id")
    score: float
    area: int = Field(description="pixels")
    bbox: List[int] = Field(description="x, y, width, height")
    colour: List[int] = Field(description="RGB, as drawn in the overlay")
    isthing: Optional[bool] = Field(None, description="panoptic: a thing (instance) or stuff")


class SegmentAnswer(BaseModel):
    model: str
    task: str = Field(description="semantic, panoptic or instance")
    tta: bool
    width: int
    height: int
    file_name: str = Field(description="<stem>.png: the name knet predict gives the label or panoptic PNG")
    classes: List[ClassEntry] = Field(description="the classes present, largest first")
    label_map: Optional[str] = Field(None, description="semantic: base64 PNG, one class index per pixel "
                                                       "(uint8; uint16 beyond 255 classes): knet predict's <stem>.png")
    segment_map: Optional[str] = Field(None, description="panoptic/instance: base64 RGB PNG, segment id = R + 256 G "
                                                         "+ 256^2 B, 0 = void (panoptic: knet predict's <stem>.png)")
    segments: Optional[List[SegmentEntry]] = Field(None, description="panoptic/instance: the segments, best first")
    time_ms: float = Field(description="from the upload's arrival to the answer")
    queue_ms: float = Field(description="waiting for the model")
    inference_ms: float = Field(description="the batch's run of the model")
    batch: int = Field(description="images in that run")


class ModelInfo(BaseModel):
    name: str = Field(description="the model's preset name")
    task: str
    num_classes: int
    classes: List[str]
    palette: List[List[int]]
    tta: bool = Field(description="the default of requests")
    tta_available: bool
    test_scale: List[int]
    device: str
    max_pixels: int
    max_upload_mb: float
    queue_size: int
    batch_size: int


def _errors(*codes: int) -> Dict[Any, Dict[str, Any]]:
    what = {400: "bad input: not an image, a truncated or empty file, a missing field, an unknown option value",
            413: "an image over --max-pixels or a body over --max-upload-mb",
            503: "the queue is full: retry after the Retry-After header's seconds"}
    return {code: {"model": ErrorBody, "description": what[code]} for code in codes}


# --------------------------------------------------------------------------------------------
# The request-size limit
# --------------------------------------------------------------------------------------------
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class BodyLimit:
    """ASGI middleware refusing bodies over ``limit`` bytes with 413 before the app sees them: at
    once from ``Content-Length``, else while counting a chunked body (which it holds, up to the
    limit, and hands on whole)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._refuse(scope, send, int(length))
            return
        chunks: List[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, send, None)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, delivered = b"".join(chunks), False

        async def replay() -> MutableMapping[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: MutableMapping[str, Any], send: Send, length: Optional[int]) -> None:
        size = f"of {length} bytes " if length is not None else ""
        mib = self.limit / (1024 * 1024)
        response = JSONResponse({"error": f"request body {size}over the server's limit of "
                                          f"{self.limit} bytes ({mib:g} MiB, --max-upload-mb)"}, status_code=413,
                                headers={"Connection": "close"})

        async def nothing() -> MutableMapping[str, Any]:
            return {"type": "http.disconnect"}

        await response(scope, nothing, send)


# --------------------------------------------------------------------------------------------
# The application
# --------------------------------------------------------------------------------------------
def _validation_message(err: RequestValidationError) -> str:
    """FastAPI's list of validation errors -> one line about the first of them."""
    first = (err.errors() or [{}])[0]
    name = str(first.get("loc", ("", "request"))[-1])
    if first.get("type") == "missing":
        where = "multipart form field" if "body" in first.get("loc", ()) else "parameter"
        return f"missing {where} {name!r}" + (" (the image file)" if name == "image" else "")
    message = str(first.get("msg", "invalid value")).rstrip(".")
    value = first.get("input")
    given = f", got {value!r}" if isinstance(value, (str, int, float)) and len(repr(value)) < 60 else ""
    return f"{name}: {message}{given}"


def create_app(segmenter: Any, settings: Optional[ServeSettings] = None) -> FastAPI:
    """The server of one model: ``segmenter`` is a :class:`knet.Segmenter` (any task, torch or ONNX
    Runtime). The batch worker starts and stops with the application's lifespan (uvicorn, or
    ``with TestClient(app)``)."""
    settings = settings or ServeSettings()
    service = SegmentService(segmenter, settings.max_pixels)
    worker: BatchQueue[SegmentJob] = BatchQueue(service.run_batch, settings.batch_size, settings.queue_size,
                                                on_idle=release_free_memory if settings.release_memory else None)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:
            worker.stop()

    app = FastAPI(title="knet serve", version=__version__, lifespan=lifespan,
                  description=f"K-Net segmentation with {segmenter.config.name} ({segmenter.task.name}).",
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.service, app.state.worker, app.state.settings = service, worker, settings
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(err)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(RequestError)
    async def _refused(_: Request, err: RequestError) -> JSONResponse:
        return JSONResponse({"error": err.message}, status_code=err.status)

    @app.exception_handler(QueueFull)
    async def _busy(_: Request, err: QueueFull) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=503, headers={"Retry-After": str(err.retry_after)})

    @app.exception_handler(Exception)
    async def _failed(_: Request, err: Exception) -> JSONResponse:
        # The model failed (out of memory, a broken runtime): the client gets one line, the log the
        # traceback, and the worker goes on with the next batch.
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return JSONResponse({"error": f"internal error: {first}"}, status_code=500)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/healthz", summary="liveness: 200 while the server runs")
    async def healthz() -> Dict[str, Any]:
        return {"status": "ok", "queued": worker.queued}

    @app.get("/v1/model", response_model=ModelInfo, summary="the model: name, task, classes, palette")
    async def model() -> Dict[str, Any]:
        return {**service.model_info(), "max_upload_mb": settings.max_upload_mb,
                "queue_size": settings.queue_size, "batch_size": settings.batch_size}

    @app.post("/v1/segment", summary="segment one image",
              responses={200: {"model": SegmentAnswer, "description": "JSON, or with format=png the overlay "
                                                                    "(knet predict's <stem>_overlay.png)",
                               "content": {"image/png": {}}},
                         **_errors(400, 413, 503), "4XX": {"model": ErrorBody, "description": "other refusals"}})
    async def segment(image: UploadFile = File(description="the image file (JPEG, PNG, BMP, TIFF, WebP...)"),
                      tta: Optional[bool] = Form(None, description="multi-scale + flip (default: the server's "
                                                                   "--tta); semantic models only"),
                      opacity: float = Form(0.5, ge=0.0, le=1.0, description="format=png: weight of the colours"),
                      format: Literal["json", "png"] = Query("json", description="json, or png for the overlay")
                      ) -> Response:
        data = await image.read()
        name = upload_name(image.filename)
        job = SegmentJob(data=data, name=name, tta=service.default_tta if tta is None else bool(tta),
                         format=format, opacity=float(opacity))
        if not data:
            raise RequestError(400, f"{job.label}: image file is empty")
        service.check_tta(job.tta)
        service.check_size(data, job.label)
        reply: Reply = await asyncio.wrap_future(worker.submit(job))
        if isinstance(reply.body, bytes):
            return Response(reply.body, media_type=reply.media_type, headers=reply.headers)
        return JSONResponse(reply.body, headers=reply.headers)

    return app


__all__ = ["BodyLimit", "ServeSettings", "create_app"]
