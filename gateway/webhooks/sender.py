"""One HTTP attempt: POST the stored body with fresh signature headers, through the SSRF
guard, within the timeout, following no redirect and reading no response body."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from datetime import datetime
from pathlib import Path

import httpcore
import httpx

from gateway.webhooks.repository import Claim
from gateway.webhooks.schedule import Outcome, Verdict, judge
from gateway.webhooks.formats import sign
from gateway.webhooks.ssrf import ForbiddenTarget, GuardedBackend, Policy, check_url_syntax

__all__ = ["WebhookSender", "USER_AGENT"]

USER_AGENT = "smsgw-webhooks/1"

log = logging.getLogger(__name__)
# httpx logs every request with its full URL at INFO (httpcore the traffic at DEBUG); a
# receiver's URL may carry its own secret. The worker logs what matters, without it.
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class WebhookSender:
    def __init__(self, policy: Policy, timeout: float, *, ca_file: Path | None = None, max_connections: int = 64) -> None:
        self.policy = policy
        self.timeout = timeout
        # A private CA when configured, else certifi's roots (httpx's default).
        ctx = ssl.create_default_context(cafile=str(ca_file)) if ca_file else httpx.create_ssl_context()
        transport = httpx.AsyncHTTPTransport(verify=ctx, trust_env=False, retries=0)
        # httpx has no parameter for the network backend; the pool is rebuilt with the guard
        # (httpcore 1.x, pinned in constraints.txt; a test proves a loopback name is refused).
        transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=ctx,
            max_connections=max_connections,
            max_keepalive_connections=max_connections // 4,
            keepalive_expiry=30.0,
            network_backend=GuardedBackend(policy),
        )
        self.client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            trust_env=False,
            headers={"user-agent": USER_AGENT, "content-type": "application/json"},
        )

    async def send(self, claim: Claim, now: datetime) -> tuple[Outcome, int]:
        """(outcome, latency in ms). Never raises for anything the receiver or network does."""
        started = time.monotonic()
        headers = sign(claim.format, claim.secrets, claim.delivery_id, int(now.timestamp()), claim.payload)
        try:
            check_url_syntax(claim.url, self.policy)  # the config may have tightened since creation
            async with asyncio.timeout(self.timeout):
                async with self.client.stream("POST", claim.url, content=claim.payload, headers=headers) as response:
                    outcome = judge(response.status_code, response.headers.get("retry-after"), now)
        except ForbiddenTarget as exc:  # the URL itself, not the network: trying again changes nothing
            outcome = Outcome(Verdict.FINAL, 0, f"refused by the SSRF guard: the URL {exc}")
        except (TimeoutError, httpx.TimeoutException):
            outcome = Outcome(Verdict.RETRY, 0, f"timed out after {self.timeout:g} s")
        except httpx.HTTPError as exc:
            outcome = Outcome(Verdict.RETRY, 0, _describe(exc))
        except (httpx.InvalidURL, ValueError, UnicodeError) as exc:
            # A URL httpx cannot use (creation refuses these; a row from an older version might not).
            outcome = Outcome(Verdict.FINAL, 0, f"unusable URL ({exc.__class__.__name__})")
        except Exception as exc:  # never let one receiver's oddity skip the attempt log and the schedule
            log.exception("webhook %s: unexpected error sending", claim.webhook_id)
            outcome = Outcome(Verdict.RETRY, 0, f"unexpected error ({exc.__class__.__name__})")
        return outcome, round((time.monotonic() - started) * 1000)

    async def aclose(self) -> None:
        await self.client.aclose()


def _describe(exc: httpx.HTTPError) -> str:
    """A short reason without the URL's query (it may carry the receiver's own token)."""
    text = str(exc) or exc.__class__.__name__
    if isinstance(exc, httpx.ConnectError):
        return f"connection failed: {text}"[:200]
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"connection closed without a valid answer: {text}"[:200]
    return f"{exc.__class__.__name__}: {text}"[:200]
