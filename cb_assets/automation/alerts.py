"""Alerts: a JSON message to CB_ALERT_WEBHOOK_URL when it is set, a log line otherwise.

Used by the run-failure sensor and by the failing freshness checks. A webhook that does not answer costs a
warning in the log, never the run or the check that raised the alert.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)


def alert(webhook_url: str, kind: str, summary: str, **details: Any) -> bool:
    """Post {"source": "cb-assets", "kind", "summary", "at", ...details}; True when the webhook took it."""
    payload = {
        "source": "cb-assets",
        "kind": kind,
        "summary": summary,
        "at": datetime.now(UTC).isoformat(),
        **details,
    }
    if not webhook_url:
        log.warning("alert (%s): %s %s", kind, summary, details or "")
        return False
    req = urllib.request.Request(
        webhook_url,
        data=json.dumps(payload, default=str).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        log.warning("alert webhook failed (%s); the alert was: %s: %s", exc, kind, summary)
        return False
