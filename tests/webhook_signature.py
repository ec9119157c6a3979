#!/usr/bin/env python3
"""Verifies evalgate's webhook signatures with the reference `standardwebhooks` package.

Reads JSON lines from stdin, one message per line:
    {"secret": "whsec_...", "id": "msg_...", "timestamp": 1700000000,
     "body": "...", "signature": "v1,... v1,...", "valid": true}
`valid` is optional (default true); a line with `"valid": false` must be *rejected* by the
reference verifier (a tampered message), which proves the check is not vacuous.

Exits 0 when every line behaves as expected, 1 otherwise, 2 on unusable input.
The reference verifier refuses timestamps more than 5 minutes from now, so sign with `now`.

    python -m venv /tmp/swh && /tmp/swh/bin/pip install standardwebhooks
    ... | /tmp/swh/bin/python tests/webhook_signature.py
"""

import json
import sys

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def check(line_no: int, msg: dict) -> str | None:
    """Returns an error description, or None when the line behaves as expected."""
    headers = {
        "webhook-id": msg["id"],
        "webhook-timestamp": str(msg["timestamp"]),
        "webhook-signature": msg["signature"],
    }
    expect_valid = msg.get("valid", True)
    try:
        Webhook(msg["secret"]).verify(msg["body"].encode("utf-8"), headers, json_parse=False)
    except WebhookVerificationError as err:
        if expect_valid:
            return f"line {line_no} ({msg['id']}): rejected: {err}"
        return None
    if not expect_valid:
        return f"line {line_no} ({msg['id']}): a tampered message was accepted"
    return None


def main() -> int:
    passed = 0
    failures = []
    for line_no, line in enumerate(sys.stdin, start=1):
        if not line.strip():
            continue
        try:
            msg = json.loads(line)
        except json.JSONDecodeError as err:
            print(f"line {line_no}: not JSON: {err}", file=sys.stderr)
            return 2
        error = check(line_no, msg)
        if error is None:
            passed += 1
        else:
            failures.append(error)
    for error in failures:
        print(error, file=sys.stderr)
    print(f"standardwebhooks: {passed} passed, {len(failures)} failed")
    if passed == 0 and not failures:
        print("no messages on stdin", file=sys.stderr)
        return 2
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
