"""Identity: API keys, the tenants they belong to, and each tenant's webhook signing secret.

A key reads ``dq_<prefix>_<secret>``: the 8-hex-digit prefix is not secret (lists and logs
name a key by it); the secret part is 32 random bytes. Redis holds only the SHA-256 of the
whole key, under ``dq:apikey:<prefix>``; a presented key is found by its prefix and its hash
compared in constant time. A SHA-256 is enough: keys are random (256 bits), not passwords.

A tenant is a name; a job belongs to the tenant of the key that created it. Each tenant has
its own Standard Webhooks secret (``whsec_…``), made on first use; rotating it keeps the old
one valid for a window, during which deliveries carry both signatures.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

from jobs.connections import as_text
from jobs.keys import Keys

TENANT_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
KEY_PATTERN = re.compile(r"dq_([0-9a-f]{8})_([A-Za-z0-9_-]{43})")
DEFAULT_TENANT = "default"  # with DQ_AUTH=off, and the local stack's admin key
PRIORITIES = ("low", "normal", "high")
CACHE_S = 0.8  # how stale a key lookup may be (a revocation takes effect within this)
TOUCH_S = 60.0  # `last_used_at` is written at most this often per key and process
SECRET_PREFIX = "whsec_"
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


def check_tenant(name: str) -> str:
    if not TENANT_PATTERN.fullmatch(name):
        raise ValueError("a tenant is 1-64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit")
    return name


def new_api_key() -> tuple[str, str]:
    """(prefix, key) for a new key."""
    prefix = secrets.token_hex(4)
    return prefix, f"dq_{prefix}_{secrets.token_urlsafe(32)}"


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """A key's record (never its secret). Limits left ``None`` take the configured defaults."""

    prefix: str
    tenant: str
    label: str = ""
    admin: bool = False
    created_at: float = 0.0
    last_used_at: float | None = None
    rate_limit_per_s: float | None = None
    rate_limit_burst: int | None = None
    max_active_jobs: int | None = None
    max_priority: str = "normal"

    def public(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> ApiKey:
        def opt(name: str, kind: type) -> Any:
            value = raw.get(name, "")
            return kind(value) if value != "" else None

        return cls(
            prefix=raw["prefix"],
            tenant=raw["tenant"],
            label=raw.get("label", ""),
            admin=raw.get("admin") == "1",
            created_at=float(raw.get("created_at") or 0),
            last_used_at=opt("last_used_at", float),
            rate_limit_per_s=opt("rate_limit_per_s", float),
            rate_limit_burst=opt("rate_limit_burst", int),
            max_active_jobs=opt("max_active_jobs", int),
            max_priority=raw.get("max_priority") or "normal",
        )


class KeyStore:
    """API keys in Redis: create (the secret is returned once), look up, list, revoke."""

    def __init__(self, client: redis.Redis, keys: Keys | None = None) -> None:
        self.redis = client
        self.keys = keys or Keys()

    def create(
        self,
        tenant: str,
        *,
        label: str = "",
        admin: bool = False,
        rate_limit_per_s: float | None = None,
        rate_limit_burst: int | None = None,
        max_active_jobs: int | None = None,
        max_priority: str = "normal",
        key: str | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key for ``tenant``: its record and the key itself (shown once, never stored).

        ``key`` registers a given key (``DQ_API_KEY`` for the local stack) instead of a new one.
        Raises ``ValueError`` for a bad tenant, priority or key.
        """
        check_tenant(tenant)
        if max_priority not in PRIORITIES:
            raise ValueError(f"max_priority must be one of {', '.join(PRIORITIES)}")
        if key is None:
            prefix, key = new_api_key()
        else:
            match = KEY_PATTERN.fullmatch(key)
            if match is None:
                raise ValueError("an API key reads dq_<8 hex digits>_<43 characters of base64url>")
            prefix = match.group(1)
        record = ApiKey(
            prefix=prefix,
            tenant=tenant,
            label=label,
            admin=admin,
            created_at=time.time(),
            rate_limit_per_s=rate_limit_per_s,
            rate_limit_burst=rate_limit_burst,
            max_active_jobs=max_active_jobs,
            max_priority=max_priority,
        )
        fields: dict[Any, Any] = {name: _field(value) for name, value in record.public().items()}
        fields["digest"] = key_digest(key)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.keys.api_key(prefix), mapping=fields)
        pipe.zadd(self.keys.api_keys(), {prefix: record.created_at})
        pipe.execute()
        return record, key

    def lookup(self, presented: str) -> ApiKey | None:
        """The record of a well-formed, known, unrevoked key; None otherwise."""
        match = KEY_PATTERN.fullmatch(presented)
        if match is None:
            return None
        raw: Any = self.redis.hgetall(self.keys.api_key(match.group(1)))
        fields = {as_text(k): as_text(v) for k, v in raw.items()}
        stored = fields.get("digest", "")
        # compare_digest on equal-length strings even when the key is unknown: no timing tell
        if not hmac.compare_digest(stored or "0" * 64, key_digest(presented)) or not stored:
            return None
        return ApiKey.from_hash(fields)

    def get(self, prefix: str) -> ApiKey | None:
        """The record of the key with this prefix; None when there is none (or it was revoked)."""
        raw: Any = self.redis.hgetall(self.keys.api_key(prefix))
        fields = {as_text(k): as_text(v) for k, v in raw.items()}
        if not fields.get("digest"):  # none, or only a `touch` that raced a revocation
            return None
        return ApiKey.from_hash(fields)

    def touch(self, prefix: str, now: float) -> None:
        """Record a use (callers do it at most every few seconds per key)."""
        self.redis.hset(self.keys.api_key(prefix), "last_used_at", repr(now))

    def list(self, tenant: str | None = None) -> list[ApiKey]:
        prefixes = [as_text(p) for p in self.redis.zrange(self.keys.api_keys(), 0, -1)]  # type: ignore[union-attr]
        pipe = self.redis.pipeline(transaction=False)
        for prefix in prefixes:
            pipe.hgetall(self.keys.api_key(prefix))
        records = []
        for raw in pipe.execute():
            if raw:
                record = ApiKey.from_hash({as_text(k): as_text(v) for k, v in raw.items()})
                if tenant is None or record.tenant == tenant:
                    records.append(record)
        return records

    def revoke(self, prefix: str) -> bool:
        """Delete the key; False when there is no such key. Every API process refuses it at
        its next request that misses its (≤ 1 s) cache."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.keys.api_key(prefix))
        pipe.zrem(self.keys.api_keys(), prefix)
        deleted, _ = pipe.execute()
        return bool(deleted)


class KeyCache:
    """Key lookups remembered for ``CACHE_S`` (by digest: the key itself is not kept), and
    ``last_used_at`` written at most every ``TOUCH_S``."""

    def __init__(self, store: KeyStore, ttl_s: float = CACHE_S) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._found: dict[str, tuple[float, ApiKey | None]] = {}
        self._touched: dict[str, float] = {}

    def lookup(self, presented: str, now: float) -> ApiKey | None:
        digest = key_digest(presented)
        with self._lock:
            hit = self._found.get(digest)
        if hit is not None and now - hit[0] <= self.ttl_s:
            return hit[1]
        record = self.store.lookup(presented)
        with self._lock:
            if len(self._found) > 10_000:  # unknown keys must not grow it without bound
                self._found.clear()
            self._found[digest] = (now, record)
        if record is not None and now - self._touched.get(record.prefix, 0.0) > TOUCH_S:
            self._touched[record.prefix] = now
            self.store.touch(record.prefix, now)
        return record


@dataclass(frozen=True)
class WebhookSecret:
    """A tenant's signing secret, and the previous one while a rotation window is open."""

    secret: str
    previous: str | None = None
    previous_until: float | None = None

    def signing(self, now: float) -> list[str]:
        """The secrets a delivery is signed with at ``now`` (both during a rotation)."""
        if self.previous and self.previous_until and now < self.previous_until:
            return [self.secret, self.previous]
        return [self.secret]


class Tenants:
    """Each tenant's webhook secret (``dq:tenant:<name>``), made on first use.

    ``default_secret`` (``DQ_WEBHOOK_SECRET``) becomes the first secret of the ``default``
    tenant, so a local stack's receivers keep verifying with the secret they know.
    """

    def __init__(self, client: redis.Redis, keys: Keys | None = None, *, default_secret: str = "") -> None:
        self.redis = client
        self.keys = keys or Keys()
        self.default_secret = default_secret

    def webhook_secret(self, tenant: str) -> WebhookSecret:
        key = self.keys.tenant(tenant)
        raw: Any = self.redis.hmget(key, "webhook_secret", "previous_secret", "previous_until")
        if raw[0] is None:
            first = self.default_secret if tenant == DEFAULT_TENANT and self.default_secret else new_secret()
            self.redis.hsetnx(key, "webhook_secret", first)  # two first uses: one secret wins
            raw = self.redis.hmget(key, "webhook_secret", "previous_secret", "previous_until")
        secret, previous, until = (as_text(v) if v is not None else None for v in raw)
        return WebhookSecret(str(secret), previous or None, float(until) if until else None)

    def rotate(self, tenant: str, window_s: float, now: float | None = None) -> WebhookSecret:
        """A new secret; the current one stays valid (deliveries signed with both) for ``window_s``."""
        now = time.time() if now is None else now
        current = self.webhook_secret(tenant)
        self.redis.hset(
            self.keys.tenant(tenant),
            mapping={
                "webhook_secret": new_secret(),
                "previous_secret": current.secret,
                "previous_until": repr(now + window_s),
            },
        )
        return self.webhook_secret(tenant)


def _field(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(value) if isinstance(value, float) else str(value)
