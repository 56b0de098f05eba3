"""A hostile folder: every bad file gets a one-line reason, every good file is ingested, nothing
stored before is lost, and memory stays bounded on a 10 MB text file."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]
# Root reads mode-000 files; dropping the DAC capabilities makes permissions bite for root too.
DROP_ROOT_OVERRIDE = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def build_hostile(folder: Path) -> None:
    folder.mkdir()
    (folder / "good.md").write_text("# Good\n\nThe hostile folder also holds a perfectly good markdown note about otters.")
    (folder / "good.txt").write_text("Beavers build dams from branches and mud.\n")
    (folder / "empty.txt").write_bytes(b"")
    (folder / "binary.txt").write_bytes(b"\x7fELF\x02\x01\x01\x00" + os.urandom(4096))
    (folder / "corrupt.pdf").write_bytes(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R\n" + b"\xff" * 500)
    (folder / "latin1.txt").write_bytes("Le hérisson mange des baies sauvages en été. ".encode("latin-1") * 10)
    (folder / "deep.html").write_text("<html><body>" + "<div>" * 20000 + "nested heron facts" + "</div>" * 20000)
    (folder / "ragged.csv").write_text("animal,habitat,diet\nfox,forest,omnivore\nowl,barn\nseal,coast,fish,extra\n")
    (folder / "unreadable.txt").write_text("secret text nobody may read")
    os.chmod(folder / "unreadable.txt", 0)
    os.symlink("self-loop.txt", folder / "self-loop.txt")
    os.symlink("does-not-exist.txt", folder / "dangling.txt")
    (folder / "sub").mkdir()
    os.symlink("..", folder / "sub" / "parent-loop")
    rng = random.Random(0)
    words = "salmon river current upstream spawn gravel estuary tide kelp plankton".split()
    paragraphs = [" ".join(rng.choice(words) for _ in range(rng.randint(30, 90))).capitalize() + "." for _ in range(300)]
    block = ("\n\n".join(paragraphs) + "\n\n").encode()
    with open(folder / "big.txt", "wb") as handle:
        while handle.tell() < 10 * 1024 * 1024:
            handle.write(block)


def run_measured(args, env):
    """Run the CLI as a child; return (exit code, stdout, stderr, the child's own peak RSS in MB)."""
    prefix = DROP_ROOT_OVERRIDE if os.geteuid() == 0 and shutil.which("setpriv") else []
    process = subprocess.Popen([*prefix, sys.executable, "-m", "ragtune.cli", *map(str, args)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out_chunks, err_chunks = [], []
    threads = [threading.Thread(target=lambda: out_chunks.append(process.stdout.read())),
               threading.Thread(target=lambda: err_chunks.append(process.stderr.read()))]
    for t in threads:
        t.start()
    _, status, usage = os.wait4(process.pid, 0)  # ru_maxrss of this child alone, in KiB
    for t in threads:
        t.join()
    return os.waitstatus_to_exitcode(status), out_chunks[0].decode(), err_chunks[0].decode(), usage.ru_maxrss / 1024


def test_hostile_folder(tmp_path):
    permissions_enforced = os.geteuid() != 0 or shutil.which("setpriv") is not None
    env = dict(os.environ)
    kb, before, hostile = tmp_path / "kb", tmp_path / "before", tmp_path / "hostile"
    before.mkdir()
    (before / "kept.md").write_text("# Kept\n\nKnowledge stored before the hostile batch: whales sing.")
    build_hostile(hostile)

    code, out, err, _ = run_measured(["init", kb], env)
    assert code == 0, err
    code, out, err, baseline_mb = run_measured(["ingest", kb, before, "--json"], env)
    assert code == 0, err
    code, out, err, hostile_mb = run_measured(["ingest", kb, hostile, "--json"], env)
    assert code == 0, err
    report = json.loads(out)

    failures = {Path(f["file"]).name: f["reason"] for f in report["failures"]}
    skipped = {Path(f["file"]).name: f["reason"] for f in report["skipped_files"]}
    assert "binary content" in failures["binary.txt"]
    assert "corrupt PDF" in failures["corrupt.pdf"]
    assert "symlink loop" in failures["self-loop.txt"]
    assert "broken symlink" in failures["dangling.txt"]
    assert "symlink loop" in failures["parent-loop"]
    if permissions_enforced:
        assert "permission" in failures["unreadable.txt"]
    assert skipped["empty.txt"] == "empty file"
    for reason in list(failures.values()) + list(skipped.values()):
        assert "\n" not in reason
    # every good file beside them is ingested
    assert report["ingested"] == 6  # good.md, good.txt, latin1.txt, deep.html, ragged.csv, big.txt
    warnings = "\n".join(report["warnings"])
    assert "latin1.txt: not valid UTF-8" in warnings
    assert "deep.html: HTML nested" in warnings
    assert "ragged.csv:3: 2 fields" in warnings and "ragged.csv:4: 4 fields" in warnings
    # memory stays bounded on the 10 MB file (it streams; tokenizing it whole takes GBs)
    assert hostile_mb - baseline_mb < 500, (baseline_mb, hostile_mb)

    code, out, err, _ = run_measured(["stats", kb, "--json"], env)
    stats = json.loads(out)
    # kept.md + good.md + good.txt + latin1.txt + deep.html + 3 CSV rows + big.txt: nothing lost
    assert stats["documents"] == 9
    assert stats["unique_chunks"] < stats["chunks"]  # the big file repeats itself
    code, out, err, _ = run_measured(["search", kb, "whales sing", "--k", "1", "--json"], env)
    assert json.loads(out)[0]["source"].endswith("kept.md")
