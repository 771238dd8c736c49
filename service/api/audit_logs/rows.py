"""The SQL of audit-log rows: the columns read, WHERE built from a query, rows into items.

They live in service/store/items.py (the destinations' runners use them too)."""

from __future__ import annotations

from service.store.items import (
    ACTION_PREFIX,
    AFTER_ASC,
    AFTER_DESC,
    COLUMN_FILTERS,
    FULL_TEXT,
    IP_WITHIN,
    IS,
    IS_ANY,
    NO_ROW,
    ORDER_BY,
    SELECT_CURSOR_SECRET,
    SELECT_ITEMS,
    SELECT_ONE,
    SINCE,
    UNTIL,
    holds_nul,
    item,
    where_of,
)

__all__ = [
    "ACTION_PREFIX",
    "AFTER_ASC",
    "AFTER_DESC",
    "COLUMN_FILTERS",
    "FULL_TEXT",
    "IP_WITHIN",
    "IS",
    "IS_ANY",
    "NO_ROW",
    "ORDER_BY",
    "SELECT_CURSOR_SECRET",
    "SELECT_ITEMS",
    "SELECT_ONE",
    "SINCE",
    "UNTIL",
    "holds_nul",
    "item",
    "where_of",
]
