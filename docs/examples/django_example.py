"""A Django app whose every event carries its request and actor (docs/producers.md, "Django").

One file for the example; in a project the settings go to settings.py, the views to views.py.

make run                                   # in one terminal: auditq and its servers
set -a; . .auditq/producer.env; set +a     # in another: the producer's Redis URL
.venv/bin/python docs/examples/django_example.py runserver
curl -X POST -H 'X-User: ada' localhost:8000/projects/42
"""

import sys

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from auditq import Actor, AuditEvent, Entity
from service.producer.background import capture_sync, start_client

settings.configure(
    DEBUG=False,
    SECRET_KEY="example-only",
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[
        # After Django's AuthenticationMiddleware when you have it: by default the actor is
        # the logged-in request.user.
        "service.producer.django.AuditContextMiddleware",
    ],
    # Here the app's own authentication (a header) names the actor instead of request.user.
    AUDITQ_ACTOR_RESOLVER=lambda request: (
        Actor(id=request.headers["X-User"], type="user") if "X-User" in request.headers else None
    ),
)

# One client for the process, on its own thread: sync views run without an event loop.
# AUDITQ_REDIS_URL and AUDITQ_QUEUE from the environment; flushed when the process exits.
audit = start_client()


@csrf_exempt
def update_project(request: HttpRequest, project_id: str) -> JsonResponse:
    event = AuditEvent(action="project.updated", entity=Entity(type="project", id=project_id))
    event_id = capture_sync(audit, event)  # the id, or None (logged): never raises
    return JsonResponse({"audit_event": event_id})


async def export_report(request: HttpRequest, report_id: str) -> JsonResponse:
    event = AuditEvent(action="report.exported", entity=Entity(type="report", id=report_id))
    event_id = await audit.capture(event)  # async views await it, on their own loop
    return JsonResponse({"audit_event": event_id})


urlpatterns = [
    path("projects/<str:project_id>", update_project),
    path("reports/<str:report_id>", export_report),
]

if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
