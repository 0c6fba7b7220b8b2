"""``knet serve``: a web page and an HTTP API that segment images with one model, on this machine.

    pip install "knet-seg[serve]"                               # FastAPI, uvicorn, python-multipart
    knet serve --checkpoint models/knet-r50-fcn                 # then open http://127.0.0.1:8000/
    knet serve --model knet-r50-fpn-panoptic --checkpoint knet_s3_r50_fpn_1x_coco-panoptic.pth --port 0
    knet serve --checkpoint knet-r50-fcn.onnx --host 0.0.0.0    # reachable from the network: no login!

The page (choose or drop images; the overlay beside each with an opacity slider, the classes or
segments present, downloads of knet predict's files) and everything it loads are served by knet
itself, so it works with no internet. The API: ``POST /v1/segment`` (multipart field ``image``;
optional ``tta``, ``opacity``; ``?format=png`` for the overlay), ``GET /v1/model``,
``GET /healthz``, described in ``/openapi.json``. Requests wait in a queue of ``--queue-size`` and
run on the model one batch of up to ``--batch-size`` at a time (a full queue answers 503 with
Retry-After); bad input gets a 4xx with ``{"error": "..."}``. The server binds to 127.0.0.1
unless ``--host`` says otherwise, and never opens a file a client names.
"""
from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import socket
import sys
from typing import List

from ..errors import KnetError
from . import options

DEFAULT_BATCH = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("example: knet serve --checkpoint models/knet-r50-fcn, then open the printed address. "
                     "Needs the serve extra: pip install \"knet-seg[serve]\". "
                     f"--batch-size defaults to {DEFAULT_BATCH} here: that many queued images share a run of "
                     "the model.")
    options.add_model(parser)
    options.add_weights(parser, required=True)
    options.add_overrides(parser)
    parser.set_defaults(score_thr=0.3)  # instance models: what the answers show (the Segmenter's default)
    options.add_test_pipeline(parser)
    parser.set_defaults(batch_size=DEFAULT_BATCH)
    options.add_device(parser)
    options.add_threads(parser)
    options.add_compile(parser)
    options.add_precision(parser)
    options.add_quiet(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens the "
                             "server to the network, with no authentication)")
    parser.add_argument("--port", type=int, default=8000, metavar="N",
                        help="port (default 8000; 0: a free port, printed at start)")
    parser.add_argument("--max-pixels", type=int, default=4_000_000, metavar="N",
                        help="the largest image accepted, width x height (default 4e6); larger ones get 413")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, metavar="X",
                        help="the largest request body in MiB (default 20); larger ones get 413")
    parser.add_argument("--queue-size", type=int, default=32, metavar="N",
                        help="requests that may wait for the model (default 32); beyond, 503 with Retry-After")


def _missing_packages() -> List[str]:
    """The serve extra's packages that are not installed (python-multipart's module was renamed)."""
    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if importlib.util.find_spec("python_multipart") is None and importlib.util.find_spec("multipart") is None:
        missing.append("python-multipart")
    return missing


def _url(host: str, port: int) -> str:
    try:
        is_v6 = ipaddress.ip_address(host).version == 6
    except ValueError:
        is_v6 = False
    return f"http://[{host}]:{port}/" if is_v6 else f"http://{host}:{port}/"


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one), so the address printed is the one
    bound."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        raise KnetError(f"cannot listen on {host}:{port} ({err.strerror or err})") from None
    sock.set_inheritable(True)
    return sock


def _check(args: argparse.Namespace) -> None:
    for name in ("batch-size", "threads", "max-pixels", "queue-size"):
        options.check_positive(name, getattr(args, name.replace("-", "_")))
    if not 0 <= args.port <= 65535:
        raise KnetError(f"--port must be between 0 and 65535, got {args.port}")
    if not args.max_upload_mb > 0:
        raise KnetError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")


def run(args: argparse.Namespace) -> int:
    _check(args)
    missing = _missing_packages()
    if missing:
        raise KnetError(f"knet serve needs the serve extra ({', '.join(missing)} missing): "
                        "pip install \"knet-seg[serve]\"")
    options.set_torch_threads(args)
    sock = _listen(args.host, args.port)  # before loading the model: a taken port fails at once
    import uvicorn

    from ..serve import ServeSettings, create_app
    from .predict import _build_segmenter

    segmenter = _build_segmenter(args)
    settings = ServeSettings(max_pixels=args.max_pixels, max_upload_mb=args.max_upload_mb,
                             queue_size=args.queue_size, batch_size=args.batch_size)
    app = create_app(segmenter, settings)
    host, port = sock.getsockname()[:2]
    if not ipaddress.ip_address(host).is_loopback:
        print(f"knet serve: note: listening on {host}, reachable from other machines; the server has no "
              "authentication", file=sys.stderr)
    print(f"knet serve: {segmenter.config.name} ({segmenter.task.name}) at {_url(host, port)} "
          "(Ctrl+C stops)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="error" if args.quiet else "warning", access_log=False,
                                           timeout_graceful_shutdown=10))
    server.run(sockets=[sock])
    return 0
