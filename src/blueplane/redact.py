"""Secrets out of captured text, before anything leaves the process.

Standard library only: the hook command (``hooks/emit.py``) imports it with Python started as
``-I -S``. Patterns cover what ends up in prompts, tool output and shell output most often: API
keys of the big providers, bearer and JWT tokens, private key blocks, connection strings with a
password, and ``.env``-style assignments of names that say KEY, TOKEN, SECRET or PASSWORD. Each
match becomes ``[REDACTED]`` (for an assignment, only the value), so the text stays readable.
"""

from __future__ import annotations

import re
from typing import Any

MARK = "[REDACTED]"

_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(
        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
        re.S,
    ),
    re.compile(r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_\-]{16,}"),  # OpenAI, Anthropic
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),  # GitHub
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{40,}\b"),
    re.compile(r"\bglpat-[A-Za-z0-9_\-]{20,}\b"),  # GitLab
    re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b"),  # Slack
    re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b"),  # Google
    re.compile(r"\b(?:sk|rk|pk)_(?:live|test)_[0-9A-Za-z]{16,}\b"),  # Stripe
    re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),  # JWT
)
_BEARER = re.compile(r"(?i)\b(bearer|token)\s+[A-Za-z0-9._~+/=-]{16,}")
# Every repetition is bounded or anchored by a literal, so 1 MB of one character costs linear
# time (an unbounded ``[a-z]*`` before a literal backtracks quadratically on such input).
_URL_PASSWORD = re.compile(r"(://[^/\s:@]{1,256}:)([^@\s/]{1,256})(@)")
_ASSIGNMENT = re.compile(
    r"(?im)^([ \t]{0,16}(?:export[ \t]+)?[A-Za-z_][A-Za-z0-9_]{0,64}?"
    r"(?:KEY|TOKEN|SECRET|PASSWORD|PASSWD|PWD|CREDENTIALS?|AUTH)[A-Za-z0-9_]{0,64}"
    r"[ \t]{0,16}[=:][ \t]{0,16})(\S[^\n]*?)[ \t\r]*$"
)


def redact_text(text: str) -> str:
    """``text`` with every secret the patterns know replaced by ``[REDACTED]``."""
    for pattern in _PATTERNS:
        text = pattern.sub(MARK, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {MARK}", text)
    text = _URL_PASSWORD.sub(lambda m: m.group(1) + MARK + m.group(3), text)
    return _ASSIGNMENT.sub(lambda m: m.group(1) + MARK, text)


def redact(value: Any) -> Any:
    """Every string inside ``value`` (dicts and lists walked) redacted."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value
