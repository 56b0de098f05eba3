"""PubMedQA PQA-L: a `classify` fine-tune (question + contexts -> yes / no / maybe).

Data: ../shared/datasets/pubmedqa/pqal_train.json (PubMedQA PQA-L, the 500 expert-labelled questions
outside the official test split; pubmedqa/pubmedqa, MIT). Without --train/--test the file is split
internally (stratified, seeded): 80% train (10% of it held out for early stopping), 20% test.
The model is the packaged MiniLM with a new output layer, trained through ragtune's own recipe
runner. Prints a table (or, with --json, {"accuracy", "macro_f1", "majority_baseline", "n_test"}),
and writes bench/results/pubmedqa.json.

  python bench/pubmedqa.py [--train FILE] [--test FILE] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "datasets" / "pubmedqa" / "pqal_train.json"
LABELS = ["yes", "no", "maybe"]


def load(path: Path) -> list[dict]:
    """Records in the shared file's format -> {"text", "text_pair", "label"} classification rows."""
    data = json.loads(Path(path).read_text())
    return [{"text": r["QUESTION"], "text_pair": " ".join(r["CONTEXTS"]), "label": r["final_decision"]} for r in data.values()]


def split(rows: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    from sklearn.model_selection import train_test_split

    return train_test_split(rows, test_size=0.2, random_state=seed, stratify=[r["label"] for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, help="training file in pqal_train.json's format (default: internal split)")
    parser.add_argument("--test", type=Path, help="test file in the same format (default: internal split)")
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--freeze-layers", type=int, default=0)
    parser.add_argument("--class-weights", choices=["none", "balanced"], default="balanced")
    parser.add_argument("--patience", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pubmedqa.json")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from ragtune.finetune.recipe import validate_recipe
    from ragtune.finetune.run import train
    from ragtune.runtime import enforce_offline

    enforce_offline()
    console = Console(stderr=True)
    if not (args.train and args.test) and not DATA.exists():
        console.print(f"{DATA} is absent; pass --train and --test")
        sys.exit(2)
    rows = load(args.train or DATA)
    train_rows, test_rows = (rows, load(args.test)) if args.test else split(rows, args.seed)
    with tempfile.TemporaryDirectory(prefix="ragtune-pubmedqa-") as tmp:
        train_file = Path(tmp) / "train.jsonl"
        train_file.write_text("".join(json.dumps(r) + "\n" for r in train_rows))
        recipe = validate_recipe({
            "name": "pubmedqa", "method": "classify", "model": args.model, "seed": args.seed,
            "output_dir": str(Path(tmp) / "run"),
            "data": {"train": str(train_file), "max_length": args.max_length, "validation_share": 0.1},
            "training": {"learning_rate": args.learning_rate, "epochs": args.epochs, "batch_size": 16, "warmup": 0.1,
                         "scheduler": "linear", "threads": args.threads, "weight_decay": 0.01,
                         "early_stopping": {"metric": "macro_f1", "patience": args.patience}},
            "classify": {"labels": LABELS, "freeze_layers": args.freeze_layers, "class_weights": args.class_weights},
        })
        result = train(recipe, progress=not args.json, console=console)
        scores = evaluate(Path(tmp) / "run" / "model", test_rows, args.max_length)
    majority = Counter(r["label"] for r in train_rows).most_common(1)[0][0]
    report = {"accuracy": round(scores["accuracy"], 4), "macro_f1": round(scores["macro_f1"], 4),
              "majority_baseline": round(sum(r["label"] == majority for r in test_rows) / len(test_rows), 4),
              "n_test": len(test_rows)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**report, "data": str(args.train or DATA), "model": args.model, "n_train": len(train_rows),
                                    "epochs": args.epochs, "max_length": args.max_length, "seed": args.seed,
                                    "learning_rate": args.learning_rate, "class_weights": args.class_weights,
                                    "train_seconds": round(result.seconds, 1), "validation": result.metrics}, indent=2))
    if args.json:
        print(json.dumps(report))
        return
    table = Table(title=f"PubMedQA PQA-L, {args.model} classify, {len(train_rows)} train / {len(test_rows)} test")
    for column in ("accuracy", "macro-F1", "majority baseline", "train s"):
        table.add_column(column, justify="right")
    table.add_row(f"{report['accuracy']:.3f}", f"{report['macro_f1']:.3f}", f"{report['majority_baseline']:.3f}", f"{result.seconds:.0f}")
    Console().print(table)


def evaluate(model_dir: Path, rows: list[dict], max_length: int) -> dict:
    import torch
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    predicted = []
    with torch.no_grad():
        for start in range(0, len(rows), 32):
            batch = rows[start:start + 32]
            inputs = tokenizer([r["text"] for r in batch], [r["text_pair"] for r in batch], truncation=True,
                               max_length=max_length, padding=True, return_tensors="pt")
            predicted += [model.config.id2label[int(i)] for i in model(**inputs).logits.argmax(-1)]
    gold = [r["label"] for r in rows]
    return {"accuracy": accuracy_score(gold, predicted), "macro_f1": f1_score(gold, predicted, average="macro")}


if __name__ == "__main__":
    main()
