"""The host settings and the token that the Ignition config writes to the machine."""

from __future__ import annotations

import ipaddress
import os
import secrets
import tomllib
from pathlib import Path

from . import flatcar
from .provision import RESERVED_SETTINGS, Setting

DEFAULT_LISTEN_HOST = "0.0.0.0"  # on a Flatcar machine the host serves the network
MIN_TOKEN_LENGTH = 16


class SettingsError(ValueError):
    """Settings or a token that cannot be used (the message says why)."""


def parse_listen(text: str) -> tuple[str, int]:
    """'0.0.0.0:8080', '[::]:8080' or ':8080' -> (host, port). Raises SettingsError."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise SettingsError(f"--listen wants ADDRESS:PORT, got {text!r}")
    host = host.removeprefix("[").removesuffix("]") or DEFAULT_LISTEN_HOST
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise SettingsError(f"--listen wants an IP address, got {host!r}") from None
    return host, int(port_text)


def host_settings(path: Path | None, listen: str | None) -> dict[str, Setting]:
    """config.toml's table: the settings file (if any), then `listen`; listening on all
    addresses, port 8080, by default. Checked against HostConfig when the host package
    is installed here. Raises SettingsError."""
    settings: dict[str, Setting] = {}
    if path is not None:
        try:
            table = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read settings file {path}: {exc}") from None
        for key, value in table.items():
            if not isinstance(value, str | int | float | bool):
                raise SettingsError(f"setting {key!r} must be a string, number or boolean")
            settings[key] = value
    reserved = sorted(RESERVED_SETTINGS & set(settings))
    if reserved:
        raise SettingsError(
            f"{', '.join(reserved)}: set by the unit on Flatcar (data in {flatcar.STATE_DIR}, "
            f"token from {flatcar.TOKEN_FILE}), not in the settings file"
        )
    if listen is not None:
        settings["host"], settings["port"] = parse_listen(listen)
    settings.setdefault("host", DEFAULT_LISTEN_HOST)
    settings.setdefault("port", flatcar.DEFAULT_PORT)
    _check_with_host(settings)
    return settings


def _check_with_host(settings: dict[str, Setting]) -> None:
    try:
        from pydantic import ValidationError

        from ..host.config import HostConfig
    except ImportError:  # the host's dependencies are not installed here: no check
        return
    try:
        HostConfig.model_validate(settings)  # the values only: no environment, no file
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise SettingsError(f"invalid host setting {where}: {first['msg']}") from None


def read_or_create_token(path: Path) -> str:
    """The token in `path`; if there is no such file, a new random one written there
    (mode 0600, and said on stderr). Raises SettingsError if it is too short."""
    if not path.exists():
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        import sys

        print(f"note: generated a new token into {path}", file=sys.stderr)
        return token
    token = path.read_text().strip()
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
        raise SettingsError(
            f"the token in {path} must be one word of at least {MIN_TOKEN_LENGTH} characters"
        )
    return token
