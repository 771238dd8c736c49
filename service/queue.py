"""The queue contract: how events become arq jobs, shared by every producer and the worker."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from pathlib import Path
from typing import Any

import msgspec

JOB_FUNCTION = "store_events"  # the worker's job; its one argument is the events' JSON text
ENQUEUE_SCRIPT = (Path(__file__).parent / "enqueue.lua").read_text()

PROVENANCE_SECRET = "provenance"  # the api_secret row the API and the worker share


@dataclasses.dataclass(frozen=True)
class Provenance:
    """Who the API's jobs come from (`via`, e.g. http:<token name>), and the key that vouches."""

    via: str
    key: bytes
    task_prefix: str = "api"


def provenance_tag(key: bytes, *, task_id: str, via: str, payload: bytes) -> str:
    """The HMAC that vouches for `via` on this one job (its id and its exact payload)."""
    message = b"\0".join((task_id.encode(), via.encode(), hashlib.sha256(payload).digest()))
    return hmac.new(key, message, hashlib.sha256).hexdigest()


_encoder = msgspec.json.Encoder(enc_hook=str)  # exceptions in arq results become their text
_decoder = msgspec.json.Decoder()


def serialize_job(data: dict[str, Any]) -> bytes:
    """Encode an arq job or result as JSON, the format the Lua script writes."""
    if data.get("s"):
        # A successful result: arq would keep the job's raw argument in it, secrets and all
        # when a foreign producer did not redact; the result itself carries the redacted events.
        data = {**data, "a": []}
    return _encoder.encode(data)


def deserialize_job(raw: bytes) -> dict[str, Any]:
    """Decode an arq job; a job with invalid UTF-8 still decodes, flagged for the dead letter."""
    try:
        job: dict[str, Any] = _decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        # Bytes from a foreign producer that are not UTF-8: keep them (replaced) so the task
        # fails visibly with its reason instead of vanishing in arq's deserializer.
        job = _decoder.decode(raw.decode("utf-8", errors="replace").encode())
        job["k"] = {**job.get("k", {}), "invalid_utf8": True}
    return job
