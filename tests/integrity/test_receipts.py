"""Receipts: auditq's checker and an independent one (from docs/integrity.md) agree on every
receipt of a log of random events, erased ones included, and reject every tampered one."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.cli.main import main
from service.integrity import merkle, note, receipt
from service.integrity.leaf import action_leaf, as_json, row_leaf
from tests.integrity import independent_verifier

ORIGIN = "auditq/receipts-test"
WITNESS = "witness.test/w1"
_TEXT = ["alice", "Zoë", "日本語", "emoji 🎉", 'quote " and \\ slash', "tab\tnl\n", "\u2028", ""]


def _random_item(rng: random.Random, n: int) -> dict[str, Any]:
    value: Any = rng.choice(
        [rng.randint(-(2**63), 2**63), rng.random() * 10 ** rng.randint(-5, 25), 1e21, -0.0,
         rng.choice(_TEXT), None, True, [1, 2.5, "x"], {"b": 1, "a": {"é": [], "A": {}}}]
    )  # fmt: skip
    return as_json(
        {
            "id": f"0190a0b1-0000-7000-8000-{n:012x}",
            "ts": "2026-12-06T18:00:00.123456Z",
            "action": rng.choice(["auth.login", "config.updated", "user.deleted"]),
            "category": "auth",
            "severity": rng.choice(["info", "critical"]),
            "outcome": "success",
            "actor": {"id": rng.choice(_TEXT) or "u", "type": "user"},
            "entity": None,
            "tenant": None,
            "request": {"ip": "192.0.2.1", "duration_ms": rng.random() * 100},
            "changes": [{"field": "role", "old": rng.choice(_TEXT), "new": value}],
            "metadata": {"k": value, "z": rng.choice(_TEXT), "a": n},
            "presentation": {"code": "audit.auth.login", "params": {}},
            "source": "svc",
            "received_at": "2026-12-06T18:00:01Z",
            "received_via": "redis",
        }
    )


class Log:
    """An in-memory log built with auditq's pure code, issuing receipts as the store does."""

    def __init__(self, rng: random.Random, events: int) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.witness = Ed25519PrivateKey.generate()
        self.items: dict[int, dict[str, Any]] = {}
        self.erasures: dict[int, list[tuple[dict[str, Any], int]]] = {}
        self.hashes: list[bytes] = []
        for n in range(events):
            item = _random_item(rng, n)
            self.items[len(self.hashes)] = item
            self.hashes.append(merkle.leaf_hash(row_leaf(item)))
        # Two erasure actions, each changing a random set of rows (some twice).
        for action_id in (1, 2):
            changed = rng.sample(sorted(self.items), min(40, events // 2))
            rows = []
            for index in changed:
                before = merkle.leaf_hash(row_leaf(self.items[index]))
                item = dict(
                    self.items[index], actor={"id": f"pseudonym-{action_id}", "type": "user"}
                )
                self.items[index] = item
                after = merkle.leaf_hash(row_leaf(item))
                rows.append({"leaf_index": index, "before": _b64(before), "after": _b64(after)})
            action = {
                "id": action_id, "at": "2026-12-06T18:05:00Z", "action": "subject.anonymised",
                "actor": "auditq_owner", "detail": {"pseudonym": f"p{action_id}"}, "rows": rows,
            }  # fmt: skip
            leaf_data = action_leaf(action)
            for index in changed:
                self.erasures.setdefault(index, []).append(
                    (json.loads(leaf_data), len(self.hashes))
                )
            self.hashes.append(merkle.leaf_hash(leaf_data))
        node = merkle.memory_nodes(self.hashes)
        self.node = node
        size = len(self.hashes)
        body = note.checkpoint_body(ORIGIN, size, merkle.root_of(self.hashes))
        self.checkpoint = note.sign(body, ORIGIN, self.key) + note.cosign(
            body, WITNESS, self.witness, 1_765_000_000
        )

    def receipt(self, index: int) -> dict[str, Any]:
        size = len(self.hashes)
        return receipt.build(
            item_json=self.items[index],
            leaf_index=index,
            tree_size=size,
            inclusion_proof=merkle.inclusion_proof(self.node, index, size),
            checkpoint=self.checkpoint,
            erasures=[
                (leaf, at, merkle.inclusion_proof(self.node, at, size))
                for leaf, at in self.erasures.get(index, [])
            ],
        )


def _b64(h: bytes) -> str:
    import base64

    return base64.b64encode(h).decode()


def _ours(r: Any, log: Log, witnesses: bool = True) -> bool:
    keys = [(WITNESS, log.witness.public_key())] if witnesses else []
    try:
        receipt.verify(r, log_key=log.key.public_key(), witness_keys=keys)
    except receipt.ReceiptError:
        return False
    return True


def _theirs(r: Any, log: Log) -> bool:
    return independent_verifier.check(r, log.key.public_key(), {WITNESS: log.witness.public_key()})


def _tampered(r: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    out = []

    def variant(change: Any) -> None:
        t = copy.deepcopy(r)
        change(t)
        out.append(t)

    variant(lambda t: t["item"].__setitem__("action", "auth.logout"))
    variant(lambda t: t["item"]["metadata"].__setitem__("z", "changed"))
    variant(lambda t: t["item"].__setitem__("extra", None))
    variant(lambda t: t.__setitem__("leaf_index", t["leaf_index"] + 1))
    variant(lambda t: t.__setitem__("tree_size", t["tree_size"] - 1))
    variant(lambda t: t["inclusion_proof"].pop())
    variant(lambda t: t["inclusion_proof"].reverse())
    variant(lambda t: t.__setitem__("checkpoint", t["checkpoint"].replace(ORIGIN, ORIGIN + "x")))
    size_line = f"\n{r['tree_size']}\n"
    variant(lambda t: t.__setitem__("checkpoint", t["checkpoint"].replace(size_line, "\n1\n")))
    if r.get("erasures"):
        variant(lambda t: t.pop("erasures"))
        variant(lambda t: t["erasures"][-1]["leaf"]["detail"].__setitem__("pseudonym", "x"))
        variant(lambda t: t["erasures"][-1].__setitem__("leaf_index", 0))
    else:
        variant(lambda t: t["item"].__setitem__("id", "0190a0b1-0000-7000-8000-ffffffffffff"))
    return out


def test_both_verifiers_accept_every_receipt_of_1000_random_events_and_reject_tampering() -> None:
    rng = random.Random(25)
    log = Log(rng, 1000)
    erased = 0
    for index in sorted(log.items):
        r = json.loads(json.dumps(log.receipt(index)))  # as a file carries it
        assert _ours(r, log) and _theirs(r, log), index
        erased += bool(r.get("erasures"))
        if index % 10 == 0 or r.get("erasures"):
            for bad in _tampered(r, rng):
                assert not _ours(bad, log) and not _theirs(bad, log), (index, bad)
    assert erased >= 60


def test_another_log_key_or_a_missing_witness_cosignature_is_refused() -> None:
    log = Log(random.Random(1), 20)
    r = log.receipt(3)
    other = Log(random.Random(1), 20)
    assert not _ours(r, other, witnesses=False)
    assert not independent_verifier.check(r, other.key.public_key())
    bare = dict(r, checkpoint=r["checkpoint"].rsplit("\u2014", 1)[0])  # the cosignature cut off
    assert _ours(bare, log, witnesses=False)
    assert not _ours(bare, log) and not _theirs(bare, log)


def _pem(log: Log, tmp_path: Path) -> Path:
    path = tmp_path / "log.pub"
    path.write_bytes(
        log.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def test_verify_receipt_exits_0_valid_1_invalid_with_one_line_2_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = Log(random.Random(2), 30)
    pem = _pem(log, tmp_path)
    witness = note.vkey(WITNESS, log.witness.public_key(), note.COSIGNATURE_TYPE)
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(log.receipt(7)))
    tampered = log.receipt(7)
    tampered["item"]["action"] = "auth.logout"
    bad.write_text(json.dumps(tampered))
    args = ["verify-receipt", "--public-key", str(pem), "--witness-key", witness]
    assert main([*args, str(good)]) == 0
    assert capsys.readouterr().out.startswith("valid: event 0190a0b1-0000-7000-8000-000000000007")
    assert main([*args, str(bad)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("invalid: ") and out.count("\n") == 1
    (tmp_path / "junk.json").write_text("{not json")
    assert main([*args, str(tmp_path / "junk.json")]) == 1
    assert main([*args, str(tmp_path / "absent.json")]) == 2
    assert "cannot read the receipt" in capsys.readouterr().err
    assert (
        main(["verify-receipt", "--public-key", str(pem), "--witness-key", "nonsense", str(good)])
        == 2
    )
    with pytest.raises(SystemExit) as exc:
        main(["verify-receipt"])
    assert exc.value.code == 2
