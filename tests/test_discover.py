from __future__ import annotations

import os

from ragtune.ingest.discover import discover



def test_globs_include_and_exclude_with_gitignore_syntax(tmp_path):
    for rel in ["a.md", "b.txt", "drafts/c.md", "deep/x/d.md", ".git/config", "node_modules/m.md"]:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    everything = sorted(f.path.relative_to(tmp_path).as_posix() for f in discover(tmp_path))
    assert everything == ["a.md", "b.txt", "deep/x/d.md", "drafts/c.md"]
    only_md = sorted(f.path.relative_to(tmp_path).as_posix()
                     for f in discover(tmp_path, include=["*.md"], exclude=["drafts/"]))
    assert only_md == ["a.md", "deep/x/d.md"]


def test_directory_symlink_loops_are_reported_once(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f.txt").write_text("x")
    os.symlink("..", tmp_path / "sub" / "up")
    found = list(discover(tmp_path))
    good = [f for f in found if not f.problem]
    problems = [f for f in found if f.problem]
    assert [f.path.name for f in good] == ["f.txt"]
    assert len(problems) == 1 and "symlink loop" in problems[0].problem


def test_skip_keeps_the_kb_itself_out(tmp_path):
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "ragtune.yaml").write_text("x: 1")
    (tmp_path / "doc.md").write_text("x")
    found = [f.path.name for f in discover(tmp_path, skip=[tmp_path / "kb"])]
    assert found == ["doc.md"]
