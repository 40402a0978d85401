#!/bin/sh
# MinIO set-up for the team stack (compose.yaml's minio-init runs it on every `up`; idempotent):
# a bucket for MLflow's artifacts, one for the DVC remote, and the access key the clients use —
# a readwrite user, so that no client needs MinIO's root credentials.
set -eu
mc alias set stack http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "stack/$MLFLOW_BUCKET" "stack/$DVC_BUCKET"
mc admin user add stack "$S3_ACCESS_KEY" "$S3_SECRET_KEY"
# attach once: a second attach of the same policy is an error
mc admin user info stack "$S3_ACCESS_KEY" | grep -q readwrite ||
  mc admin policy attach stack readwrite --user "$S3_ACCESS_KEY"
mc ls stack
