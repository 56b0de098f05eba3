"""`ragtune choose`: a thin command over workflow/choose.py."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..cli_shared import JSON_OPTION, THREADS_OPTION, WEIGHT_FORMAT_OPTION, _emit_json, stage_printer
from ..evaluate.cli import CONCURRENCY_OPTION, print_comparison


def register(app: typer.Typer) -> None:
    app.command("choose")(choose)


def choose(
    kb: Path = typer.Argument(..., help="Knowledge base directory."),
    questions: Optional[Path] = typer.Option(None, "--questions", help="Questions with gold_doc_ids and answers (the eval qa format); split into training and test."),
    synthesize: Optional[int] = typer.Option(None, "--synthesize", help="Instead: have --teacher write N questions (with short answers found in their chunk) over the knowledge base; whole chunks are held out."),
    synthesis_minutes: float = typer.Option(30.0, "--synthesis-minutes", help="With --synthesize: stop asking the teacher after this many minutes."),
    model: str = typer.Option("SmolLM2-135M-Instruct", "--model", help="The packaged model (or folder) to adapt and compare."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Model writing questions / reasoning (a packaged model, .gguf, folder or registered name)."),
    teacher_base_url: Optional[str] = typer.Option(None, "--teacher-base-url", help="OpenAI-compatible endpoint serving --teacher."),
    budget: float = typer.Option(30.0, "--budget", help="Minutes of training in all: a third for fine-tuning, two thirds for RAFT."),
    test_share: float = typer.Option(0.3, "--test-share", help="Share of the questions held out for the comparison."),
    k: int = typer.Option(2, "--k", help="Distractor documents per RAFT example; retrieval shows k + 1."),
    p: float = typer.Option(0.8, "--p", help="Probability that the oracle document is present in a RAFT example's context."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split and the RAFT data."),
    knowledge_changes: str = typer.Option("monthly", "--knowledge-changes", help="daily, monthly or never: changing knowledge favours retrieval."),
    out_dir: Path = typer.Option(Path("ragtune-choose"), "--out", help="Work and report directory (a rerun resumes here)."),
    weight_format: str = WEIGHT_FORMAT_OPTION,
    concurrency: int = CONCURRENCY_OPTION,
    threads: Optional[int] = THREADS_OPTION,
    as_json: bool = JSON_OPTION,
):
    """RAG, fine-tuning or RAFT? Build the data, train both within --budget, compare all on held-out questions, recommend."""
    from ..evaluate.compare import KNOWLEDGE_CHANGES
    from .choose import ChooseOptions, choose as run_choose

    if knowledge_changes not in KNOWLEDGE_CHANGES:
        raise typer.BadParameter(f"must be one of {', '.join(KNOWLEDGE_CHANGES)}", param_hint="--knowledge-changes")
    stage = stage_printer(quiet=as_json)

    options = ChooseOptions(kb=kb, out=out_dir, questions=questions, synthesize=synthesize,
                            synthesis_minutes=synthesis_minutes, model=model, teacher=teacher,
                            teacher_base_url=teacher_base_url, budget_minutes=budget, test_share=test_share, k=k, p=p,
                            seed=seed, threads=threads, concurrency=concurrency, knowledge_changes=knowledge_changes,
                            weight_format=weight_format)
    result = run_choose(options, stage=stage)
    if as_json:
        from ..evaluate.report import scripting

        return _emit_json(scripting(result, out_dir / "report"))
    print_comparison(result, out_dir / "report")
