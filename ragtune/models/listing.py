"""`ragtune models`: the registry joined with what is installed and cached here.

Each row says what the model is for (its role: `embedder` for `ragtune init --embedder`, `chat` for
`--model`), which runtime loads it here (llama.cpp where it is installed, else transformers), the
weight format on disk and the one that runtime runs (a re-quantised type measured faster on this
CPU), what is cached, and whether it is installed, with the pip command if not.
"""

from __future__ import annotations

from rich.table import Table

from .cache import cache_state, default_cache_dir
from .registry import registered_models

ROLE_USE = {"embedder": "ragtune init --embedder", "chat": "ragtune ask/chat --model, fine-tuning base"}


def model_rows(cache_dir=None) -> list[dict]:
    cache_dir = cache_dir or default_cache_dir()
    rows = []
    for spec in registered_models():
        installed = spec.installed
        size = spec.size_bytes() if installed else None
        runtime, weights, runs_as, cache = _runtime_state(spec, installed, cache_dir)
        rows.append({
            "name": spec.name, "role": spec.kind, "kind": spec.kind, "use": ROLE_USE.get(spec.kind, ""),
            "format": spec.format, "runtime": runtime, "weights": weights, "runs_as": runs_as,
            "dimensions": spec.dimensions, "installed": installed,
            "size_mb": round(size / 1e6, 1) if size else None, "licence": spec.licence,
            "cache": cache, "packages": list(spec.packages),
            "install": None if installed else spec.install_command, "notes": spec.notes,
            "answer_quality": spec.answer_quality, "answer_quality_note": spec.answer_quality_note or None,
        })
    return rows


def _runtime_state(spec, installed: bool, cache_dir) -> tuple[str, str | None, str | None, str]:
    """(runtime, weight type on disk, weight type the runtime runs, cache state) for one model."""
    if spec.format not in ("gguf", "gguf-parts"):
        return spec.format, None, None, cache_state(spec, cache_dir)
    from ..generate.base import choose_backend

    runtime = choose_backend(spec.name) if installed else "llamacpp or transformers"
    if not installed:
        return runtime, None, None, "not installed"
    from .gguf import gguf_file

    source = gguf_file(spec.name, cache_dir) if spec.format == "gguf" or _joined(spec, cache_dir) else None
    weights = _file_type(source) if source else _file_type(spec.local_files()[0])
    if runtime == "transformers":
        return runtime, weights, "fp32/bf16", cache_state(spec, cache_dir)
    from ..generate.llamacpp_formats import cached_choice

    choice = cached_choice(source, cache_dir) if source else None
    runs_as = weights if choice == "source" else choice
    state = "measured" if choice else "not measured"
    if spec.format == "gguf-parts":
        state += ", joined" if source else ", not joined"
    return runtime, weights, runs_as, state


def _joined(spec, cache_dir) -> bool:
    from .cache import known_digest

    digest = known_digest(spec.local_files(), cache_dir)
    return digest is not None and (cache_dir / "gguf" / f"{spec.name}-{digest[:16]}.gguf").is_file()


def _file_type(path) -> str | None:
    """The GGUF's declared weight type (general.file_type), e.g. Q4_1, read from the header only."""
    import struct

    import gguf

    from .gguf import header_value

    try:
        code = header_value(path, "general.file_type")
        return gguf.LlamaFileType(int(code)).name.replace("MOSTLY_", "") if code is not None else None
    except (OSError, ValueError, struct.error):  # an unreadable part or an unknown type: the column stays empty
        return None


def print_models(console, rows: list[dict]) -> None:
    table = Table(title="packaged models")
    for column in ("name", "role", "runtime", "weights", "runs as", "answers", "installed", "size", "licence", "cache"):
        table.add_column(column)
    for row in rows:
        role = f"{row['role']} ({row['dimensions']}-d)" if row.get("dimensions") else row["role"]
        table.add_row(
            row["name"], role, row["runtime"], row["weights"] or "-", row["runs_as"] or "-",
            f"{row['answer_quality']:.2f}" if row.get("answer_quality") is not None else "-",
            "yes" if row["installed"] else "[red]no[/]",
            f"{row['size_mb']:.0f} MB" if row["size_mb"] else "-", row["licence"], row["cache"],
        )
    console.print(table)
    measured = [row for row in rows if row.get("answer_quality_note")]
    if measured:
        console.print("[dim]answers: share of questions answered right and cited to the source holding the answer "
                      "(bench/grounded_qa.py; the default answering model is the best installed)[/]", highlight=False)
    for row in rows:
        if row["install"]:
            console.print(f"[dim]{row['name']}: {row['install']}[/]", highlight=False)
