"""A local 2-CPU Ray instance shared by the Ray tests (no dashboard, loopback only)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()
