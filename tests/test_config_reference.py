"""The key tables of edge/config/keys.py: what is derived from them, and the reference they
generate, which docs/configuration.md must keep up with (a new key cannot go undocumented)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from reelcdn.edge.config import Limits, NodeConfig, node_config_from_dict, reference_markdown
from reelcdn.edge.config import keys as configkeys

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

# Keys the reference documents under each title, as docs/configuration.md's "## title" sections.
SECTIONS = {title: [row[0] for row in rows] for title, _, rows in configkeys.reference_sections()}


def doc_sections() -> dict[str, str]:
    text = DOC.read_text(encoding="utf-8")
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


@pytest.mark.parametrize("title", list(SECTIONS))
def test_the_doc_lists_every_key_of_every_table(title: str) -> None:
    sections = doc_sections()
    assert title in sections, f"docs/configuration.md has no '## {title}' section"
    missing = [key for key in SECTIONS[title] if f"| `{key}` |" not in sections[title]]
    assert not missing, (
        f"docs/configuration.md, section {title}, does not document {', '.join(missing)}: "
        "regenerate its tables with python -m reelcdn.edge.config.keys"
    )


def test_every_key_has_a_doc_and_a_kind() -> None:
    for title, _, rows in configkeys.reference_sections():
        for key, kind, default, doc in rows:
            assert doc.strip(), f"{title}.{key} has no doc line (Limits: add it to LIMIT_DOCS)"
            assert kind.strip() and default.strip(), f"{title}.{key}"


def test_the_reference_is_markdown_tables_with_defaults() -> None:
    text = reference_markdown()
    assert '| `cache_memory` | size | `"256MiB"` |' in text
    assert '| `max_head_bytes` | size > 0 | `"32KiB"` |' in text
    assert "| `listen` | host:port | required |" in text
    assert "| `fill_headers` | array of field names | `[\"accept-encoding\"]` |" in text


def test_node_keys_come_from_the_table() -> None:
    assert tuple(configkeys.NODE_KEY_TABLE) == configkeys.NODE_KEYS
    assert configkeys.SOURCE_KEYS == ("upstream", "parents", "origins")
    fields = {f.name for f in dataclasses.fields(NodeConfig)}
    # Names the node builder folds into model fields (or resolves, for parents and origins).
    folded = {"listen", "admin", "extra_ignore_query_params"}
    for row in configkeys.NODE_KEY_TABLE.values():
        assert row.field in fields | folded, f"{row.name} fills no NodeConfig field"
    # And every field an operator can set has a key: the others are the builder's own.
    set_by_keys = {row.field for row in configkeys.NODE_KEY_TABLE.values()}
    builder_fields = {"name", "listen_host", "listen_port", "admin_host", "admin_port",
                      "source_file"}
    assert fields - builder_fields <= set_by_keys


def test_limits_keys_follow_the_dataclass() -> None:
    """A field added to Limits is a key at once, parsed by its name's convention."""
    assert list(configkeys.limit_key_table()) == [f.name for f in dataclasses.fields(Limits)]
    node = node_config_from_dict("n", {
        "listen": "127.0.0.1:0", "upstream": "http://127.0.0.1:1",
        "limits": {"max_body_bytes": "1MiB", "header_timeout": "500ms", "max_headers": 7},
    })
    assert (node.limits.max_body_bytes, node.limits.header_timeout, node.limits.max_headers) == (
        1024 * 1024, 0.5, 7
    )
