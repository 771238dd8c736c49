"""An event's receipt from the store: its item, leaf, inclusion proof and latest checkpoint."""

from __future__ import annotations

import uuid
from typing import Any

from service.integrity import note, receipt
from service.integrity.leaf import as_json
from service.integrity.logverify import action_json
from service.store import tlog
from service.store.db import Conn
from service.store.items import ITEM_COLUMNS, item
from service.store.verify_reads import erasure_rows

# The row, its leaf index (its batch's first leaf + the seqs before it in that batch), whether
# an erasure names it, and the latest checkpoint with its cosignatures: one round trip.
ROW_BY_ID = f"""
SELECT a.seq, {ITEM_COLUMNS.replace("host(ip)", "host(a.ip)")},
       l.leaf_index,
       EXISTS (SELECT FROM tlog_erasure e WHERE e.leaf_index = l.leaf_index) AS erased,
       h.size AS head_size, h.signed
FROM audit_log a
LEFT JOIN LATERAL (
    SELECT b.first + (SELECT coalesce(sum(upper(r * int8range(NULL, a.seq))
                                          - lower(r * int8range(NULL, a.seq))), 0)
                      FROM unnest(b.row_seqs) r)::bigint AS leaf_index
    FROM tlog_batch b WHERE b.row_seqs @> a.seq ORDER BY b.first LIMIT 1
) l ON true
LEFT JOIN LATERAL (
    SELECT c.size, c.note || coalesce((SELECT string_agg(s.line, '' ORDER BY s.witness)
                                       FROM tlog_cosignature s WHERE s.size = c.size), '')
           AS signed
    FROM tlog_checkpoint c ORDER BY c.size DESC LIMIT 1
) h ON true
WHERE a.id = $1 LIMIT 1
"""
# The erasures of a row that the checkpoint covers, oldest first.
ERASURES_OF = """
SELECT action_leaf, action_id FROM tlog_erasure
WHERE leaf_index = $1 AND action_leaf < $2 ORDER BY action_leaf
"""
ACTION = "SELECT id, at, action, actor, detail FROM store_action WHERE id = $1"


class AwaitingCheckpoint(Exception):
    """The row is stored but no signed checkpoint covers it yet."""


async def receipt_of(conn: Conn, event_id: uuid.UUID) -> dict[str, Any] | None:
    """The receipt of an event (contract §8), None when no such row is stored."""
    row = await conn.fetchrow(ROW_BY_ID, event_id)
    if row is None:
        return None
    index, size, signed = row["leaf_index"], row["head_size"], row["signed"]
    if index is None or size is None or index >= size:
        raise AwaitingCheckpoint(f"event {event_id} awaits its first checkpoint")
    index, size = int(index), int(size)
    note.parse(signed)  # what is handed out is at least a well-formed note
    tree = tlog.Tree(conn)
    proof = await tree.inclusion_proof(index, size)
    erasures = []
    for e in await conn.fetch(ERASURES_OF, index, size) if row["erased"] else []:
        action = await conn.fetchrow(ACTION, e["action_id"])
        assert action is not None  # the erasure's action is kept with its leaf
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
