#!/bin/sh
# Run once by the postgres image on an empty volume (docker-entrypoint-initdb.d), as its
# superuser: auditq's three roles (docs/integrity.md, "External servers: what a DBA grants").
# The owner owns the database (so `auditq migrate` creates everything as it); the runtime
# roles own nothing and get their rights from migrate's GRANTs.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v owner_pw="$AUDITQ_OWNER_PASSWORD" -v worker_pw="$AUDITQ_WORKER_PASSWORD" \
    -v api_pw="$AUDITQ_API_PASSWORD" <<'SQL'
CREATE ROLE auditq_owner LOGIN PASSWORD :'owner_pw';
CREATE ROLE auditq_worker LOGIN PASSWORD :'worker_pw' NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
CREATE ROLE auditq_api LOGIN PASSWORD :'api_pw' NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
ALTER DATABASE :"DBNAME" OWNER TO auditq_owner;
ALTER SCHEMA public OWNER TO auditq_owner;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
SQL
