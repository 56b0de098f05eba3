"""Which BM25 engine backs ragtune's lexical index: SQLite FTS5, bm25s or tantivy.

Measures on BEIR SciFact (../shared/datasets/scifact, train queries): nDCG@10, p50 query latency,
full build time, and the cost of an incremental update (add 100 documents, delete 100). Prints a table
and writes bench/results/lexical_choice.json. One run; ratios, not absolutes, are what carry over.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from ragtune.evaluate.metrics import evaluate

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "scifact"
WORD = re.compile(r"\w+")
# Lucene's English stop set, applied to the query for FTS5 and tantivy (bm25s uses its own list).
STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these "
    "they this to was will with".split()
)


def load(data: Path):
    corpus = [json.loads(line) for line in open(data / "corpus.jsonl")]
    queries = {q["_id"]: q["text"] for q in map(json.loads, open(data / "queries.jsonl"))}
    qrels: dict[str, dict[str, int]] = {}
    for line in list(open(data / "qrels" / "train.tsv"))[1:]:
        qid, doc, grade = line.split()
        qrels.setdefault(qid, {})[doc] = int(grade)
    return corpus, {q: queries[q] for q in qrels}, qrels


def terms(text: str) -> list[str]:
    return [w for w in WORD.findall(text.lower()) if w not in STOPWORDS]


class Fts5:
    name = "sqlite-fts5 (porter)"

    def build(self, ids, texts):
        self.db = sqlite3.connect(":memory:")
        self.db.execute("CREATE VIRTUAL TABLE t USING fts5(body, doc UNINDEXED, tokenize='porter unicode61')")
        self.add(ids, texts)

    def add(self, ids, texts):
        with self.db:
            self.db.executemany("INSERT INTO t(body, doc) VALUES (?, ?)", zip(texts, ids))

    def delete(self, ids):
        with self.db:
            self.db.executemany("DELETE FROM t WHERE doc = ?", [(i,) for i in ids])

    def search(self, query, k):
        words = terms(query)
        if not words:
            return {}
        match = " OR ".join(f'"{w}"' for w in words)
        rows = self.db.execute("SELECT doc, bm25(t) FROM t WHERE t MATCH ? ORDER BY bm25(t) LIMIT ?", (match, k))
        return {doc: -score for doc, score in rows}


class Bm25s:
    name = "bm25s (snowball, stopwords)"

    def build(self, ids, texts):
        import bm25s
        import Stemmer

        self.stemmer = Stemmer.Stemmer("english")
        self.ids, self.texts = list(ids), list(texts)
        tokens = bm25s.tokenize(self.texts, stopwords="en", stemmer=self.stemmer, show_progress=False)
        self.index = bm25s.BM25()
        self.index.index(tokens, show_progress=False)

    def add(self, ids, texts):  # bm25s has no incremental update: rebuild
        self.build(self.ids + list(ids), self.texts + list(texts))

    def delete(self, ids):
        gone = set(ids)
        keep = [(i, t) for i, t in zip(self.ids, self.texts) if i not in gone]
        self.build([i for i, _ in keep], [t for _, t in keep])

    def search(self, query, k):
        import bm25s

        tokens = bm25s.tokenize([query], stopwords="en", stemmer=self.stemmer, show_progress=False)
        docs, scores = self.index.retrieve(tokens, k=min(k, len(self.ids)), show_progress=False)
        return {self.ids[d]: float(s) for d, s in zip(docs[0], scores[0]) if s > 0}


class Tantivy:
    name = "tantivy (en_stem)"

    def build(self, ids, texts):
        import tantivy

        builder = tantivy.SchemaBuilder()
        builder.add_text_field("body", tokenizer_name="en_stem")
        builder.add_text_field("doc", stored=True, tokenizer_name="raw")
        self.schema = builder.build()
        self.dir = tempfile.mkdtemp()
        self.index = tantivy.Index(self.schema, path=self.dir)
        self.writer = self.index.writer(heap_size=128_000_000, num_threads=1)
        self.add(ids, texts)

    def add(self, ids, texts):
        import tantivy

        for i, t in zip(ids, texts):
            self.writer.add_document(tantivy.Document(body=t, doc=i))
        self.writer.commit()
        self.index.reload()

    def delete(self, ids):
        for i in ids:
            self.writer.delete_documents("doc", i)
        self.writer.commit()
        self.index.reload()

    def search(self, query, k):
        words = terms(query)
        if not words:
            return {}
        parsed = self.index.parse_query(" ".join(words), ["body"])
        searcher = self.index.searcher()
        hits = searcher.search(parsed, k).hits
        return {searcher.doc(addr)["doc"][0]: score for score, addr in hits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "lexical_choice.json")
    args = parser.parse_args()
    corpus, queries, qrels = load(args.data)
    ids = [d["_id"] for d in corpus]
    texts = [f"{d.get('title', '')}\n{d['text']}" for d in corpus]
    rows = []
    for engine in (Fts5(), Bm25s(), Tantivy()):
        t0 = time.perf_counter()
        engine.build(ids[:-100], texts[:-100])
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        engine.add(ids[-100:], texts[-100:])
        engine.delete(ids[:100])
        engine.add(ids[:100], texts[:100])
        update_s = (time.perf_counter() - t0) / 3
        run, latencies = {}, []
        for qid, text in queries.items():
            t0 = time.perf_counter()
            run[qid] = engine.search(text, 100)
            latencies.append((time.perf_counter() - t0) * 1000)
        metrics = evaluate(qrels, run)
        rows.append({"engine": engine.name, "ndcg@10": metrics["ndcg@10"], "recall@100": metrics["recall@100"],
                     "p50_ms": round(statistics.median(latencies), 2), "build_s": round(build_s, 2),
                     "update_100_docs_s": round(update_s, 3), "queries": metrics["queries"]})
        print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"dataset": "BEIR SciFact train queries", "docs": len(ids), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
