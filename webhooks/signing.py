"""Standard Webhooks signatures, made by the ``standardwebhooks`` package.

``webhook-signature: v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">``
keyed with the bytes of the ``whsec_<base64>`` secret. The timestamp is the attempt's, so
a retry a day later still passes a receiver's 5-minute tolerance; the id is the message's.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from datetime import datetime, timezone

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"
USER_AGENT = "diffusion-queue-webhooks/0.1"
MIN_SECRET_BYTES = 24  # the Standard Webhooks range: 24 to 64 bytes
MAX_SECRET_BYTES = 64


def new_secret() -> str:
    """A fresh ``whsec_`` secret (32 random bytes)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def check_secret(secret: str) -> None:
    """Raise ``ValueError`` unless ``secret`` is ``whsec_`` + base64 of 24 to 64 bytes."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"must start with {SECRET_PREFIX!r} (generate one with `dq up` or new_secret())")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error as exc:
        raise ValueError(f"is not valid base64 after {SECRET_PREFIX!r}: {exc}") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(f"must encode {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, not {len(key)}")


class Signer:
    def __init__(self, secret: str) -> None:
        check_secret(secret)
        self._webhook = Webhook(secret)

    def headers(self, msg_id: str, body: str, at: float) -> dict[str, str]:
        """Every header of one attempt: the three Standard Webhooks ones, content type, user agent."""
        timestamp = int(at)
        signature = self._webhook.sign(msg_id, datetime.fromtimestamp(timestamp, tz=timezone.utc), body)
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }
