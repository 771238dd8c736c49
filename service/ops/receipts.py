"""An event's receipt from the store: its item, leaf, inclusion proof and latest checkpoint."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from service.integrity import note, receipt
from service.integrity.leaf import as_json
from service.integrity.logverify import action_json, erasure_rows
from service.store import tlog
from service.store.items import ITEM_COLUMNS, item

ROW_BY_ID = f"SELECT seq, {ITEM_COLUMNS} FROM audit_log WHERE id = $1 LIMIT 1"
# The erasures of a row that the checkpoint covers, oldest first.
ERASURES_OF = """
SELECT action_leaf, action_id FROM tlog_erasure
WHERE leaf_index = $1 AND action_leaf < $2 ORDER BY action_leaf
"""
ACTION = "SELECT id, at, action, actor, detail FROM store_action WHERE id = $1"


class AwaitingCheckpoint(Exception):
    """The row is stored but no signed checkpoint covers it yet."""


async def receipt_of(conn: asyncpg.Connection, event_id: uuid.UUID) -> dict[str, Any] | None:
    """The receipt of an event (contract §8), None when no such row is stored."""
    row = await conn.fetchrow(ROW_BY_ID, event_id)
    if row is None:
        return None
    index = await tlog.row_leaf_index(conn, row["seq"])
    head = await tlog.last_checkpoint(conn)
    if index is None or head is None or index >= head["size"]:
        raise AwaitingCheckpoint(f"event {event_id} awaits its first checkpoint")
    size = int(head["size"])
    signed = await tlog.checkpoint_with_cosignatures(conn, size)
    assert signed is not None
    note.parse(signed)  # what is handed out is at least a well-formed note
    tree = tlog.Tree(conn)
    proof = await tree.inclusion_proof(index, size)
    erasures = []
    for e in await conn.fetch(ERASURES_OF, index, size):
        action = await conn.fetchrow(ACTION, e["action_id"])
        leaf = {"kind": "action", **action_json(action, await erasure_rows(conn, e["action_leaf"]))}
        erasures.append(
            (leaf, int(e["action_leaf"]), await tree.inclusion_proof(e["action_leaf"], size))
        )
    return receipt.build(
        item_json=as_json(item(row)),
        leaf_index=index,
        tree_size=size,
        inclusion_proof=proof,
        checkpoint=signed,
        erasures=erasures,
    )
