"""Scale-out costs on this machine: ingest local vs Ray, and vector search FAISS vs Milvus-lite.

Data: BEIR SciFact abstracts (../shared/datasets/scifact/corpus.jsonl, CC BY-SA 4.0; the first
--docs of them, written one file per 100 abstracts), ingested with the default embedder
(all-MiniLM-L6-v2): locally, then with `--ray` on a local Ray of 2 CPUs with 1 and with 2 embedding
actors. Each run goes into a fresh knowledge base; the three must store the same chunks.

Vector search: --vectors random unit vectors of 384 dimensions (MiniLM's) in each backend through the
VectorIndex protocol (retrieve/vector_index.py), HNSW above 50,000 as the KB default; --queries
queries, top 10, one at a time: p50 / p95 latency, plus the build time. Synthetic vectors because
embedding 100k real chunks takes about an hour here, and the index, not the embedder, is measured.

Training: `ragtune train` of a LoRA recipe (SmolLM2-135M-Instruct, r 8 on q/k/v/o, fp32, --steps
optimizer steps of a global batch of 4) on recipes/data/ragtune-faq.jsonl (60 examples: every epoch
ends on a whole global batch, so no step is padded), locally (one process, 2
threads) and with `--ray --workers 2` (two processes of 1 thread, the global batch shared): steps/s of the
training loop (the Trainer's train_runtime) and the whole command's wall time, and how far the two loss
curves are apart.

Evaluation: `ragtune eval qa --strategy base` (closed-book) on the first --questions HotpotQA dev questions
(../shared/datasets/hotpotqa-dev500, CC BY-SA 4.0), SmolLM2-135M-Instruct on llama.cpp, 24 new tokens:
locally (2 threads) and with `--ray --workers 2` (two replicas of 1 thread): questions/min over the whole
command (model loading included), and whether the answers are the same.

Every `--ray` command here starts its own local Ray of 2 CPUs (no cluster is named), as on a laptop.
--stages picks what runs; the results of stages not run are kept from bench/results/scale.json.

  python bench/scale.py [--stages ingest,search,train,eval] [--docs 600] [--vectors 100000] [--queries 200]
                        [--steps 24] [--questions 150] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "datasets" / "scifact" / "corpus.jsonl"
HOTPOT = ROOT.parent / "shared" / "datasets" / "hotpotqa-dev500"
RESULTS = ROOT / "bench" / "results"
RAGTUNE = [str(Path(sys.executable).parent / "ragtune")]
STAGES = ("ingest", "search", "train", "eval")


def write_docs(folder: Path, count: int) -> int:
    folder.mkdir(parents=True)
    lines = CORPUS.read_text(encoding="utf-8").splitlines()[:count]
    for start in range(0, len(lines), 100):
        (folder / f"part{start // 100:03d}.jsonl").write_text("\n".join(lines[start:start + 100]) + "\n")
    return len(lines)


def ingest(work: Path, docs: Path, name: str, **ray) -> dict:
    from ragtune.config import IngestOptions, RecordFields
    from ragtune.kb import KnowledgeBase

    kb = KnowledgeBase.init(work / name)
    options = IngestOptions(fields=RecordFields(text_field="text", id_field="_id", title_field="title"))
    started = time.perf_counter()
    try:
        report = kb.ingest([docs], options, **ray)
        seconds = time.perf_counter() - started
        chunks = sorted(tuple(r) for r in kb.store.chunk_rows())
    finally:
        kb.close()
    return {"seconds": round(seconds, 1), "chunks": report.chunks_added,
            "chunks_per_s": round(report.chunks_added / seconds, 1), "_content": chunks}


def search_latency(backend: str, work: Path, vectors: np.ndarray, queries: np.ndarray) -> dict:
    from ragtune.config import IndexSettings
    from ragtune.retrieve.faiss_index import FaissIndex
    from ragtune.retrieve.milvus_index import MilvusIndex

    settings = IndexSettings()
    index = (FaissIndex(work / "faiss", signature="bench:fp32", settings=settings) if backend == "faiss" else
             MilvusIndex(str(work / "milvus" / "milvus.db"), signature="bench:fp32", settings=settings))
    started = time.perf_counter()
    index.reset(vectors.shape[1], len(vectors))
    for at in range(0, len(vectors), 20_000):
        index.add(np.arange(at, min(at + 20_000, len(vectors)), dtype=np.int64), vectors[at:at + 20_000])
    index.position = 1
    index.save()
    build = time.perf_counter() - started
    index.search(queries[0], 10)  # warm
    times = []
    for query in queries:
        started = time.perf_counter()
        index.search(query, 10)
        times.append(time.perf_counter() - started)
    allowed = np.arange(0, len(vectors), 50, dtype=np.int64)  # a filter allowing 2% of the chunks
    filtered = []
    for query in queries[:50]:
        started = time.perf_counter()
        index.search(query, 10, allowed)
        filtered.append(time.perf_counter() - started)
    index.close()
    ms = lambda values, q: round(float(np.percentile(values, q)) * 1000, 2)  # noqa: E731
    return {"kind": index.kind, "build_s": round(build, 1), "p50_ms": ms(times, 50), "p95_ms": ms(times, 95),
            "filtered_p50_ms": ms(filtered, 50), "filtered_p95_ms": ms(filtered, 95)}


def cli(*args) -> tuple[dict, float]:
    """Run a ragtune command; its --json output and its wall time."""
    started = time.perf_counter()
    done = subprocess.run([*RAGTUNE, *map(str, args), "--json"], capture_output=True, text=True,
                          env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))
    if done.returncode:
        sys.exit(f"ragtune {' '.join(map(str, args))} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout), time.perf_counter() - started


def train_stage(work: Path, steps: int) -> dict:
    import yaml

    rows, curves = {}, {}
    for name, extra in (("local", ["--threads", "2"]), ("ray_2", ["--ray", "--workers", "2", "--threads", "1"])):
        recipe = work / f"{name}.yaml"
        recipe.write_text(yaml.safe_dump({
            "name": name, "method": "lora", "model": "SmolLM2-135M-Instruct", "output_dir": str(work / name),
            "data": {"train": str(ROOT / "recipes" / "data" / "ragtune-faq.jsonl"), "max_length": 256,
                     "validation_share": 0},
            "training": {"learning_rate": 2e-4, "max_steps": steps, "batch_size": 4, "gradient_accumulation": 1,
                         "precision": "fp32", "logging_steps": 1, "checkpoint_every": steps}}))
        result, wall = cli("train", recipe, *extra)
        history = json.loads((work / name / "metrics.json").read_text())["history"]
        curves[name] = [h["loss"] for h in history if "loss" in h]
        runtime = result["metrics"]["train_runtime"]
        rows[name] = {"steps_per_s": round(steps / runtime, 3), "train_runtime_s": round(runtime, 1),
                      "wall_s": round(wall, 1), "final_loss": round(curves[name][-1], 4)}
    rows["ray_2"]["max_loss_difference"] = round(max(abs(a - b) / a for a, b in zip(curves["local"], curves["ray_2"])), 6)
    return {"runs": rows, "data": f"LoRA, SmolLM2-135M-Instruct, fp32, {steps} steps of 4 ragtune-faq examples"}


def eval_stage(work: Path, questions: int) -> dict:
    from ragtune.evaluate.dataset import write_eval_set
    from ragtune.evaluate.importers import import_eval_set
    from ragtune.store.runs import RunsDB

    dataset = work / "hotpot.jsonl"
    write_eval_set(import_eval_set("hotpotqa", HOTPOT)[:questions], dataset)
    rows, answers = {}, {}
    for name, extra in (("local", ["--threads", "2"]), ("ray_2", ["--ray", "--workers", "2", "--threads", "1"])):
        summary, wall = cli("eval", "qa", "--dataset", dataset, "--strategy", "base", "--model",
                            "SmolLM2-135M-Instruct", "--max-tokens", "24", "--concurrency", "1",
                            "--runs-db", work / f"{name}.db", *extra)
        with RunsDB(work / f"{name}.db") as db:
            answers[name] = {r["example_id"]: r["prediction"] for r in db.predictions(summary["run_id"])}
        rows[name] = {"questions_per_min": round(60 * summary["n"] / wall, 1), "wall_s": round(wall, 1),
                      "n": summary["n"], "f1": round(summary["metrics"].get("f1", 0.0), 4)}
    same = sum(answers["ray_2"].get(k) == v for k, v in answers["local"].items())
    rows["ray_2"]["same_answers"] = f"{same}/{len(answers['local'])}"
    return {"runs": rows, "data": f"closed-book, SmolLM2-135M-Instruct, {questions} HotpotQA dev questions (CC BY-SA 4.0)"}


def ingest_stage(work: Path, count: int) -> dict:
    from ragtune import distributed

    write_docs(work / "docs", count)
    runs = {"local": ingest(work, work / "docs", "local")}
    distributed.connect(None, 2)  # one local Ray of 2 CPUs for both actor counts
    for workers in (1, 2):
        runs[f"ray_{workers}"] = ingest(work, work / "docs", f"ray{workers}", ray=True, workers=workers)
    same = all(r["_content"] == runs["local"]["_content"] for r in runs.values())
    return {"runs": {name: {k: v for k, v in r.items() if not k.startswith("_")} for name, r in runs.items()},
            "same_chunks": same, "data": f"BEIR SciFact, first {count} abstracts (CC BY-SA 4.0)"}


def search_stage(work: Path, count: int, queries: int) -> dict:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((count, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    picked = vectors[rng.integers(0, count, queries)] + 0.05 * rng.standard_normal((queries, 384)).astype(np.float32)
    return {"backends": {backend: search_latency(backend, work, vectors, picked) for backend in ("faiss", "milvus")},
            "data": f"{count} synthetic unit vectors of 384 dimensions"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--docs", type=int, default=600)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--questions", type=int, default=150)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if set(stages) - set(STAGES):
        sys.exit(f"--stages: choose among {', '.join(STAGES)}")
    needs = {"ingest": CORPUS, "eval": HOTPOT}
    for stage in stages:
        if stage in needs and not needs[stage].exists():
            sys.exit(f"{needs[stage]} is missing: the {stage} stage reads it from ../shared/datasets")
    from ragtune.runtime import enforce_offline

    enforce_offline()
    saved = RESULTS / "scale.json"
    payload = json.loads(saved.read_text()) if saved.is_file() else {}
    payload["machine"] = "2 cores; every Ray here a local Ray of 2 CPUs on the same machine"
    work = Path(tempfile.mkdtemp(prefix="ragtune-scale-"))
    try:
        for stage in stages:
            if stage == "ingest":
                result = ingest_stage(work, args.docs)
            elif stage == "search":
                result = search_stage(work, args.vectors, args.queries)
            elif stage == "train":
                result = train_stage(work, args.steps)
            else:
                result = eval_stage(work, args.questions)
            payload[stage] = {"measured": date.today().isoformat(), **result}
            RESULTS.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(payload, indent=2) + "\n")  # after each stage: a later failure keeps it
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(payload))
        return
    print_tables(payload, stages)


def print_tables(payload: dict, stages: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for stage in stages:
        rows = payload[stage].get("runs") or payload[stage].get("backends")
        table = Table(title=f"{stage} ({payload[stage].get('data', '')})")
        columns = list(dict.fromkeys(key for row in rows.values() for key in row))
        for column in ("run", *columns):
            table.add_column(column)
        for name, row in rows.items():
            table.add_row(name, *(str(row.get(column, "")) for column in columns))
        console.print(table)


if __name__ == "__main__":
    main()
