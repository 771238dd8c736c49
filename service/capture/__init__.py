"""Capture from the application's own PostgreSQL: statement-level triggers write each changed
row into an outbox there, and the relay moves the outbox into the queue (docs/capture.md).

The one room besides service/store/ that holds SQL, by design: every statement here runs
against the APPLICATION's database (its outbox, triggers and capture schema, `schema.sql`
beside these modules), never against auditq's store, which this room does not reach. Keeping
it here keeps what capture installs in someone else's database in one place."""
