"""The one exception base of auditq, and its kinds."""


class AuditqError(Exception):
    """Base of every error auditq raises on purpose."""


class ConfigError(AuditqError):
    """A setting is missing or malformed."""


class InvalidEvent(AuditqError):
    """An event does not satisfy wire format v1; the message names the field."""


class EmbeddedServerError(AuditqError):
    """An embedded Valkey or PostgreSQL server could not be started."""
