"""Human output for ingest and search: a live progress line and summary tables."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.markup import escape
from rich.table import Table


@contextmanager
def progress_callback(console, enabled: bool = True):
    """Yields a callback(path) that advances a live 'files processed' display."""
    if not enabled:
        yield lambda _path: None
        return
    with Progress(
        SpinnerColumn(), TextColumn("{task.completed} files"), BarColumn(bar_width=None),
        TextColumn("{task.fields[name]}", style="dim"), TimeElapsedColumn(), console=console, transient=True,
    ) as progress:
        task = progress.add_task("ingest", total=None, name="")
        yield lambda path: progress.update(task, advance=1, name=str(path)[-60:])


def print_report(console, report) -> None:
    table = Table(title="ingest summary")
    table.add_column("what")
    table.add_column("count", justify="right")
    for label, value in [
        ("files ingested", report.ingested), ("files unchanged", report.unchanged),
        ("files skipped", report.skipped), ("files failed", report.failed),
        ("files removed", report.removed_files), ("unsupported types ignored", report.ignored), ("documents added", report.documents_added),
        ("documents updated", report.documents_updated), ("documents unchanged", report.documents_unchanged),
        ("duplicate documents", report.documents_duplicate), ("documents removed", report.documents_removed),
        ("chunks added", report.chunks_added), ("vectors embedded", report.vectors_embedded),
    ]:
        if value or label in ("files ingested", "chunks added"):
            table.add_row(label, str(value))
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in report.timings.items())
    table.caption = f"time: {timings}"
    console.print(table)
    for item in report.failures:
        console.print(f"[red]failed[/] {escape(item['file'])}: {escape(item['reason'])}", highlight=False)
    for item in report.unverified:
        fate = "removed (--prune-missing)" if item.get("removed") else "kept"
        console.print(f"[red]not checked[/] {escape(item['path'])}: {escape(item['reason'])}; its {item['documents']} "
                      f"stored documents were {fate}", highlight=False)
    for item in report.skipped_files:
        console.print(f"[yellow]skipped[/] {escape(item['file'])}: {escape(item['reason'])}", highlight=False)
    for warning in report.warnings[:50]:
        console.print(f"[dim]warning[/] {escape(warning)}", highlight=False)
    if len(report.warnings) > 50:
        console.print(f"[dim]… and {len(report.warnings) - 50} more warnings (see --json)[/]")


def display_source(source: str) -> str:
    """Sources under the working directory print relative, so narrow terminals do not fold them."""
    try:
        return str(Path(source).resolve().relative_to(Path.cwd()))
    except (ValueError, OSError):
        return source


def print_hits(console, query: str, hits, *, explain: bool = False) -> None:
    table = Table(title=f"search: {query}", show_lines=True)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    if explain:
        table.add_column("dense\nrank / cos", justify="right")
        table.add_column("lexical\nrank / bm25", justify="right")
    table.add_column("source")
    table.add_column("text")
    for rank, hit in enumerate(hits, start=1):
        where = display_source(hit.source) + (f" p.{hit.page}" if hit.page else "") + f" [{hit.start}:{hit.end}]"
        headings = " › ".join(hit.metadata.get("headings", []) if isinstance(hit.metadata.get("headings"), list) else [])
        text = (f"[bold]{headings}[/]\n" if headings else "") + hit.text[:300].replace("[", "\\[")
        row = [str(rank), f"{hit.score:.4f}"]
        if explain:
            for name in ("dense", "lexical"):
                part = hit.ranks.get(name)
                row.append(f"{part['rank']} / {part['score']:.3f}" if part else "-")
        table.add_row(*row, where, text)
    if not hits:
        console.print(f"no hits for {query!r}")
        return
    console.print(table)
