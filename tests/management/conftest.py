"""Fixtures: one broker with the management API per test module."""

import pytest
from mgmt_helpers import Api, start


@pytest.fixture(scope="module")
def proc():
    p = start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def api(proc):
    return Api(proc.http)


@pytest.fixture(scope="module")
def broker(proc):
    return proc.broker()
