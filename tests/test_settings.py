"""Settings: each variable declared once, read once, a bad value one clear line naming it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from service.errors import ConfigError
from service.settings import SETTINGS, Settings

pytestmark = pytest.mark.unit  # needs no server: `pytest -m unit`


def read(**env: str) -> Settings:
    return Settings.from_env(env, published=False)


def test_every_declared_default_is_the_default() -> None:
    """Setting a variable to its declared default changes nothing; unset is the same."""
    assert read() == Settings()
    assert len(SETTINGS) >= 40
    for setting in SETTINGS:
        assert read(**{setting.name: setting.default}) == Settings(), setting.name


def test_each_variable_is_declared_once_and_each_field_is_read() -> None:
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    read_from_env = {f.name for f in dataclasses.fields(Settings) if "setting" in f.metadata}
    assert {f.name for f in dataclasses.fields(Settings)} - read_from_env == {"spool_disabled"}


def test_values_are_read() -> None:
    settings = read(
        AUDITQ_HTTP_PORT=" 9090 ",
        AUDITQ_LOG_LEVEL="debug",
        AUDITQ_SEAL="OFF",
        AUDITQ_DESTINATIONS="off",
        AUDITQ_ALLOW_PRIVILEGED_ROLE="1",
        AUDITQ_REDIS_WAIT_REPLICAS="2",
        AUDITQ_RETENTION_DAYS="30",
        AUDITQ_TRUSTED_PROXIES="10.0.0.1/8, ::1",
        AUDITQ_SUBJECT_ENTITY_TYPES="user, member",
        AUDITQ_WITNESS_URLS="https://w.example/a,http://v.example,https://w.example/a",
        AUDITQ_JOB_TIMEOUT_S="1.5",
    )
    assert settings.http_port == 9090
    assert settings.log_level == "DEBUG"
    assert settings.sealing is False and settings.destinations is False
    assert settings.allow_privileged_role is True
    assert settings.redis_wait_replicas == 2
    assert settings.retention_days == 30
    assert settings.trusted_proxies == ("10.0.0.0/8", "::1/128")
    assert settings.subject_entity_types == {"user", "member"}
    assert settings.witness_urls == ("https://w.example/a", "http://v.example")
    assert settings.job_timeout_s == 1.5


def test_blank_is_the_default_and_naming_no_subject_type_is_the_default() -> None:
    assert read(AUDITQ_LOG_FORMAT=" ", AUDITQ_HTTP_HOST="", AUDITQ_QUEUE=" ") == Settings()
    assert read(AUDITQ_SUBJECT_ENTITY_TYPES=" , ").subject_entity_types == {"user"}


def test_the_spool_setting() -> None:
    assert read(AUDITQ_SPOOL_DIR="/var/spool/auditq").spool_dir == Path("/var/spool/auditq")
    off = read(AUDITQ_SPOOL_DIR="Off")
    assert off.spool_dir is None and off.spool_disabled
    assert off.with_server_spool().spool_dir is None
    assert read().with_server_spool().spool_dir == Path(".auditq/spool")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AUDITQ_HTTP_PORT": "eighty"}, "AUDITQ_HTTP_PORT must be an integer, not 'eighty'"),
        (
            {"AUDITQ_MAX_EVENT_BYTES": "1000"},
            "AUDITQ_MAX_EVENT_BYTES must be at least 1024, not 1000",
        ),
        (
            {"AUDITQ_REDIS_WAIT_REPLICAS": "-1"},
            "AUDITQ_REDIS_WAIT_REPLICAS must be at least 0, not -1",
        ),
        ({"AUDITQ_SEAL_INTERVAL_S": "0"}, "AUDITQ_SEAL_INTERVAL_S must be positive, not 0"),
        ({"AUDITQ_JOB_TIMEOUT_S": "soon"}, "AUDITQ_JOB_TIMEOUT_S must be a number, not 'soon'"),
        ({"AUDITQ_LOG_FORMAT": "xml"}, "AUDITQ_LOG_FORMAT must be 'text' or 'json', not 'xml'"),
        ({"AUDITQ_LOG_ORIGIN": "a b"}, "AUDITQ_LOG_ORIGIN must be one word without spaces"),
        ({"AUDITQ_TRUSTED_PROXIES": "proxy"}, "AUDITQ_TRUSTED_PROXIES must be comma-separated IP"),
        ({"AUDITQ_REDIS_URL": "nope://x"}, "AUDITQ_REDIS_URL must start with redis://"),
        ({"AUDITQ_WITNESS_URLS": "ftp://w"}, "AUDITQ_WITNESS_URLS takes http(s):// URLs, not one"),
        (
            {"AUDITQ_CAPTURE_DATABASE_URLS": "mysql://h/db"},
            "AUDITQ_CAPTURE_DATABASE_URLS takes postgresql:// URLs, not one with 'mysql'",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env, published=False)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("name", ["AUDITQ_WITNESS_URLS", "AUDITQ_CAPTURE_DATABASE_URLS"])
def test_a_refused_url_does_not_show_its_password(name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: "ftp://user:hunter2@host/x"}, published=False)
    assert "hunter2" not in str(caught.value)


def test_published_urls_are_read_and_the_environment_wins(tmp_path: Path) -> None:
    (tmp_path / "env").write_text(
        "AUDITQ_REDIS_URL=redis://127.0.0.1:1/0\n"
        "AUDITQ_DATABASE_URL=postgresql://published/db\n"
        "AUDITQ_QUEUE=not-a-published-setting\n"
    )
    env = {"AUDITQ_DATA_DIR": str(tmp_path), "AUDITQ_DATABASE_URL": "postgresql://mine/db"}
    settings = Settings.from_env(env)
    assert settings.redis_url == "redis://127.0.0.1:1/0"
    assert settings.database_url == "postgresql://mine/db"
    assert settings.queue == "audit-logs"
    assert Settings.from_env(env, published=False).redis_url is None
