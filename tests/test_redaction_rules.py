"""The redaction rule data (service/redaction_rules.json): one file, read by Python and Node."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from service.redaction_refresh import (
    RULES_PATH,
    Untranslatable,
    _one_scan_per_keyword,
    translate,
)

DATA = json.loads(RULES_PATH.read_text())


def _all_regexes() -> list[str]:
    out = []
    for rule in [*DATA["tokens"], *DATA["local_tokens"]]:
        out.append(rule["regex"])
        out += [r for allow in rule.get("allow", []) for r in allow.get("regexes", [])]
    return out + DATA["allow"]["regexes"]


def test_the_data_names_its_source_and_licence() -> None:
    source = DATA["source"]
    assert source["name"] == "gitleaks" and re.fullmatch(r"[0-9a-f]{40}", source["commit"])
    assert source["license"] == "MIT" and "Permission is hereby granted" in source["license_text"]
    assert len(DATA["tokens"]) >= 200  # the maintained set, not a hand-picked few


def test_every_rule_has_keywords_for_the_precheck() -> None:
    for rule in [*DATA["tokens"], *DATA["local_tokens"]]:
        assert rule["keywords"] and all(k == k.lower() for k in rule["keywords"]), rule["id"]


def test_every_expression_compiles_in_python() -> None:
    for regex in _all_regexes():
        re.compile(regex, re.ASCII)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_every_expression_compiles_in_javascript() -> None:
    script = (
        "const d = JSON.parse(require('fs').readFileSync(process.argv[1], 'utf8'));"
        "const bad = [];"
        "const all = [...d.tokens, ...d.local_tokens];"
        "for (const t of all) { for (const r of [t.regex, ...(t.allow || []).flatMap("
        "a => a.regexes || [])]) { try { new RegExp(r); } catch (e) { bad.push(t.id); } } }"
        "console.log(JSON.stringify(bad));"
    )
    done = subprocess.run(
        ["node", "-e", script, str(RULES_PATH)], capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout) == []


@pytest.mark.parametrize(
    ("go", "portable", "hit", "miss"),
    [
        (r"\b(SG\.(?i)[a-z]{3})", r"\b(SG\.[a-zA-Z]{3})", "SG.AbC", "sg.abc"),
        (r"(?i)ab(?-i:C)", r"[aA][bB](?:C)", "aBC", "abc"),
        (r"x(?s:.)y", r"x(?:[\s\S])y", "x\ny", "xy"),
        (r"(?P<n>a)\z", r"(a)(?![\s\S])", "a", "a\n"),
        (r"[[:digit:]_-]", r"[0-9_\-]", "-", "a"),
    ],
)
def test_translation_keeps_the_meaning(go: str, portable: str, hit: str, miss: str) -> None:
    assert translate(go) == portable
    assert re.search(portable, hit, re.ASCII) and not re.search(portable, miss, re.ASCII)


def test_an_untranslatable_expression_is_refused() -> None:
    with pytest.raises(Untranslatable):
        translate(r"\p{Greek}+")


def test_the_precheck_without_hyperscan_agrees_with_it() -> None:
    """Where hyperscan has no wheel the Aho-Corasick automaton decides: the same verdicts."""
    import copy

    import msgspec

    from bench.producer import audit_event
    from service import redaction
    from service.events import AuditEvent, encode
    from tests.test_secrets_redteam import Planted, real_world_shapes, second_shapes

    precheck = redaction._Precheck(frozenset())
    if precheck.scanner is None:
        pytest.skip("hyperscan is not installed here")
    fallback = copy.copy(precheck)
    fallback.scanner = None
    planted = Planted()
    events = [audit_event("bench", i) for i in range(200)]
    events += [
        msgspec.convert(e, AuditEvent)
        for e in real_world_shapes(planted, "a") + second_shapes(planted, "b")
    ]
    for event in events:
        data = encode(event)
        text = data.decode()
        assert redaction._needs_rules(precheck.verdict(data), text) == redaction._needs_rules(
            fallback.verdict(data), text
        ), text


@pytest.mark.parametrize("word", sorted({*DATA["keys"]["words"], *DATA["keys"]["final_words"]}))
def test_every_key_the_rule_data_names_passes_the_precheck(word: str) -> None:
    """A key the key rule redacts must get past the one-pass pre-check, in JSON and text."""
    from service.redaction import is_sensitive_key, may_hold_secret, may_hold_secret_json

    for key in (word, f"x_{word}", f"x-{word}", word.upper(), f"my.{word}"):
        if is_sensitive_key(key):
            assert may_hold_secret_json(json.dumps({key: "v4lue"}).encode()), key
            assert may_hold_secret(f"{key}=v4lue") and may_hold_secret(f"{key}: v4lue"), key


def test_a_batch_of_clean_events_passes_the_worker_precheck_and_a_secret_does_not() -> None:
    """The worker's check of a whole job (many events, many UUIDs): clean stays clean, a
    card number or a token anywhere in it is seen, with hyperscan and without."""
    import copy

    import msgspec

    from bench.producer import audit_event
    from service import redaction
    from service.events import finalize

    events = [msgspec.to_builtins(finalize(audit_event("bench", i))[0]) for i in range(300)]
    fallback = copy.copy(redaction._PRECHECK)
    fallback.scanner = None
    cards = ("card 4111 1111 1111 1111", "line\n4111111111111111", "tab\t4111 1111 1111 1111")
    for planted in (None, *cards, "ghp_" + "a1B2" * 9, "db_password=x1"):
        batch = copy.deepcopy(events)
        if planted:
            batch[150]["metadata"]["note"] = planted
        data = json.dumps(batch, separators=(",", ":")).encode()
        assert redaction.may_hold_secret_json_text(data) is bool(planted)
        verdict = redaction._verdict_outside_uuids(fallback, data)
        assert redaction._needs_rules(verdict, data.decode()) is bool(planted)


@pytest.mark.parametrize("spelled", ["2fa", "a3-", "acca", "4b1d", "eaaa"])
def test_an_id_that_spells_a_stem_sends_no_event_the_slow_way(spelled: str) -> None:
    """A UUID's hex digits spell "2fa" or "a3-" in about one event id in fifty: such a match
    inside a UUID string value counts for nothing, with hyperscan and without; the same
    letters anywhere else still do."""
    import copy

    from service import redaction

    fallback = copy.copy(redaction._PRECHECK)
    fallback.scanner = None
    uuid = ("01a24dd7-9ce2-720f-9e6e-4" + spelled + "c81978d6d")[:36]
    if spelled == "a3-":
        uuid = "01a24dd7-9ce2-72a3-9e6e-473c81978d6d"
    assert spelled in uuid and len(uuid) == 36
    clean = json.dumps({"id": uuid, "ids": [uuid], "note": "ok"}, separators=(",", ":"))
    assert redaction.json_precheck(clean.encode()) == (False, False)
    assert not redaction.may_hold_secret_json(clean.encode())
    assert not redaction._needs_rules(fallback.verdict(clean.encode()), clean)
    for suspicious in (
        {"id": uuid, "note": f"{spelled}=Zq9s3cr3tV4lue"},
        {"id": "x" + uuid, "note": "ok"},  # not a UUID value: the letters count
        {"id": uuid, f"{spelled}_code": "Zq9s3cr3tV4lue"},
    ):
        data = json.dumps(suspicious, separators=(",", ":")).encode()
        verdict, without = redaction._PRECHECK.verdict(data), fallback.verdict(data)
        stem = redaction._STEMS
        assert verdict and without and verdict & stem == without & stem, suspicious


def test_the_gap_after_a_keyword_does_not_cross_the_keyword() -> None:
    """gitleaks' curl rules scan up to six lines after `curl`; rewritten, a scan ends at the
    next `curl` (linear in a backtracking engine), and the match starts at the last one."""
    gap = r"\bcurl\b(?:.*?|.*?(?:[\r\n]{1,2}.*?){1,5})[ \t]-H (\w+)"
    bounded = _one_scan_per_keyword(gap)
    assert bounded.startswith(r"\bcurl\b(?:(?:(?!\bcurl\b).)*?|(?:(?!\bcurl\b).)*?(?:[\r\n]")
    assert _one_scan_per_keyword(bounded) == bounded
    text = "curl a curl b\nc -H secret"
    found = re.search(bounded, text)
    assert found is not None and found[1] == "secret" and found.start() == text.index("curl b")
    assert [r for r in DATA["tokens"] if r["id"].startswith("curl-")]
    for rule in DATA["tokens"]:
        assert _one_scan_per_keyword(rule["regex"]) == rule["regex"]
        if rule["id"].startswith("curl-"):
            assert r"(?!\bcurl\b)" in rule["regex"]
