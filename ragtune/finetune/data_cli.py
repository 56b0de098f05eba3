"""`ragtune data check` and `ragtune data prepare`: thin commands over finetune/check.py and
finetune/prepare.py. Only typer and rich load here, so `ragtune --help` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..cli_shared import _emit_json, out

data_app = typer.Typer(no_args_is_help=True, help="Validate and prepare fine-tuning data: chat, alpaca, sharegpt, "
                       "prompt/completion and classification (see docs/data.md).")
MAX_ROWS = 200  # problems shown in the table; --json has them all


def _print_problems(problems, title: str) -> None:
    if not problems:
        return
    table = Table(title=title, show_lines=False)
    for column in ("line", "", "field", "message", "fix"):
        table.add_column(column, overflow="fold")
    for p in problems[:MAX_ROWS]:
        mark = "[red]error[/]" if p.severity == "error" else "[yellow]warning[/]"
        table.add_row(str(p.line or "-"), mark, escape(p.field), escape(p.message), escape(p.fix))
    out.print(table)
    if len(problems) > MAX_ROWS:
        out.print(f"… and {len(problems) - MAX_ROWS} more (see --json)")


def _print_labels(columns: dict[str, dict | None], title: str) -> None:
    columns = {name: counts for name, counts in columns.items() if counts is not None}
    if not columns:
        return
    table = Table(title=title)
    table.add_column("label")
    for name in columns:
        table.add_column(name, justify="right")
    labels = list(dict.fromkeys(label for counts in columns.values() for label in counts))
    for label in labels:
        table.add_row(escape(label), *(str(counts.get(label, 0)) for counts in columns.values()))
    out.print(table)


@data_app.command("check")
def check(
    file: Path = typer.Argument(..., help="JSONL, JSON array, CSV or TSV file."),
    model: Optional[str] = typer.Option(None, "--model", help="Registered model or local model dir: also flag examples longer than --max-length after its chat template."),
    max_length: int = typer.Option(2048, "--max-length", help="Longest example in model tokens (with --model)."),
    format: str = typer.Option("auto", "--format", help="auto, chat, alpaca, sharegpt, prompt_completion or classify."),
    near_threshold: float = typer.Option(0.9, "--near-threshold", help="Similarity (0-1] from which two examples are near duplicates."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON on stdout."),
):
    """Report bad lines (invalid JSON, missing keys, unknown roles, empty content, no assistant turn, too long), duplicates and labels; exit 1 on errors."""
    from .check import check_file

    report = check_file(file, model=model, max_length=max_length, near_threshold=near_threshold, format=format)
    if as_json:
        _emit_json(report.as_dict())
    else:
        _print_problems(report.problems, f"{file}: problems")
        if report.labels:
            _print_labels({"examples": report.labels}, "labels")
        status = "[green]passed[/]" if report.passed else "[red]failed[/]"
        longest = f", longest {report.max_tokens} tokens" if report.max_tokens is not None else ""
        out.print(f"{status}: {report.examples} valid {report.format} example(s), {len(report.errors)} error(s), "
                  f"{len(report.warnings)} warning(s){longest}", highlight=False)
    if not report.passed:
        # A RagtuneError, not typer.Exit(1): the CLI's main() turns it into a stderr line and exit code 1.
        from ..errors import RagtuneError

        raise RagtuneError(f"{file} failed the check: {len(report.errors)} error(s); fix them and check again")


@data_app.command("prepare")
def prepare(
    file: Path = typer.Argument(..., help="Input file (any format `data check` reads)."),
    to: str = typer.Option(..., "--to", help="Output format: chat, alpaca or classify."),
    split: str = typer.Option("0.8,0.1,0.1", "--split", help="Train,validation,test shares summing to 1 (0 omits a split)."),
    dedup: bool = typer.Option(False, "--dedup", help="Remove exact and near duplicates before splitting."),
    balance: Optional[str] = typer.Option(None, "--balance", help="Balance labels in the train split: over (copy rare labels) or under (drop common ones)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the split and the balancing."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Output directory (default: <FILE stem>-prepared/ next to FILE)."),
    near_threshold: float = typer.Option(0.9, "--near-threshold", help="Similarity (0-1] from which --dedup removes near duplicates."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON on stdout."),
):
    """Clean, deduplicate, split (stratified by label) and balance a data set; write train/validation/test JSONL and manifest.json."""
    from .prepare import prepare as run_prepare

    result = run_prepare(file, to=to, split=split, dedup=dedup, balance=balance, seed=seed, out_dir=out_dir,
                         near_threshold=near_threshold)
    if as_json:
        return _emit_json(result.as_dict())
    manifest = result.manifest
    _print_problems(result.problems, f"{file}: skipped lines")
    table = Table(title=f"{file} ({manifest['format_in']}) → {manifest['format_out']}", show_header=False)
    for key, value in manifest["counts"].items():
        if value or key in ("valid", "train"):
            table.add_row(key.replace("_", " "), str(value))
    out.print(table)
    if manifest["labels"]:
        _print_labels({"before": manifest["labels"]["before"], **manifest["labels"]["after"]}, "labels")
    if manifest["balance"]:
        balance_info = manifest["balance"]
        _print_labels({"train before": balance_info["train_before"], "train after": balance_info["train_after"]},
                      f"balance ({balance_info['mode']}sampling)")
    for warning in manifest["warnings"]:
        out.print(f"[yellow]warning[/] {escape(warning)}", highlight=False)
    out.print(f"wrote {', '.join(p.name for p in result.files.values())} and manifest.json to {result.out_dir}",
              highlight=False)
