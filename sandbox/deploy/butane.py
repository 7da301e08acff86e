"""The Butane form (variant flatcar, version 1.1.0) of an Ignition config built here.

Butane 1.1.0 of the flatcar variant translates to Ignition spec 3.4.0, field by field:
`ssh_authorized_keys` for `sshAuthorizedKeys`, octal `mode: 0644` for decimal 420,
`inline:` text for `data:` URLs. Rendering the same `Config` both ways keeps the Butane
file equivalent to the JSON by construction (tests/deploy/test_deploy_butane.py checks it).
"""

from __future__ import annotations

import json

from . import ignition as ig

VARIANT = "flatcar"
VERSION = "1.1.0"


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)  # a JSON string is a valid YAML double-quoted scalar


def _text(key: str, text: str, indent: str) -> list[str]:
    """`key: |` and the text as a literal block (or a quoted scalar when a block
    cannot hold it exactly)."""
    if not text or text[0] in " \n" or not text.endswith("\n") or text.endswith("\n\n"):
        return [f"{indent}{key}: {_scalar(text)}"]
    body = [f"{indent}  {line}" if line else "" for line in text[:-1].split("\n")]
    return [f"{indent}{key}: |", *body]


def _resource(res: ig.Resource, indent: str) -> list[str]:
    if res.source.startswith("data:,") and res.verification is None:
        return _text("inline", ig.text_of(res.source), indent)
    out = [f"{indent}source: {_scalar(res.source)}"]
    if res.verification is not None:
        out += [f"{indent}verification:", f"{indent}  hash: {_scalar(res.verification.hash)}"]
    return out


def _file(f: ig.File) -> list[str]:
    out = [f"    - path: {_scalar(f.path)}"]
    if f.mode is not None:
        out.append(f"      mode: 0{f.mode:o}")
    if f.overwrite is not None:
        out.append(f"      overwrite: {_scalar(f.overwrite)}")
    for key, node in (("user", f.user), ("group", f.group)):
        if node is not None:
            out += [f"      {key}:", f"        name: {_scalar(node.name)}"]
    if f.contents is not None:
        out += ["      contents:", *_resource(f.contents, "        ")]
    if f.append:
        out.append("      append:")
        for res in f.append:
            lines = _resource(res, "          ")
            out += [f"        - {lines[0].lstrip()}", *lines[1:]]
    return out


def _link(link: ig.Link) -> list[str]:
    out = [
        f"    - path: {_scalar(link.path)}",
        f"      target: {_scalar(link.target)}",
        f"      hard: {_scalar(link.hard)}",
    ]
    if link.overwrite is not None:
        out.append(f"      overwrite: {_scalar(link.overwrite)}")
    return out


def _unit(unit: ig.Unit) -> list[str]:
    out = [f"    - name: {_scalar(unit.name)}"]
    for key in ("enabled", "mask"):
        value = getattr(unit, key)
        if value is not None:
            out.append(f"      {key}: {_scalar(value)}")
    if unit.contents is not None:
        out += _text("contents", unit.contents, "      ")
    if unit.dropins:
        out.append("      dropins:")
        for dropin in unit.dropins:
            out.append(f"        - name: {_scalar(dropin.name)}")
            out += _text("contents", dropin.contents, "          ")
    return out


def render(config: ig.Config, header: str = "") -> str:
    """The Butane YAML of `config`, after `header` (comment lines, '# ' added)."""
    out = [f"# {line}".rstrip() for line in header.splitlines()]
    out += [f"variant: {VARIANT}", f"version: {VERSION}"]
    if config.passwd.users:
        out += ["passwd:", "  users:"]
        for user in config.passwd.users:
            out.append(f"    - name: {_scalar(user.name)}")
            if user.ssh_authorized_keys:
                out.append("      ssh_authorized_keys:")
                out += [f"        - {_scalar(key)}" for key in user.ssh_authorized_keys]
    storage = config.storage
    if storage.files or storage.links or storage.directories:
        out.append("storage:")
        if storage.directories:
            out.append("  directories:")
            for d in storage.directories:
                out.append(f"    - path: {_scalar(d.path)}")
                if d.mode is not None:
                    out.append(f"      mode: 0{d.mode:o}")
        if storage.files:
            out.append("  files:")
            for f in storage.files:
                out += _file(f)
        if storage.links:
            out.append("  links:")
            for link in storage.links:
                out += _link(link)
    if config.systemd.units:
        out += ["systemd:", "  units:"]
        for unit in config.systemd.units:
            out += _unit(unit)
    return "\n".join(out) + "\n"
