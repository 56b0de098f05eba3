"""Human output for answers: the checked citations as a sources table, then what the check found.

Everything that comes from the model or the documents goes through `escape`: rich reads "[n]",
"[bold]" and the like as markup and would silently drop them from the output.
"""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from ..ingest.report import display_source

NOT_SUPPORTED = ("cited_unsupported", "unsupported")


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


def sentence_line(sentence) -> str:
    """`cited_unsupported [2] (score 0.21; source lacks 1912): The bridge was completed in 1912 [2].`"""
    cited = "".join(f"[{n}]" for n in sentence.cited)
    why = f"score {sentence.support_score:.2f}"
    if sentence.missing:
        why += "; source lacks " + ", ".join(sentence.missing)
    return f"{sentence.status}{' ' + cited if cited else ''} ({why}): {sentence.text}"


def print_answer_sources(console, result, *, compact: bool = False) -> None:
    check = result.check
    if not result.found:
        console.print(f"[dim](best chunk relevance {result.relevance:.2f} is below --min-relevance)[/]")
        return
    table = Table(title=None if compact else "sources cited", show_lines=False)
    for column in ("n", "source", "span", "page", "title", "cited by"):
        table.add_column(column)
    for c in check.citations:
        table.add_row(str(c.n), escape(display_source(c.source)), f"{c.start}:{c.end}", str(c.page or ""),
                      escape(c.title or ""), "text match" if c.inferred else "model")
    if check.citations:
        console.print(table)
    notes = check_notes(check)
    if notes:
        console.print("[yellow]check:[/] " + escape("; ".join(notes)))
    if not compact:
        for sentence in check.sentences:
            if sentence.status in NOT_SUPPORTED:
                console.print("  [yellow]-[/] " + escape(sentence_line(sentence)))
        console.print(f"[dim]timings: {escape(str(result.timings))}[/]")
