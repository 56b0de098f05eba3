"""Human output for answers: the checked citations as a sources table, then what the check found.

Everything that comes from the model or the documents goes through `escape`: rich reads "[n]",
"[bold]" and the like as markup and would silently drop them from the output.
"""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from ..ingest.report import display_source


def check_notes(check) -> list[str]:
    """One plain-text note per problem the citation check found (no markup)."""
    notes = []
    if check.unknown:
        notes.append(f"cites sources that were not given: {check.unknown}")
    wrong = check.cited_unsupported_sentences
    if wrong:
        notes.append(f"{len(wrong)} sentence(s) cite a source that does not support them")
    if check.unsupported_sentences:
        notes.append(f"{len(check.unsupported_sentences)} sentence(s) cite nothing and match no source")
    inferred = [s for s in check.sentences if s.status == "inferred"]
    if inferred:
        notes.append(f"{len(inferred)} sentence(s) carry no [n]; matched to a supporting source by the checker")
    if not check.citations:
        notes.append("the answer cites no source")
    return notes


def print_answer(console, result, *, compact: bool = False, timings: bool = True) -> None:
    """What follows a streamed answer: its sources, the verified quotes, what no source supports,
    and, when nothing answers, the closest passage retrieved."""
    check = result.check
    if not result.found:
        if result.prompt is None:
            console.print(f"[dim](best chunk relevance {result.relevance:.2f} is below --min-relevance)[/]")
        if result.best_passage:
            where = display_source(result.best_passage["source"])
            console.print(f"[dim]closest passage ({escape(where)}):[/] {escape(result.best_passage['text'][:400])}",
                          highlight=False)
        return
    table = Table(title=None if compact else "sources cited", show_lines=False)
    for column in ("n", "source", "span", "page", "title", "cited by"):
        table.add_column(column)
    quoted = {q["n"] for q in result.quotes}
    for c in check.citations:
        how = "quote" if c.n in quoted else "text match" if c.inferred else "model"
        table.add_row(str(c.n), escape(display_source(c.source)), f"{c.start}:{c.end}", str(c.page or ""),
                      escape(c.title or ""), how)
    if check.citations:
        console.print(table)
    if not compact:
        for quote in result.quotes:
            console.print(f"  [green]quote[/] [{quote['n']}] \"{escape(quote['text'][:300])}\"", highlight=False,
                          soft_wrap=True)
    for item in result.unsupported:
        console.print(f"  [yellow]unsupported:[/] {escape(item['text'])} [dim]({escape(item['reason'])})[/]",
                      highlight=False)
    if result.dropped:
        console.print(f"[yellow]--strict dropped {len(result.dropped)} unsupported sentence(s)[/]")
    notes = [] if result.quotes else check_notes(check)
    if notes:
        console.print("[yellow]check:[/] " + escape("; ".join(notes)))
    if not compact and timings:
        console.print(f"[dim]timings: {escape(str(result.timings))}[/]")
