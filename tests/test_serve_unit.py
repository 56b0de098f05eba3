"""The server's parts that need no model: keys, bind safety, settings, upload names, the generation
gate and the readers-writer lock; and the `ragtune serve` command itself, started for real."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time

import httpx
import pytest

from conftest import RAGTUNE, run_cli
from ragtune.errors import ConfigError
from ragtune.serve.auth import KeyRing, hash_key, presented_key
from ragtune.serve.errors import APIError
from ragtune.serve.limits import GenerationGate, Overloaded, ReadWriteLock
from ragtune.serve.settings import ServeSettings, check_bind, is_loopback, load_settings
from ragtune.serve.uploads import check_content, safe_name

KEY = "unit-test-key-0123456789"


def test_keys_are_hashed_and_compared_in_full():
    ring = KeyRing([KEY, hash_key("second-key-abcdefgh")])
    assert ring.enabled and len(ring) == 2
    assert ring.check(KEY) and ring.check("second-key-abcdefgh")
    assert not ring.check(None) and not ring.check("") and not ring.check(KEY + "x") and not ring.check(KEY[:-1])
    assert KEY not in repr(vars(ring))  # only digests are kept
    assert KeyRing([]).check(None)  # no keys: open
    with pytest.raises(ConfigError, match="--api-key"):
        KeyRing(["short"])


def test_the_key_is_read_from_bearer_or_x_api_key():
    assert presented_key({"authorization": "Bearer abc"}) == "abc"
    assert presented_key({"authorization": "bearer  abc "}) == "abc"
    assert presented_key({"authorization": "Basic abc"}) is None
    assert presented_key({"x-api-key": "abc"}) == "abc"
    assert presented_key({}) is None


def test_keys_merge_from_flag_config_and_environment(tmp_path, monkeypatch):
    config = tmp_path / "serve.yaml"
    config.write_text(f"api_keys: ['{hash_key('from-config-123456')}']\nslots: 3\nport: 9000\n")
    monkeypatch.setenv("RAGTUNE_API_KEYS", "from-env-1234567, ,other-env-7654321")
    settings = load_settings(config, {"api_keys": ["from-flag-1234567"], "port": 9100})
    ring = KeyRing(settings.api_keys)
    assert len(ring) == 4 and all(ring.check(k) for k in ("from-config-123456", "from-env-1234567",
                                                          "other-env-7654321", "from-flag-1234567"))
    assert settings.slots == 3 and settings.port == 9100  # the flag wins over the file


def test_bad_settings_name_the_field(tmp_path):
    config = tmp_path / "serve.yaml"
    config.write_text("slots: 0\n")
    with pytest.raises(ConfigError, match="slots"):
        load_settings(config, {})
    config.write_text("nonsense: 1\n")
    with pytest.raises(ConfigError, match="nonsense"):
        load_settings(config, {})
    with pytest.raises(ConfigError, match="--config"):
        load_settings(tmp_path / "missing.yaml", {})


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True),
                                            ("127.5.0.1", True), ("0.0.0.0", False), ("::", False),
                                            ("192.168.1.10", False), ("example.com", False)])
def test_loopback_detection(host, loopback):
    assert is_loopback(host) is loopback


def test_public_bind_needs_keys_or_insecure():
    with pytest.raises(ConfigError, match="--api-key.*--insecure"):
        check_bind(ServeSettings(host="0.0.0.0"), key_count=0)
    check_bind(ServeSettings(host="0.0.0.0"), key_count=1)
    check_bind(ServeSettings(host="0.0.0.0", insecure=True), key_count=0)
    check_bind(ServeSettings(host="127.0.0.1"), key_count=0)


@pytest.mark.parametrize("name", ["../x.txt", "a/x.txt", "a\\x.txt", "/x.txt", ".x.txt", "x..txt", "..", "",
                                  "x\x00.txt", "x\n.txt", " x.txt", "x.txt ", "x.exe", "x", "C:x.txt", "x" * 300 + ".txt"])
def test_unsafe_upload_names_are_refused(name):
    with pytest.raises(APIError) as caught:
        safe_name(name)
    assert caught.value.status in (400, 415) and caught.value.param == "file"


@pytest.mark.parametrize("name", ["notes.md", "Report 2024 (final).PDF", "données.txt", "a-b_c.jsonl"])
def test_plain_upload_names_pass(name):
    assert safe_name(name) == name


def test_content_must_match_the_type():
    check_content("a.pdf", b"%PDF-1.7 ...")
    check_content("a.docx", b"PK\x03\x04...")
    check_content("a.txt", "héllo".encode())
    for name, head in (("a.pdf", b"<html>"), ("a.docx", b"%PDF-"), ("a.txt", b"h\x00e\x00")):
        with pytest.raises(APIError):
            check_content(name, head)


def test_gate_admits_slots_queues_then_refuses():
    async def scenario():
        gate = GenerationGate(slots=1, queue=1)
        first = await gate.acquire()
        waiter = asyncio.ensure_future(gate.acquire())
        await asyncio.sleep(0.01)
        assert gate.active == 1 and gate.waiting == 1 and not waiter.done()
        with pytest.raises(Overloaded) as refused:
            await gate.acquire()
        assert refused.value.retry_after >= 1
        gate.release(first)
        second = await asyncio.wait_for(waiter, 1)
        assert gate.active == 1 and gate.waiting == 0
        cancelled = asyncio.ensure_future(gate.acquire())  # a client leaving the queue gives its place back
        await asyncio.sleep(0.01)
        cancelled.cancel()
        await asyncio.sleep(0.01)
        assert gate.waiting == 0
        gate.release(second)
        assert gate.active == 0

    asyncio.run(scenario())


def test_writer_excludes_readers():
    lock, events = ReadWriteLock(), []

    def reader():
        with lock.read():
            events.append("read")

    with lock.write():
        assert lock.writing
        thread = threading.Thread(target=reader)
        thread.start()
        time.sleep(0.05)
        assert events == []  # the reader waits for the writer
    thread.join(2)
    assert events == ["read"] and not lock.writing


def test_raft_replies_stream_as_reasoning_then_answer():
    from ragtune.answer.streaming import AnswerStream

    def run(pieces, fallback):
        events = []
        splitter = AnswerStream(on_event=lambda text, kind: events.append((kind, text)), tag="<ANSWER>:")
        for piece in pieces:
            splitter.feed(piece)
        splitter.final(fallback)
        joined = {kind: "".join(t for k, t in events if k == kind) for kind in ("reasoning", "content")}
        return joined, events

    joined, _ = run(["Doc 1: ##begin_quote##It is green.##end_quote## <AN", "SWER", ">: ", " green", "."], "green.")
    assert joined == {"reasoning": "Doc 1: ##begin_quote##It is green.##end_quote## ", "content": "green."}
    joined, events = run(["No tag here ", "at all <A", "NSWER"], "No tag here at all <ANSWER")
    assert joined["reasoning"] == "No tag here at all <ANSWER" and joined["content"] == "No tag here at all <ANSWER"
    assert events[-1] == ("content", "No tag here at all <ANSWER")  # the reply is the answer when no tag came


# -- the command -----------------------------------------------------------------------------
def test_cli_refuses_a_public_address_without_keys(tmp_path):
    result = run_cli("serve", tmp_path, "--host", "0.0.0.0", check=False, env={"RAGTUNE_API_KEYS": ""})
    assert result.returncode == 2 and "--api-key" in result.stderr and "Traceback" not in result.stderr
    digest = run_cli("serve", tmp_path, "--hash-key", KEY).stdout.strip()
    assert digest == hash_key(KEY)


@pytest.mark.slow
@pytest.mark.integration
def test_cli_serve_starts_answers_and_stops(tmp_path, make_kb):
    kb = make_kb()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "bridge.txt").write_text("The Halvard bridge crosses the river Otter and is painted green.")
    kb.ingest([tmp_path / "docs"])
    from ragtune.serve.server import free_port

    port = free_port()
    env = dict(os.environ, RAGTUNE_API_KEYS=KEY, PYTHONUNBUFFERED="1")
    process = subprocess.Popen([*RAGTUNE, "serve", str(kb.path), "--port", str(port), "--threads", "1",
                                "--model", "SmolLM2-135M-Instruct"],  # pinned for speed
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read() if process.poll() else "timeout"
            time.sleep(0.3)
        assert httpx.get(url + "/v1/models").status_code == 401
        models = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()
        assert [m["id"] for m in models["data"]] == [f"{kb.path.name}/SmolLM2-135M-Instruct"]
        hits = httpx.post(url + "/v1/search", json={"query": "green bridge"}, headers={"Authorization": f"Bearer {KEY}"})
        assert hits.json()["data"][0]["source"].endswith("bridge.txt")
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status says how it ended
    assert process.returncode in (0, -signal.SIGTERM), stderr
    assert "Traceback" not in stderr and f"http://localhost:{port}" in stderr


@pytest.mark.slow
def test_a_training_run_is_served_on_llamacpp(tmp_path):
    """A LoRA run directory as --model: converted once to a GGUF adapter over its base, served on llama.cpp."""
    from ragtune.generate.llamacpp import unavailable_reason

    if unavailable_reason():
        pytest.skip(unavailable_reason())
    from test_gguf_export import MODEL, write_lora_run

    from ragtune.models.cache import resolve_model_dir
    from ragtune.serve.models import load_generator
    from ragtune.serve.settings import ModelSettings

    run, _ = write_lora_run(tmp_path / "run", resolve_model_dir(MODEL), strength=0.02)
    settings = ServeSettings(threads=1, slots=2)
    served = load_generator(ModelSettings(model=str(run)), settings, cache_dir=tmp_path / "cache")
    assert served.runtime == "llamacpp" and served.label == "run" and served.gate.slots == 2
    adapter = served.generator.lora
    assert adapter.endswith("adapter.gguf") and adapter.startswith(str(tmp_path / "cache" / "serve"))
    assert served.generator.generate([{"role": "user", "content": "Hi"}], max_new_tokens=8).text.strip()
    again = load_generator(ModelSettings(model=str(run)), settings, cache_dir=tmp_path / "cache")
    assert again.generator.lora == adapter  # converted once
