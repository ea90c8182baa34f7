"""Fixtures for the end-to-end tests.

By default the tests run the real lockgate binary ($LOCKGATE_BIN or target/debug/lockgate): one
shared process for the tests that need only the default config, and a process of their own for
tests that pass a config (the `lockgate` factory). With LOCKGATE_TEST_URL=amqp://... the tests
that need no config of their own run against that broker instead (this is how the expected
behaviour was checked against RabbitMQ), and the `lockgate_only` ones are skipped.

A broker's log is shown only for a failing test: the part written while that test ran.
"""

from __future__ import annotations

import os
import urllib.parse
from typing import Callable, Iterator, Optional

import pytest

from lockgate_harness import Broker, LockgateProcess, unique

TEST_URL = os.environ.get("LOCKGATE_TEST_URL")

_LOGS = pytest.StashKey[list]()


def pytest_collection_modifyitems(config, items):
    if not TEST_URL:
        return
    skip = pytest.mark.skip(reason="needs its own lockgate process (LOCKGATE_TEST_URL is set)")
    for item in items:
        if "lockgate_only" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        for name, process, mark in item.stash.get(_LOGS, []):
            report.sections.append((f"{name} log", process.log(mark) or "(empty)\n"))
    return report


def _track(request, name: str, process: LockgateProcess) -> None:
    request.node.stash.setdefault(_LOGS, []).append((name, process, process.log_mark()))


def _broker_from_url(url: str) -> Broker:
    u = urllib.parse.urlparse(url)
    vhost = urllib.parse.unquote(u.path[1:]) if len(u.path) > 1 else "/"
    return Broker(host=u.hostname or "127.0.0.1", port=u.port or 5672, vhost=vhost,
                  user=urllib.parse.unquote(u.username or "guest"),
                  password=urllib.parse.unquote(u.password or "guest"))


class _Shared:
    process: Optional[LockgateProcess] = None


@pytest.fixture(scope="session")
def _shared() -> Iterator[_Shared]:
    shared = _Shared()
    yield shared
    if shared.process is not None:
        shared.process.stop()


@pytest.fixture
def broker(request, _shared) -> Broker:
    """The broker under test with the default config (shared between tests)."""
    if TEST_URL:
        return _broker_from_url(TEST_URL)
    if _shared.process is None or not _shared.process.alive():
        if _shared.process is not None:
            # Keep the dead process's log for this test's report, then start afresh.
            _track(request, "previous shared lockgate (exited)", _shared.process)
        _shared.process = LockgateProcess()
    _track(request, "lockgate", _shared.process)
    return _shared.process.broker()


@pytest.fixture
def lockgate(request) -> Iterator[Callable[..., Broker]]:
    """Factory: `lockgate(config="...")` starts a lockgate process of the test's own."""
    if TEST_URL:
        pytest.skip("needs its own lockgate process (LOCKGATE_TEST_URL is set)")
    started: list[LockgateProcess] = []

    def start(config: Optional[str] = None, **kwargs) -> Broker:
        process = LockgateProcess(config=config, **kwargs)
        started.append(process)
        _track(request, f"lockgate #{len(started)}", process)
        return process.broker()

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def connections(broker) -> Iterator[Callable[..., object]]:
    """Factory for pika connections to `broker`, all closed at teardown."""
    opened = []

    def connect(**overrides):
        conn = broker.connect(**overrides)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        if conn.is_open:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - teardown of a connection a test may have broken
                pass


@pytest.fixture
def conn(connections):
    return connections()


@pytest.fixture
def ch(conn):
    return conn.channel()


@pytest.fixture
def name() -> Callable[[str], str]:
    """Unique names, so tests sharing one broker never see each other's queues."""
    return unique
