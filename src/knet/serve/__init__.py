"""``knet serve``: a web page and an HTTP API that segment images with one model.

Needs the ``serve`` extra (``pip install "knet-seg[serve]"``: FastAPI, uvicorn, python-multipart).

- :mod:`knet.serve.app`: the FastAPI application (:func:`create_app`), its routes and error answers;
- :mod:`knet.serve.service`: checking, decoding, segmenting and rendering one batch of uploads;
- :mod:`knet.serve.worker`: the bounded queue and the one thread that runs the model;
- ``static/``: the page (HTML, JavaScript, CSS; no build step, nothing from a CDN).
"""
from __future__ import annotations

from .app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
