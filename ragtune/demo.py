"""`ragtune demo`: build a knowledge base from ragtune's own docs/ and answer three questions from it.

This is RAG end to end on a laptop: ingest with the packaged MiniLM embedder, hybrid retrieval,
answers from the packaged Qwen2.5-Coder-0.5B-Instruct (chosen by measurement, see DEMO_MODEL) on
llama.cpp with checked citations, and the timings of each step.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import RagtuneError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoQuestion:
    """A demo question with what a right answer must contain and the document that holds it: the
    demo's test and bench/demo_models.py (which picks the demo's model) score answers with these."""

    text: str
    facts: tuple[str, ...]  # regexes, case-insensitive; `needed` of them must appear in the answer
    needed: int
    source: str  # the docs/ file holding the fact; a right answer cites it

    def check(self, answer: dict) -> dict:
        text = answer.get("answer", "")
        hits = [f for f in self.facts if re.search(f, text, re.IGNORECASE)]
        cited = {Path(c["source"]).name for c in answer.get("citations", [])}
        return {"fact": len(hits) >= self.needed, "facts_found": hits, "cited": self.source in cited,
                "cited_sources": sorted(cited)}


DEMO_QUESTIONS = (
    DemoQuestion("How do I install ragtune on a new machine?", (r"make demo",), 1, "install.md"),
    DemoQuestion("What happens when ingest is killed halfway through?",
                 (r"nothing is lost|not lost|no data is lost|nothing.{0,20}lost",
                  r"again|re-?run|same command|finish|resume"), 2, "concepts.md"),
    DemoQuestion("Which file formats can be ingested?",
                 (r"markdown", r"\bpdf\b", r"\bhtml\b", r"\bdocx\b", r"\bcsv\b", r"\bjson"), 3, "concepts.md"),
)
QUESTIONS = [q.text for q in DEMO_QUESTIONS]
# Chosen by measurement (bench/demo_models.py, 2026-12-02, llama.cpp, 2 threads): Qwen2.5-Coder-0.5B
# answered all 3 questions right and cited in 20 s; SmolLM2-135M none (10.7 s); Gemma-3-270M is a
# pretrained model with no chat template. `make demo` installs Qwen; without it the demo falls back.
DEMO_MODEL = "Qwen2.5-Coder-0.5B-Instruct"  # what demo_model() picks when installed (registry answer_quality)


def demo_model() -> str:
    """The best installed chat model by measured answers (the default of every answering command)."""
    from .models.profiles import answer_model

    name, note = answer_model(None)
    logger.info("%s", note)
    return name


def latency_line(timings: dict) -> str:
    """How long the person waited for the answer, from the question: in all, and until text began."""
    total = timings.get("total_s") or 0.0
    line = f"answered in {total:.1f} s"
    if timings.get("generate_s") is not None and timings.get("first_token_s") is not None:
        # retrieval and the prompt come before the model's first token
        line += f" (first token {total - timings['generate_s'] + timings['first_token_s']:.1f} s)"
    return line


def find_docs() -> Path:
    """The docs/ folder beside the package (source checkout or editable install)."""
    docs = Path(__file__).resolve().parent.parent / "docs"
    if not docs.is_dir():
        raise RagtuneError(f"demo documents not found at {docs}; run the demo from a ragtune source checkout")
    return docs


def run_demo(out, err, *, workdir: Path | None = None, threads: int | None = None, docs: Path | None = None,
             quiet: bool = False, model: str | None = None, max_new_tokens: int = 96,
             backend: str = "auto") -> dict:
    """Run the demo; with quiet=True nothing is printed and the caller gets the results to emit."""
    from rich.markup import escape

    from .answer.pipeline import ask
    from .answer.report import print_answer
    from .generate import make_generator
    from .ingest.report import print_report, progress_callback
    from .kb import KnowledgeBase

    docs = docs or find_docs()
    started = time.perf_counter()
    timings: dict = {}
    answers = []
    with tempfile.TemporaryDirectory(prefix="ragtune-demo-") as tmp:
        kb_path = Path(workdir or tmp) / "kb"
        if not quiet:
            out.rule("ragtune demo")
            out.print(escape(f"knowledge base: {kb_path}\ndocuments: {docs}"))
        with KnowledgeBase.init(kb_path, exist_ok=True) as kb:
            kb.threads = threads
            with progress_callback(err, enabled=not quiet) as progress:
                report = kb.ingest([docs], progress=progress)
            if not quiet:
                print_report(out, report)
            timings["ingest_s"] = round(time.perf_counter() - started, 2)
            t0 = time.perf_counter()
            generator = make_generator(model or demo_model(), threads=threads, backend=backend).load()
            timings["model_load_s"] = round(time.perf_counter() - t0, 2)
            for number, question in enumerate(QUESTIONS, start=1):
                if not quiet:
                    out.rule(escape(f"question {number}: {question}"))
                stream = None if quiet else (lambda piece: out.print(piece, end="", highlight=False, markup=False))
                result = ask(kb, question, generator, k=4, max_new_tokens=max_new_tokens, on_text=stream)
                answer = {"question": question, **result.as_dict()}
                answer["check"] = DEMO_QUESTIONS[number - 1].check(answer)
                answers.append(answer)
                timings[f"answer{number}_s"] = result.timings.get("total_s")
                if not quiet:
                    out.print()
                    print_answer(out, result, timings=False)
                    out.print(latency_line(result.timings), style="dim", highlight=False)
            stats = kb.stats()
    timings["total_s"] = round(time.perf_counter() - started, 2)
    if not quiet:
        out.print(escape(f"{stats['documents']} documents, {stats['chunks']} chunks; timings: {timings}"))
    return {"stats": stats, "answers": answers, "timings": timings}
