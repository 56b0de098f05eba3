"""`ragtune demo`: build a knowledge base from ragtune's own docs/ and search it.

Until generation lands this shows the retrieval half of RAG end to end: ingest with the packaged
MiniLM embedder, then three searches with sources and character offsets.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from .errors import RagtuneError

QUESTIONS = [
    "How do I install ragtune on a new machine?",
    "What happens when ingest is killed halfway through?",
    "Which file formats can be ingested?",
]


def find_docs() -> Path:
    """The docs/ folder beside the package (source checkout or editable install)."""
    docs = Path(__file__).resolve().parent.parent / "docs"
    if not docs.is_dir():
        raise RagtuneError(f"demo documents not found at {docs}; run the demo from a ragtune source checkout")
    return docs


def run_demo(out, err, *, workdir: Path | None = None, threads: int | None = None, docs: Path | None = None,
             quiet: bool = False) -> dict:
    """Run the demo; with quiet=True nothing is printed and the caller gets the results to emit."""
    from .ingest.report import print_hits, print_report, progress_callback
    from .kb import KnowledgeBase

    docs = docs or find_docs()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ragtune-demo-") as tmp:
        kb_path = Path(workdir or tmp) / "kb"
        if not quiet:
            out.rule("ragtune demo")
            out.print(f"knowledge base: {kb_path}\ndocuments: {docs}")
        with KnowledgeBase.init(kb_path, exist_ok=True) as kb:
            kb.threads = threads
            with progress_callback(err, enabled=not quiet) as progress:
                report = kb.ingest([docs], progress=progress)
            if not quiet:
                print_report(out, report)
            searches = []
            timings = {"ingest_s": round(time.perf_counter() - started, 2)}
            for number, question in enumerate(QUESTIONS, start=1):
                t0 = time.perf_counter()
                hits = kb.search(question, k=3)
                timings[f"search{number}_ms"] = round((time.perf_counter() - t0) * 1000, 1)
                searches.append({"query": question, "hits": [hit.as_dict() for hit in hits]})
                if not quiet:
                    print_hits(out, question, hits)
            stats = kb.stats()
    timings["total_s"] = round(time.perf_counter() - started, 2)
    if not quiet:
        out.print(f"{stats['documents']} documents, {stats['chunks']} chunks; timings: {timings}")
    return {"stats": stats, "searches": searches, "timings": timings}
