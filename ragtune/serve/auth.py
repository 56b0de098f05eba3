"""API keys: kept only as SHA-256 digests, checked in constant time, sent as `Authorization: Bearer`.

Why hashed: the process never holds the plain keys after start-up, so a memory dump, a log line or
a debug page cannot leak them; the config file may hold the digests instead of the keys
(`sha256:<hex>`, printed by `ragtune serve --hash-key KEY`). Why every digest is compared: stopping
at the first match would tell a timing observer which configured key a guess is closest to.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from ..errors import ConfigError

PREFIX = "sha256:"
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
MIN_KEY_CHARS = 8


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def hash_key(key: str) -> str:
    """The form a config file may store instead of the key itself."""
    return PREFIX + digest(key).hex()


class KeyRing:
    """The accepted keys' digests; empty means the server is open (loopback or --insecure)."""

    def __init__(self, keys: list[str] | tuple[str, ...] = ()):
        digests = []
        for key in keys:
            key = key.strip()
            if DIGEST.match(key):
                digests.append(bytes.fromhex(key[len(PREFIX):]))
            elif len(key) < MIN_KEY_CHARS:
                raise ConfigError(f"--api-key: a key of {len(key)} characters is too easy to guess; "
                                  f"use at least {MIN_KEY_CHARS} (e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`)")
            else:
                digests.append(digest(key))
        self._digests = list(dict.fromkeys(digests))

    def __len__(self) -> int:
        return len(self._digests)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, presented: str | None) -> bool:
        """True when no keys are configured, or `presented` is one of them (constant time per key)."""
        if not self._digests:
            return True
        if not presented:
            return False
        candidate = digest(presented)
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(candidate, known)
        return matched


def presented_key(headers) -> str | None:
    """The key from `Authorization: Bearer KEY` (what OpenAI clients send) or `X-API-Key: KEY`."""
    value = headers.get("authorization")
    if value:
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    return headers.get("x-api-key")
