"""Human output for answers: the checked citations as a sources table."""

from __future__ import annotations

from rich.table import Table

from ..ingest.report import display_source


def print_answer_sources(console, result, *, compact: bool = False) -> None:
    check = result.check
    if not result.found:
        console.print(f"[dim](best chunk relevance {result.relevance:.2f} is below --min-relevance)[/]")
        return
    table = Table(title=None if compact else "sources cited", show_lines=False)
    for column in ("n", "source", "span", "page", "title", "cited by"):
        table.add_column(column)
    for c in check.citations:
        table.add_row(str(c.n), display_source(c.source), f"{c.start}:{c.end}", str(c.page or ""), c.title or "",
                      "text match" if c.inferred else "model")
    if check.citations:
        console.print(table)
    notes = []
    if check.unknown:
        notes.append(f"cites sources that were not given: {check.unknown}")
    if check.unsupported_sentences:
        notes.append(f"{len(check.unsupported_sentences)} sentence(s) cite nothing and match no source")
    elif check.uncited_sentences:
        notes.append(f"{len(check.uncited_sentences)} sentence(s) carry no [n]; matched to sources by their words")
    if not check.citations:
        notes.append("the answer cites no source")
    if notes:
        console.print("[yellow]check:[/] " + "; ".join(notes))
    if not compact:
        console.print(f"[dim]timings: {result.timings}[/]")
