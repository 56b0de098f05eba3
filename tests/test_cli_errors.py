"""No error reaches a user as a stack trace: usage errors exit 2, unexpected ones print one line."""

from __future__ import annotations

from conftest import run_cli


def test_unknown_option_and_command_are_usage_errors(tmp_path):
    for args in (("search", tmp_path, "query", "--bogus"), ("no-such-command",)):
        result = run_cli(*args, check=False)
        assert result.returncode == 2, result.stderr
        assert "internal error" not in result.stderr and "Traceback" not in result.stderr
        assert "No such" in result.stderr


def test_corrupt_database_is_a_clear_error_and_left_untouched(tmp_path):
    run_cli("init", tmp_path / "kb")
    garbage = b"this is not a SQLite database" * 100
    (tmp_path / "kb" / "ragtune.db").write_bytes(garbage)
    result = run_cli("stats", tmp_path / "kb", check=False)
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr and "cannot be opened as a SQLite database" in result.stderr
    assert (tmp_path / "kb" / "ragtune.db").read_bytes() == garbage


def test_unexpected_failure_is_one_line_without_traceback(tmp_path, monkeypatch, capsys):
    """A bug prints one line and exits 70; RAGTUNE_DEBUG=1 shows the traceback instead."""
    import pytest

    from ragtune import cli
    from ragtune.kb import KnowledgeBase

    KnowledgeBase.init(tmp_path / "kb").close()

    def broken(self):
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr(KnowledgeBase, "stats", broken)
    monkeypatch.setattr("sys.argv", ["ragtune", "stats", str(tmp_path / "kb")])
    monkeypatch.delenv("RAGTUNE_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 70
    err = capsys.readouterr().err
    assert "ZeroDivisionError: simulated bug" in err and "Traceback" not in err
    monkeypatch.setenv("RAGTUNE_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        cli.main()
