"""Riding out an outage: logged when it begins, again while it lasts, and when it ends."""

from __future__ import annotations

import time

import pytest
from structlog.testing import capture_logs

from taskd.errors import BrokerUnavailable
from taskd.worker import outages
from taskd.worker.outages import Outages


def test_a_lasting_outage_is_logged_with_its_duration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outages, "REPORT_EVERY_S", 0.2)
    monkeypatch.setattr(outages, "BACKOFF_MAX_S", 0.05)
    back_at = time.monotonic() + 0.7

    def connect() -> str:
        if time.monotonic() < back_at:
            raise BrokerUnavailable("redis", "Connection refused")
        return "connected"

    reports: list[tuple[str, float]] = []
    riding = Outages(lambda: False, lambda: None, lambda *report: reports.append(report))
    with capture_logs() as logs:
        assert riding.call("broker", connect) == "connected"
    assert [kind for kind, _since in reports] == ["broker", ""]  # for the status systemd shows
    events = [entry["event"] for entry in logs]
    assert events[0] == "broker_unavailable" and events[-1] == "broker_recovered"
    lasting = [entry for entry in logs if entry["event"] == "broker_still_unavailable"]
    assert 2 <= len(lasting) <= 4  # every 0.2 s of a 0.7 s outage, not on every attempt
    assert [entry["outage_s"] for entry in lasting] == sorted(e["outage_s"] for e in lasting)
    assert lasting[0]["outage_s"] >= 0.2 and "Connection refused" in lasting[0]["error"]
    assert logs[-1]["outage_s"] >= 0.7
