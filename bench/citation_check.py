"""How well ragtune's citation checker tells a supporting source from one that is merely cited.

Data: tests/data/citation_support.jsonl, hand-labelled (sentence, source text, supported) pairs. For
overlap only and for overlap + MiniLM cosine it grid-searches the thresholds (max F1, ties: higher
precision, then the middle of the tied threshold range), then runs `check_citations` end to end with
the values shipped in ragtune/answer/citations.py ("sentence [1]" against that one source) and
reports precision/recall/F1 of "supported" and the time per sentence (one check per pair, so the
source's embedding is included; model load excluded; the load average is recorded with it: on a
shared 2-core machine the time is mostly waiting). Prints tables, writes
bench/results/citation_check.json. One run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "citation_support.jsonl"


@dataclass
class Source:
    """The fields check_citations reads from a retrieval hit."""
    text: str
    doc_id: str = "d"
    source: str = "s"
    chunk_id: int = 0
    start: int = 0
    end: int = 0
    page: int | None = None
    title: str | None = None


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip() and not line.startswith("#")]


def prf(predicted: np.ndarray, truth: np.ndarray) -> dict:
    tp, fp = int((predicted & truth).sum()), int((predicted & ~truth).sum())
    fn = int((~predicted & truth).sum())
    p, r = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    return {"precision": round(p, 3), "recall": round(r, 3), "f1": round(2 * p * r / max(p + r, 1e-9), 3)}


def grid(overlap, cosine, clean, truth, weights) -> dict:
    """Best (weight, threshold) for score = w*overlap + (1-w)*cosine, with the numbers/names rule on."""
    best = None
    for w in weights:
        score = w * overlap + (1 - w) * (cosine if cosine is not None else 0.0)
        results = []
        for t in np.round(np.arange(0.0, 1.0001, 0.01), 2):
            m = prf((score >= t) & clean, truth)
            results.append(((m["f1"], m["precision"]), t, m))
        top = max(r[0] for r in results)
        tied = [r for r in results if r[0] == top]
        key, t, m = tied[len(tied) // 2]
        if best is None or key > best[0]:
            best = (key, {"weight": round(float(w), 2), "threshold": float(t), **m})
    return best[1]


def score_pairs(pairs, embedder) -> list:
    """Support evidence for every pair; each distinct source and all sentences are embedded once."""
    from ragtune.answer.citations import SupportScorer

    texts = list(dict.fromkeys(p["source"] for p in pairs))
    scorer = SupportScorer(texts, embedder)
    vectors = scorer.embed([p["sentence"] for p in pairs])
    return [scorer.support(p["sentence"], [texts.index(p["source"])], v) for p, v in zip(pairs, vectors)]


def end_to_end(pairs, embedder) -> tuple[dict, float, list[str]]:
    from ragtune.answer.citations import check_citations

    statuses, started = [], time.perf_counter()
    for pair in pairs:
        check = check_citations(f"{pair['sentence']} [1]", [Source(pair["source"])], embedder=embedder)
        statuses.append(check.sentences[0].status)
    seconds = (time.perf_counter() - started) / len(pairs)
    truth = np.array([p["supported"] for p in pairs])
    return prf(np.array([s == "supported" for s in statuses]), truth), seconds, statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "citation_check.json")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from ragtune.answer import citations
    from ragtune.models.embedder import Embedder
    from ragtune.runtime import enforce_offline, resolve_precision

    enforce_offline()
    console = Console()
    pairs = load(args.data)
    truth = np.array([p["supported"] for p in pairs])
    embedder = Embedder("all-MiniLM-L6-v2", precision=resolve_precision("auto"), threads=args.threads).load()
    embedder.encode(["warm-up"])
    features = score_pairs(pairs, embedder)
    overlap = np.array([f.overlap for f in features])
    cosine = np.array([f.cosine for f in features])
    clean = np.array([not f.missing for f in features])

    searched = {"overlap only": grid(overlap, None, clean, truth, [1.0]),
                "cosine only": grid(overlap, cosine, clean, truth, [0.0]),
                "overlap + cosine": grid(overlap, cosine, clean, truth, np.round(np.arange(0.0, 1.0001, 0.1), 1)),
                "overlap + cosine, no numbers/names rule": grid(overlap, cosine, np.ones_like(clean), truth,
                                                                 np.round(np.arange(0.0, 1.0001, 0.1), 1))}
    table = Table(title=f"grid search on {len(pairs)} pairs ({int(truth.sum())} supported)")
    for column in ("signal", "weight on overlap", "threshold", "precision", "recall", "F1"):
        table.add_column(column)
    for name, r in searched.items():
        table.add_row(name, str(r["weight"]), f"{r['threshold']:.2f}", f"{r['precision']:.3f}", f"{r['recall']:.3f}",
                      f"{r['f1']:.3f}")
    console.print(table)

    shipped = {}
    for name, model in (("overlap only", None), ("overlap + embedder", embedder)):
        metrics, seconds, statuses = end_to_end(pairs, model)
        kinds = Counter(p["kind"] for p in pairs)
        accepted = Counter(p["kind"] for p, s in zip(pairs, statuses) if s == "supported")
        shipped[name] = {**metrics, "ms_per_sentence": round(seconds * 1000, 2),
                         "judged_supported_by_kind": {k: f"{accepted[k]}/{n}" for k, n in sorted(kinds.items())}}
    table = Table(title="check_citations with the shipped thresholds "
                        f"(overlap {citations.OVERLAP_ONLY_THRESHOLD}; blend w={citations.OVERLAP_WEIGHT} "
                        f"t={citations.SUPPORT_THRESHOLD})")
    for column in ("mode", "precision", "recall", "F1", "ms / sentence"):
        table.add_column(column)
    for name, r in shipped.items():
        table.add_row(name, f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", f"{r['ms_per_sentence']:.1f}")
    console.print(table)
    table = Table(title="judged supported, by kind of pair (shipped thresholds)")
    for column in ("kind", "label", *shipped):
        table.add_column(column)
    labels = {p["kind"]: p["supported"] for p in pairs}
    for kind in sorted(labels, key=lambda k: (not labels[k], k)):
        table.add_row(kind, "supported" if labels[kind] else "not",
                      *(r["judged_supported_by_kind"][kind] for r in shipped.values()))
    console.print(table)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    data = str(args.data.relative_to(ROOT)) if args.data.is_relative_to(ROOT) else str(args.data)
    args.out.write_text(json.dumps({"data": data, "pairs": len(pairs), "supported": int(truth.sum()), "grid": searched,
                                    "shipped": shipped, "embedder": "all-MiniLM-L6-v2", "precision": embedder.precision,
                                    "threads": args.threads, "machine": platform.machine(),
                                    "load_average_1min_at_end": round(load, 2), "cpus": os.cpu_count()}, indent=2))
    console.print(f"load average (1 min) at the end: {load:.1f} on {os.cpu_count()} CPUs; wrote {args.out}")


if __name__ == "__main__":
    main()
