#!/usr/bin/env python3
"""Verifies a vmnd webhook signature with nothing but the Python standard library.

An implementation independent of vmnd's Rust code, used by tests/webhook_client.rs and
usable by tenants as a reference:

    python3 tests/verify_signature.py <secret> <Vmnd-Signature header> [tolerance_secs] < body

The raw request body is read from stdin, byte for byte. Exit status: 0 valid, 1 invalid,
2 usage error.
"""

import hashlib
import hmac
import sys
import time


def verify(secret: bytes, header: str, body: bytes, now: int, tolerance: int) -> bool:
    timestamps = []
    tags = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            timestamps.append(value.strip())
        elif key == "v1":
            tags.append(value.strip().lower())
    # Exactly one timestamp, all digits; at least one v1 tag.
    if len(timestamps) != 1 or not timestamps[0].isdigit() or not tags:
        return False
    t = int(timestamps[0])
    if abs(now - t) > tolerance:
        return False
    expected = hmac.new(secret, str(t).encode() + b"." + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, tag) for tag in tags)


def main() -> int:
    if len(sys.argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    secret = sys.argv[1].encode()
    header = sys.argv[2]
    try:
        tolerance = int(sys.argv[3]) if len(sys.argv) == 4 else 300
    except ValueError:
        print("tolerance_secs must be an integer", file=sys.stderr)
        return 2
    body = sys.stdin.buffer.read()
    return 0 if verify(secret, header, body, int(time.time()), tolerance) else 1


if __name__ == "__main__":
    sys.exit(main())
