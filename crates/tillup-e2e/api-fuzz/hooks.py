"""Schemathesis hooks for tillup's APIs (loaded by tests/api_fuzz.rs).

A pack (`application/x-tillup-pack`) is sent as the raw bytes the fuzzer
makes for a binary body: the server and the agent must refuse whatever is
not a pack with a 4xx, never fail on it.
"""

import schemathesis

schemathesis.serializer.alias("application/x-tillup-pack", "application/octet-stream")

