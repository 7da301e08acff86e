"""The Ignition config (sandbox/deploy/provision.py, ignition.py) and `deploy ignition`:
valid against the Ignition 3.4 schema in ../shared/ignition/, and against Ignition's
own validator where Debian's `ignition` package is installed."""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from deploy_support import EXAMPLES, IGNITION_SCHEMA, require_tools
from pydantic import SecretStr, ValidationError

from sandbox.deploy import flatcar, units
from sandbox.deploy import ignition as ig
from sandbox.deploy.cli import main
from sandbox.deploy.provision import ImageRef, Provisioning, ignition_config, toml_text

BASE_URL = "https://dl.example.com/sandbox-host"
TOKEN = "t0ken-t0ken-t0ken-t0ken"


@pytest.fixture(scope="module")
def schema_validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema", reason="pip install jsonschema")
    if not IGNITION_SCHEMA.is_file():
        pytest.skip(f"no Ignition schema at {IGNITION_SCHEMA} (the shared/ directory)")
    schema = json.loads(IGNITION_SCHEMA.read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-04/schema#"
    return jsonschema.Draft4Validator(schema)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A stand-in image: only its name and hash matter here."""
    path = tmp_path / "dist" / flatcar.image_filename("1.2.3")
    path.parent.mkdir()
    path.write_bytes(b"hsqs" + bytes(range(256)) * 64)
    return path


def provisioning(image: Path, **changes: Any) -> Provisioning:
    fields: dict[str, Any] = {
        "image": ImageRef.from_file(image),
        "base_url": BASE_URL + "/",
        "token": SecretStr(TOKEN),
        "settings": {"host": "0.0.0.0", "port": 8080, "log_level": "info"},
        "ssh_keys": ("ssh-ed25519 AAAAC3Nza test@example",),
        "sysupdate": True,
    }
    return Provisioning(**{**fields, **changes})


def files_by_path(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in doc["storage"]["files"]}


def ignition_cli(image: Path, token_file: Path, *more: str) -> int:
    """`deploy ignition` for `image` with the test's base URL and `token_file`."""
    return main(
        ["ignition", "--image", str(image), "--base-url", BASE_URL,
         "--token-file", str(token_file), *more]
    )  # fmt: skip


@pytest.mark.parametrize("sysupdate", [False, True])
def test_valid_against_the_schema(image: Path, schema_validator: Any, sysupdate: bool) -> None:
    doc = ignition_config(provisioning(image, sysupdate=sysupdate, ssh_keys=())).to_dict()
    errors = sorted(schema_validator.iter_errors(doc), key=str)
    assert errors == []
    assert doc["ignition"] == {"version": "3.4.0"}


def test_downloads_and_verifies_the_image(image: Path) -> None:
    doc = ignition_config(provisioning(image)).to_dict()
    path = f"{flatcar.EXTENSIONS_STORE}/{image.name}"
    entry = files_by_path(doc)[path]
    assert entry["contents"]["source"] == f"{BASE_URL}/{image.name}"
    # The hash Ignition checks is the built image's.
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    assert entry["contents"]["verification"] == {"hash": f"sha256-{digest}"}
    assert entry["mode"] == 0o644
    # ...and the link systemd-sysext merges (and sysupdate moves) points at it.
    assert doc["storage"]["links"] == [
        {"path": flatcar.EXTENSION_LINK, "target": path, "hard": False}
    ]


def test_enables_python_and_writes_settings_and_token(image: Path) -> None:
    files = files_by_path(ignition_config(provisioning(image)).to_dict())
    python = files[flatcar.ENABLED_SYSEXT_CONF]
    assert "contents" not in python  # appended: other enabled extensions stay
    assert [ig.text_of(a["source"]) for a in python["append"]] == ["python\n"]
    config = files[flatcar.CONFIG_FILE]
    settings = tomllib.loads(ig.text_of(config["contents"]["source"]))
    assert settings == {"host": "0.0.0.0", "port": 8080, "log_level": "info"}
    token = files[flatcar.TOKEN_FILE]
    assert ig.text_of(token["contents"]["source"]) == TOKEN + "\n"
    assert token["mode"] == 0o600
    assert "user" not in token  # root's (the unit hands it over as a credential)


def test_sysupdate_parts(image: Path) -> None:
    doc = ignition_config(provisioning(image)).to_dict()
    files = files_by_path(doc)
    transfer = files[f"{flatcar.SYSUPDATE_DIR}/{flatcar.NAME}.conf"]
    assert ig.text_of(transfer["contents"]["source"]) == units.transfer_file(BASE_URL)
    assert "/etc/sysupdate.d/noop.conf" in files
    by_name = {u["name"]: u for u in doc["systemd"]["units"]}
    assert by_name["systemd-sysupdate.timer"] == {
        "name": "systemd-sysupdate.timer",
        "enabled": True,
    }
    dropin = by_name["systemd-sysupdate.service"]["dropins"][0]
    assert dropin["contents"] == units.SYSUPDATE_SERVICE_DROPIN
    plain = ignition_config(provisioning(image, sysupdate=False)).to_dict()
    assert "systemd" not in plain
    assert not any("sysupdate" in f["path"] for f in plain["storage"]["files"])


def test_ssh_keys_for_core(image: Path) -> None:
    doc = ignition_config(provisioning(image)).to_dict()
    assert doc["passwd"] == {
        "users": [{"name": "core", "sshAuthorizedKeys": ["ssh-ed25519 AAAAC3Nza test@example"]}]
    }


def test_models_refuse_what_the_schema_would_let_through() -> None:
    # The schema has no additionalProperties: a misspelt field passes it silently.
    with pytest.raises(ValidationError):
        ig.File(path="/etc/x", mdoe=420)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        ig.Verification(hash="sha256-XYZ")
    with pytest.raises(ValidationError):
        ig.File(path="relative/path")
    with pytest.raises(ValidationError):
        ig.Dropin(name="no-suffix", contents="")


def test_provisioning_checks(image: Path) -> None:
    with pytest.raises(ValidationError, match="set by the unit"):
        provisioning(image, settings={"data_dir": "/tmp"})
    with pytest.raises(ValidationError):
        provisioning(image, token=SecretStr("short"))
    with pytest.raises(ValidationError):
        provisioning(image, base_url="file:///srv")
    with pytest.raises(ValidationError):
        ImageRef(filename="not-an-image.txt", sha256="0" * 64)
    assert ImageRef.from_file(image).version == "1.2.3"


@pytest.mark.parametrize(
    "text",
    ["plain", "a b\nc\n", "100%", "ünï ☃", "#[]=&?/:", ""],
)
def test_data_urls_round_trip(text: str) -> None:
    url = ig.data_url(text)
    assert url.startswith("data:,") and " " not in url and "\n" not in url
    assert ig.text_of(url) == text


def test_toml_text_round_trips() -> None:
    settings = {"host": 'quote" and \\ backslash', "port": 1, "ratio": 0.5, "flag": False}
    assert tomllib.loads(toml_text(settings)) == settings  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        toml_text({"bad key": 1})
    with pytest.raises(ValueError):
        toml_text({"x": float("nan")})


def test_ignition_validate(image: Path, tmp_path: Path) -> None:
    """Ignition's own validator (semantics the schema cannot say: modes, clean paths,
    duplicates, hash format). Debian 12 has Ignition 2.14, which knows spec 3.4.0 as
    `3.4.0-experimental`, with the same fields as the final spec for everything here."""
    require_tools("ignition-validate")
    doc = ignition_config(provisioning(image)).to_dict()
    doc["ignition"]["version"] = "3.4.0-experimental"
    path = tmp_path / "config.ign"
    path.write_text(json.dumps(doc))
    proc = subprocess.run(["ignition-validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # It does catch mistakes:
    doc["storage"]["files"][0]["mode"] = 99999
    path.write_text(json.dumps(doc))
    proc = subprocess.run(["ignition-validate", str(path)], capture_output=True, text=True)
    assert proc.returncode != 0 and "mode" in proc.stdout + proc.stderr


# -- the command line ---------------------------------------------------------------------


def test_cli_writes_config_and_butane(image: Path, tmp_path: Path, schema_validator: Any) -> None:
    token_file = tmp_path / "token"
    out, bu = tmp_path / "machine.ign", tmp_path / "machine.bu"
    settings = EXAMPLES / "examples" / "host-settings.toml"
    status = ignition_cli(
        image.parent, token_file, "--listen", "[::]:9000", "--settings", str(settings),
        "-o", str(out), "--butane", str(bu),
    )  # fmt: skip
    assert status == 0
    # A new token, private; so are the configs that carry it.
    for path in (token_file, out, bu):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    doc = json.loads(out.read_text())
    assert list(schema_validator.iter_errors(doc)) == []
    files = files_by_path(doc)
    assert ig.text_of(files[flatcar.TOKEN_FILE]["contents"]["source"]) == token + "\n"
    settings = tomllib.loads(ig.text_of(files[flatcar.CONFIG_FILE]["contents"]["source"]))
    assert settings["host"] == "::" and settings["port"] == 9000
    assert settings["public_metrics"] is False  # from the settings file
    assert bu.read_text().startswith("# Butane config for")
    # A second run reuses the token.
    assert ignition_cli(image, token_file, "-o", str(out)) == 0
    assert token_file.read_text().strip() == token


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "nowhere"], "ADDRESS:PORT"),
        (["--listen", "example.com:80"], "IP address"),
        (["--base-url", "ftp://x"], "base_url"),
    ],
)
def test_cli_refuses(
    image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert ignition_cli(image, tmp_path / "token", "-o", str(tmp_path / "x.ign"), *args) == 2
    assert message in capsys.readouterr().err


def test_cli_checks_settings_with_the_host(
    image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("sandbox.host.config", reason="the host's dependencies are not installed")
    settings = tmp_path / "s.toml"
    for text, message in [
        ("default_warm = -1\n", "default_warm"),
        ("typo = 1\n", "typo"),
        ("data_dir = '/x'\n", "set by the unit"),
    ]:
        settings.write_text(text)
        status = ignition_cli(image, tmp_path / "token", "--settings", str(settings))
        assert status == 2
        assert message in capsys.readouterr().err


def test_cli_refuses_a_short_token(image: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("short\n")
    assert ignition_cli(image, token_file) == 2
