"""Audit logs, the read side: filters, keyset pages, export, statistics and the live tail."""
