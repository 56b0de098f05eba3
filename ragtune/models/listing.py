"""`ragtune models`: the registry joined with what is installed and cached here."""

from __future__ import annotations

from rich.table import Table

from .cache import cache_state, default_cache_dir
from .registry import registered_models


def model_rows(cache_dir=None) -> list[dict]:
    cache_dir = cache_dir or default_cache_dir()
    rows = []
    for spec in registered_models():
        installed = spec.installed
        size = spec.size_bytes() if installed else None
        rows.append({
            "name": spec.name, "kind": spec.kind, "installed": installed,
            "size_mb": round(size / 1e6, 1) if size else None, "licence": spec.licence,
            "cache": cache_state(spec, cache_dir), "packages": list(spec.packages),
            "install": None if installed else spec.install_command, "notes": spec.notes,
        })
    return rows


def print_models(console, rows: list[dict]) -> None:
    table = Table(title="packaged models")
    for column in ("name", "kind", "installed", "size", "licence", "cache"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["name"], row["kind"], "yes" if row["installed"] else "[red]no[/]",
            f"{row['size_mb']:.0f} MB" if row["size_mb"] else "-", row["licence"], row["cache"],
        )
    console.print(table)
    for row in rows:
        if row["install"]:
            console.print(f"[dim]{row['name']}: {row['install']}[/]", highlight=False)
