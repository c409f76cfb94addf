"""Graceful shutdown: uvicorn's server, draining on SIGTERM before it stops.

On the first SIGTERM (or SIGINT) the server keeps listening but reports not ready (`/ready` 503, reason
`shutting_down`) and answers new requests 503 with Retry-After, so that a load balancer takes it out of rotation,
while the requests in flight and queued finish, for at most `shutdown_grace_s`. Then uvicorn's own shutdown
closes the connections, the models are released, and the process exits 0. A second signal ends the drain at
once (and the process ends by that signal, as uvicorn has it); a third (SIGINT) stops without waiting for
anything.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from types import FrameType

import uvicorn

from server.state import ServerState

log = logging.getLogger(__name__)


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState):
        super().__init__(config)
        self.state = state
        self._drain_until: float | None = None
        self._announced = False

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        super().run(sockets)
        if self._drain_until is not None:
            # Drained and shut down on a signal, the models closed. What is left, atexit handlers and collecting
            # every object of torch and the models (seconds), uvicorn skips too, by raising the signal again: end
            # the same way, with status 0.
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_until is None:
            # A signal handler: plain assignments only; `on_tick`, on the event loop, does the rest.
            self._drain_until = time.monotonic() + self.state.settings.shutdown_grace_s
            self.state.shutting_down = True
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_until is not None and not self.should_exit:
            admission = self.state.admission
            busy = admission.in_flight + admission.waiting
            if not self._announced:
                self._announced = True
                log.warning("shutting down: new requests are refused; %d in flight or queued may take %g s to finish",
                            busy, self.state.settings.shutdown_grace_s)
            if busy == 0:
                self.should_exit = True
            elif time.monotonic() >= self._drain_until:
                log.warning("shutting down: the grace period of %g s is over with %d requests unfinished",
                            self.state.settings.shutdown_grace_s, busy)
                self.should_exit = True
        return await super().on_tick(counter)
