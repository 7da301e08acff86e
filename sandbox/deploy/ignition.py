"""Ignition config spec 3.4.0, the subset this package emits, as pydantic models.

Field names and shapes follow `config/v3_4/schema/ignition.json` of coreos/ignition
(the schema in ../shared/ignition/ that the tests validate against). Models forbid
unknown fields, because the schema itself does not: a misspelt field would pass it and
be ignored by Ignition at boot.
"""

from __future__ import annotations

import urllib.parse
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SPEC_VERSION: Literal["3.4.0"] = "3.4.0"
SHA256_PATTERN = r"^sha256-[0-9a-f]{64}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Verification(_Model):
    hash: str = Field(pattern=SHA256_PATTERN, description="sha256-<hex> of the contents")


class Resource(_Model):
    """Contents: a URL (http, https, s3, gs, tftp, data) and optionally its hash."""

    source: str
    verification: Verification | None = None


class NodeUser(_Model):
    name: str


class NodeGroup(_Model):
    name: str


class File(_Model):
    path: str = Field(pattern=r"^/")
    overwrite: bool | None = None
    mode: int | None = Field(None, ge=0, le=0o7777, description="decimal, as JSON has it")
    user: NodeUser | None = None
    group: NodeGroup | None = None
    contents: Resource | None = None
    append: list[Resource] = Field(default_factory=list)


class Link(_Model):
    path: str = Field(pattern=r"^/")
    target: str
    hard: bool = False
    overwrite: bool | None = None


class Directory(_Model):
    path: str = Field(pattern=r"^/")
    mode: int | None = Field(None, ge=0, le=0o7777)
    overwrite: bool | None = None


class Storage(_Model):
    files: list[File] = Field(default_factory=list)
    links: list[Link] = Field(default_factory=list)
    directories: list[Directory] = Field(default_factory=list)


class Dropin(_Model):
    name: str = Field(pattern=r"\.conf$")
    contents: str


class Unit(_Model):
    name: str
    enabled: bool | None = None
    mask: bool | None = None
    contents: str | None = None
    dropins: list[Dropin] = Field(default_factory=list)


class Systemd(_Model):
    units: list[Unit] = Field(default_factory=list)


class PasswdUser(_Model):
    name: str
    ssh_authorized_keys: list[str] = Field(default_factory=list, alias="sshAuthorizedKeys")


class Passwd(_Model):
    users: list[PasswdUser] = Field(default_factory=list)


class IgnitionSection(_Model):
    version: Literal["3.4.0"] = SPEC_VERSION


class Config(_Model):
    """The whole config: `Config(...).to_json()` is what a Flatcar machine boots with."""

    ignition: IgnitionSection = Field(default_factory=IgnitionSection)
    passwd: Passwd = Field(default_factory=Passwd)
    storage: Storage = Field(default_factory=Storage)
    systemd: Systemd = Field(default_factory=Systemd)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, with unset and empty fields left out."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        pruned = _prune(data)
        assert isinstance(pruned, dict)
        pruned.setdefault("ignition", {"version": SPEC_VERSION})
        return pruned

    def to_json(self) -> str:
        import json

        return json.dumps(self.to_dict(), indent=2) + "\n"


def _prune(value: object) -> object:
    """Drops empty lists and objects (Ignition treats them as absent anyway)."""
    if isinstance(value, dict):
        out = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in ([], {})}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


def data_url(text: str) -> str:
    """An RFC 2397 data URL of UTF-8 `text` (how Ignition carries inline contents)."""
    return "data:," + urllib.parse.quote(text, safe="")


def text_of(url: str) -> str:
    """The text of a `data:,` URL (the inverse of data_url)."""
    if not url.startswith("data:,"):
        raise ValueError(f"not a plain data URL: {url[:40]!r}")
    return urllib.parse.unquote(url[len("data:,") :])


def inline(path: str, text: str, mode: int = 0o644, *, overwrite: bool = True) -> File:
    """A file whose contents are `text`, owned by root."""
    return File(path=path, mode=mode, overwrite=overwrite, contents=Resource(source=data_url(text)))
