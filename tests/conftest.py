"""Shared test settings: hypothesis profiles and the --slow option.

Default profile: 50 examples per property (fast enough for CI). `pytest --slow` (or
FUNCNET_SLOW=1) draws 500. Nothing is skipped either way.
"""
import os

from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=50, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("slow", max_examples=500, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="500 hypothesis examples per property instead of 50")


def pytest_configure(config):
    slow = config.getoption("--slow") or os.environ.get("FUNCNET_SLOW") == "1"
    settings.load_profile("slow" if slow else "default")
