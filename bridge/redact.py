"""Secrets out of snapshots, pure: mask credential values before anything reaches Kafka.

API (the engine calls these; nothing here does I/O or reads a clock)::

    settings = RedactionSettings(hash_key="…")        # mounted as [redaction]
    redactor = Redactor(settings)
    redactor.redact(snapshot) -> JsonDict              # a new dict; the input is never mutated
    redactor.redact_bytes_for_dead_letter(body) -> bytes
    startup_warnings(settings) -> tuple[str, ...]      # log each at WARNING when the app starts
    with_derived_key(settings, credential) -> RedactionSettings   # hash_key from the DLI secret

**Which key.** An explicit ``hash_key`` wins. Else the engine derives one from the DLI
credential secret it already holds (the SK, or the IAM password): HMAC-SHA256 under the fixed
label ``dli-bridge/redaction/v1``, so the key is stable across restarts and instances, never
equal to the secret, and a reader of the topics learns nothing about it. Rotating that
credential changes every mask once (one ``updated`` event per job holding a secret); set an
explicit ``hash_key`` to avoid that. Without either (``auth.mode = "none"``) masks are bare.

Apply ``redact`` to every snapshot before it is diffed, put in an event, a state record or a
dead letter, and diff the *redacted* snapshots (the state topic only ever holds those).

**Mask format.** A secret value becomes ``******(h:3f9a1c2e)``: six stars and the first 8 hex
digits of HMAC-SHA256(``hash_key``, value). The digest never contains the value and cannot be
brute-forced without the per-deployment key, yet a changed secret changes the mask, so
``bridge.diff.diff`` on redacted snapshots reports the changed JSON Pointer with both sides
masked. Without ``hash_key`` the mask is a bare ``******``: nothing guessable is published, but a
changed secret is then *not* reported (``startup_warnings`` says so). Equal secrets get equal
masks (the digest shows that two options share a value); 32 bits make a collision between the
old and the new value of one secret a one-in-four-billion miss. Empty values and values that
already are a mask are left alone, which makes ``redact`` idempotent.

**What is masked** (keys match case-insensitively; camelCase, ``_``, ``-`` and ``.`` are all
separators; see ``_SENSITIVE``): values of keys naming a password/passwd/pwd/pass, passphrase,
secret, token, credential, private key, api key, access/secret key (``ak``, ``sk``,
``accessKeyId``, ``fs.obs.secret.key``), keystore/ssl key, ``user.info``; plus
``extra_key_patterns`` (regexes searched in the key as written). Where:

- ``sql_body``: Flink SQL ``'key' = 'value'`` pairs anywhere (``WITH (…)``, ``SET``), keys and
  values single-, double- or back-quoted, doubled-quote escapes, comments between the tokens.
  Flink SQL has no backslash escapes; a sensitive value whose text ends in ``\\`` is masked up
  to where a backslash-escaping reader would end it too.
- every string in the snapshot (so ``sql_body``, ``runtime_config``, ``operator_config``,
  ``entrypoint_args``, ``desc``, ``status_desc``, comments in SQL, …): ``key=value`` /
  ``key: value`` / ``"key": "value"`` with the value quoted or bare (JAAS ``password="…"``,
  JDBC ``?password=…``, JSON, properties, ``-Dx.secret=…``, ``--sk=…``), ``--password value``,
  ``{"key": "fs.obs.secret.key", "value": "…"}`` entries, and ``scheme://user:PASS@host``.
- any object member whose key is sensitive: the whole value (objects and lists too).
- ``mask_fields`` (JSON Pointers, value masked whole), ``drop_fields`` (removed).
- finally, every other occurrence of a secret found above (6 characters or longer) in any
  string of the same snapshot, e.g. the same password repeated in ``desc``.

**Not caught**: a secret under a key that names nothing sensitive (``'url' = 'x'``,
``'properties.sasl.jaas.config'`` with a module-specific option name); a bare (unquoted) value
containing whitespace, ``,``, ``;``, ``&``, a quote or a bracket is masked only up to that
character; a value whose key and ``=`` are split by anything but whitespace or SQL comments;
secrets encoded (base64, URL-encoded) inside otherwise innocent values; secrets in
``execution_graph`` or other fields that do not use one of the shapes above. Non-JSON dead-letter
bodies that look like JSON (truncated) are replaced by their mask whole.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any, Final

import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from bridge.models import JsonDict

__all__ = [
    "MASK",
    "RedactionSettings",
    "Redactor",
    "is_mask",
    "startup_warnings",
    "with_derived_key",
]

log = logging.getLogger(__name__)

MASK: Final = "******"
KEY_LABEL: Final = b"dli-bridge/redaction/v1"
_DIGEST_HEX = 8
_SWEEP_MIN_LEN = 6  # shorter secrets are masked where found, not searched for elsewhere
_MAX_DEPTH = 16  # nested key=value levels read inside one value (bounds the recursion)
_MASK_RE: Final = rf"\*{{6}}(?:\(h:[0-9a-f]{{{_DIGEST_HEX}}}\))?"
_IS_MASK = re.compile(_MASK_RE)

# Matched against two normalised spellings of a key (see _key_forms).
_SENSITIVE = re.compile(
    r"passw(?:or)?d|passphrase|secret|token|credential|private\.?key|api\.?key|access\.?key"
    r"|(?:^|\.)(?:pass|pwd|ak|sk|keystore\.key|ssl\.key|user\.?info)(?:\.|$)"
)
# Keys whose verdict is remembered; keys are field and option names, so this is plenty.
_VERDICT_MEMORY = 4096
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEPARATORS = re.compile(r"[\s_\-./:]+")


class RedactionSettings(BaseModel):
    """``[redaction]``: masking of secrets in snapshots (on unless ``enabled = false``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    extra_key_patterns: list[str] = Field(default_factory=list)  # regexes, case-insensitive
    mask_fields: list[str] = Field(default_factory=list)  # JSON Pointers masked whole
    drop_fields: list[str] = Field(default_factory=list)  # JSON Pointers removed
    hash_key: SecretStr | None = None  # per deployment; without it changed secrets go unseen

    @field_validator("extra_key_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {pattern!r} ({exc})") from None
        return patterns

    @field_validator("mask_fields", "drop_fields")
    @classmethod
    def _pointers(cls, pointers: list[str]) -> list[str]:
        for pointer in pointers:
            if not pointer.startswith("/"):
                raise ValueError(f"not a JSON Pointer (must start with '/'): {pointer!r}")
        return pointers


def startup_warnings(settings: RedactionSettings) -> tuple[str, ...]:
    """What the app should log at WARNING when it starts with these settings (may be empty)."""
    if not settings.enabled:
        return (
            "redaction is DISABLED ([redaction] enabled = false): SQL bodies, configs and "
            "entrypoint arguments are published with any credentials they contain",
        )
    if settings.hash_key is None:
        return (
            "[redaction] hash_key is not set: secrets are masked, but a changed secret is not "
            "reported as a change (set a per-deployment key to compare keyed digests)",
        )
    return ()


def with_derived_key(settings: RedactionSettings, credential: str | None) -> RedactionSettings:
    """``settings`` with a ``hash_key``: its own, else one derived from ``credential``."""
    if settings.hash_key is not None or not credential:
        return settings
    derived = hmac.new(KEY_LABEL, credential.encode(), hashlib.sha256).hexdigest()
    return settings.model_copy(update={"hash_key": SecretStr(derived)})


def is_mask(value: str) -> bool:
    """True when ``value`` is exactly a mask this module writes."""
    return _IS_MASK.fullmatch(value) is not None


def _key_forms(key: str) -> tuple[str, str]:
    """``key`` lowercased with separators as dots, once as written and once camelCase-split."""
    plain = _SEPARATORS.sub(".", key.strip("\"'`")).lower().strip(".")
    split = _SEPARATORS.sub(".", _CAMEL.sub(".", key.strip("\"'`"))).lower().strip(".")
    return plain, split


class Redactor:
    """Masks secrets in snapshots and dead-letter bodies; safe to share (its one state is a memo
    of which keys are sensitive)."""

    def __init__(self, settings: RedactionSettings) -> None:
        self._settings = settings
        self._key = None if settings.hash_key is None else settings.hash_key.get_secret_value()
        self._extra = [re.compile(p, re.IGNORECASE) for p in settings.extra_key_patterns]
        self._drop = [_parse_pointer(p) for p in settings.drop_fields]
        self._mask = [_parse_pointer(p) for p in settings.mask_fields]
        self._verdicts: dict[str, bool] = {}  # key -> sensitive (see _sensitive)

    def __repr__(self) -> str:
        s = self._settings
        keyed = "keyed" if self._key is not None else "unkeyed"
        return (
            f"<Redactor {'on' if s.enabled else 'OFF'} {keyed} extra_keys={len(self._extra)} "
            f"mask_fields={len(self._mask)} drop_fields={len(self._drop)}>"
        )

    # --- public ---------------------------------------------------------------------------

    def redact(self, snapshot: JsonDict) -> JsonDict:
        """A copy of ``snapshot`` with every secret masked (see the module docstring)."""
        if not self._settings.enabled:
            return copy.deepcopy(snapshot)
        # the walk builds a new tree; only dropping and masking by path edit one in place
        doc: JsonDict = copy.deepcopy(snapshot) if self._drop or self._mask else snapshot
        for path in self._drop:
            _drop(doc, path)
        for path in self._mask:
            _replace(doc, path, self._mask_any)
        redacted: JsonDict = self._redact_tree(doc)
        return redacted

    def redact_bytes_for_dead_letter(self, body: bytes) -> bytes:
        """``body`` with secrets masked: JSON is redacted as a tree, other text by pattern.

        Text that looks like JSON but does not parse (e.g. cut off mid-string, where escapes
        hide the shapes we look for) and bytes that are not UTF-8 are replaced by one mask.
        """
        if not self._settings.enabled:
            return body
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict | list):
            return orjson.dumps(self._redact_tree(parsed))
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return self._mask_text(body.hex()).encode()
        if text.lstrip().startswith(("{", "[")):
            return self._mask_text(text).encode()
        found: list[str] = []
        return _sweep(self._text(self._sql(text, found), found), found, self._mask_text).encode()

    # --- the tree -------------------------------------------------------------------------

    def _redact_tree(self, doc: Any) -> Any:
        found: list[str] = []
        out = self._walk(doc, None, found)
        if not any(len(s) >= _SWEEP_MIN_LEN for s in found):
            return out  # nothing the sweep would look for
        return _walk_strings(out, lambda s: _sweep(s, found, self._mask_text))

    def _walk(self, value: Any, key: str | None, found: list[str]) -> Any:
        if isinstance(value, dict):
            return {k: self._member(k, v, found) for k, v in value.items()}
        if isinstance(value, list):
            return [self._walk(v, None, found) for v in value]
        if isinstance(value, str):
            text = self._sql(value, found) if key == "sql_body" else value
            return self._text(text, found)
        return value

    def _member(self, key: str, value: Any, found: list[str]) -> Any:
        if self._sensitive(key) and value is not None and value != "":
            if isinstance(value, str):
                if is_mask(value):
                    return value
                found.append(value)
            return self._mask_any(value)
        return self._walk(value, key, found)

    # --- masks ----------------------------------------------------------------------------

    def _sensitive(self, key: str) -> bool:
        known = self._verdicts.get(key)
        if known is None:  # the same few dozen keys come back in every snapshot
            if len(self._verdicts) >= _VERDICT_MEMORY:
                self._verdicts.clear()
            known = self._verdicts[key] = self._judge_key(key)
        return known

    def _judge_key(self, key: str) -> bool:
        if any(p.search(key) for p in self._extra):
            return True
        return any(_SENSITIVE.search(form) for form in _key_forms(key))

    def _mask_text(self, value: str) -> str:
        if self._key is None:
            return MASK
        digest = hmac.new(self._key.encode(), value.encode(), hashlib.sha256).hexdigest()
        return f"{MASK}(h:{digest[:_DIGEST_HEX]})"

    def _mask_any(self, value: Any) -> str:
        if isinstance(value, str):
            return value if is_mask(value) else self._mask_text(value)
        return self._mask_text(orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode())

    def _secret(self, raw: str, found: list[str]) -> str:
        """The mask for ``raw`` (remembered for the sweep), or ``raw`` when nothing to hide."""
        if raw == "" or is_mask(raw):
            return raw
        found.append(raw)
        return self._mask_text(raw)

    # --- SQL ------------------------------------------------------------------------------

    def _sql(self, text: str, found: list[str]) -> str:
        """Mask the values of sensitive ``'key' = 'value'`` pairs, reading SQL tokens."""
        spans: list[tuple[int, int]] = []
        for key, value in _pairs(text):
            if self._sensitive(_unquote(key.group())):
                spans.append(_value_span(text, value))
        return _render(text, spans, lambda raw: self._secret(raw, found))

    # --- free text ------------------------------------------------------------------------

    def _text(self, text: str, found: list[str], depth: int = 0) -> str:
        """Mask ``key=value``-like shapes anywhere in ``text`` (configs, args, JAAS, URLs)."""
        if is_mask(text):
            return text
        if depth > _MAX_DEPTH:  # ``a=b=c=…`` nested this deep is no config: hide it all
            return self._secret(text, found)
        if ":" not in text and "=" not in text and "--" not in text:
            return text  # every shape below needs one of these: most values end here
        if '"key"' in text:
            text = _ENTRY.sub(lambda m: self._entry(m, found), text)
        text = _PAIR.sub(lambda m: self._pair(m, found, depth), text)
        if "--" in text:
            text = _FLAG.sub(lambda m: self._flag(m, found), text)
        if "://" not in text:
            return text
        return _USERINFO.sub(lambda m: m["head"] + self._secret(m["pw"], found) + "@", text)

    def _pair(self, m: re.Match[str], found: list[str], depth: int) -> str:
        value = m["value"]
        quote = _quote_of(value)
        inner = value[len(quote) : len(value) - len(quote)]
        if self._sensitive(m["key"]):
            masked = inner if not quote and inner == "null" else self._secret(inner, found)
        else:  # an innocent option may still hold a JAAS string, a URL, a nested pair
            masked = self._text(inner, found, depth + 1)
        return m["lead"] + m["sep"] + quote + masked + quote

    def _flag(self, m: re.Match[str], found: list[str]) -> str:
        if not self._sensitive(m["flag"]) or m["value"].startswith("--"):
            return m.group()
        value = m["value"]
        quote = _quote_of(value)
        inner = value[len(quote) : len(value) - len(quote)]
        return m["flag"] + m["space"] + quote + self._secret(inner, found) + quote

    def _entry(self, m: re.Match[str], found: list[str]) -> str:
        if not self._sensitive(m["name"]):
            return m.group()
        return m["head"] + self._secret(m["value"], found) + '"'


# --- SQL tokens -----------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
      (?P<ws>\s+)
    | (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
    | (?P<quoted>'(?:[^']|'')*+(?:'|\Z)|"(?:[^"]|"")*+(?:"|\Z)|`(?:[^`]|``)*+(?:`|\Z))
    | (?P<eq>=)
    | (?P<other>[^\s'"`=/-]+|.)
    """,
    re.VERBOSE | re.DOTALL,
)
# The same literal read by a backslash-escaping reader (conservative end for sensitive values).
_BACKSLASH_END = {
    q: re.compile(rf"{q}(?:\\.|{q}{q}|[^{q}\\])*+(?:(?P<close>{q})|\Z)", re.DOTALL) for q in "'\"`"
}
_CLOSED = {q: re.compile(rf"{q}(?:[^{q}]|{q}{q})*+{q}", re.DOTALL) for q in "'\"`"}
_Pair = tuple[re.Match[str], re.Match[str]]


def _pairs(text: str, pos: int = 0, endpos: int | None = None) -> Iterator[_Pair]:
    """``(key, value)`` quoted tokens of every ``<quoted> = <quoted>``, inside comments too.

    A commented-out option is still an option someone typed: its value is masked as well.
    """
    before: list[re.Match[str]] = []  # the last two tokens that were not space or comment
    for token in _TOKEN.finditer(text, pos, len(text) if endpos is None else endpos):
        kind = token.lastgroup
        if kind == "ws":
            continue
        if kind == "comment":
            yield from _pairs(text, *_comment_body(token))
            continue
        if kind == "quoted" and [t.lastgroup for t in before] == ["quoted", "eq"]:
            yield before[0], token
        before = [*before[-1:], token]


def _comment_body(token: re.Match[str]) -> tuple[int, int]:
    start, end = token.start() + 2, token.end()
    if token.group().startswith("/*") and token.group().endswith("*/") and end - start >= 2:
        end -= 2
    return start, end


def _unquote(token: str) -> str:
    quote = token[0]
    body = token[1:-1] if len(token) > 1 and token.endswith(quote) else token[1:]
    return body.replace(quote * 2, quote)


def _value_span(text: str, value: re.Match[str]) -> tuple[int, int]:
    """The span of a quoted value's content; as far as a backslash reader would go, if further."""
    token, quote = value.group(), value.group()[0]
    closed = _CLOSED[quote].fullmatch(token) is not None
    start, end = value.start() + 1, value.end() - (1 if closed else 0)
    if closed and text[start:end].endswith("\\"):
        other = _BACKSLASH_END[quote].match(text, value.start())
        assert other is not None  # it matches at any quote
        end = max(end, other.end() - (1 if other["close"] else 0))
    return start, end


def _render(text: str, spans: list[tuple[int, int]], mask: Callable[[str], str]) -> str:
    """``text`` with the (merged) spans replaced by ``mask(span text)``."""
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out, at = [], 0
    for start, end in merged:
        out += [text[at:start], mask(text[start:end])]
        at = end
    out.append(text[at:])
    return "".join(out)


# --- free-text shapes -----------------------------------------------------------------------

_QUOTED_VALUE = (
    rf"{_MASK_RE}"  # first, so a mask is read whole and left alone
    r"|''(?:[^']|'(?!'))*+''"  # single quotes doubled inside a SQL literal (JAAS in SQL)
    r'|\\"(?:[^"\\]|\\(?!"))*+\\"'  # JSON-escaped double quotes (a JSON text seen as text)
    r'|"(?:[^"\\]|\\.)*+"'
    r"|'(?:[^'\\]|''|\\.)*+'"
)
_VALUE = rf"(?:{_QUOTED_VALUE}|[^\s,;&\"'`{{}}\[\]]++)"
_KEY_CHARS = r"A-Za-z0-9_.\-"
# A key starts after a quote or where no key character precedes it (linear time on long words).
_PAIR = re.compile(
    rf"(?P<lead>(?:[\"'`]|(?<![{_KEY_CHARS}]))(?P<key>[{_KEY_CHARS}]++)[\"'`]?)"
    rf"(?P<sep>\s*[:=]\s*)(?P<value>{_VALUE})",
    re.DOTALL,
)
_FLAG = re.compile(
    rf"(?P<flag>(?<![{_KEY_CHARS}])--[{_KEY_CHARS}]++)(?P<space>\s+)(?P<value>{_VALUE})"
)
_ENTRY = re.compile(
    r'(?P<head>"key"\s*:\s*"(?P<name>[^"\\]*)"\s*,\s*"value"\s*:\s*")(?P<value>(?:[^"\\]|\\.)*+)"'
)
_USERINFO = re.compile(r"(?P<head>[A-Za-z][\w+.\-]*://[^\s:/@'\"]*:)(?P<pw>[^\s@/'\"]+)@")


def _quote_of(value: str) -> str:
    for quote in ("''", '\\"', '"', "'"):
        if len(value) >= 2 * len(quote) and value.startswith(quote) and value.endswith(quote):
            return quote
    return ""


def _sweep(text: str, found: list[str], mask: Callable[[str], str]) -> str:
    for secret in sorted({s for s in found if len(s) >= _SWEEP_MIN_LEN}, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, mask(secret))
    return text


def _walk_strings(value: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(value, dict):
        return {k: _walk_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk_strings(v, fn) for v in value]
    return fn(value) if isinstance(value, str) else value


# --- JSON Pointers --------------------------------------------------------------------------


def _parse_pointer(pointer: str) -> tuple[str, ...]:
    return tuple(p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/"))


def _parent(doc: Any, path: tuple[str, ...]) -> tuple[Any, str | int] | None:
    """The container holding ``path``'s last step and that step, or None when absent."""
    node = doc
    for step in path[:-1]:
        node = _child(node, step)
        if node is None:
            return None
    last = path[-1]
    if isinstance(node, dict) and last in node:
        return node, last
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        return node, int(last)
    return None


def _child(node: Any, step: str) -> Any:
    if isinstance(node, dict):
        return node.get(step)
    if isinstance(node, list) and step.isdigit() and int(step) < len(node):
        return node[int(step)]
    return None


def _drop(doc: Any, path: tuple[str, ...]) -> None:
    found = _parent(doc, path)
    if found is not None:
        container, step = found
        del container[step]


def _replace(doc: Any, path: tuple[str, ...], fn: Callable[[Any], Any]) -> None:
    found = _parent(doc, path)
    if found is not None:
        container, step = found
        if container[step] is not None:
            container[step] = fn(container[step])
