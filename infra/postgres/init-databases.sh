#!/usr/bin/env bash
# One PostgreSQL server, two databases: `mlflow` (runs and the model registry) and `prefect`
# (orchestration), each owned by its own login role so neither service can touch the other's data.
#
# The postgres image runs this once, on an empty data volume, from /docker-entrypoint-initdb.d
# (compose.yaml mounts it there). tests/test_team_stack.py runs the same file against a throwaway
# cluster, so what the compose stack creates is what the test exercises.
#
# Needs: psql reaching the server as a superuser (the image's POSTGRES_USER over its local socket,
# or PGHOST/PGPORT/PGUSER/PGPASSWORD in the test), and the two passwords in the environment:
#   MLFLOW_DB_PASSWORD  PREFECT_DB_PASSWORD
# Passwords are passed as psql variables (:'name' quotes them as SQL literals), never spliced
# into the SQL text by the shell: any character is safe here (not in compose.yaml's connection
# URLs, which is why infra/.env.example asks for letters, digits, - and _).
set -euo pipefail
: "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD}" "${PREFECT_DB_PASSWORD:?set PREFECT_DB_PASSWORD}"

psql -v ON_ERROR_STOP=1 --no-psqlrc ${POSTGRES_USER:+--username "$POSTGRES_USER"} --dbname postgres \
     -v mlflow_pw="$MLFLOW_DB_PASSWORD" -v prefect_pw="$PREFECT_DB_PASSWORD" <<'SQL'
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_pw';
CREATE ROLE prefect LOGIN PASSWORD :'prefect_pw';
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE prefect OWNER prefect;
REVOKE CONNECT ON DATABASE mlflow FROM PUBLIC;
REVOKE CONNECT ON DATABASE prefect FROM PUBLIC;
-- Since PostgreSQL 15 `public` belongs to pg_database_owner, i.e. to each database's owner: the
-- roles above can create their tables without further grants, and no other role can create there.
-- Prefect's migrations run CREATE EXTENSION IF NOT EXISTS pg_trgm. pg_trgm is a trusted extension
-- that a database owner may create, but creating it here as superuser makes that step a no-op
-- whatever the server's policy on extensions.
\connect prefect
CREATE EXTENSION IF NOT EXISTS pg_trgm;
SQL
