"""A receipt verifier written from docs/integrity.md alone ("The transparency log"), apart
from auditq's code: it imports nothing of `service`, only SHA-256, Ed25519 and RFC 8785."""

from __future__ import annotations

import base64
import hashlib
import json
import struct

import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _jcs(value: object) -> bytes:
    try:
        return rfc8785.dumps(value)
    except rfc8785.IntegerDomainError:  # integers past 2**53 are the doubles they parse to
        return rfc8785.dumps(json.loads(json.dumps(value), parse_int=float))


def _included(i: int, n: int, leaf: bytes, proof: list[str], root: bytes) -> bool:
    if not 0 <= i < n:
        return False
    fn, sn, r = i, n - 1, leaf
    for p in (base64.b64decode(x, validate=True) for x in proof):
        if sn == 0 or len(p) != 32:
            return False
        if fn % 2 == 1 or fn == sn:
            r = _h(b"\x01" + p + r)
            while fn % 2 == 0 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = _h(b"\x01" + r + p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def check(receipt: dict, log_key: Ed25519PublicKey, witnesses: dict | None = None) -> bool:
    """True when the receipt is valid for the log's key (and every witness key given)."""
    try:
        body, _, sigs = receipt["checkpoint"].partition("\n\n")
        body += "\n"
        origin, size, root_b64 = body.split("\n")[:3]
        root = base64.b64decode(root_b64, validate=True)
        raw_key = log_key.public_bytes_raw()
        log_id = _h(origin.encode() + b"\n\x01" + raw_key)[:4]
        lines = [line.split(" ") for line in sigs.splitlines()]
        signed = False
        for _, name, b64 in lines:
            raw = base64.b64decode(b64)
            if name == origin and raw[:4] == log_id:
                log_key.verify(raw[4:], body.encode())
                signed = True
        for wname, wkey in (witnesses or {}).items():
            wid = _h(wname.encode() + b"\n\x04" + wkey.public_bytes_raw())[:4]
            raws = [base64.b64decode(b) for _, n, b in lines if n == wname]
            raws = [r for r in raws if r[:4] == wid]
            if not raws:
                return False
            (ts,) = struct.unpack(">Q", raws[0][4:12])
            wkey.verify(raws[0][12:], f"cosignature/v1\ntime {ts}\n".encode() + body.encode())
        n, i = int(size), receipt["leaf_index"]
        if not signed or receipt["tree_size"] != n:
            return False
        h = _h(b"\x00" + _jcs({"kind": "row", "item": receipt["item"]}))
        for erasure in reversed(receipt.get("erasures") or []):
            action = erasure["leaf"]
            change = [r for r in action["rows"] if r["leaf_index"] == i]
            if action["kind"] != "action" or not change:
                return False
            if base64.b64decode(change[0]["after"]) != h:
                return False
            action_hash = _h(b"\x00" + _jcs(action))
            if not _included(
                erasure["leaf_index"], n, action_hash, erasure["inclusion_proof"], root
            ):
                return False
            h = base64.b64decode(change[0]["before"])
        return _included(i, n, h, receipt["inclusion_proof"], root)
    except Exception:  # any malformed part makes the receipt invalid
        return False
