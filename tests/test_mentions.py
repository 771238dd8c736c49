"""service/mentions.py: erased values found as runs of whole words, from keyed digests only."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from service.mentions import PERSON_INNER_KEYS, PERSON_KEYS, MentionIndex, entry, trimmed
from service.pseudonyms import DocumentScrubber, mention_scrubber
from service.queue.jobs import RAW_BYTES_PREFIX, clear_raw_bytes

KEY = b"k" * 32


def _index(*values: str, key: bytes = KEY) -> MentionIndex:
    rows = []
    for value in values:
        made = entry(KEY, value)
        assert made is not None
        rows.append((*made, None, False))
    return MentionIndex(key, rows)


def test_a_value_is_found_inside_urls_paths_hosts_and_emails_in_any_case() -> None:
    index = _index("alice", "alice@example.com", "Alice Liddell")
    assert set(index.find("https://app.example.com/users/alice/profile")) == {"alice"}
    assert set(index.find("/home/ALICE/x and alice.example.com")) == {"ALICE", "alice"}
    assert "alice@example.com" in index.find("mail from alice@example.com, re: it")
    assert "alice liddell" in index.find("by alice liddell's hand")


def test_longer_words_are_not_the_value() -> None:
    index = _index("alice", "u-42")
    assert index.find("malice alice2 alicex /home/alicia u-421 xu-42") == {}


def test_the_digests_are_keyed_and_hold_no_value() -> None:
    made = entry(KEY, "alice@example.com")
    assert made is not None and b"alice" not in made[0] + made[1] and made[2] == 3
    assert _index("alice", key=b"o" * 32).find("alice") == {}  # another key finds nothing


def test_values_are_trimmed_to_their_words_and_long_ones_skipped() -> None:
    assert trimmed("  (Bob Builder) ") == "Bob Builder"
    assert entry(KEY, "!!!") is None
    assert entry(KEY, " ".join(["w"] * 17)) is None


def test_found_values_are_cleared_where_they_stand() -> None:
    index = _index("zelda.q@example.org", "zq-4417")
    text = "/customers/zelda.q@example.org/orders/9?u=zq-4417"
    scrub = mention_scrubber(index.find(text))
    assert scrub is not None
    assert scrub.text(text) == "/customers/[erased]/orders/9?u=[erased]"


def test_the_worker_and_the_store_name_the_same_person_fields() -> None:
    schema = (Path(__file__).resolve().parents[1] / "schema.sql").read_text()
    body = schema[schema.index("FUNCTION public.auditq_erase_person_fields(") :]

    def listed(name: str) -> set[str]:
        start = body.index(f"{name} CONSTANT text[] := ARRAY[")
        return set(re.findall(r"'([a-z_]+)'", body[start : body.index("];", start)]))

    assert listed("v_keys") == PERSON_KEYS
    assert listed("v_inner") == PERSON_INNER_KEYS


@pytest.mark.unit
def test_bytes_that_are_not_utf8_are_cleared_as_the_words_they_hold() -> None:
    """A dead letter keeps bytes that are not UTF-8 base64-encoded: they are cleared as the
    words they hold (beside a bad byte too), and every other byte comes back exactly."""
    rest = b', "x": "Zelda\xffQuixote \xc3\xa9t\xc3\xa9"}'
    raw = b'{"by": "\xfeZELDA QUIXOTE\xff", "id": "zq-4417"' + rest
    kept = RAW_BYTES_PREFIX + base64.b64encode(raw).decode()
    index = _index("Zelda Quixote", "zq-4417")

    def clear(text: str) -> str:
        scrub = mention_scrubber(index.find(text))
        return text if scrub is None else scrub.text(text)

    def bytes_of(text: str) -> bytes:
        assert text.startswith(RAW_BYTES_PREFIX)
        return base64.b64decode(text.removeprefix(RAW_BYTES_PREFIX), validate=True)

    # Not the value (another separator), as in text: kept, and no word run breaks a digest.
    expected = b'{"by": "\xfe[erased]\xff", "id": "[erased]"' + rest
    assert bytes_of(clear_raw_bytes(kept, clear)) == expected
    untouched = RAW_BYTES_PREFIX + base64.b64encode(b"\xff nobody here").decode()
    assert clear_raw_bytes(untouched, clear) is untouched
    documents = DocumentScrubber("zq-4417", "anon_x", frozenset({"user"}), ["Zelda Quixote"])
    letter = documents.scrub({"payload": kept, "message": "zq-4417"})
    assert bytes_of(letter["payload"]) == expected.replace(b'"id": "[erased]"', b'"id": "anon_x"')
    assert letter["message"] == "anon_x"
