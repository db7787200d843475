"""Shared pytest configuration: the swarmfl test kit, one torch thread for stable runs, and a
guard that keeps IP sockets to the tests marked ``network``."""

import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(1)

# A busy machine must not fail a property test: no per-example deadline, and no health check
# that measures how fast examples are generated (tests' own @settings add to this profile).
settings.register_profile("swarmfl", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("swarmfl")

pytest_plugins = ["swarmfl.testing"]

_IP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


@pytest.fixture(autouse=True)
def _ip_sockets_only_in_network_tests(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that binds, connects or sends on an IP socket must be marked ``network``.

    The event loop's own self-pipe is a Unix socket pair and stays allowed.
    """
    if request.node.get_closest_marker("network") is not None:
        yield
        return
    name = request.node.nodeid

    def guarded(method: Callable[..., Any]) -> Callable[..., Any]:
        def call(sock: socket.socket, *args: Any, **kwargs: Any) -> Any:
            if sock.family in _IP_FAMILIES:
                raise AssertionError(f"{name} uses an IP socket: mark it network")
            return method(sock, *args, **kwargs)

        return call

    with pytest.MonkeyPatch.context() as patch:
        for method in ("bind", "connect", "connect_ex", "sendto"):
            patch.setattr(socket.socket, method, guarded(getattr(socket.socket, method)))
        yield
