"""Secrets out of captured text, before anything leaves the process.

Standard library only: the hook command (``hooks/emit.py``) imports it with Python started as
``-I -S``. Patterns cover what ends up in prompts, tool output and shell output most often: API
keys of the big providers, bearer and JWT tokens, private key blocks, connection strings with a
password, and ``.env``-style assignments of names that say KEY, TOKEN, SECRET or PASSWORD. Each
match becomes ``[REDACTED]`` (for an assignment, only the value), so the text stays readable.
"""

from __future__ import annotations

import re

MARK = "[REDACTED]"

# (guards, pattern, flags): a pattern is compiled, and run, only when one of its guards (lower
# case) occurs in the lowered text. The hook command starts a new process per event, and
# compiling every pattern up front would cost it several milliseconds for nothing.
# Every repetition is bounded or anchored by a literal, so 1 MB of one character costs linear
# time (an unbounded ``[a-z]*`` before a literal backtracks quadratically on such input).
_RULES: tuple[tuple[tuple[str, ...], str, int], ...] = (
    (("private key",),
     r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
     re.S),
    (("sk-",), r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_\-]{16,}", 0),  # OpenAI, Anthropic
    (("akia", "asia"), r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", 0),  # AWS access key id
    (("gh",), r"\bgh[pousr]_[A-Za-z0-9]{30,}\b", 0),  # GitHub
    (("github_pat_",), r"\bgithub_pat_[A-Za-z0-9_]{40,}\b", 0),
    (("glpat-",), r"\bglpat-[A-Za-z0-9_\-]{20,}\b", 0),  # GitLab
    (("xox",), r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b", 0),  # Slack
    (("aiza",), r"\bAIza[0-9A-Za-z_\-]{35}\b", 0),  # Google
    (("_live_", "_test_"), r"\b(?:sk|rk|pk)_(?:live|test)_[0-9A-Za-z]{16,}\b", 0),  # Stripe
    (("eyj",), r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", 0),  # JWT
)  # fmt: skip
_BEARER = (("bearer", "token"), r"(?i)\b(bearer|token)\s+[A-Za-z0-9._~+/=-]{16,}", 0)
_URL_PASSWORD = (("://",), r"(://[^/\s:@]{1,256}:)([^@\s/]{1,256})(@)", 0)
_ASSIGNMENT = (
    ("key", "token", "secret", "passw", "pwd", "credential", "auth"),
    r"(?im)^([ \t]{0,16}(?:export[ \t]+)?[A-Za-z_][A-Za-z0-9_]{0,64}?"
    r"(?:KEY|TOKEN|SECRET|PASSWORD|PASSWD|PWD|CREDENTIALS?|AUTH)[A-Za-z0-9_]{0,64}"
    r"[ \t]{0,16}[=:][ \t]{0,16})(\S[^\n]*?)[ \t\r]*$",
    0,
)
_compiled: dict[str, re.Pattern[str]] = {}


def _pattern(source: str, flags: int) -> re.Pattern[str]:
    p = _compiled.get(source)
    if p is None:
        p = _compiled[source] = re.compile(source, flags)
    return p


def _wanted(lowered: str, guards: tuple[str, ...]) -> bool:
    return any(g in lowered for g in guards)


def redact_text(text: str) -> str:
    """``text`` with every secret the patterns know replaced by ``[REDACTED]``."""
    lowered = text.lower()
    for guards, source, flags in _RULES:
        if _wanted(lowered, guards):
            text = _pattern(source, flags).sub(MARK, text)
    if _wanted(lowered, _BEARER[0]):
        text = _pattern(*_BEARER[1:]).sub(lambda m: f"{m.group(1)} {MARK}", text)
    if _wanted(lowered, _URL_PASSWORD[0]):
        text = _pattern(*_URL_PASSWORD[1:]).sub(lambda m: m.group(1) + MARK + m.group(3), text)
    if _wanted(lowered, _ASSIGNMENT[0]):
        text = _pattern(*_ASSIGNMENT[1:]).sub(lambda m: m.group(1) + MARK, text)
    return text


def redact(value: object) -> object:
    """Every string inside ``value`` (dicts and lists walked) redacted."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value
