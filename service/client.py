"""The producer's public entry point: `from service.client import AuditClient, AuditEvent`."""

from service.events import AuditEvent
from service.producer.client import AuditClient

__all__ = ["AuditClient", "AuditEvent"]
