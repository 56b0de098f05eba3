"""Path prefixes compared by path components, in one place, for sync and the `source^=` filter.

SQL `LIKE` was used before and is wrong for paths twice over: `_` and `%` are wildcards (so
`/data/my_docs` matched `/data/my-docs`) and it ignores ASCII case (so it matched `/data/MY_DOCS`).
Here a path is under a prefix when it equals it, or continues it after a separator: `/` for files
in folders, `#` for the records of a file (`/data/faq.jsonl#L3`). Comparison is byte-exact, as the
file systems we run on are case-sensitive. A prefix that ends in `/` means "inside this folder".
"""

from __future__ import annotations

import os

SEPARATORS = (os.sep, "#")


def _branches(prefix: str) -> list[str]:
    if prefix.endswith(os.sep):
        return [prefix]
    return [prefix + separator for separator in SEPARATORS]


def is_under(path: str, prefix: str) -> bool:
    """True when `path` is `prefix` itself or lies below it (the Python twin of `prefix_sql`)."""
    if not prefix.endswith(os.sep) and path == prefix:
        return True
    return any(path.startswith(branch) for branch in _branches(prefix))


def prefix_sql(expression: str, prefix: str, params: list) -> str:
    """A SQL condition true when `expression` is under `prefix`; appends its parameters to `params`.

    `substr(x, 1, n) = ?` compares bytes exactly (BINARY collation), unlike LIKE or GLOB patterns
    whose wildcards would have to be escaped in every caller.
    """
    parts = []
    if not prefix.endswith(os.sep):
        parts.append(f"{expression} = ?")
        params.append(prefix)
    for branch in _branches(prefix):
        parts.append(f"substr({expression}, 1, ?) = ?")
        params.extend([len(branch), branch])
    return "(" + " OR ".join(parts) + ")"
