"""The Butane file says what the Ignition JSON says (sandbox/deploy/butane.py), and the
generated files in deploy/flatcar/ are up to date (sandbox/deploy/examples.py)."""

from __future__ import annotations

from typing import Any

import pytest
from deploy_support import EXAMPLES

from sandbox.deploy import butane, examples
from sandbox.deploy import ignition as ig
from sandbox.deploy.provision import ignition_config

yaml = pytest.importorskip("yaml", reason="pip install pyyaml")


def from_butane(doc: dict[str, Any]) -> dict[str, Any]:
    """Butane flatcar 1.1.0 -> Ignition 3.4.0 for the fields we emit, as Butane does:
    inline text becomes a data URL, ssh_authorized_keys becomes sshAuthorizedKeys. The
    YAML parser already read `mode: 0644` as the integer 420."""
    assert (doc.pop("variant"), doc.pop("version")) == ("flatcar", "1.1.0")

    def resource(r: dict[str, Any]) -> dict[str, Any]:
        if "inline" in r:
            return {"source": ig.data_url(r["inline"])}
        return r

    out: dict[str, Any] = {"ignition": {"version": "3.4.0"}}
    if "passwd" in doc:
        users = [
            {"name": u["name"], "sshAuthorizedKeys": u["ssh_authorized_keys"]}
            for u in doc["passwd"]["users"]
        ]
        out["passwd"] = {"users": users}
    if "storage" in doc:
        files = []
        for f in doc["storage"].get("files", []):
            f = dict(f)
            if "contents" in f:
                f["contents"] = resource(f["contents"])
            if "append" in f:
                f["append"] = [resource(a) for a in f["append"]]
            files.append(f)
        out["storage"] = {"files": files}
        if "links" in doc["storage"]:
            out["storage"]["links"] = doc["storage"]["links"]
    if "systemd" in doc:
        out["systemd"] = doc["systemd"]
    return out


def normalized(doc: dict[str, Any]) -> dict[str, Any]:
    """Inline contents compared as text (Butane may gzip or base64 them)."""

    def fix(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fix(v) for v in value]
        if isinstance(value, str) and value.startswith("data:,"):
            return ("text", ig.text_of(value))
        return value

    return fix(doc)  # type: ignore[no-any-return]


def test_butane_is_equivalent_to_the_json() -> None:
    config = ignition_config(examples.example_provisioning())
    parsed = yaml.safe_load(butane.render(config, "a header"))
    assert normalized(from_butane(parsed)) == normalized(config.to_dict())


def test_butane_header_and_block_text() -> None:
    config = ig.Config(
        storage=ig.Storage(
            files=[
                ig.inline("/etc/a", "two\nlines\n"),
                ig.inline("/etc/b", "no newline at the end"),
                ig.inline("/etc/c", "  leading spaces\n"),
                ig.inline("/etc/d", "trailing blank lines\n\n"),
            ]
        )
    )
    text = butane.render(config, "first\nsecond")
    assert text.startswith("# first\n# second\nvariant: flatcar\nversion: 1.1.0\n")
    assert normalized(from_butane(yaml.safe_load(text))) == normalized(config.to_dict())


def test_committed_examples_are_up_to_date() -> None:
    stale = [
        rel
        for rel, text in examples.render_examples().items()
        if not (EXAMPLES / rel).is_file() or (EXAMPLES / rel).read_text() != text
    ]
    assert stale == [], (
        'regenerate with: python -c "from sandbox.deploy.examples import write_examples; '
        "write_examples('deploy/flatcar')\""
    )
