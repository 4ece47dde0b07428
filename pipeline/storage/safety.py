"""Guards for untrusted input: paths confined to the artifacts root, and secrets kept out of what we write.

Artifacts, Dagster metadata and logs are meant to be shared (DVC remotes, the web UI, CI logs), so
nothing that authenticates a user may end up in them. `redact_secrets` masks the values of
secret-looking environment variables (HF_TOKEN, *_API_KEY, AWS_SECRET_ACCESS_KEY, ...), Hugging Face
and similar access tokens, and credentials embedded in URLs, wherever they occur in a string.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REDACTED = "[REDACTED]"

# Environment variables whose values are credentials. Matched against the upper-cased name.
SECRET_ENV_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL)")
# Shorter values are too likely to occur in ordinary text ("1", "true") to be masked safely.
MIN_SECRET_LENGTH = 8
TOKEN_PATTERNS = (
    re.compile(r"\bhf_[A-Za-z0-9]{20,}"),  # Hugging Face user access tokens
    re.compile(r"\b(?:ghp|gho|ghs|ghu|github_pat)_[A-Za-z0-9_]{20,}"),  # GitHub tokens
    re.compile(r"\bsk-[A-Za-z0-9_-]{20,}"),  # OpenAI-style API keys
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),  # AWS access key ids
)
URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@")

ASSET_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class UnsafePathError(ValueError):
    """A path from configuration would reach outside the directory it must stay in."""


def check_asset_name(name: str) -> str:
    """An asset name usable as one directory name: no separators, no `..`, not hidden."""
    if not isinstance(name, str) or not ASSET_NAME.match(name) or ".." in name:
        raise UnsafePathError(
            f"invalid asset name for an artifact directory: {name!r} "
            "(letters, digits, '_', '-', '.'; no path separators, no leading '.', no '..')"
        )
    return name


def confined_path(root: str | os.PathLike[str], *parts: str | os.PathLike[str]) -> Path:
    """`root/part/...` resolved, refusing any result outside `root` (`..`, absolute parts, symlinks)."""
    resolved_root = Path(root).resolve()
    for part in parts:
        text = os.fspath(part)
        if "\0" in text:
            raise UnsafePathError(f"path component {text!r} contains a NUL byte")
        if Path(text).is_absolute():
            raise UnsafePathError(f"path {text!r} is absolute; it must be relative to {resolved_root}")
    candidate = resolved_root.joinpath(*parts).resolve()
    if candidate != resolved_root and resolved_root not in candidate.parents:
        raise UnsafePathError(f"path {os.path.join(*map(os.fspath, parts))!r} escapes {resolved_root} (resolves to {candidate})")
    return candidate


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of secret-looking environment variables, longest first (so overlaps mask fully)."""
    environ = os.environ if environ is None else environ
    values = {
        value for name, value in environ.items()
        if SECRET_ENV_NAME.search(name.upper()) and len(value) >= MIN_SECRET_LENGTH
    }
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, secrets: list[str] | None = None) -> str:
    secrets = secret_values() if secrets is None else secrets
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    for pattern in TOKEN_PATTERNS:
        text = pattern.sub(REDACTED, text)
    return URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)


def redact_secrets(value: Any, secrets: list[str] | None = None) -> Any:
    """A copy of `value` (str, or lists/tuples/dicts of them, nested) with every secret masked."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, Mapping):
        return {redact_secrets(k, secrets): redact_secrets(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_secrets(v, secrets) for v in value)
    return value
