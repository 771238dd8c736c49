"""Key files: made once, mode 0600, the loser of a race reads the winner's; a bad one is one
clear error naming the file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.errors import ConfigError
from service.integrity.keys import load_or_create_private_key, load_public_key, public_pem
from service.key_files import create_private, load_or_create
from service.subject_key import keep_moved_key, load_or_create_subject_key

pytestmark = pytest.mark.unit  # needs no server: `pytest -m unit`


def test_a_key_is_made_once_private_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "seal-key"
    key = load_or_create_private_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create_private_key(path)
    assert public_pem(again.public_key()) == public_pem(key.public_key())
    assert public_pem(load_public_key(path)) == public_pem(key.public_key())
    subject = load_or_create_subject_key(tmp_path / "subject-key")
    assert len(subject) == 32 and load_or_create_subject_key(tmp_path / "subject-key") == subject
    assert stat.S_IMODE((tmp_path / "subject-key").stat().st_mode) == 0o600


def test_the_loser_of_a_race_reads_the_winners_key(tmp_path: Path) -> None:
    path = tmp_path / "key"

    def make() -> bytes:  # another process makes the file between our read and our create
        assert create_private(path, b"winner")
        return b"loser"

    assert load_or_create(path, make, bytes) == b"winner"
    assert path.read_bytes() == b"winner"


def test_a_file_that_is_no_key_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "seal-key"
    path.write_bytes(b"not a key")
    with pytest.raises(ConfigError, match=r"seal-key is not a PEM private key"):
        load_or_create_private_key(path)
    with pytest.raises(ConfigError, match=r"seal-key is not a PEM public key"):
        load_public_key(path)
    short = tmp_path / "subject-key"
    short.write_bytes(b"short")
    with pytest.raises(ConfigError, match=r"subject-key is not a subject key"):
        load_or_create_subject_key(short)


def test_a_public_key_file_is_read_but_never_taken_for_a_private_one(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "seal-key.pub"
    path.write_text(public_pem(key.public_key()))
    assert public_pem(load_public_key(path)) == public_pem(key.public_key())
    with pytest.raises(ConfigError, match="is not a PEM private key"):
        load_or_create_private_key(path)


def test_a_moved_subject_key_is_kept_and_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "subject-key"
    key = bytes(range(32))
    keep_moved_key(path, key)
    keep_moved_key(path, key)  # the file holds it already: nothing to do
    assert path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(ConfigError, match="holds another subject key"):
        keep_moved_key(path, bytes(32))
    assert path.read_bytes() == key
