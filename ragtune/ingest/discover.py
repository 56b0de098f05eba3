"""Find the files to ingest: recursion with gitignore-style include/exclude globs.

Symlinks are followed, but each real directory is visited once (symlink loops end there) and
broken or looping links are reported by name instead of crashing the walk.

The walk also records what it *saw* (`Listing`): every folder it listed and the names in it. Sync
removes a stored file only on that positive evidence: its folder was listed and the name was not
there. A folder that could not be read, or a root that is missing, proves nothing.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_EXCLUDES = [".git/", ".hg/", ".svn/", "__pycache__/", "node_modules/", ".venv/", ".DS_Store"]


@dataclass
class Found:
    path: Path
    problem: str | None = None  # set when the entry cannot be ingested at all
    explicit: bool = False  # named by the user rather than found in a directory


@dataclass
class Listing:
    """Folders listed during one walk, with their entry names, and the paths that could not be read."""

    root: Path
    entries: dict[str, set[str]] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)  # path -> why; nothing under it is known

    def positively_gone(self, path: str) -> bool:
        """True when a folder on the way from the root to `path` was listed without the next name.

        False when that folder was not listed (unreadable, excluded, skipped, a symlink loop), or
        when every folder down to the file's own listed the next name (the file is there).
        """
        root = str(self.root)
        if path == root:
            return False
        relative = os.path.relpath(path, root)
        if relative.startswith(os.pardir):
            return False
        folder = root
        for name in relative.split(os.sep):
            names = self.entries.get(folder)
            if names is None:
                return False
            if name not in names:
                return True
            folder = os.path.join(folder, name)
        return False


def _spec(patterns: list[str]):
    import pathspec

    return pathspec.PathSpec.from_lines("gitignore", patterns) if patterns else None


def discover(
    root: Path, include: list[str] | None = None, exclude: list[str] | None = None, skip: list[Path] | None = None,
    listing: Listing | None = None,
) -> Iterator[Found]:
    """Yield files under `root` (or `root` itself) in a stable, sorted order; fill `listing` if given."""
    root = Path(root).absolute()
    listing = listing if listing is not None else Listing(root)
    including = _spec(include or [])
    excluding = _spec(DEFAULT_EXCLUDES + list(exclude or []))
    skip_real = {os.path.realpath(p) for p in (skip or [])}
    if not os.path.lexists(root):
        listing.unreadable[str(root)] = "no such file or directory"
        yield Found(root, "no such file or directory")
        return
    if not os.path.isdir(root):
        # a single file: its folder is not listed, so its absence could only be inferred, never seen
        if not os.path.exists(root):
            listing.unreadable[str(root)] = "broken symlink"
        for found in _check_file(root):
            found.explicit = True
            yield found
        return
    visited: set[tuple[int, int]] = set()

    def walk(directory: Path) -> Iterator[Found]:
        try:
            info = os.stat(directory)
        except OSError as exc:
            listing.unreadable[str(directory)] = _describe(exc)
            yield Found(directory, _describe(exc))
            return
        key = (info.st_dev, info.st_ino)
        if key in visited:
            yield Found(directory, "symlink loop: directory already visited; skipped")
            return
        if os.path.realpath(directory) in skip_real:
            return
        visited.add(key)
        try:
            with os.scandir(directory) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError as exc:
            listing.unreadable[str(directory)] = _describe(exc)
            yield Found(directory, _describe(exc))
            return
        listing.entries[str(directory)] = {entry.name for entry in entries}
        for entry in entries:
            path = Path(entry.path)
            relative = path.relative_to(root).as_posix()
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if excluding and excluding.match_file(relative + ("/" if is_dir else "")):
                continue
            if is_dir:
                yield from walk(path)
            elif including is None or including.match_file(relative):
                for found in _check_file(path):
                    if found.problem:  # a dangling link (an unmounted folder looks like this) proves nothing
                        listing.unreadable[str(path)] = found.problem
                    yield found

    yield from walk(root)


def _check_file(path: Path) -> Iterator[Found]:
    try:
        os.stat(path)
    except OSError as exc:
        yield Found(path, _describe(exc))
        return
    yield Found(path)


def _describe(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop; remove or fix the link"
    if exc.errno == errno.ENOENT:
        return "broken symlink or vanished file"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied; make it readable or --exclude it"
    return f"cannot read ({exc.strerror})"
