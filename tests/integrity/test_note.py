"""C2SP signed notes: checkpoint bodies, Ed25519 key ids, signatures and cosignatures."""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.integrity import note

ROOT = bytes(range(32))


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_a_checkpoint_is_origin_size_root_then_one_signature_line() -> None:
    key = Ed25519PrivateKey.generate()
    body = note.checkpoint_body("auditq/test", 12, ROOT)
    assert body == f"auditq/test\n12\n{base64.b64encode(ROOT).decode()}\n"
    signed = note.sign(body, "auditq/test", key)
    head, sig_line = signed.split("\n\n")
    assert head + "\n" == body
    assert sig_line.startswith("\u2014 auditq/test ")
    raw = base64.b64decode(sig_line.split(" ")[2])
    # The key id of C2SP signed-note for Ed25519: SHA-256(name || "\n" || 0x01 || key)[:4].
    assert raw[:4] == hashlib.sha256(b"auditq/test\n\x01" + _raw(key)).digest()[:4]
    key.public_key().verify(raw[4:], body.encode())
    parsed = note.parse(signed)
    assert (parsed.origin, parsed.size, parsed.root) == ("auditq/test", 12, ROOT)
    note.verify(parsed, "auditq/test", key.public_key())


def test_a_changed_body_another_key_or_another_name_do_not_verify() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    signed = note.sign(note.checkpoint_body("auditq/test", 12, ROOT), "auditq/test", key)
    with pytest.raises(note.NoteError):
        note.verify(note.parse(signed.replace("\n12\n", "\n13\n")), "auditq/test", key.public_key())
    with pytest.raises(note.NoteError):
        note.verify(note.parse(signed), "auditq/test", other.public_key())
    with pytest.raises(note.NoteError):
        note.verify(note.parse(signed), "auditq/other", key.public_key())
    for bad in ("", "a\n1\n", signed.replace("\n\n", "\n"), "a\n01\n" + signed.split("\n", 2)[2]):
        with pytest.raises(note.NoteError):
            note.parse(bad)


def test_a_cosignature_is_timestamped_and_signs_the_whole_body() -> None:
    log, witness = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    body = note.checkpoint_body("auditq/test", 3, ROOT)
    signed = note.sign(body, "auditq/test", log)
    cosigned = signed + note.cosign(body, "witness.test/w1", witness, 1_700_000_000)
    parsed = note.parse(cosigned)
    assert note.verify_cosignature(parsed, "witness.test/w1", witness.public_key()) == 1_700_000_000
    line = cosigned.rstrip("\n").split("\n")[-1]
    raw = base64.b64decode(line.split(" ")[2])
    assert raw[:4] == hashlib.sha256(b"witness.test/w1\n\x04" + _raw(witness)).digest()[:4]
    assert struct.unpack("!Q", raw[4:12]) == (1_700_000_000,)
    message = b"cosignature/v1\ntime 1700000000\n" + body.encode()
    witness.public_key().verify(raw[12:], message)
    with pytest.raises(note.NoteError):
        note.verify_cosignature(parsed, "witness.test/w1", log.public_key())
    forged = cosigned.replace(line, line[:-8] + ("A" * 6) + "==")
    with pytest.raises(note.NoteError):
        note.verify_cosignature(note.parse(forged), "witness.test/w1", witness.public_key())


def test_verifier_keys_round_trip_and_a_wrong_key_id_is_refused() -> None:
    key = Ed25519PrivateKey.generate().public_key()
    text = note.vkey("witness.test/w1", key, note.COSIGNATURE_TYPE)
    name, parsed, kind = note.parse_vkey(text)
    assert (name, _raw_pub(parsed), kind) == ("witness.test/w1", _raw_pub(key), 4)
    name_, _id, b64 = text.split("+", 2)
    with pytest.raises(note.NoteError):
        note.parse_vkey(f"{name_}+00000000+{b64}")


def _raw_pub(key: object) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)  # type: ignore[attr-defined]
