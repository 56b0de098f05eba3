"""`ragtune models`: the registry joined with what is installed and cached here.

Each row says what the model is for (its role: `embedder` for `ragtune init --embedder`, `chat` for
`--model`), which runtime loads it, and whether it is installed, with the pip command if not.
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
        rows.append({
            "name": spec.name, "role": spec.kind, "kind": spec.kind, "use": ROLE_USE.get(spec.kind, ""),
            "format": spec.format, "dimensions": spec.dimensions, "installed": installed,
            "size_mb": round(size / 1e6, 1) if size else None, "licence": spec.licence,
            "cache": cache_state(spec, cache_dir), "packages": list(spec.packages),
            "install": None if installed else spec.install_command, "notes": spec.notes,
        })
    return rows


def print_models(console, rows: list[dict]) -> None:
    table = Table(title="packaged models")
    for column in ("name", "role", "runtime", "installed", "size", "licence", "cache"):
        table.add_column(column)
    for row in rows:
        role = f"{row['role']} ({row['dimensions']}-d)" if row.get("dimensions") else row["role"]
        table.add_row(
            row["name"], role, row["format"], "yes" if row["installed"] else "[red]no[/]",
            f"{row['size_mb']:.0f} MB" if row["size_mb"] else "-", row["licence"], row["cache"],
        )
    console.print(table)
    for row in rows:
        if row["install"]:
            console.print(f"[dim]{row['name']}: {row['install']}[/]", highlight=False)
