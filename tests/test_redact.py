"""Redaction: no secret survives into a snapshot, a state record or a dead letter."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from bridge.diff import ChangeKind, diff
from bridge.redact import MASK, RedactionSettings, Redactor, is_mask, startup_warnings

KEY = "per-deployment-test-key"


def make(**overrides) -> Redactor:
    overrides.setdefault("hash_key", KEY)
    return Redactor(RedactionSettings(**overrides))


def dumped(value: object) -> bytes:
    return orjson.dumps(value)


def assert_hidden(out: object, secrets: list[str]) -> None:
    blob = dumped(out)
    for secret in secrets:
        assert secret.encode() not in blob, secret
        assert dumped(secret)[1:-1] not in blob, secret


# --- real-looking Flink SQL ---------------------------------------------------------------------

KAFKA_SASL = """CREATE TABLE orders (id BIGINT, amount DOUBLE) WITH (
  'connector' = 'kafka',
  'topic' = 'orders',
  'properties.bootstrap.servers' = 'kafka-1:9093',
  'properties.security.protocol' = 'SASL_SSL',
  'properties.sasl.mechanism' = 'SCRAM-SHA-512',
  'properties.sasl.jaas.config' = 'org.apache.kafka.common.security.scram.ScramLoginModule
     required username="etl" password="Kf-9x!pa55";',
  'properties.ssl.truststore.password' = 'TrustM3e',
  'format' = 'json'
);"""
JDBC = """CREATE TABLE dim_user (id INT, name STRING) WITH (
  'connector' = 'jdbc',
  'url' = 'jdbc:mysql://10.0.0.5:3306/crm?useSSL=false',
  'table-name' = 'users',
  'username' = 'reader',
  'password' = 'Jd8c''quote'
);"""
OBS = """create table sink_obs (line string) with (
  'connector' = 'filesystem',
  'path' = 'obs://bucket/out',
  'fs.obs.access.key' = 'HPUAOBSACCESS01',
  'fs.obs.secret.key' = 'obsSecretKey/+=42',
  "fs.s3a.secret.key" = 's3aSecret99',
  `ak` = 'akvalue1',
  'SK' = 'skvalue1'
);"""
ELASTIC = """CREATE TABLE es_sink (id STRING) WITH ('connector'='elasticsearch-7',
  'hosts'='https://es:9200','index'='logs','username'='elastic','password'='El@st1cPW');"""
REDIS = """CREATE TABLE redis_sink (k STRING, v STRING) WITH (
  'connector' = 'redis', 'host' = 'redis-1', 'port' = '6379',
  'password' = 'R3disAuth', 'deploy-mode' = 'master'
);
SET 'table.exec.state.ttl' = '1h';
SET 'custom.api-token' = 'tok_live_123456';"""
COMMENTED = """CREATE TABLE t (a INT) WITH (
  'connector' = 'dws',
  -- 'password' = 'OldLineComment',
  /* 'password' = 'OldBlockComment', */
  'password' /* current */ = -- really
     'Multi
Line Secret',
  'url' = 'jdbc:postgresql://dws:8000/db?user=me&password=InUrlPw1'
);"""
USERINFO = """CREATE TABLE pg (a INT) WITH (
  'connector' = 'jdbc', 'url' = 'jdbc:postgresql://admin:UserInfoPw@pg:5432/app');"""


@pytest.mark.parametrize(
    ("sql", "secrets", "kept"),
    [
        (KAFKA_SASL, ["Kf-9x!pa55", "TrustM3e"], ["'orders'", 'username="etl"', "'SASL_SSL'"]),
        (JDBC, ["Jd8c'quote", "Jd8c''quote"], ["'users'", "'reader'", "useSSL=false"]),
        (
            OBS,
            ["HPUAOBSACCESS01", "obsSecretKey/+=42", "s3aSecret99", "akvalue1", "skvalue1"],
            ["'obs://bucket/out'", "'filesystem'"],
        ),
        (ELASTIC, ["El@st1cPW"], ["'https://es:9200'", "'logs'", "'elastic'"]),
        (REDIS, ["R3disAuth", "tok_live_123456"], ["'6379'", "'1h'", "'master'"]),
        (
            COMMENTED,
            ["OldLineComment", "OldBlockComment", "Multi\nLine Secret", "InUrlPw1"],
            ["'dws'", "/* current */", "user=me"],
        ),
        (USERINFO, ["UserInfoPw"], ["jdbc:postgresql://admin:", "@pg:5432/app"]),
    ],
    ids=["kafka-sasl", "jdbc", "obs-s3", "elasticsearch", "redis-set", "comments", "userinfo"],
)
def test_sql_bodies_lose_secrets_and_keep_the_rest(sql, secrets, kept):
    out = make().redact({"sql_body": sql})
    assert_hidden(out, secrets)
    for text in kept:
        assert text in out["sql_body"]
    assert MASK in out["sql_body"]


@pytest.mark.parametrize(
    ("field", "text", "secrets", "kept"),
    [
        ("runtime_config", '{"fs.obs.secret.key": "Sk-JSON-1", "a": "b"}', ["Sk-JSON-1"], ['"b"']),
        (
            "runtime_config",
            '[{"key":"fs.obs.access.key","value":"AkEntry1"},{"key":"x","value":"y"}]',
            ["AkEntry1"],
            ['"value":"y"'],
        ),
        (
            "operator_config",
            "parallelism=4\ndb.password=PropPw1\nsecretKey: YamlSk1\naccessKeyId=AKID1234",
            ["PropPw1", "YamlSk1", "AKID1234"],
            ["parallelism=4"],
        ),
        ("operator_config", "auth.token='Tok Quoted'; x=1", ["Tok Quoted"], ["x=1"]),
        ("operator_config", 'private_key="-----BEGIN\\"KEY"', ["-----BEGIN", "KEY"], []),
        ("operator_config", '{"password": null, "pwd": 12345}', ["12345"], ['"password": null']),
    ],
)
def test_config_strings_lose_secrets(field, text, secrets, kept):
    out = make().redact({"job_config": {field: text}})
    assert_hidden(out, secrets)
    for piece in kept:
        assert piece in out["job_config"][field]


@pytest.mark.parametrize(
    ("args", "secrets", "kept"),
    [
        ("--password xyz123 --env prod", ["xyz123"], ["--env prod"]),
        ("--sk=abc456 --window 60", ["abc456"], ["--window 60"]),
        ("-Dfoo.secret=zzz789 -Dparallel=2", ["zzz789"], ["-Dparallel=2"]),
        ("--api-key 'k e y 1'", ["k e y 1"], []),
        ("--use-token --verbose", [], ["--use-token --verbose"]),
        ("--AccessKey AKQ9 --SecretKey SKQ9", ["AKQ9", "SKQ9"], []),
    ],
)
def test_entrypoint_args_lose_secrets(args, secrets, kept):
    out = make().redact({"entrypoint_args": args})
    assert_hidden(out, secrets)
    for piece in kept:
        assert piece in out["entrypoint_args"]


def test_sensitive_members_are_masked_whole_whatever_their_type():
    snapshot = {
        "job_config": {"password": "Pw-member", "credentials": {"user": "u", "pin": 4711}},
        "token": 1234567,
        "secret": None,
        "api_key": "",
        "access_key": ["A", "B"],
    }
    out = make().redact(snapshot)
    assert is_mask(out["job_config"]["password"])
    assert is_mask(out["job_config"]["credentials"])
    assert is_mask(out["token"])
    assert out["secret"] is None
    assert out["api_key"] == ""
    assert is_mask(out["access_key"])


def test_masked_members_stay_as_they_are():
    redactor = make()
    once = redactor.redact({"password": "x", "job_config": {"token": ["a"]}})
    assert redactor.redact(once) == once


def test_a_found_secret_is_masked_wherever_else_it_appears():
    snapshot = {
        "sql_body": "CREATE TABLE t (a INT) WITH ('password' = 'Repeated-Pw')",
        "desc": "pw is Repeated-Pw",
        "tags": ["Repeated-Pw!", 3],
    }
    out = make().redact(snapshot)
    assert_hidden(out, ["Repeated-Pw"])
    assert out["tags"][1] == 3


def test_input_is_never_mutated():
    snapshot = {"sql_body": KAFKA_SASL, "job_config": {"password": "x"}, "drop": {"me": 1}}
    before = orjson.dumps(snapshot)
    make(drop_fields=["/drop"], mask_fields=["/sql_body"]).redact(snapshot)
    assert orjson.dumps(snapshot) == before


# --- SQL edge cases ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "secrets"),
    [
        ("WITH ('password' = 'unterminated", ["unterminated"]),
        ("WITH ('password' = 'ab\\'cd')", ["ab\\'cd", "cd"]),
        ("WITH ('password' = 'a\\', 'secret' = 'zzzzzz')", ["zzzzzz"]),
        ('WITH ("secret" = "dq""Sec")', ['dq"Sec', 'dq""Sec']),
        ("WITH (`token` = `bt``Tok`)", ["bt`Tok", "bt``Tok"]),
        ("/* 'password' = 'p1-unclosed-comment", ["p1-unclosed-comment"]),
        ("-- 'password' = 'lc-it''s'\nSELECT 1", ["lc-it's", "lc-it''s", "s'"]),
        ("/**/ 'x' = 'y', /*/ 'password' = 'weird' */", ["weird"]),
        ("WITH ('password' = '')", []),
        ("'pwd' = 'token\\' = ''", ["token"]),
        ("SELECT 'password' = 'cmp-Secret' FROM t", ["cmp-Secret"]),
        ("'properties.sasl.jaas.config' = 'x required password=''InSqlQuotes'';'", ["InSqlQuotes"]),
    ],
)
def test_sql_edge_cases(sql, secrets):
    redactor = make()
    out = redactor.redact({"sql_body": sql})
    assert_hidden(out, secrets)
    assert redactor.redact(out) == out


def test_non_sensitive_pairs_and_plain_sql_are_untouched():
    sql = "SELECT a, 'x=y' FROM t WHERE b = 'c' -- note\n/* c */ AND d = \"e\""
    assert make().redact({"sql_body": sql}) == {"sql_body": sql}


def test_deeply_nested_pairs_are_hidden_whole():
    text = "=".join(f"k{i}" for i in range(40))
    out = make().redact({"desc": text})
    assert is_mask(out["desc"].split("=")[-1]) or MASK in out["desc"]
    assert "k39" not in out["desc"]


# --- masks, keys, settings --------------------------------------------------------------------


def test_mask_is_keyed_stable_and_differs_per_value_and_key():
    a = make().redact({"password": "one"})["password"]
    assert a == make().redact({"password": "one"})["password"]
    assert a != make().redact({"password": "two"})["password"]
    assert a != make(hash_key="other").redact({"password": "one"})["password"]
    assert is_mask(a)
    assert a.startswith(MASK + "(h:")


def test_without_hash_key_the_mask_is_bare():
    out = Redactor(RedactionSettings()).redact({"password": "one", "sql_body": "'pwd' = 'x'"})
    assert out == {"password": MASK, "sql_body": f"'pwd' = '{MASK}'"}


def test_extra_key_patterns_add_sensitive_keys():
    redactor = make(extra_key_patterns=[r"^connstr$", "JAAS"])
    out = redactor.redact(
        {"connstr": "Server=x;Pwd=y", "sql_body": "'properties.sasl.jaas.config' = 'whole'"}
    )
    assert is_mask(out["connstr"])
    assert "whole" not in out["sql_body"]


def test_mask_and_drop_fields():
    snapshot = {
        "job_config": {"smn_topic": "urn:smn:alerts", "graph": [1, {"x": "y"}], "n": None},
        "execution_graph": "{}",
        "list": ["a", "b"],
    }
    out = make(
        mask_fields=["/job_config/smn_topic", "/list/1", "/job_config/n", "/nope/x", "/list/9"],
        drop_fields=[
            "/execution_graph",
            "/job_config/graph/1/x",
            "/missing",
            "/list/x",
            "/list/0/x",
            "/list/7/x",
            "/job_config/graph/0/x",
        ],
    ).redact(snapshot)
    assert is_mask(out["job_config"]["smn_topic"])
    assert out["list"][0] == "a"
    assert is_mask(out["list"][1])
    assert out["job_config"]["n"] is None
    assert "execution_graph" not in out
    assert out["job_config"]["graph"] == [1, {}]


def test_pointer_escapes_are_honoured():
    out = make(drop_fields=["/a~1b", "/c~0d"]).redact({"a/b": 1, "c~d": 2, "e": 3})
    assert out == {"e": 3}


@pytest.mark.parametrize(
    "bad",
    [{"extra_key_patterns": ["("]}, {"mask_fields": ["job_config"]}, {"drop_fields": ["x"]}],
)
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValidationError):
        RedactionSettings(**bad)


def test_settings_reject_unknown_keys():
    with pytest.raises(ValidationError):
        RedactionSettings(enable=False)  # type: ignore[call-arg]


def test_startup_warnings():
    assert startup_warnings(RedactionSettings(hash_key="k")) == ()
    (off,) = startup_warnings(RedactionSettings(enabled=False))
    assert "DISABLED" in off
    (unkeyed,) = startup_warnings(RedactionSettings())
    assert "hash_key" in unkeyed


def test_disabled_passes_everything_through_as_a_copy():
    redactor = make(enabled=False)
    snapshot = {"password": "visible", "job_config": {"a": 1}}
    out = redactor.redact(snapshot)
    assert out == snapshot
    assert out["job_config"] is not snapshot["job_config"]
    assert redactor.redact_bytes_for_dead_letter(b"password=visible") == b"password=visible"


def test_repr_names_settings_never_the_key():
    text = repr(make(extra_key_patterns=["x"], drop_fields=["/a"]))
    assert KEY not in text
    assert text == "<Redactor on keyed extra_keys=1 mask_fields=0 drop_fields=1>"
    assert repr(Redactor(RedactionSettings(enabled=False))).startswith("<Redactor OFF unkeyed")


# --- change detection ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "path"),
    [
        (
            {"sql_body": "WITH ('password' = 'old-pass')"},
            {"sql_body": "WITH ('password' = 'new-pass')"},
            "/sql_body",
        ),
        (
            {"job_config": {"runtime_config": "a.secret=old1"}},
            {"job_config": {"runtime_config": "a.secret=new1"}},
            "/job_config/runtime_config",
        ),
        ({"job_config": {"token": "t1"}}, {"job_config": {"token": "t2"}}, "/job_config/token"),
    ],
)
def test_a_changed_secret_is_a_changed_path_masked_on_both_sides(before, after, path):
    redactor = make()
    change = diff(redactor.redact(before), redactor.redact(after))
    assert change is not None
    assert change.kind is ChangeKind.UPDATED
    assert change.changed == (path,)
    assert_hidden(change.before, ["old-pass", "old1", "t1"])
    assert_hidden(change.after, ["new-pass", "new1", "t2"])
    assert_hidden(list(change.patch), ["new-pass", "new1", "t2"])


def test_an_unchanged_secret_is_no_change():
    redactor = make()
    snapshot = {"sql_body": KAFKA_SASL}
    assert diff(redactor.redact(snapshot), redactor.redact(dict(snapshot))) is None


# --- dead letters -----------------------------------------------------------------------------


def test_dead_letter_json_is_redacted_as_a_tree():
    body = orjson.dumps(
        {"is_success": True, "job_detail": {"sql_body": JDBC, "job_config": {"password": "P1"}}}
    )
    out = make().redact_bytes_for_dead_letter(body)
    parsed = orjson.loads(out)
    assert_hidden(parsed, ["Jd8c'quote", "P1"])
    assert parsed["is_success"] is True


def test_dead_letter_json_list_rows():
    body = orjson.dumps({"job_list": {"jobs": [{"sql_body": REDIS}, {"name": "n"}]}})
    out = make().redact_bytes_for_dead_letter(body)
    assert b"R3disAuth" not in out
    assert b'"name":"n"' in out


def test_dead_letter_text_is_masked_by_pattern():
    out = make().redact_bytes_for_dead_letter(
        b"<html>bad gateway; password=Gw-Pass-1 'secret' = 'q' again Gw-Pass-1</html>"
    )
    assert b"Gw-Pass-1" not in out
    assert b"bad gateway" in out
    assert b"'q'" not in out


@pytest.mark.parametrize(
    "body",
    [
        b'{"job_detail": {"sql_body": "WITH (\'password\' = \'Cut-Off-Pw',
        b'  [{"runtime_config": "a.secret=\\"Cut-Off-Pw\\"',
        b"\xff\xfe binary Cut-Off-Pw",
    ],
    ids=["truncated-object", "truncated-list", "not-utf8"],
)
def test_dead_letter_unreadable_bodies_become_one_mask(body):
    out = make().redact_bytes_for_dead_letter(body)
    assert is_mask(out.decode())


def test_dead_letter_json_scalars_are_text():
    assert make().redact_bytes_for_dead_letter(b'"password=abc"') == (
        make().redact_bytes_for_dead_letter(b'"password=abc"')
    )
    assert b"abc" not in make().redact_bytes_for_dead_letter(b'"password=abc"')


# --- properties over generated SQL ---------------------------------------------------------------

SENSITIVE_KEYS = [
    "password",
    "properties.ssl.keystore.password",
    "secret",
    "fs.obs.secret.key",
    "fs.obs.access.key",
    "accessKeyId",
    "secretAccessKey",
    "ak",
    "sk",
    "api.token",
    "credential",
    "private.key",
    "passwd",
    "schema.registry.basic.auth.user.info",
]
PLAIN_KEYS = ["connector", "topic", "format", "url", "table-name", "scan.startup.mode", "port"]
# Secrets carry an upper-case letter; plain values never do, so one cannot hide in the other.
SECRET_CHARS = st.characters(
    codec="utf-8", exclude_categories=["Cs"], exclude_characters="\x00"
) | st.sampled_from(list("'\"`\\-/*=,; \n\t()"))
secret_values = st.builds(
    lambda head, body: head + body,
    st.sampled_from(["S", "Q", "Z"]),
    st.text(SECRET_CHARS, min_size=6, max_size=20),
)
plain_values = st.text(st.sampled_from("abcdefgh0123456789:/."), min_size=1, max_size=12)


def _case(draw, key: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(key), max_size=len(key)))
    return "".join(c.upper() if f else c for c, f in zip(key, flips, strict=True))


def _quote(text: str, q: str) -> str:
    return q + text.replace(q, q + q) + q


GAPS = st.sampled_from([" ", "", "\n  ", " /* c */ ", " -- c\n ", "\t"])


@st.composite
def options(draw):
    sensitive = draw(st.booleans())
    if sensitive:
        key = _case(draw, draw(st.sampled_from(SENSITIVE_KEYS)))
        value = draw(secret_values)
    else:
        key, value = draw(st.sampled_from(PLAIN_KEYS)), draw(plain_values)
    key_q = draw(st.sampled_from(["'", '"', "`"]))
    text = _quote(key, key_q) + draw(GAPS) + "=" + draw(GAPS) + _quote(value, "'")
    commented = draw(st.sampled_from(["", "line", "block"]))
    if commented == "line" and "\n" not in text:
        text = "-- " + text + "\n"
    elif commented == "block" and "*/" not in text:
        text = "/* " + text + " */"
    return sensitive, value, text


@st.composite
def sql_bodies(draw):
    opts = draw(st.lists(options(), min_size=1, max_size=8))
    sep = draw(st.sampled_from([",\n  ", ", ", ",", " ,\n"]))
    keyword = draw(st.sampled_from(["WITH", "with", "With"]))
    sql = f"CREATE TABLE t (a INT) {keyword} (\n  " + sep.join(t for _, _, t in opts) + "\n);"
    secrets = [v for s, v, _ in opts if s]
    plain = [v for s, v, _ in opts if not s]
    return sql, secrets, plain


@settings(max_examples=300, deadline=None)
@given(sql_bodies())
def test_property_no_generated_secret_survives(generated):
    sql, secrets, plain = generated
    redactor = make()
    snapshot = {"sql_body": sql, "job_config": {"runtime_config": None}}
    out = redactor.redact(snapshot)
    assert_hidden(out, secrets)
    for value in plain:
        assert _quote(value, "'") in out["sql_body"]
    assert redactor.redact(out) == out


@settings(max_examples=150, deadline=None)
@given(sql_bodies(), secret_values)
def test_property_changed_secret_is_reported_masked(generated, new_secret):
    sql, secrets, _ = generated
    if not secrets or new_secret in secrets or any(new_secret in s for s in secrets):
        return
    old = secrets[0]
    changed_sql = sql.replace(_quote(old, "'"), _quote(new_secret, "'"))
    redactor = make()
    before = redactor.redact({"sql_body": sql})
    after = redactor.redact({"sql_body": changed_sql})
    change = diff(before, after)
    assert change is not None
    assert change.changed == ("/sql_body",)
    assert_hidden(before, [old])
    assert_hidden(after, [new_secret])


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(SENSITIVE_KEYS), secret_values.filter(lambda s: "\n" not in s)),
        min_size=1,
        max_size=4,
    )
)
def test_property_json_configs_lose_secrets(pairs):
    json_config = orjson.dumps(dict(pairs)).decode()
    out = make().redact({"job_config": {"runtime_config": json_config}})
    assert_hidden(out, [v for _, v in pairs])


# bare (unquoted) values end at whitespace, ',', ';', '&', a quote or a bracket: documented
BARE_SAFE = st.text(st.sampled_from("abcXYZ0189-_.:/+=*()!@#$%^~"), min_size=6, max_size=16)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(SENSITIVE_KEYS), st.sampled_from(["=", " "]), BARE_SAFE),
        min_size=1,
        max_size=4,
    )
)
def test_property_entrypoint_args_lose_bare_secrets(flags):
    args = " ".join(f"--{k}{sep}S{v} --keep this" for k, sep, v in flags)
    out = make().redact({"entrypoint_args": args})
    assert_hidden(out, ["S" + v for _, _, v in flags])
    assert out["entrypoint_args"].count("--keep this") == len(flags)


# --- the key the engine uses ----------------------------------------------------------------


def test_derived_key_is_stable_differs_from_the_secret_and_yields_to_an_explicit_one():
    from bridge.redact import with_derived_key

    plain = RedactionSettings()
    derived = with_derived_key(plain, "my-sk")
    assert derived.hash_key is not None
    key = derived.hash_key.get_secret_value()
    assert key == with_derived_key(plain, "my-sk").hash_key.get_secret_value()  # type: ignore[union-attr]
    assert "my-sk" not in key
    assert key != with_derived_key(plain, "other").hash_key.get_secret_value()  # type: ignore[union-attr]
    explicit = RedactionSettings(hash_key="set-by-hand")
    assert with_derived_key(explicit, "my-sk") is explicit
    assert with_derived_key(plain, None) is plain
    assert startup_warnings(with_derived_key(plain, None))  # auth none: changes go unseen
    assert not startup_warnings(derived)
