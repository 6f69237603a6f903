"""The DICOMweb services under ``dicomweb.base_path``, behind the credential check."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Mount

from dicom_node.dicomweb import qido, stow, wado
from dicom_node.dicomweb.auth import RequirePeer
from dicom_node.dicomweb.context import DicomWebContext
from dicom_node.web.app import json_error


def dicomweb_mount(ctx: DicomWebContext) -> Mount:
    # CORS first: a browser's preflight carries no credential and must still be answered.
    cors = Middleware(
        CORSMiddleware,
        allow_origins=ctx.settings.dicomweb.cors_origins,
        allow_credentials=True,
        allow_methods=["GET", "POST"],
        allow_headers=["Authorization", "Accept", "Content-Type"],
        expose_headers=["Content-Type", "Content-Length", "Warning"],
        max_age=600,
    )
    # An application of its own, so that error answers pass back through CORS too.
    services = Starlette(
        routes=[*qido.routes(ctx), *wado.routes(ctx), *stow.routes(ctx)],
        middleware=[cors, Middleware(RequirePeer, ctx=ctx)],
        exception_handlers={HTTPException: json_error},
    )
    return Mount(ctx.settings.dicomweb.base_path, app=services)
