"""ragtune's own endpoints: search, documents (list, upload, delete), passages, runs, health, metrics.

Searches run in the search pool, many at once (the KB's read lock is shared); uploads and deletes
run one at a time in the write pool, and the knowledge base is synced before they answer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import UploadFile

from . import uploads
from .errors import APIError
from .schemas import CompareRequest, SearchRequest

router = APIRouter()
log = logging.getLogger(__name__)


def _state(request: Request):
    return request.app.state.ragtune


async def _in(pool, fn, *args):
    return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)


# -- search --------------------------------------------------------------------------------
async def _search(request: Request, body: SearchRequest) -> dict:
    state = _state(request)
    access = state.kb(body.kb)

    def work():
        return access.search(body.query, body.k, mode=body.mode, filters=body.filters, dense_weight=body.dense_weight,
                             lexical_weight=body.lexical_weight, rrf_k=body.rrf_k)

    hits = await _in(state.search_pool, work)
    return {"object": "list", "kb": access.name, "query": body.query,
            "data": [hit.as_dict(explain=body.explain) for hit in hits]}


@router.post("/v1/search")
async def search(body: SearchRequest, request: Request):
    """Hybrid, dense or lexical search with `ragtune search`'s filters and --explain ranks."""
    return await _search(request, body)


@router.get("/v1/search")
async def search_get(request: Request, q: str = Query(..., description="the query"), k: int = Query(5, ge=1, le=1000),
                     mode: str = "hybrid", filter: list[str] = Query(default=[]), explain: bool = False,  # noqa: A002
                     kb: str | None = None):
    """The same search from a URL: /v1/search?q=refunds&k=5&filter=year>=2020&explain=true."""
    if mode not in ("hybrid", "dense", "lexical"):
        raise APIError(400, f"mode must be hybrid, dense or lexical, got {mode!r}", param="mode")
    body = SearchRequest(query=q, k=k, mode=mode, filters=filter or None, explain=explain, kb=kb)
    return await _search(request, body)


# -- documents -----------------------------------------------------------------------------
@router.get("/v1/documents")
async def list_documents(request: Request, kb: str | None = None, limit: int = Query(100, ge=1, le=1000),
                         offset: int = Query(0, ge=0), prefix: str | None = None):
    """The stored documents, by source; `uploaded` marks those that came through this server."""
    state = _state(request)
    access = state.kb(kb)
    rows, total = await _in(state.search_pool, lambda: access.documents(limit=limit, offset=offset, prefix=prefix))
    return {"object": "list", "kb": access.name, "total": total, "data": rows}


@router.post("/v1/documents")
async def upload_document(request: Request, kb: str | None = None):
    """Store a file (multipart field `file`) in the KB's uploads folder and ingest it."""
    state = _state(request)
    access = state.kb(kb)
    if access.kb.store.readonly:
        raise APIError(403, f"{access.name} is read-only for this server; uploads are refused", code="read_only")
    try:
        form = await request.form(max_files=1, max_fields=8)
    except APIError:
        raise
    except Exception as exc:  # malformed multipart bodies; TooLarge is re-raised by the limit guard
        from .limits import TooLarge

        if isinstance(exc, TooLarge):
            raise
        raise APIError(400, f"the body is not valid multipart form data ({exc}); send the file as field `file`",
                       code="invalid_multipart") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise APIError(400, "send the document as multipart form field `file` (curl -F file=@notes.md)", param="file")
    name = uploads.safe_name(upload.filename)
    limit = state.settings.max_upload_bytes

    def work():
        path = uploads.save(access.path, access.uploads, name, upload.file, limit)
        report = access.ingest_file(path)
        if not (report.ingested or report.unchanged):
            problems = report.failures + report.skipped_files
            reason = problems[0]["reason"] if problems else "nothing could be read from it"
            uploads.remove(access.uploads, str(path))
            access.delete(str(path))
            raise APIError(422, f"file: {name} was not ingested: {reason}", param="file", code="not_ingested")
        return path, report

    try:
        path, report = await _in(state.write_pool, work)
    finally:
        await upload.close()
    documents = [d for d in (await _in(state.search_pool, lambda: access.documents(limit=1000, prefix=None)))[0]
                 if d["file"] == str(path)]
    log.info("uploaded %s into %s (%d document(s))", name, access.name, len(documents))
    return JSONResponse({"object": "upload", "kb": access.name, "file": name, "documents": documents,
                         "report": report.as_dict()}, status_code=201)


@router.delete("/v1/documents/{doc_id:path}")
async def delete_document(doc_id: str, request: Request, kb: str | None = None):
    """Remove a document (by id or source); an uploaded file that held only it is deleted too."""
    state = _state(request)
    access = state.kb(kb)
    if access.kb.store.readonly:
        raise APIError(403, f"{access.name} is read-only for this server; deletes are refused", code="read_only")
    rows = await _in(state.search_pool, access.documents_by_id, doc_id)
    if not rows:
        raise APIError(404, f"no document {doc_id!r} in {access.name}", param="doc_id", code="document_not_found")

    def work():
        removed, files = 0, []
        for row in rows:
            uploaded = Path(row["file_path"]).parent == access.uploads
            if uploaded and len(access.kb.store.sources_of_file(row["file_path"])) <= 1:
                removed += access.delete(row["file_path"])
                if uploads.remove(access.uploads, row["file_path"]):
                    files.append(os.path.basename(row["file_path"]))
            else:
                removed += access.delete(row["source"])
        return removed, files

    removed, files = await _in(state.write_pool, work)
    return {"object": "document.deleted", "id": doc_id, "deleted": removed > 0, "documents_removed": removed,
            "files_removed": files}


@router.get("/v1/chunks/{chunk_id}")
async def passage(chunk_id: int, request: Request, kb: str | None = None, context: int = Query(1, ge=0, le=5)):
    """A cited passage in its surroundings, with the chunk's span (`highlight`) in that text."""
    state = _state(request)
    access = state.kb(kb)
    found = await _in(state.search_pool, lambda: access.passage(chunk_id, context=context))
    if found is None:
        raise APIError(404, f"no chunk {chunk_id} in {access.name} (it may have been re-ingested)", code="chunk_not_found")
    return found


@router.get("/v1/kbs")
async def knowledge_bases(request: Request):
    state = _state(request)
    data = []
    for access in state.kbs.values():
        stats = await _in(state.search_pool, access.stats)
        data.append({"name": access.name, "readonly": access.kb.store.readonly, **stats})
    return {"object": "list", "data": data}


# -- evaluation runs -----------------------------------------------------------------------
@router.get("/v1/runs")
async def list_runs(request: Request):
    """Stored evaluation runs (`ragtune eval qa`) from the runs database next to the KB."""
    state = _state(request)
    path = state.runs_db_path

    def work():
        if not path.is_file():
            return []
        from ..store.runs import RunsDB

        with RunsDB(path) as db:
            counts = db.prediction_counts()
            return [{"id": r["id"], "strategy": r["strategy"], "model": r["model"], "dataset": r["dataset_path"],
                     "kb": r["kb_path"], "k": r["k"], "status": r["status"], "started": r["started"],
                     "finished": r["finished"], "predictions": counts.get(r["id"], 0)} for r in db.runs()]

    return {"object": "list", "runs_db": str(path), "data": await _in(state.search_pool, work)}


@router.post("/v1/runs/report")
async def compare_report(body: CompareRequest, request: Request, format: str = "html"):  # noqa: A002
    """Compare stored runs (`ragtune compare`) and return the report: HTML, or its JSON with format=json."""
    state = _state(request)
    path = state.runs_db_path
    if not path.is_file():
        raise APIError(404, f"no runs database at {path}; run `ragtune eval qa --kb KB` first", code="no_runs")

    def work():
        from ..evaluate.compare import compare_runs
        from ..evaluate.report import html_report, write_reports
        from ..store.runs import RunsDB

        with RunsDB(path) as db:
            result = compare_runs(db, body.runs, metric=body.metric, knowledge_changes=body.knowledge_changes)
        data = write_reports(result, state.reports_dir / "-".join(body.runs))
        return html_report(result), data

    html, data = await _in(state.search_pool, work)
    return JSONResponse(data) if format == "json" else HTMLResponse(html)


# -- operations ----------------------------------------------------------------------------
@router.get("/healthz")
async def healthz(request: Request):
    """Liveness: the models are loaded and the process answers (no key needed, nothing revealed)."""
    state = _state(request)
    return {"status": "ok", "uptime_s": round(time.time() - state.started, 1), "models": len(state.models)}


@router.get("/metrics")
async def metrics(request: Request):
    state = _state(request)
    for served in state.generators:
        state.metrics.observe_gate(served.label, served.gate)
    body, content_type = state.metrics.render()
    return Response(body, media_type=content_type)
