"""Answer quality of ragtune's one answer pipeline (`ragtune.answer.pipeline.ask`), per prompt protocol.

For each installed packaged chat model, each data set and each protocol variant it asks every
question through the real pipeline (retrieval, relevance gate, context selection, grammar, checks,
retry) and measures, with SQuAD normalisation (`ragtune.qa_metrics.normalize_answer`):

* ceiling: share of answerable questions whose gold answer is in the text the model was shown;
* right: a gold answer is in the answer (`bare`; whole words of the normalised text; Lua: the regex);
  right_and_cited: right, and a source it cites holds the gold answer (citations the checker inferred
  for uncited sentences count; right_and_model_cited counts only the model's own);
  gap = ceiling - right_and_cited (the goal: within 0.1 on docs and lua);
* cited_gold_doc: right, and a cited source is the gold file / supporting paragraph;
* answer_words p50: containment rewards long answers, so their length is shown beside;
* list_completeness (docs list questions): mean share of `metadata.list_items` in the answer;
* not_found_on_unanswerable (docs): share of unanswerable questions answered "not found";
  false_not_found: share of the answerable questions with the answer in the sources that got "not found";
* unsupported_rate: share of answers with an unsupported sentence; prompt tokens, first-token and
  total seconds (p50), attempts (mean: 2 means the pipeline retried).
Sets with several question kinds (docs categories, HotpotQA bridge/comparison) are broken down by kind.

Variants: plain (prompt=rag), plain+example (rag with its worked example), grounded (select=False),
grounded+select, and reader (the grounded prompt without its example, over a reader adapter trained
by `ragtune raft reader`: --reader ADAPTER.gguf, else the KB's own); `--example on|off|profile` sets the grounded variants' worked example
(profile: the model's registry setting).

Data:
* docs: bench/data/docs_qa.jsonl, 37 hand-written questions on ragtune's docs/ (Apache-2.0, see bench/data/README.md).
* lua: ../shared/datasets/lua-manual, the Lua 5.2 Reference Manual (Lua authors, MIT licence) with 18
  questions whose answers are regexes.
* hotpotqa: ../shared/datasets/hotpotqa-dev500, HotpotQA distractor dev, IRCoT release (CC BY-SA 4.0);
  the knowledge base holds all paragraphs of all 500 questions. Every question is 2-hop; the dataset
  has no type field, so bridge/comparison is inferred (yes/no answer, or an answer named in "X or Y").

Run (2 cores: a minute or more per question per variant with Qwen on hotpotqa; use --limit):
    .venv/bin/python bench/grounded_qa.py --sets docs,lua --models Qwen2.5-Coder-0.5B-Instruct
    .venv/bin/python bench/grounded_qa.py --sets hotpotqa --limit 50 --protocols grounded,grounded+select --json
Writes bench/results/grounded_qa.json (--out) and bench/results/grounded_qa_answers.jsonl (one record an answer).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grounded_qa_data import ROOT, contains, load_set  # noqa: E402

log = logging.getLogger("grounded_qa")
MODELS = ("SmolLM2-135M-Instruct", "Qwen2.5-Coder-0.5B-Instruct")
VARIANTS = {"plain": dict(prompt="rag", example=False), "plain+example": dict(prompt="rag", example=True),
            "grounded": dict(prompt="grounded", select=False, example=None),
            "grounded+select": dict(prompt="grounded", select=True, example=None),
            "reader": dict(prompt="reader", select=True)}
COLUMNS = {"n": "n", "ceiling": "ceiling", "right": "right", "right_and_cited": "right+cited", "gap": "gap",
           "right_and_model_cited": "+cited by model", "cited_gold_doc": "+gold doc", "list_completeness": "list items",
           "not_found_on_unanswerable": "nf unanswerable", "false_not_found": "false nf",
           "unsupported_rate": "unsupported", "answer_words_p50": "words", "prompt_tokens_p50": "prompt tok",
           "first_token_s_p50": "1st tok s", "total_s_p50": "total s", "attempts_mean": "attempts", "errors": "errors"}


def csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def shown_text(prompt) -> tuple[list[str], str]:
    """(each source's full text, what the model was shown of all of them)."""
    if prompt is None:
        return [], ""
    sources = [getattr(h, "text", "") or "" for h in getattr(prompt, "sources", None) or []]
    passages = [getattr(p, "text", "") or "" for p in getattr(prompt, "passages", None) or [] if p is not None]
    return sources, "\n\n".join(passages if passages else sources)


def score(q, result) -> dict:
    """One answer's record: what was asked, answered and cited, and how it scores."""
    prompt = getattr(result, "prompt", None)
    sources, shown = shown_text(prompt)
    hits = list(getattr(prompt, "sources", None) or [])
    citations = list(getattr(getattr(result, "check", None), "citations", None) or [])
    cited = [c.n for c in citations if 1 <= c.n <= len(hits)]
    found = bool(getattr(result, "found", True))
    bare = getattr(result, "bare", "") or result.answer
    right = found and q.matches(bare)
    names = lambda h: {h.doc_id, h.source, Path(h.source).name, Path(h.source).stem, getattr(h, "title", None)}  # noqa: E731
    timings = getattr(result, "timings", None) or {}
    return {"id": q.id, "kind": q.kind, "question": q.question, "gold": q.golds, "answer": result.answer,
            "found": found, "cited": cited, "inferred": [c.n for c in citations if getattr(c, "inferred", False)],
            "answerable": q.answerable, "in_sources": q.matches(shown), "right": right,
            "right_and_cited": right and any(q.matches(sources[n - 1]) for n in cited),
            "right_and_model_cited": right and any(q.matches(sources[c.n - 1]) for c in citations
                                                   if c.n in cited and not getattr(c, "inferred", False)),
            "cited_gold_doc": right and any(names(hits[n - 1]) & q.gold_docs for n in cited),
            "list_share": (sum(found and contains(bare, i) for i in q.list_items) / len(q.list_items)
                           if q.list_items else None),
            "unsupported": list(getattr(result, "unsupported", None) or []),
            "rejected": list(getattr(result, "rejected", None) or []),
            "timings": {k: timings.get(k) for k in ("first_token_s", "total_s", "prompt_tokens", "completion_tokens",
                                                  "attempts")}}


def mean(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return round(statistics.fmean(values), 3) if values else None


def median(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def metrics(records: list[dict]) -> dict:
    answerable = [r for r in records if r["answerable"]]
    unanswerable = [r for r in records if not r["answerable"]]
    given = [r for r in answerable if r["in_sources"]]
    out = {"n": len(records), "answerable": len(answerable),
           "ceiling": mean(r["in_sources"] for r in answerable), "right": mean(r["right"] for r in answerable),
           "right_and_cited": mean(r["right_and_cited"] for r in answerable),
           "right_and_model_cited": mean(r["right_and_model_cited"] for r in answerable),
           "cited_gold_doc": mean(r["cited_gold_doc"] for r in answerable),
           "list_completeness": mean(r["list_share"] for r in records),
           "not_found_on_unanswerable": mean(not r["found"] for r in unanswerable),
           "false_not_found": mean(not r["found"] for r in given),
           "unsupported_rate": mean(bool(r["unsupported"]) for r in records),
           "answer_words_p50": median(len(r["answer"].split()) for r in records if r["found"]),
           **{f"{k}_p50": median(r["timings"][k] for r in records) for k in ("prompt_tokens", "first_token_s", "total_s")},
           "attempts_mean": mean(r["timings"]["attempts"] or 1 for r in records)}
    if out["ceiling"] is not None and out["right_and_cited"] is not None:
        out["gap"] = round(out["ceiling"] - out["right_and_cited"], 3)
    kinds = sorted({r["kind"] for r in records if r["kind"]})
    if len(kinds) > 1:
        out["by_kind"] = {k: metrics([r for r in records if r["kind"] == k]) for k in kinds}
    return out


def machine(args) -> dict:
    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "threads": args.threads,
            "cpus": os.cpu_count(), "load_avg_start": [round(x, 2) for x in os.getloadavg()],
            "args": {k: v for k, v in vars(args).items() if k != "out"}}
    try:
        from ragtune.generate.llamacpp_build import cpu_flags, installed_variant

        wanted = ("avx", "fma", "f16c", "amx", "neon", "sve", "asimd", "dotprod", "i8mm")
        info["cpu_flags"] = sorted(f for f in cpu_flags() if f.startswith(wanted))
        info["llamacpp_build"] = installed_variant()
    except ImportError:
        pass
    return info


def run(args, console) -> tuple[dict, list[dict]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ragtune.answer.pipeline import ask
    from ragtune.generate import make_generator
    from ragtune.models.registry import get_model
    from ragtune.raft.reader import find_reader

    sets = {}
    for name in args.sets:
        loaded = load_set(name, args.threads)
        if loaded is None:
            log.warning("skipping %s: its data is absent", name)
            continue
        questions, kb = loaded
        sets[name] = (questions[: args.limit] if args.limit else questions, kb)
    results, records = {name: {} for name in sets}, []
    example = {"on": True, "off": False, "profile": None}[args.example]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        for model in args.models:
            if not get_model(model).installed:
                log.warning("skipping %s: not installed (`ragtune models pull %s`)", model, model)
                continue
            generator = make_generator(model, threads=args.threads).load()
            readers = {}  # a reader adapter (--reader, else the KB's own) over the same model: its own generator
            for name, (questions, kb) in sets.items():
                for variant in args.protocols:
                    options = dict(VARIANTS[variant])
                    answering = generator
                    if variant == "reader":
                        adapter = args.reader or (find_reader(kb.path, model) or {}).get("adapter")
                        if adapter is None:
                            log.warning("skipping reader on %s: no --reader and no reader for %s in its KB", name, model)
                            continue
                        if adapter not in readers:
                            readers[adapter] = make_generator(model, threads=args.threads, lora=str(adapter)).load()
                        answering = readers[adapter]
                    if options["prompt"] == "grounded":
                        options["example"] = example
                    task = progress.add_task(f"{name} {model} {variant}", total=len(questions))
                    rows, errors = [], 0
                    for q in questions:
                        try:
                            result = ask(kb, q.question, answering, k=args.k, max_new_tokens=args.max_new_tokens,
                                         min_relevance=args.min_relevance, **options)
                        except Exception as exc:  # one failing question must not lose a long run; it is counted
                            log.warning("%s %s %s %s failed: %s: %s", name, model, variant, q.id, type(exc).__name__, exc)
                            errors += 1
                            progress.advance(task)
                            continue
                        row = {"set": name, "model": model, "variant": variant, **score(q, result)}
                        log.info("%s %s %s %s right=%s cited=%s: %s", name, model, variant, q.id, row["right"],
                                 row["cited"], " ".join(result.answer.split())[:100])
                        rows.append(row)
                        progress.advance(task)
                    results[name].setdefault(model, {})[variant] = {**metrics(rows), **({"errors": errors} if errors else {})}
                    records.extend(rows)
            for loaded in (generator, *readers.values()):
                if hasattr(loaded, "close"):
                    loaded.close()
    for _questions, kb in sets.values():
        kb.close()
    return results, records


def table(results: dict, console) -> None:
    from rich.table import Table

    shown = [c for c in COLUMNS if any(v.get(c) is not None for s in results.values() for m in s.values()
                                      for v in m.values())]
    grid = Table(title="Grounded QA: ragtune.answer.pipeline.ask (rates over answerable questions unless named)")
    for column in ("set", "model", "variant", *shown):
        grid.add_column(COLUMNS.get(column, column), justify="left" if column in ("set", "model", "variant") else "right")
    for name, models in results.items():
        for model, variants in models.items():
            for variant, m in variants.items():
                rows = [(variant, m)] + [(f"  · {k}", v) for k, v in m.get("by_kind", {}).items()]
                for label, values in rows:
                    grid.add_row(name, model, label, *("" if values.get(c) is None else f"{values[c]:g}" for c in shown))
    console.print(grid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", type=csv, default=["docs", "lua", "hotpotqa"], help="docs,lua,hotpotqa")
    parser.add_argument("--models", type=csv, default=list(MODELS))
    parser.add_argument("--protocols", type=csv, default=list(VARIANTS), help=",".join(VARIANTS))
    parser.add_argument("--example", choices=("on", "off", "profile"), default="profile",
                        help="the grounded variants' worked example (profile: the model's registry setting)")
    parser.add_argument("--reader", type=str, default=None,
                        help="the reader variant's adapter (.gguf; default: the reader `ragtune raft reader` put in each KB)")
    parser.add_argument("--limit", type=int, default=0, help="the first N questions of each set (0: all)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--min-relevance", type=float, default=0.3, help="the pipeline's 'nothing relevant' gate")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "grounded_qa.json")
    parser.add_argument("--json", action="store_true", help="also print the JSON to stdout (the table goes to stderr)")
    parser.add_argument("-v", "--verbose", action="store_true", help="a log line per answer")
    args = parser.parse_args()
    unknown = [p for p in args.protocols if p not in VARIANTS]
    if unknown:
        parser.error(f"unknown protocol variant {unknown[0]!r}; pick from {', '.join(VARIANTS)}")

    from rich.console import Console
    from rich.logging import RichHandler

    from ragtune.runtime import enforce_offline, set_torch_threads

    console = Console(stderr=True)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    enforce_offline()
    set_torch_threads(args.threads)
    meta = machine(args)
    results, records = run(args, console)
    meta["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {"meta": meta, **results}
    out = console if args.json else Console()
    if not out.is_terminal:
        out.width = max(out.width, 200)  # a log file or pipe: the whole table, not squeezed to 80 columns
    table(results, out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    answers = args.out.with_name(args.out.stem + "_answers.jsonl")
    answers.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    console.print(f"wrote {args.out} and {answers}")
    if args.json:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
