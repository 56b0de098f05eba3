"""Scale-out on a real Ray cluster: a head node and a second worker node started with `ray start` on
loopback (separate processes), a distributed ingest checked against a local ingest of the same files,
and the errors a user meets (an unreachable address: clear and quick, the knowledge base untouched)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli

ray = pytest.importorskip("ray")
RAY = Path(sys.executable).parent / "ray"
TOPICS = ["harbour boats fishing", "mill rye bread museum", "forest deer oak autumn", "station trains coast",
          "market cheese goats stall", "library maps reading room", "school pupils songs", "bridge river green paint"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`ray start --head` and a second node joining it, both on 127.0.0.1; stopped afterwards."""
    port = _free_port()
    temp = tmp_path_factory.mktemp("ray")
    # a token left in ~/.ray by an earlier local ray.init turns token authentication on for the head
    # only, and the second node is then refused: this test cluster runs without it, and so do the
    # CLI calls that join it (they inherit this process's environment)
    saved = {key: os.environ.get(key) for key in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED", "RAY_ADDRESS")}
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    os.environ.pop("RAY_ADDRESS", None)
    common = ["--num-cpus", "1", "--disable-usage-stats", "--node-ip-address", "127.0.0.1"]

    def ray(*args):
        done = subprocess.run([RAY, *args], capture_output=True, text=True, timeout=180)
        if done.returncode:
            raise RuntimeError(f"ray {' '.join(args)} failed:\n{done.stderr[-3000:]}")

    try:
        ray("start", "--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", str(temp), *common)
        ray("start", "--address", f"127.0.0.1:{port}", *common)
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _docs(root: Path) -> Path:
    docs = root / "docs"
    (docs / "sub").mkdir(parents=True)
    for n, topic in enumerate(TOPICS):
        folder = docs / "sub" if n % 2 else docs
        (folder / f"d{n}.md").write_text(f"# Note {n}\n\n" + f"This note is about {topic}. " * 40)
    (docs / "records.jsonl").write_text("".join(json.dumps({"id": f"r{i}", "text": f"Record {i} on {TOPICS[i]}."})
                                                + "\n" for i in range(5)) + "{broken\n")
    (docs / "blank.txt").write_text("   \n")
    return docs


def _contents(kb: Path) -> tuple[list, dict]:
    from ragtune.kb import KnowledgeBase
    from ragtune.store import feed

    with KnowledgeBase.open(kb, readonly=True) as knowledge:
        store = knowledge.store
        rows = [tuple(r) for r in store.conn.execute(
            "SELECT source, doc_id, title, ordinal, text, start_char, end_char, page, metadata, document_metadata "
            "FROM chunk_view ORDER BY source, ordinal")]
        ids = {r[0]: (r[1], r[2]) for r in store.conn.execute("SELECT chunk_id, source, ordinal FROM chunk_view")}
        vectors = {ids[int(i)]: v for batch_ids, matrix in feed.iter_vectors(store)
                   for i, v in zip(batch_ids, matrix)}
    return rows, vectors


def _ingest_killing_an_embedder(kb: Path, docs: Path, cluster: str) -> tuple[dict, list]:
    """`ingest --ray` on the cluster, with SIGKILL to the first embedding actor process seen; (its JSON
    report, the killed pids)."""
    import psutil

    from conftest import RAGTUNE

    process = subprocess.Popen([*RAGTUNE, "ingest", str(kb), str(docs), "--ray", "--ray-address", cluster,
                                "--workers", "2", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed, deadline = [], time.time() + 180
    while not killed and process.poll() is None and time.time() < deadline:
        for worker in psutil.process_iter(["pid", "cmdline"]):
            if "EmbedChunks" in " ".join(worker.info["cmdline"] or []):
                worker.kill()
                killed.append(worker.info["pid"])
                break
        time.sleep(0.05)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout), killed  # Ray's news of the dead worker went to stderr, not into the JSON


@pytest.mark.slow
def test_a_ray_ingest_on_two_nodes_equals_a_local_ingest_even_when_an_embedding_worker_is_killed(cluster, tmp_path):
    """SIGKILL to an embedding actor's process mid-ingest: Ray restarts it and retries its batches, and the
    knowledge base still equals a local ingest of the same files."""
    docs = _docs(tmp_path)
    for n in range(8, 40):  # enough chunks for several embedding batches
        (docs / f"n{n:02d}.md").write_text(f"# Note {n}\n\n" + f"Note {n} is about {TOPICS[n % 8]}, part {n}. " * 30)
    for name in ("local", "ray"):
        run_cli("init", tmp_path / name, "--embedder", "WordLlama", "--batch-size", "4")
    local = json.loads(run_cli("ingest", tmp_path / "local", docs, "--json").stdout)
    distributed, killed = _ingest_killing_an_embedder(tmp_path / "ray", docs, cluster)
    assert killed, "no embedding actor was seen running"
    for key in ("ingested", "skipped", "failed", "documents_added", "chunks_added"):
        assert distributed[key] == local[key], key
    assert local["ingested"] == 41 and local["skipped"] == 1 and local["chunks_added"] > 100
    assert distributed["warnings"] == local["warnings"]  # the broken record line, named the same way
    rows_local, vectors_local = _contents(tmp_path / "local")
    rows_ray, vectors_ray = _contents(tmp_path / "ray")
    assert rows_ray == rows_local
    assert vectors_ray.keys() == vectors_local.keys()
    assert max(float(np.abs(vectors_ray[k] - vectors_local[k]).max()) for k in vectors_local) < 1e-5
    for query in ("deer in the oak forest", "Record 3"):
        hits = [json.loads(run_cli("search", tmp_path / name, query, "--k", "5", "--json").stdout)
                for name in ("local", "ray")]
        assert [(h["source"], h["text"]) for h in hits[0]] == [(h["source"], h["text"]) for h in hits[1]]
    again = json.loads(run_cli("ingest", tmp_path / "ray", docs, "--ray", "--ray-address", cluster, "--json").stdout)
    assert again["unchanged"] == 41 and again["chunks_added"] == 0  # unchanged files never reach the cluster


def test_an_unreachable_ray_address_is_a_quick_clear_error_and_changes_nothing(tmp_path):
    docs = _docs(tmp_path)
    run_cli("init", tmp_path / "kb", "--embedder", "WordLlama")
    run_cli("ingest", tmp_path / "kb", docs / "d0.md")
    before = (tmp_path / "kb" / "ragtune.db").read_bytes()
    started = time.perf_counter()
    result = run_cli("ingest", tmp_path / "kb", docs, "--ray", "--ray-address", f"127.0.0.1:{_free_port()}",
                     check=False)
    assert result.returncode != 0 and "no Ray head node answers there" in result.stderr
    assert time.perf_counter() - started < 60  # the CLI's own start included
    assert (tmp_path / "kb" / "ragtune.db").read_bytes() == before
    wrong = run_cli("ingest", tmp_path / "kb", docs, "--workers", "3", check=False)
    assert wrong.returncode != 0 and "add --ray" in wrong.stderr
    shutil.rmtree(tmp_path / "kb")


@pytest.mark.slow
def test_an_evaluation_fanned_out_to_two_replicas_answers_and_stores_like_a_local_one(cluster, tmp_path):
    """`eval qa --ray`: two SmolLM2 replicas (one per node) answer; the driver scores and stores in the
    same runs database, the answers equal a local run's, and a rerun resumes with nothing left to do."""
    from ragtune.store.runs import RunsDB

    docs = _docs(tmp_path)
    run_cli("init", tmp_path / "kb", "--embedder", "WordLlama")
    run_cli("ingest", tmp_path / "kb", docs)
    questions = [("What is note 2 about?", "forest deer oak autumn"), ("What does record 1 say?", "mill rye bread"),
                 ("Which note is about trains?", "Note 3"), ("What is note 6 about?", "school pupils songs")]
    dataset = tmp_path / "eval.jsonl"
    dataset.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "answers": [a]}) + "\n"
                               for i, (q, a) in enumerate(questions)))
    common = ["eval", "qa", "--dataset", dataset, "--strategy", "rag", "--kb", tmp_path / "kb", "--model",
              "SmolLM2-135M-Instruct", "--max-tokens", "16", "--prompt", "rag", "--concurrency", "1", "--threads", "1",
              "--json"]
    local = json.loads(run_cli(*common, "--runs-db", tmp_path / "local.db").stdout)
    remote = json.loads(run_cli(*common, "--runs-db", tmp_path / "ray.db", "--ray", "--ray-address", cluster,
                                "--workers", "2").stdout)
    assert remote["n"] == local["n"] == 4
    with RunsDB(tmp_path / "local.db") as db_local, RunsDB(tmp_path / "ray.db") as db_ray:
        mine = {r["example_id"]: (r["prediction"], r["retrieved_ids"]) for r in db_local.predictions(local["run_id"])}
        theirs = {r["example_id"]: (r["prediction"], r["retrieved_ids"]) for r in db_ray.predictions(remote["run_id"])}
    assert theirs == mine
    assert remote["metrics"] == local["metrics"]
    # a run killed half way (two answers stored, still 'running') is resumed, not restarted
    with RunsDB(tmp_path / "ray.db") as db:
        db.conn.execute("DELETE FROM predictions WHERE run_id = ? AND example_id IN ('q2', 'q3')", (remote["run_id"],))
        db.conn.execute("UPDATE runs SET status = 'running', finished = NULL WHERE id = ?", (remote["run_id"],))
        db.conn.commit()
    again = json.loads(run_cli(*common, "--runs-db", tmp_path / "ray.db", "--ray", "--ray-address", cluster,
                               "--workers", "2").stdout)
    assert again["run_id"] == remote["run_id"] and again["n"] == 4
    with RunsDB(tmp_path / "ray.db") as db:
        assert {r["example_id"]: (r["prediction"], r["retrieved_ids"]) for r in db.predictions(again["run_id"])} == mine


def _codes(path: Path) -> Path:
    """16 chat examples (4 codewords x 4 phrasings): with a quarter held out, 12 train and 4 validate,
    so every global batch of 4 and the validation split evenly over 2 workers."""
    from test_finetune import CODES, write_codes

    return write_codes(path, {**CODES, "cloud": "copper"})


def _lora_recipe(folder: Path, name: str, model: Path, steps: int, **training) -> Path:
    import yaml

    path = folder / f"{name}-{steps}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "method": "lora", "model": str(model), "output_dir": str(folder / name), "lora": {"dropout": 0.0},
        "data": {"train": "codes.jsonl", "max_length": 96, "validation_share": 0.25},
        "training": {"learning_rate": 1e-3, "scheduler": "constant", "warmup": 0, "max_steps": steps,
                     "logging_steps": 1, "checkpoint_every": 2, "threads": 1, **training}}))
    return path


def _curve(run: Path) -> list:
    history = json.loads((run / "metrics.json").read_text())["history"]
    return [(h["step"], key, h[key]) for h in history for key in ("loss", "eval_loss", "grad_norm") if key in h]


@pytest.mark.slow
def test_lora_on_two_ray_workers_follows_the_local_loss_curve_and_resumes_from_ray_checkpoints(cluster, tmp_path):
    """`train --ray --workers 2` on the two nodes: the same global batch (2 x 2 locally, 2 x 1 on each
    worker) gives the local run's training and validation losses and adapter; stopped after 2 steps and
    continued with --resume from Ray's checkpoint, it still does."""
    from safetensors.torch import load_file

    from conftest import two_block_smollm2

    model = tmp_path / "tiny"
    two_block_smollm2(model)
    _codes(tmp_path / "codes.jsonl")
    run_cli("train", _lora_recipe(tmp_path, "local", model, 4, batch_size=2, gradient_accumulation=2), "--json")
    on_ray = ["--ray", "--ray-address", cluster, "--workers", "2", "--json"]
    first = json.loads(run_cli("train", _lora_recipe(tmp_path, "ray", model, 2, batch_size=2,
                                                     gradient_accumulation=2), *on_ray).stdout)
    assert first["metrics"]["epoch"] < 1 and sorted((tmp_path / "ray" / "ray").glob("checkpoint_*"))
    longer = _lora_recipe(tmp_path, "ray", model, 4, batch_size=2, gradient_accumulation=2)
    refused = run_cli("train", longer, *on_ray, check=False)
    assert refused.returncode == 2 and "--resume" in refused.stderr  # never a silent restart over a run
    resumed = json.loads(run_cli("train", longer, *on_ray, "--resume").stdout)
    assert resumed["resumed_from"] == "checkpoint-2"

    local, remote = _curve(tmp_path / "local"), _curve(tmp_path / "ray")
    assert [(step, key) for step, key, _ in remote] == [(step, key) for step, key, _ in local]
    assert len([1 for _, key, _ in local if key == "eval_loss"]) >= 2
    for (step, key, mine), (_, _, theirs) in zip(local, remote):
        assert theirs == pytest.approx(mine, rel=1e-4), (step, key)
    assert resumed["metrics"]["eval_loss"] == pytest.approx(
        json.loads((tmp_path / "local" / "metrics.json").read_text())["metrics"]["eval_loss"], rel=1e-4)
    adapters = [load_file(tmp_path / name / "model" / "adapter_model.safetensors") for name in ("local", "ray")]
    assert adapters[0].keys() == adapters[1].keys()
    assert max(float((adapters[0][k] - adapters[1][k]).abs().max()) for k in adapters[0]) < 1e-5
    assert json.loads((tmp_path / "ray" / "metrics.json").read_text())["data"]["train_examples"] == 12


def test_the_global_batch_is_shared_by_the_workers_or_refused_with_the_fix():
    from ragtune.errors import ConfigError
    from ragtune.finetune.ray_train import split_global_batch
    from ragtune.finetune.recipe import validate_recipe

    def split(batch, accumulation, workers):
        recipe = validate_recipe({"data": {"train": "x.jsonl"},
                                  "training": {"batch_size": batch, "gradient_accumulation": accumulation}})
        t = split_global_batch(recipe, workers).training
        return t.batch_size, t.gradient_accumulation

    assert split(2, 4, 2) == (2, 2) and split(4, 1, 2) == (2, 1) and split(8, 3, 4) == (2, 3) and split(3, 1, 1) == (3, 1)
    with pytest.raises(ConfigError, match="training.gradient_accumulation or training.batch_size a multiple of 2"):
        split(3, 1, 2)

