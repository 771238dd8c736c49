"""auditq for producers: `from auditq import AuditClient, AuditEvent` (contract §5).

The same objects as `service.client`; this package only gives them the product's name.
Importing it loads nothing of the server side (no PostgreSQL driver, aiohttp or arq).
"""

from service.client import AuditClient, AuditEvent
from service.events import Actor, Change, Entity, RequestInfo
from service.producer.context import set_actor

__all__ = ["Actor", "AuditClient", "AuditEvent", "Change", "Entity", "RequestInfo", "set_actor"]
