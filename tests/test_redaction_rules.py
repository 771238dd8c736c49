"""The redaction rule data (service/redaction_rules.json): one file, read by Python and Node."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from service.redaction_refresh import RULES_PATH, Untranslatable, translate

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
