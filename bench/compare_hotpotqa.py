"""HotpotQA: closed-book (base) vs RAG vs fine-tuned (ft) vs fine-tuned + RAG, through `ragtune compare`.

Data: ../shared/datasets/hotpotqa-dev500/dev500.jsonl (HotpotQA distractor dev, 500 questions, IRCoT
release; licence CC BY-SA 4.0). Read in place, never copied.

Knowledge base: every paragraph of every question (4,858, identical title+text kept once), one
document each, doc id and title = the paragraph's title (the gold ids `ragtune eval import hotpotqa`
writes), so recall@k and citations are scored against the two supporting paragraphs.

Default: a fixed, seeded split of the file, 300 questions to fine-tune on, the other 200 scored.
With --eval FILE (dev500.jsonl's format): fine-tune on all 500, score FILE; its KB holds the shared
file's paragraphs plus FILE's. The fine-tune is LoRA (recipes/smollm2-lora.yaml) on the closed-book
prompt the ft strategy uses, exported to GGUF; generation runs on llama.cpp. Primary metric: answer
F1 (SQuAD normalisation), also EM; intervals are compare.py's paired bootstrap 95% intervals.

Prints a table (stderr with --json) and, with --json, only
{"base": {"f1": x, "em": x}, "rag": ..., "ft": ..., "ft+rag": ..., "recommendation": "<strategy or null>"};
writes bench/results/compare_hotpotqa.json (intervals, reasons, stage timings) and the HTML report
in bench/results/compare_hotpotqa/.

  python bench/compare_hotpotqa.py [--eval FILE] [--json] [--train-limit N] [--eval-limit N] [--model M]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_common import DATASETS, add_arguments, build_kb, closed_book_chats, evaluate, fine_tune, finish  # noqa: E402
from compare_common import leakage, seeded_split, setup, stdout_to_stderr, work_dir  # noqa: E402

DATA = DATASETS / "hotpotqa-dev500" / "dev500.jsonl"
LICENCE = "HotpotQA, CC BY-SA 4.0"
NAME = "compare_hotpotqa"


def paragraphs(*files: Path) -> list[dict]:
    """KB records {"id", "title", "text"} for every paragraph of every question, identical ones once;
    a title seen again with other text keeps the title and gets the id "<title> (n)"."""
    seen, records, per_title = set(), [], {}
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            for context in json.loads(line).get("contexts") or []:
                title, text = context["title"], context["paragraph_text"]
                if (title, text) in seen:
                    continue
                seen.add((title, text))
                per_title[title] = per_title.get(title, 0) + 1
                doc_id = title if per_title[title] == 1 else f"{title} ({per_title[title]})"
                records.append({"id": doc_id, "title": title, "text": text})
    return records


def run(args, console, stages) -> dict:
    from ragtune.evaluate.importers import import_eval_set

    shared = import_eval_set("hotpotqa", DATA)
    if args.eval:
        train, held = shared, import_eval_set("hotpotqa", args.eval)
        kb_files, how = [DATA, args.eval], f"all of {DATA.name} / {args.eval}"
    else:
        train, held = seeded_split(shared, 0.6, args.seed)
        kb_files, how = [DATA], f"seeded split {len(train)}/{len(held)} of {DATA.name} (seed {args.seed})"
    train, held = train[:args.train_limit], held[:args.eval_limit]
    console.print(f"split: {len(train)} training / {len(held)} evaluation questions ({how})", highlight=False)
    overlap = leakage([e.id for e in train], [e.id for e in held], console)
    with work_dir(args.work) as work:
        kb, kb_counts = build_kb(paragraphs(*kb_files), work, args.threads, stages)
        ft_model, training = fine_tune(closed_book_chats(train, None), work, args, stages)
        result, _ = evaluate(held, kb, ft_model, args, work, stages, metric="f1")
    metrics = {s: {"f1": round(result["strategies"][s]["f1"], 4), "em": round(result["strategies"][s]["em"], 4)}
               for s in ("base", "rag", "ft", "ft+rag")}
    recall = {s: round(result["strategies"][s]["recall_at_k"], 4) for s in ("rag", "ft+rag")}
    extra = {"bench": NAME, "data": str(DATA), "eval_file": str(args.eval) if args.eval else None, "licence": LICENCE,
             "model": args.model, "split": {"train": len(train), "eval": len(held), "how": how,
                                            "train_eval_overlap": overlap},
             "kb": {**kb_counts, "files": [str(f) for f in kb_files]},
             "recall_at_k": recall}
    notes = [f"recall@{args.k} of the supporting paragraphs: " + ", ".join(f"{s} {v:.3f}" for s, v in recall.items()),
             f"data: {DATA} ({LICENCE})"]
    return dict(result=result, metrics=metrics, extra=extra, training=training, columns=["f1", "em"], notes=notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, max_tokens=32)
    args = parser.parse_args()
    if not DATA.is_file():
        sys.exit(f"{DATA} is absent: the shared HotpotQA file is needed (see ../shared/datasets/README.md)")
    with stdout_to_stderr():
        console, stages = setup(args)
        outcome = run(args, console, stages)
    finish(NAME, args, stages=stages, **outcome)


if __name__ == "__main__":
    main()
