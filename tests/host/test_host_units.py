"""The function host's parts that need no server and no KVM: configuration, manifests,
the durable store, the token guard, value conversion, the HTTP-mode shapes, metrics."""

from __future__ import annotations

import base64
import io
import json
import math
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from sandbox.abi import Signature, Tag
from sandbox.host.auth import Guard, TokenError, load_token
from sandbox.host.config import ConfigFileError, HostConfig, load_config
from sandbox.host.errors import ApiError
from sandbox.host.httpmode import request_json, response_from
from sandbox.host.manifest import FunctionRecord, FunctionSpec, valid_name
from sandbox.host.metrics import Metrics
from sandbox.host.store import FunctionStore, StoredTooLarge, StoreError
from sandbox.host.values import args_from_json, result_to_json

# -- configuration ------------------------------------------------------------------------


def test_config_sources_in_priority_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("SANDBOX_HOST_"):
            monkeypatch.delenv(key)
    path = tmp_path / "host.toml"
    path.write_text('port = 9001\nhost = "0.0.0.0"\nmax_body_bytes = 4096\nlog_json = false\n')
    config = load_config(path)
    assert (config.port, config.host, config.max_body_bytes, config.log_json) == (
        9001,
        "0.0.0.0",
        4096,
        False,
    )
    monkeypatch.setenv("SANDBOX_HOST_PORT", "9002")
    monkeypatch.setenv("SANDBOX_HOST_TOKEN", "s3cret")
    config = load_config(path)
    assert config.port == 9002 and config.host == "0.0.0.0"
    assert config.token is not None and config.token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(config)
    config = load_config(path, port=9003, host=None)  # None: not given on the command line
    assert config.port == 9003 and config.host == "0.0.0.0"
    assert isinstance(config, HostConfig)
    json_path = tmp_path / "host.json"
    json_path.write_text(json.dumps({"data_dir": "/srv/fns", "default_warm": 0}))
    assert load_config(json_path).data_dir == Path("/srv/fns")


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("port = = 1")
    with pytest.raises(ConfigFileError, match="not valid"):
        load_config(bad)
    bad.write_text("prot = 1")
    with pytest.raises(ValidationError, match="prot"):
        load_config(bad)
    with pytest.raises(ValidationError, match="port"):
        HostConfig(port=70000)
    with pytest.raises(ValidationError, match="max_timeout_s"):
        HostConfig(default_timeout_s=20, max_timeout_s=10)


# -- manifests ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "add", "my-fn_2", "0", "a" * 63])
def test_valid_names(name: str) -> None:
    assert valid_name(name)


@pytest.mark.parametrize(
    "name", ["", ".", "..", "../x", "a/b", "A", "-a", "_a", "a.json", "a" * 64, "a\0", "é", "a\n"]
)
def test_invalid_names(name: str) -> None:
    assert not valid_name(name)


def test_manifest_validation() -> None:
    spec = FunctionSpec(entry="add")
    assert (spec.kind, spec.mode, spec.memory_mib, spec.public) == ("native", "invoke", 16, False)
    for bad in [
        {"entry": "1add"},
        {"entry": "add", "memory_mib": 5},
        {"entry": "add", "memory_mib": 4096},
        {"entry": "add", "timeout_s": 0},
        {"entry": "add", "environment": {"A-B": "x"}},
        {"entry": "add", "environment": {"A": "x" * 5000}},
        {"entry": "add", "environment": {"A": "a\x00b"}},
        {"entry": "add", "extra": True},
    ]:
        with pytest.raises(ValidationError):
            FunctionSpec.model_validate(bad)


# -- the store ----------------------------------------------------------------------------


def _record(name: str, sha: str, size: int, version: int = 1) -> FunctionRecord:
    return FunctionRecord(
        name=name,
        spec=FunctionSpec(entry="add"),
        sha256=sha,
        size=size,
        version=version,
        created_at=1.0,
        updated_at=2.0,
    )


def test_store_commits_and_reopens(tmp_path: Path) -> None:
    store = FunctionStore(tmp_path)
    assert store.open() == ([], [])
    blob = store.ingest(io.BytesIO(b"module one"), limit=100)
    assert blob.path.read_bytes() == b"module one" and blob.size == 10
    store.commit(_record("one", blob.sha256, blob.size))
    store.unpin(blob.sha256)
    again = store.ingest(io.BytesIO(b"module one"), limit=100)  # same content, same blob
    assert again.sha256 == blob.sha256
    store.commit(_record("two", again.sha256, again.size))
    store.unpin(again.sha256)
    assert sorted(p.name for p in (tmp_path / "blobs").iterdir()) == [blob.sha256]
    store.close()

    reopened = FunctionStore(tmp_path)
    loaded, warnings = reopened.open()
    assert [item.record.name for item in loaded] == ["one", "two"] and warnings == []
    assert all(item.problem is None for item in loaded)
    assert reopened.remove("one") and not reopened.remove("one")
    assert reopened.blob_path(blob.sha256).exists()  # "two" still refers to it
    assert reopened.remove("two")
    assert list((tmp_path / "blobs").iterdir()) == []


def test_store_open_cleans_up_after_a_crash(tmp_path: Path) -> None:
    store = FunctionStore(tmp_path)
    store.open()
    blob = store.ingest(io.BytesIO(b"kept"), limit=100)
    store.commit(_record("kept", blob.sha256, blob.size))
    # What a crash can leave: a partial file in tmp/, a blob no record refers to.
    (tmp_path / "tmp" / "123.part").write_bytes(b"half a modu")
    orphan = store.ingest(io.BytesIO(b"orphan"), limit=100)
    (tmp_path / "functions" / "README").write_text("not a record")
    (tmp_path / "functions" / "broken.json").write_text('{"name": "bro')
    store.close()

    loaded, warnings = FunctionStore(tmp_path).open()
    assert [item.record.name for item in loaded] == ["kept"]
    assert len(warnings) == 2
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not orphan.path.exists() and blob.path.exists()


def test_store_reports_missing_and_corrupt_blobs(tmp_path: Path) -> None:
    store = FunctionStore(tmp_path)
    store.open()
    a = store.ingest(io.BytesIO(b"aaa"), limit=100)
    b = store.ingest(io.BytesIO(b"bbb"), limit=100)
    store.commit(_record("a", a.sha256, a.size))
    store.commit(_record("b", b.sha256, b.size))
    a.path.write_bytes(b"tampered")
    b.path.unlink()
    store.close()
    loaded = {item.record.name: item.problem for item in FunctionStore(tmp_path).open()[0]}
    assert "corrupt" in (loaded["a"] or "") and "missing" in (loaded["b"] or "")


def test_store_is_one_process_per_data_dir(tmp_path: Path) -> None:
    first = FunctionStore(tmp_path)
    first.open()
    with pytest.raises(StoreError, match="in use by another host"):
        FunctionStore(tmp_path).open()
    first.close()
    second = FunctionStore(tmp_path)
    second.open()
    second.close()


def test_store_limit(tmp_path: Path) -> None:
    store = FunctionStore(tmp_path)
    store.open()
    with pytest.raises(StoredTooLarge):
        store.ingest(io.BytesIO(b"x" * 101), limit=100)
    assert list((tmp_path / "tmp").iterdir()) == [] and list((tmp_path / "blobs").iterdir()) == []


# -- the token ----------------------------------------------------------------------------


def test_guard() -> None:
    guard = Guard("tok")
    assert guard.allows("Bearer tok") and guard.allows("bearer  tok ")
    for header in [None, "", "tok", "Bearer", "Bearer tok2", "Basic tok", "Bearer \udcff"]:
        assert not guard.allows(header)
    with pytest.raises(ApiError) as info:
        guard.check(None)
    assert info.value.status == 401 and "WWW-Authenticate" in info.value.headers


def test_token_sources(tmp_path: Path) -> None:
    assert load_token(HostConfig(token="abc", data_dir=tmp_path)) == "abc"
    generated = load_token(HostConfig(data_dir=tmp_path / "d"))
    assert len(generated) >= 32
    assert (tmp_path / "d" / "token").stat().st_mode & 0o777 == 0o600
    assert load_token(HostConfig(data_dir=tmp_path / "d")) == generated  # kept
    (tmp_path / "t").write_text("  from-file\n")
    assert load_token(HostConfig(token_file=tmp_path / "t", data_dir=tmp_path)) == "from-file"
    (tmp_path / "t").write_text("\n")
    with pytest.raises(TokenError, match="empty"):
        load_token(HostConfig(token_file=tmp_path / "t", data_dir=tmp_path))


# -- values -------------------------------------------------------------------------------

SIG = Signature("f", (Tag.I32, Tag.F64, Tag.BOOL, Tag.STR, Tag.BYTES), Tag.VOID)


def test_args_from_json() -> None:
    args = args_from_json(SIG, [1, 2, True, "s", base64.b64encode(b"\x00\xff").decode()])
    assert args == [1, 2, True, "s", b"\x00\xff"]
    nan = args_from_json(SIG, [1, "NaN", True, "", ""])[1]
    assert isinstance(nan, float) and math.isnan(nan)
    cases: list[list[object]] = [
        [1, 2, True, "s"],
        [1.0, 2, True, "s", ""],
        [True, 2, True, "s", ""],
        [1, "2", True, "s", ""],
        [1, 2, 1, "s", ""],
        [1, 2, True, None, ""],
        [1, 2, True, "s", "***"],
        [1, 2, True, "s", 5],
    ]
    for bad in cases:
        with pytest.raises(ApiError) as info:
            args_from_json(SIG, bad)
        assert info.value.status == 400 and info.value.type == "ArgumentError"
        assert "f(i32, f64, bool, str, bytes) -> void" in info.value.message


def test_result_to_json() -> None:
    assert result_to_json(b"\x00\x01") == "AAE="
    assert result_to_json(math.inf) == "Infinity" and result_to_json(-math.inf) == "-Infinity"
    assert result_to_json(math.nan) == "NaN"
    assert result_to_json(1.5) == 1.5 and result_to_json(None) is None and result_to_json(7) == 7


# -- HTTP-handler mode shapes -------------------------------------------------------------


def test_request_json() -> None:
    scope = {
        "method": "POST",
        "query_string": b"a=1&b=%20",
        "headers": [
            (b"Host", b"x"),
            (b"x-multi", b"1"),
            (b"x-multi", b"2"),
            (b"authorization", b"Bearer t"),
        ],
    }
    doc = json.loads(request_json(scope, "p/q", "hé".encode(), strip_auth=True))
    assert doc == {
        "method": "POST",
        "path": "/p/q",
        "query": "a=1&b=%20",
        "headers": {"host": "x", "x-multi": "1, 2"},
        "body": "hé",
        "body_encoding": "utf-8",
    }
    doc = json.loads(request_json(scope, "", b"\xff\x00", strip_auth=False))
    assert doc["body_encoding"] == "base64" and base64.b64decode(doc["body"]) == b"\xff\x00"
    assert doc["headers"]["authorization"] == "Bearer t" and doc["path"] == "/"


def test_response_from() -> None:
    reply = response_from("f", '{"status": 201, "headers": {"X-A": "b"}, "body": "ok"}')
    assert reply.status == 201 and reply.body == b"ok" and (b"x-a", b"b") in reply.headers
    reply = response_from("f", '{"body": "AAE=", "body_encoding": "base64"}')
    assert reply.status == 200 and reply.body == b"\x00\x01"
    reply = response_from("f", '{"headers": {"Content-Length": "99", "Connection": "x"}}')
    assert reply.headers == [] and reply.body == b""
    assert response_from("f", '{"status": 204, "body": "dropped"}').body == b""
    for bad in [
        "not json",
        "[]",
        '{"status": 99}',
        '{"status": 600}',
        '{"status": "200"}',
        '{"headers": {"bad name": "v"}}',
        '{"headers": {"x": "a\\r\\nb"}}',
        '{"headers": {"x": "\\u20ac"}}',
        '{"body": "***", "body_encoding": "base64"}',
        '{"extra": 1}',
        None,
    ]:
        with pytest.raises(ApiError) as info:
            response_from("f", bad)
        assert info.value.status == 422 and info.value.type == "BadFunctionResponse", bad


# -- metrics ------------------------------------------------------------------------------


def test_metrics_text_format() -> None:
    """The exposition (prometheus_client's writer) of the host's own families: label
    escaping, cumulative histogram buckets, the process collector, no _created series."""
    m = Metrics()
    m.invocation('x"y\\z\n', "trap", 0.05, trap="page_fault")
    m.invocation('x"y\\z\n', "trap", 0.5, trap="page_fault")
    m.invocation('x"y\\z\n', "ok", 5)
    m.response("f", 3, 422)
    text = m.render().decode()
    assert 'sandbox_host_traps_total{function="x\\"y\\\\z\\n",kind="page_fault"} 2.0' in text
    bucket = 'sandbox_host_invocation_duration_seconds_bucket{function="x\\"y\\\\z\\n",le='
    assert bucket + '"0.05"} 1.0' in text and bucket + '"1.0"} 2.0' in text
    assert bucket + '"+Inf"} 3.0' in text
    assert (
        'sandbox_host_function_responses_total{function="f",status="422",version="3"}' in (text)
        or 'sandbox_host_function_responses_total{function="f",version="3",status="422"} 1.0'
        in text
    )
    assert text.endswith("\n") and "# TYPE sandbox_host_http_requests_total counter" in text
    assert "process_resident_memory_bytes" in text and "process_open_fds" in text
    assert "sandbox_host_process_threads" in text and "_created{" not in text


# -- error mapping ------------------------------------------------------------------------


def test_guest_errors_map_to_documented_statuses() -> None:
    from sandbox import errors as sbx
    from sandbox.host.errors import api_error

    cases = [
        (sbx.ArgumentError("x"), 400, "ArgumentError"),
        (sbx.GuestTrap("x", kind="page_fault"), 422, "GuestTrap"),
        (sbx.GuestProtocolError("x"), 422, "GuestTrap"),
        (sbx.GuestAbort("x"), 422, "GuestAbort"),
        (sbx.HostFunctionError("x"), 422, "HostFunctionError"),
        (sbx.FunctionNotFound("x"), 422, "FunctionNotFound"),
        (sbx.CallTimeout("x"), 504, "CallTimeout"),
        (sbx.CallCancelled("x"), 503, "ShuttingDown"),
        (sbx.KvmUnavailable("x"), 503, "KvmUnavailable"),
        (sbx.KvmError("KVM_RUN", 5, "x"), 500, "KvmError"),
    ]
    for exc, status, kind in cases:
        error = api_error(exc, function="f", output="printed")
        assert (error.status, error.type) == (status, kind), exc
        assert error.body()["error"]["stdout"] == "printed"
    trap = api_error(sbx.GuestTrap("x", kind="divide_error"), function="f", output="")
    assert trap.extra["kind"] == "divide_error"


# -- the command line ---------------------------------------------------------------------


def test_cli_refuses_bad_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sandbox.host.cli import main

    assert main(["--config", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err
    monkeypatch.setenv("SANDBOX_HOST_PORT", "eighty")
    assert main([]) == 2
    assert "invalid configuration: port" in capsys.readouterr().err


def test_cli_refuses_a_data_dir_in_use(tmp_path: Path) -> None:
    import subprocess
    import sys

    store = FunctionStore(tmp_path)
    store.open()
    try:
        env = {**os.environ, "SANDBOX_HOST_TOKEN": "t"}
        proc = subprocess.run(
            [sys.executable, "-m", "sandbox.host", "--port", "0", "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    finally:
        store.close()
    assert proc.returncode == 1
    assert "in use by another host process" in proc.stderr.splitlines()[-1]


def test_serve_subcommand_parser() -> None:
    import argparse

    from sandbox.host.cli import add_serve_parser, run

    parser = argparse.ArgumentParser(prog="python -m sandbox")
    add_serve_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", "--port", "9000", "--data-dir", "/srv/fns"])
    assert (args.func, args.port, args.data_dir, args.host, args.config) == (
        run,
        9000,
        Path("/srv/fns"),
        None,
        None,
    )
