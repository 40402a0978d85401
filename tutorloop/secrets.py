"""Redaction of secrets in text that leaves the process (config errors, MLflow, logs).

A leaf: imports nothing of tutorloop, so errors, tracking and the LLM client can all use it.
"""

from __future__ import annotations

import re
from typing import Any

# Secrets that end up in text by accident: `user:token@` in a URL, a token in a URL's query, and
# provider-prefixed keys (sk-..., hf_..., ghp_...). Redacted wherever params or messages leave the
# process (config errors, MLflow params/tags/artifacts, teacher errors): params.yaml itself is the
# user's file, but mlflow.db, artifacts and logs are shared and long-lived.
_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")
_QUERY_SECRET = re.compile(r"([?&](?:api[_-]?key|key|token|access_token|secret|password|sig)=)[^&#\s]+", re.I)
_PREFIXED_KEY = re.compile(r"\b(?:sk|rk|pk|hf|ghp|gho|ghs|xox[abprs])[-_][A-Za-z0-9_-]{6,}")
REDACTED = "***"


def redact(value: Any) -> Any:
    """`value` with secret-looking parts of its strings replaced by ***; dicts and lists walked."""
    if isinstance(value, str):
        value = _USERINFO.sub(rf"\1{REDACTED}@", value)
        value = _QUERY_SECRET.sub(rf"\1{REDACTED}", value)
        return _PREFIXED_KEY.sub(REDACTED, value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value

