"""Capture from the application's own PostgreSQL: statement-level triggers write each changed
row into an outbox there, and the relay moves the outbox into the queue (docs/capture.md)."""
