"""The Rust snippets of docs/semantics and docs/configuration.md say they are taken from a
compiled example (`crates/client/examples/*.rs`, built by `cargo clippy --all-targets` and
`cargo test`): each must appear there verbatim (whitespace aside), so the docs never show
code that no longer compiles."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lockgate_harness import REPO_ROOT

DOCS = sorted((REPO_ROOT / "docs" / "semantics").glob("*.md")) + [
    REPO_ROOT / "docs" / "configuration.md"]
RUST_BLOCK = re.compile(r"^```rust\n(.*?)^```", re.S | re.M)
EXAMPLE = re.compile(r"crates/client/examples/[a-z_]+\.rs")


def squeeze(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_rust_snippets_are_taken_from_the_compiled_example(doc: Path):
    text = doc.read_text()
    blocks = RUST_BLOCK.findall(text)
    assert blocks, f"{doc.name} has no Rust snippet"
    example = EXAMPLE.search(text)
    assert example, f"{doc.name} does not name the example its Rust snippets come from"
    source = squeeze((REPO_ROOT / example.group(0)).read_text())
    stale = [block for block in blocks if squeeze(block) not in source]
    assert stale == [], f"{doc.name}: not in {example.group(0)}:\n" + "\n---\n".join(stale)
