"""A FastAPI app whose every event carries its request and actor (docs/producers.md, "FastAPI").

make run                                   # in one terminal: auditq and its servers
set -a; . .auditq/producer.env; set +a     # in another: the producer's Redis URL
.venv/bin/pip install uvicorn
.venv/bin/uvicorn --app-dir docs/examples fastapi_example:app
curl -X PUT -H 'X-User: ada' localhost:8000/projects/42
"""

from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import BackgroundTasks, Depends, FastAPI, Header, Request

from auditq import Actor, AuditClient, AuditEvent, Entity, set_actor
from service.producer.asgi import AuditContextMiddleware


@asynccontextmanager
async def lifespan(app: FastAPI):
    # AUDITQ_REDIS_URL and AUDITQ_QUEUE from the environment.
    app.state.audit = AuditClient.from_env()
    app.state.audit.bind_loop()  # sync endpoints (a thread pool) may capture_nowait too
    yield
    await app.state.audit.aclose()  # sends what is buffered


app = FastAPI(lifespan=lifespan)
# Request id, client IP (behind AUDITQ_TRUSTED_PROXIES only), user agent, method, path.
app.add_middleware(AuditContextMiddleware)


def current_user(x_user: Annotated[str, Header()]) -> str:
    """The app's own authentication (a header here); it names the actor of the request."""
    set_actor(Actor(id=x_user, type="user"))
    return x_user


async def notify_watchers(request: Request, project_id: str) -> None:
    # After the response: the request's context (id, IP, actor) is still there.
    project = Entity(type="project", id=project_id)
    await request.app.state.audit.capture(AuditEvent(action="project.notified", entity=project))


@app.put("/projects/{project_id}")
async def update_project(
    project_id: str,
    request: Request,
    background: BackgroundTasks,
    user: Annotated[str, Depends(current_user)],
) -> dict[str, str | None]:
    event = AuditEvent(action="project.updated", entity=Entity(type="project", id=project_id))
    event_id = await request.app.state.audit.capture(event)  # the id, or None: never raises
    background.add_task(notify_watchers, request, project_id)
    return {"audit_event": event_id}
