"""Leases (server/state.py): a swapped-out backend is closed after its last request, and a close that fails is
logged without failing the swap that retired it or leaving it counted as draining."""

import asyncio
import logging

from server.metrics import Metrics
from server.state import Leases


class Backend:
    def __init__(self, fails: bool):
        self.fails, self.closed = fails, False

    async def close(self) -> None:
        self.closed = True
        if self.fails:
            raise RuntimeError("the engine would not shut down")


def test_a_failing_close_is_logged_and_the_bookkeeping_goes_on(caplog):
    metrics = Metrics()
    leases = Leases(metrics)
    idle, busy = Backend(fails=True), Backend(fails=True)

    async def scenario() -> None:
        await leases.retire(idle, idle.close)  # no request holds it: closed at once, by the swap itself
        with leases.hold(busy):
            await leases.retire(busy, busy.close)
            assert not busy.closed and metrics.registry.get_sample_value("bon_models_draining") == 1
        await leases.close_all()  # waits for the close that the last lease's return started

    with caplog.at_level(logging.ERROR, logger="server.state"):
        asyncio.run(scenario())
    assert idle.closed and busy.closed and leases.count(busy) == 0
    assert metrics.registry.get_sample_value("bon_models_draining") == 0
    failures = [r for r in caplog.records if r.getMessage() == "closing a swapped-out backend failed"]
    assert len(failures) == 2 and all(r.exc_info[0] is RuntimeError for r in failures)
