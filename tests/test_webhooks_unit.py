"""Webhook pieces without I/O: SSRF classification, retry decisions, signing, configuration."""

from __future__ import annotations

import base64
import random
import stat
from collections.abc import Sequence
from datetime import datetime, timezone
from email.utils import format_datetime
from pathlib import Path

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from dq.stack import LOCAL_WEBHOOK_ALLOWLIST, WEBHOOK_SECRET_FILE, with_local_webhooks
from jobs.settings import Settings
from webhooks.deliver import DeliveryConfig
from webhooks.policy import (
    MAX_DELAY_S,
    Decision,
    Outcome,
    classify,
    decide,
    jittered,
    parse_retry_after,
    parse_schedule,
)
from webhooks.signing import USER_AGENT, Signer, check_secret, new_secret
from webhooks.ssrf import Allowlist, WebhookHostUnresolved, WebhookURLRefused, check_webhook_url

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
SCHEDULE = parse_schedule("0,5,300,1800,7200,18000,36000,50400,72000,86400")


def fake_dns(table: dict[str, Sequence[str]]):  # type: ignore[no-untyped-def]
    def resolve(host: str, port: int) -> Sequence[str]:
        if host not in table:
            raise OSError(f"no such host {host}")
        return table[host]

    return resolve


PUBLIC_DNS = fake_dns(
    {"hooks.example.com": ["93.184.215.14"], "v6.example.com": ["2606:2800:21f:cb07:6820:80da:af6b:8b2c"]}
)


# -- SSRF ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1/hook", "loopback"),
        ("http://127.8.9.10:8080/hook", "loopback"),
        ("http://10.0.0.1/hook", "private"),
        ("http://172.16.0.1/hook", "private"),
        ("http://172.31.255.254/hook", "private"),
        ("http://192.168.1.20/hook", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://224.0.0.1/hook", "multicast"),
        ("http://0.0.0.0/hook", "unspecified"),
        ("http://240.0.0.1/hook", "reserved"),
        ("http://100.64.0.1/hook", "non-global"),
        ("http://[::1]/hook", "loopback"),
        ("http://[::]/hook", "unspecified"),
        ("http://[fc00::1]/hook", "private"),
        ("http://[fd12:3456::1]/hook", "private"),
        ("http://[fe80::1]/hook", "link-local"),
        ("http://[ff02::1]/hook", "multicast"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://[::ffff:169.254.169.254]/hook", "link-local"),
        ("http://[2002:a00:1::]/hook", "private"),  # 6to4 of 10.0.0.1
    ],
)
def test_internal_literal_addresses_are_refused(url: str, kind: str) -> None:
    with pytest.raises(WebhookURLRefused, match=f"is a {kind} address"):
        check_webhook_url(url, "", PUBLIC_DNS)


@pytest.mark.parametrize(
    ("host", "addresses", "kind"),
    [
        ("localhost", ["127.0.0.1", "::1"], "loopback"),
        ("metadata.internal", ["169.254.169.254"], "link-local"),
        ("intranet.example.com", ["10.20.30.40"], "private"),
        ("mixed.example.com", ["93.184.215.14", "192.168.0.5"], "private"),  # one bad address is enough
        ("v6only.example.com", ["fd00::5"], "private"),
    ],
)
def test_hostnames_resolving_to_internal_addresses_are_refused(host: str, addresses: list[str], kind: str) -> None:
    with pytest.raises(WebhookURLRefused, match=f"{host} resolves to .* is a {kind} address"):
        check_webhook_url(f"https://{host}/hook", "", fake_dns({host: addresses}))


@pytest.mark.parametrize("host", ["localhost", "2130706433", "127.1", "0x7f000001"])
def test_the_real_resolver_sees_through_loopback_spellings(host: str) -> None:
    with pytest.raises(WebhookURLRefused, match="loopback"):
        check_webhook_url(f"http://{host}:8000/hook", "")


@pytest.mark.parametrize(
    "url", ["ftp://example.com/x", "file:///etc/passwd", "gopher://h/", "javascript:alert(1)", "//h/x"]
)
def test_only_http_and_https_are_accepted(url: str) -> None:
    with pytest.raises(WebhookURLRefused, match="http or https"):
        check_webhook_url(url, "127.0.0.1", PUBLIC_DNS)


def test_unresolvable_host_is_its_own_refusal() -> None:
    with pytest.raises(WebhookHostUnresolved, match="does not resolve"):
        check_webhook_url("https://nowhere.example.com/", "", PUBLIC_DNS)
    with pytest.raises(WebhookHostUnresolved):
        check_webhook_url("https://no-such-host.invalid/", "")  # the real resolver


def test_public_target_is_pinned_to_the_vetted_address() -> None:
    target = check_webhook_url("https://user:pw@Hooks.Example.com:8443/in/dq?src=1#frag", "", PUBLIC_DNS)
    assert (target.scheme, target.host, target.port, target.ip) == ("https", "hooks.example.com", 8443, "93.184.215.14")
    assert target.path == "/in/dq?src=1" and target.host_header == "Hooks.Example.com:8443"
    v6 = check_webhook_url("http://v6.example.com", "", PUBLIC_DNS)
    assert v6.port == 80 and v6.path == "/" and v6.ip.startswith("2606:")


def test_allowlist_permits_by_host_and_by_cidr() -> None:
    dns = fake_dns(
        {
            "localhost": ["127.0.0.1"],
            "localhost.": ["127.0.0.1"],
            "hooks.internal": ["10.1.2.3"],
            "other.internal": ["10.9.9.9"],
        }
    )
    assert check_webhook_url("http://localhost:9/h", "localhost", dns).ip == "127.0.0.1"
    assert check_webhook_url("http://LOCALHOST./h", " localhost ", dns).ip == "127.0.0.1"
    assert check_webhook_url("http://hooks.internal/h", "10.1.0.0/16", dns).ip == "10.1.2.3"
    assert check_webhook_url("http://127.0.0.1:9/h", "127.0.0.1", dns).ip == "127.0.0.1"
    assert check_webhook_url("http://[::1]:9/h", "::1", dns).ip == "::1"
    assert check_webhook_url("http://[::ffff:127.0.0.1]:9/h", "127.0.0.0/8", dns).ip == "::ffff:7f00:1"
    with pytest.raises(WebhookURLRefused):
        check_webhook_url("http://other.internal/h", "10.1.0.0/16, hooks.internal", dns)
    with pytest.raises(WebhookURLRefused):
        check_webhook_url("http://192.168.1.1/h", "127.0.0.1,localhost,::1", dns)


def test_allowlist_parsing() -> None:
    allowed = Allowlist.parse("127.0.0.1, Hooks.Internal ,10.0.0.0/8,[::1],,")
    assert allowed.hosts == frozenset({"hooks.internal"})
    assert [str(n) for n in allowed.networks] == ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]
    assert Allowlist.parse("") == Allowlist()


# -- retry policy --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.DELIVERED),
        (201, Outcome.DELIVERED),
        (204, Outcome.DELIVERED),
        (410, Outcome.GONE),
        (301, Outcome.FAILED),
        (302, Outcome.FAILED),
        (307, Outcome.FAILED),
        (400, Outcome.FAILED),
        (401, Outcome.FAILED),
        (404, Outcome.FAILED),
        (422, Outcome.FAILED),
        (408, Outcome.RETRYING),
        (429, Outcome.RETRYING),
        (500, Outcome.RETRYING),
        (502, Outcome.RETRYING),
        (503, Outcome.RETRYING),
        (None, Outcome.RETRYING),
    ],
)
def test_each_status_class(status: int | None, outcome: Outcome) -> None:
    assert classify(status) is outcome
    decision = decide(status, 1, SCHEDULE, rng=random.Random(1))
    assert decision.outcome is outcome
    assert (decision.delay_s is not None) == (outcome is Outcome.RETRYING)


def test_schedule_delays_with_jitter_then_give_up() -> None:
    rng = random.Random(7)
    for attempt in range(1, len(SCHEDULE)):
        decision = decide(503, attempt, SCHEDULE, rng=rng)
        assert decision.outcome is Outcome.RETRYING and decision.delay_s is not None
        base = SCHEDULE[attempt]
        assert 0.9 * base <= decision.delay_s <= min(1.1 * base, MAX_DELAY_S)
    assert decide(503, len(SCHEDULE), SCHEDULE) == Decision(Outcome.GIVEN_UP)
    assert decide(None, 4, parse_schedule("0,0.2,0.2,0.2")) == Decision(Outcome.GIVEN_UP)
    assert decide(200, len(SCHEDULE), SCHEDULE) == Decision(Outcome.DELIVERED)  # a last success is a success


def test_jitter_stays_within_ten_percent() -> None:
    rng = random.Random(3)
    samples = [jittered(100.0, rng) for _ in range(2000)]
    assert 90.0 <= min(samples) < 91.0 and 109.0 < max(samples) <= 110.0
    assert jittered(0.0, rng) == 0.0


def test_retry_after_is_honoured_when_longer_and_capped_at_a_day() -> None:
    rng = random.Random(5)
    assert decide(429, 1, SCHEDULE, retry_after_s=120.0, rng=rng).delay_s == 120.0  # longer than ~5 s
    shorter = decide(429, 2, SCHEDULE, retry_after_s=1.0, rng=rng).delay_s  # schedule says ~300 s
    assert shorter is not None and 270 <= shorter <= 330
    assert decide(503, 1, SCHEDULE, retry_after_s=10 * 86_400.0, rng=rng).delay_s == MAX_DELAY_S


def test_retry_after_parsing() -> None:
    now = 1_764_148_200.0
    later = datetime.fromtimestamp(now + 90, tz=timezone.utc)
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 0 ", now) == 0.0
    assert parse_retry_after(format_datetime(later, usegmt=True), now) == pytest.approx(90.0)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now) == 0.0  # in the past: no wait
    for bad in (None, "", "soon", "-5", "1.5", "Wed, 99 Foo 2015"):
        assert parse_retry_after(bad, now) is None


def test_schedule_parsing() -> None:
    assert parse_schedule("0, 0.2,0.2 ,0.2") == (0.0, 0.2, 0.2, 0.2)
    for bad in ("", "1,x", "-1", "0,90000"):
        with pytest.raises(ValueError, match="DQ_WEBHOOK_RETRY_SCHEDULE_S"):
            parse_schedule(bad)


# -- signing -------------------------------------------------------------------------
def test_signature_round_trip_with_standardwebhooks() -> None:
    body = '{"type":"job.succeeded","timestamp":"2026-11-26T09:10:01.785Z","data":{"id":"abc"}}'
    now = datetime.now(tz=timezone.utc).timestamp()
    headers = Signer().headers([SECRET], "msg_abc_3", body, now)
    assert headers["webhook-id"] == "msg_abc_3" and headers["webhook-timestamp"] == str(int(now))
    assert headers["webhook-signature"].startswith("v1,")
    assert headers["Content-Type"] == "application/json" and headers["User-Agent"] == USER_AGENT
    assert Webhook(SECRET).verify(body, headers) == {
        "type": "job.succeeded",
        "timestamp": "2026-11-26T09:10:01.785Z",
        "data": {"id": "abc"},
    }
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace("abc", "abd"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    stale = Signer().headers([SECRET], "msg_abc_3", body, now - 3600)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(SECRET).verify(body, stale)


def test_secrets() -> None:
    fresh = new_secret()
    check_secret(fresh)
    assert fresh.startswith("whsec_") and len(base64.b64decode(fresh[6:])) == 32 and new_secret() != fresh
    for bad, why in (
        ("abc", "whsec_"),
        ("whsec_!!!", "base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "24"),
    ):
        with pytest.raises(ValueError, match=why):
            check_secret(bad)


# -- configuration --------------------------------------------------------------------
def test_delivery_config_from_settings() -> None:
    config = DeliveryConfig.from_settings(
        Settings(webhook_secret=SECRET, webhook_retry_schedule_s="0,0.2", webhook_allowlist="127.0.0.1")
    )
    assert config.schedule_s == (0.0, 0.2) and config.timeout_s == 10.0 and config.concurrency == 16
    assert config.allowlist.networks and config.claim_timeout_s > config.timeout_s
    assert DeliveryConfig.from_settings(Settings(webhook_secret=SECRET)).schedule_s == SCHEDULE


@pytest.mark.parametrize(
    ("changes", "variable"),
    [
        ({"webhook_secret": "not-a-secret"}, "DQ_WEBHOOK_SECRET"),
        ({"webhook_timeout_s": 20.0}, "DQ_WEBHOOK_TIMEOUT_S"),
        ({"webhook_timeout_s": 0.0}, "DQ_WEBHOOK_TIMEOUT_S"),
        ({"webhook_concurrency": 0}, "DQ_WEBHOOK_CONCURRENCY"),
        ({"webhook_claim_timeout_s": 5.0}, "DQ_WEBHOOK_CLAIM_TIMEOUT_S"),
        ({"webhook_retry_schedule_s": "soon"}, "DQ_WEBHOOK_RETRY_SCHEDULE_S"),
    ],
)
def test_delivery_config_names_the_bad_variable(changes: dict[str, object], variable: str) -> None:
    with pytest.raises(ValueError, match=variable):
        DeliveryConfig.from_settings(Settings(webhook_secret=SECRET).with_(**changes))


def test_local_stack_writes_a_private_secret_once(tmp_path: Path) -> None:
    local = with_local_webhooks(Settings.from_env({}), tmp_path)
    path = tmp_path / WEBHOOK_SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (local.webhook_secret, local.webhook_allowlist) == (path.read_text().strip(), LOCAL_WEBHOOK_ALLOWLIST)
    check_secret(local.webhook_secret)
    assert with_local_webhooks(Settings.from_env({}), tmp_path) == local  # the next `dq up` keeps the secret
    configured = Settings.from_env({"DQ_WEBHOOK_SECRET": SECRET, "DQ_WEBHOOK_ALLOWLIST": ""})
    given = with_local_webhooks(configured, tmp_path / "elsewhere")
    assert given == configured and not (tmp_path / "elsewhere").exists()
