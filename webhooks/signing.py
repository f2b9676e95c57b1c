"""Standard Webhooks signatures, made by the ``standardwebhooks`` package.

``webhook-signature: v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">``
keyed with the bytes of the ``whsec_<base64>`` secret. The timestamp is the attempt's, so
a retry a day later still passes a receiver's 5-minute tolerance; the id is the message's.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone

from standardwebhooks import Webhook

from jobs.tenants import SECRET_PREFIX, check_secret, new_secret

__all__ = ["SECRET_PREFIX", "USER_AGENT", "Signer", "check_secret", "new_secret"]
USER_AGENT = "diffusion-queue-webhooks/0.1"


class Signer:
    """Signs a delivery with each of the given secrets (a tenant's current one, and the previous
    one during a rotation: ``webhook-signature`` then lists both, space-separated, and a
    receiver accepts the message if any matches)."""

    def __init__(self) -> None:
        self._hooks: dict[str, Webhook] = {}

    def _hook(self, secret: str) -> Webhook:
        hook = self._hooks.get(secret)
        if hook is None:
            check_secret(secret)
            hook = self._hooks[secret] = Webhook(secret)
        return hook

    def headers(self, secrets: Sequence[str], msg_id: str, body: str, at: float) -> dict[str, str]:
        """Every header of one attempt: the three Standard Webhooks ones, content type, user agent."""
        timestamp = int(at)
        moment = datetime.fromtimestamp(timestamp, tz=timezone.utc)
        signature = " ".join(self._hook(secret).sign(msg_id, moment, body) for secret in secrets)
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }
