"""PubMedQA yes/no/maybe: closed-book (base) vs RAG vs fine-tuned (ft) vs fine-tuned + RAG, through
`ragtune compare`, in the RAFT paper's setting (the gold contexts form the knowledge base).

Data: ../shared/datasets/pubmedqa/pqal_train.json (PubMedQA PQA-L, the 500 expert-labelled questions
outside the official test split; pubmedqa/pubmedqa, licence MIT). Read in place, never copied.

Knowledge base: one document per PMID, its CONTEXTS joined (doc id = the PMID, the gold id `ragtune
eval import pubmedqa` writes), for all 500 questions, so retrieval must find the right abstract
among 500. Default: a fixed, seeded split stratified by label, 300 questions to fine-tune on, the
other 200 scored. With --eval FILE (pqal_train.json's format): fine-tune on all 500, score FILE;
its KB holds FILE's contexts (the gold ones) plus the shared file's.

The prompt asks "Answer with one word: yes, no, maybe." (labels most frequent first); the fine-tune
(LoRA, recipes/smollm2-lora.yaml, exported to GGUF, run on llama.cpp) learns that closed-book prompt.
Primary metric: accuracy (`correct`, paired bootstrap 95% intervals from compare.py), also macro-F1
over the three labels (classification.py, from the stored predictions, with a bootstrap 95%
interval) and the majority baseline (the training split's most frequent label) on the scored split.
For orientation, the RAFT paper (LLaMA2-7B, PubMedQA): base+RAG 58.8, DSF+RAG 71.6, RAFT 73.3;
majority 55.2.

Prints a table (stderr with --json) and, with --json, only
{"base": {"accuracy": x, "macro_f1": x}, "rag": ..., "ft": ..., "ft+rag": ..., "recommendation": ...};
writes bench/results/compare_pubmedqa.json and the HTML report in bench/results/compare_pubmedqa/.

  python bench/compare_pubmedqa.py [--eval FILE] [--json] [--train-limit N] [--eval-limit N] [--model M]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_common import DATASETS, STRATEGIES, add_arguments, build_kb, closed_book_chats, evaluate  # noqa: E402
from compare_common import fine_tune, finish, leakage, seeded_split, setup, stdout_to_stderr, work_dir  # noqa: E402

DATA = DATASETS / "pubmedqa" / "pqal_train.json"
LICENCE = "PubMedQA PQA-L, MIT"
NAME = "compare_pubmedqa"
LABELS = ["yes", "no", "maybe"]
RAFT = {"base+RAG": 0.588, "DSF+RAG": 0.716, "RAFT": 0.733, "majority": 0.552, "model": "LLaMA2-7B"}


def contexts(*files: Path) -> list[dict]:
    """KB records {"id": PMID, "text": its CONTEXTS joined}, each PMID once (the first file's text)."""
    records: dict[str, dict] = {}
    for path in files:
        for pmid, record in json.loads(path.read_text(encoding="utf-8")).items():
            text = " ".join(c for c in record.get("CONTEXTS") or [] if isinstance(c, str))
            if text.strip() and str(pmid) not in records:
                records[str(pmid)] = {"id": str(pmid), "text": text}
    return list(records.values())


def as_label(prediction: str, labels: list[str]) -> str:
    """The label a prediction gives, by runner.score's rule (its normalised text starts with it)."""
    from ragtune.qa_metrics import normalize_answer

    text = normalize_answer(prediction)
    return next((label for label in labels if text.startswith(normalize_answer(label))), "(none)")


def macro_f1(gold: list[str], predicted: list[str], labels: list[str], n_boot: int = 2000, seed: int = 0) -> dict:
    """Macro-F1 over `labels` with a percentile bootstrap 95% interval (questions resampled)."""
    from ragtune.evaluate.classification import classification_report

    value = classification_report(gold, predicted, labels).macro.f1
    rng, n, draws = random.Random(seed), len(gold), []
    for _ in range(n_boot):
        index = [rng.randrange(n) for _ in range(n)]
        draws.append(classification_report([gold[i] for i in index], [predicted[i] for i in index], labels).macro.f1)
    draws.sort()
    return {"macro_f1": value, "interval": [draws[int(0.025 * n_boot)], draws[int(0.975 * n_boot) - 1]],
            "predicted": dict(Counter(predicted))}


def run(args, console, stages) -> dict:
    from ragtune.evaluate.importers import import_eval_set
    from ragtune.evaluate.strategies import dataset_labels

    shared = import_eval_set("pubmedqa", DATA)
    if args.eval:
        train, held = shared, import_eval_set("pubmedqa", args.eval)
        kb_files, how = [args.eval, DATA], f"all of {DATA.name} / {args.eval}"
    else:
        train, held = seeded_split(shared, 0.6, args.seed, key=lambda e: e.label)
        kb_files, how = [DATA], f"seeded split {len(train)}/{len(held)} of {DATA.name}, stratified by label (seed {args.seed})"
    train, held = train[:args.train_limit], held[:args.eval_limit]
    console.print(f"split: {len(train)} training / {len(held)} evaluation questions ({how}); labels: "
                  f"train {dict(Counter(e.label for e in train))}, eval {dict(Counter(e.label for e in held))}",
                  highlight=False)
    overlap = leakage([e.id for e in train], [e.id for e in held], console)
    labels = dataset_labels(held)  # what run_plan asks for, so ft learns the very instruction it is asked
    records = contexts(*kb_files)
    with work_dir(args.work) as work:
        kb, kb_counts = build_kb(records, work, args.threads, stages)
        ft_model, training = fine_tune(closed_book_chats(train, labels), work, args, stages)
        result, predictions = evaluate(held, kb, ft_model, args, work, stages, metric="correct")
    gold = {e.id: e.label for e in held}
    ids = [i for i in gold if all(i in predictions[s] for s in STRATEGIES)]
    classes = [*LABELS, *sorted({e.label for e in held} - set(LABELS))]  # PubMedQA's three, always
    f1s = {s: macro_f1([gold[i] for i in ids], [as_label(predictions[s][i], classes) for i in ids], classes)
           for s in STRATEGIES}
    majority = Counter(e.label for e in train).most_common(1)[0][0]
    baseline = {"label": majority, "accuracy": sum(gold[i] == majority for i in ids) / len(ids),
                "macro_f1": macro_f1([gold[i] for i in ids], [majority] * len(ids), classes)["macro_f1"]}
    metrics = {s: {"accuracy": round(result["strategies"][s]["correct"], 4), "macro_f1": round(f1s[s]["macro_f1"], 4)}
               for s in STRATEGIES}
    recall = {s: round(result["strategies"][s]["recall_at_k"], 4) for s in ("rag", "ft+rag")}
    intervals = {s: {"accuracy": result["intervals"][s]["correct"], "macro_f1": f1s[s]["interval"]} for s in STRATEGIES}
    extra = {"bench": NAME, "data": str(DATA), "eval_file": str(args.eval) if args.eval else None, "licence": LICENCE,
             "model": args.model, "labels_asked": labels,
             "split": {"train": len(train), "eval": len(held), "how": how, "train_eval_overlap": overlap,
                       "eval_labels": dict(Counter(e.label for e in held))},
             "kb": {**kb_counts, "files": [str(f) for f in kb_files]},
             "majority_baseline": baseline, "macro_f1": f1s, "intervals": intervals, "recall_at_k": recall,
             "raft_paper_reference": RAFT}
    notes = [f"majority baseline (always {majority!r}): accuracy {baseline['accuracy']:.3f}, macro-F1 "
             f"{baseline['macro_f1']:.3f}",
             "macro-F1 95% intervals: " + ", ".join(f"{s} [{f1s[s]['interval'][0]:.3f}, {f1s[s]['interval'][1]:.3f}]"
                                                    for s in STRATEGIES),
             "labels predicted: " + "; ".join(f"{s} {f1s[s]['predicted']}" for s in STRATEGIES),
             f"recall@{args.k} of the gold abstract: " + ", ".join(f"{s} {v:.3f}" for s, v in recall.items()),
             "RAFT paper (LLaMA2-7B): base+RAG 0.588, DSF+RAG 0.716, RAFT 0.733, majority 0.552",
             f"data: {DATA} ({LICENCE})"]
    return dict(result=result, metrics=metrics, extra=extra, training=training, columns=["accuracy", "macro_f1"],
                notes=notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, max_tokens=8)
    args = parser.parse_args()
    if not DATA.is_file():
        sys.exit(f"{DATA} is absent: the shared PubMedQA file is needed (see ../shared/datasets/README.md)")
    with stdout_to_stderr():
        console, stages = setup(args)
        outcome = run(args, console, stages)
    finish(NAME, args, stages=stages, **outcome)


if __name__ == "__main__":
    main()
