"""The embedded servers: the PostgreSQL and Valkey that `auditq run`, the tests and the
benchmarks start from pip packages (`servers`), Valkey's process (`valkey_process`), and
how a server is spawned so a Ctrl-C cannot stop it half-started (`spawn`)."""
