"""Shared test settings: hypothesis profiles and the --slow option.

Default profile: 50 examples per property (fast enough for CI). `pytest --slow` (or
FUNCNET_SLOW=1) draws 500 and runs the tests marked slow.
"""
import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=50, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("slow", max_examples=500, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="more hypothesis examples, slow tests")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running; only with --slow")
    slow = config.getoption("--slow") or os.environ.get("FUNCNET_SLOW") == "1"
    settings.load_profile("slow" if slow else "default")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow") or os.environ.get("FUNCNET_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
