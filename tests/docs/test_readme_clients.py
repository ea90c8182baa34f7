"""The README's "Connecting" examples for pika and the rabbitmq-c tools, run as written against
the broker under test: only the URL's host and port and the queue name (unique per test) are
replaced, so the URL's user, password and vhost path are used as the README gives them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from lockgate_harness import REPO_ROOT

README = REPO_ROOT / "README.md"
README_ADDRESS = "@localhost:5672/"


def example(after: str, language: str) -> str:
    """The first code block of `language` after the line starting with `after`."""
    text = README.read_text()
    start = text.index("\n" + after)
    match = re.compile(rf"^```{language}\n(.*?)^```", re.S | re.M).search(text, start)
    assert match, f"no {language} block after {after!r} in the README"
    return match.group(1)


def test_the_pika_example_publishes_and_gets_a_message(broker, name):
    queue = name("orders")
    code = example("Python ([pika]", "python")
    assert code.count(README_ADDRESS) == 1 and '"orders"' in code
    code = code.replace(README_ADDRESS, f"@{broker.host}:{broker.port}/")
    code = code.replace('"orders"', f'"{queue}"')
    try:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                timeout=30, check=False)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "b'order placed'\n"
    finally:
        with broker.connect() as conn:
            conn.channel().queue_delete(queue)


def test_the_rabbitmq_c_commands_publish_get_and_consume(broker, name):
    tools = ["amqp-declare-queue", "amqp-publish", "amqp-get", "amqp-consume"]
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {missing}: install Debian's amqp-tools (scripts/test.sh does)")
    queue = name("orders")
    script = example("The command line (", "sh")
    assert README_ADDRESS in script and " orders " in script
    script = script.replace(README_ADDRESS, f"@{broker.host}:{broker.port}/")
    script = re.sub(r"(-[qr]) orders\b", rf"\1 {queue}", script)
    try:
        result = subprocess.run(["bash", "-e", "-c", script], capture_output=True, text=True,
                                timeout=30, check=False)
        assert result.returncode == 0, result.stderr
        # amqp-declare-queue prints the name; amqp-get and cat print the bodies as they are.
        assert result.stdout == f"{queue}\norder placedorder shipped"
    finally:
        with broker.connect() as conn:
            conn.channel().queue_delete(queue)
