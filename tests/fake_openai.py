"""A real HTTP server on loopback that speaks (or breaks) the OpenAI chat-completions protocol.

Behaviours: ok (streams the reply; sends token usage in a final choice-less chunk when the request
asks with stream_options.include_usage, as OpenAI and vLLM do), no_usage (ignores stream_options, as
servers without usage reporting do), reject_stream_options (HTTP 400 naming the field when it is
sent, as strict older servers do; streams without usage otherwise), bad_request (HTTP 400 about
max_tokens, always), slow, garbage, error.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def default_usage(body: dict, reply: str) -> tuple[int, int]:
    """Counts that differ from any estimate the client could make (characters / 4, chunks), so a
    test can tell the server's numbers from a guess."""
    words = sum(len(str(m.get("content") or "").split()) for m in body["messages"])
    return 3 * words + 11, 2 * len(reply.split(" ")) + 1


def _handler(behaviour: str, reply: str, seen: list, usage: tuple[int, int] | None):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args):
            pass

        def do_POST(self):  # noqa: N802 - http.server's naming
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            if behaviour == "slow":
                time.sleep(3)
            if behaviour == "garbage":
                payload = b"<html>502 bad gateway</html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", str(len(b"data: " + payload + b"\n\n")))
                self.end_headers()
                self.wfile.write(b"data: " + payload + b"\n\n")
                return
            if behaviour == "error":
                self.send_response(500)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"error": {"message": "model crashed"}}')
                return
            wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            refused = behaviour == "bad_request" or (behaviour == "reject_stream_options" and "stream_options" in body)
            if refused:
                field = "stream_options" if behaviour == "reject_stream_options" else "max_tokens"
                message = json.dumps({"error": {"message": f"Unrecognized request argument supplied: {field}",
                                                "type": "invalid_request_error", "param": field}}).encode()
                self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(message)))
                self.end_headers()
                self.wfile.write(message)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for word in reply.split(" "):
                chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            done = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            self.wfile.write(f"data: {json.dumps(done)}\n\n".encode())
            if wants_usage and behaviour == "ok":
                prompt, completion = usage or default_usage(body, reply)
                final = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                         "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                                  "total_tokens": prompt + completion}}
                self.wfile.write(f"data: {json.dumps(final)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")

    return Handler


@contextmanager
def fake_openai(behaviour: str = "ok", reply: str = "Paris is the capital [1].", usage: tuple[int, int] | None = None):
    """Yields (base_url, requests seen); `usage` = (prompt_tokens, completion_tokens) to report."""
    seen: list = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(behaviour, reply, seen, usage))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    finally:
        server.shutdown()
        server.server_close()
