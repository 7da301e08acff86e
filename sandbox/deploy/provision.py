"""What a Flatcar machine needs to run the function host, as an Ignition config.

On first boot, Ignition (in the initramfs):

1. downloads the image into /opt/extensions/sandbox-host/ and checks its SHA-256
   (a mismatch fails the boot: nothing half-verified is ever merged);
2. links /etc/extensions/sandbox-host.raw to it (the name systemd-sysext merges it
   under, and the link systemd-sysupdate moves on updates);
3. appends `python` to /etc/flatcar/enabled-sysext.conf: the initramfs then fetches
   Flatcar's python extension for this OS release;
4. writes /etc/sandbox-host/config.toml (host settings) and /etc/sandbox-host/token
   (0600, root; the unit hands it to the service as a credential);
5. optionally installs the sysupdate transfer file and enables systemd-sysupdate.timer.

The service then starts by itself: systemd-sysext merges both extensions, Flatcar's
ensure-sysext.service reloads units and re-evaluates multi-user.target, whose
`Upholds=` drop-in (inside the image) starts sandbox-host.service and keeps it up.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from . import flatcar, units
from . import ignition as ig

# NAME-VERSION-ARCH.raw, the names sysupdate's MatchPattern NAME-@v-%a.raw matches.
IMAGE_RE = re.compile(
    r"^(?P<name>[a-z0-9][a-z0-9-]*?)-(?P<version>\d[^-/]*)-(?P<arch>[a-z0-9_]+(?:-64)?)\.raw$"
)
# Host settings the unit decides: where data lives and how the token arrives.
RESERVED_SETTINGS = {"data_dir", "token", "token_file"}
Setting = str | int | float | bool


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ImageRef(BaseModel):
    """A built image: its file name and SHA-256."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    filename: str = Field(pattern=IMAGE_RE.pattern)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @classmethod
    def from_file(cls, path: Path) -> ImageRef:
        """Reads and hashes `path` (the .raw image)."""
        return cls(filename=path.name, sha256=sha256_file(path))

    @property
    def version(self) -> str:
        match = IMAGE_RE.match(self.filename)
        assert match is not None
        return match["version"]


class Provisioning(BaseModel):
    """Everything the Ignition config says. `settings` become config.toml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: ImageRef
    base_url: str = Field(
        pattern=r"^(https?|s3|gs|tftp)://", description="where the image is served"
    )
    token: SecretStr = Field(min_length=16, description="the host's bearer token")
    settings: dict[str, Setting] = Field(default_factory=dict)
    ssh_keys: tuple[str, ...] = Field((), description="for the `core` user")
    sysupdate: bool = Field(False, description="install the transfer file, enable the timer")

    @field_validator("settings")
    @classmethod
    def _settings(cls, v: dict[str, Setting]) -> dict[str, Setting]:
        reserved = sorted(RESERVED_SETTINGS & set(v))
        if reserved:
            raise ValueError(f"{', '.join(reserved)} are set by the unit, not config.toml")
        return v

    @property
    def image_url(self) -> str:
        return f"{self.base_url.rstrip('/')}/{self.image.filename}"

    @property
    def image_path(self) -> str:
        return f"{flatcar.EXTENSIONS_STORE}/{self.image.filename}"


def toml_text(settings: dict[str, Setting]) -> str:
    """A flat TOML table (the host's config file). Strings are written as JSON strings,
    which are valid TOML basic strings; the result is checked by parsing it back."""
    lines = ["# sandbox function host settings (see HostConfig); written by Ignition"]
    for key in sorted(settings):
        if not re.fullmatch(r"[A-Za-z0-9_-]+", key):
            raise ValueError(f"not a valid setting name: {key!r}")
        value = settings[key]
        text = ("true" if value else "false") if isinstance(value, bool) else json.dumps(value)
        lines.append(f"{key} = {text}")
    out = "\n".join(lines) + "\n"
    if tomllib.loads(out) != settings:
        raise ValueError("the settings do not survive TOML (NaN or infinity?)")
    return out


def ignition_config(p: Provisioning) -> ig.Config:
    """The Ignition config of a Flatcar machine running the function host."""
    files = [
        ig.File(
            path=p.image_path,
            mode=0o644,
            contents=ig.Resource(
                source=p.image_url,
                verification=ig.Verification(hash=f"sha256-{p.image.sha256}"),
            ),
        ),
        ig.File(
            path=flatcar.ENABLED_SYSEXT_CONF,
            mode=0o644,
            append=[ig.Resource(source=ig.data_url(f"{flatcar.PYTHON_EXTENSION}\n"))],
        ),
        ig.inline(flatcar.CONFIG_FILE, toml_text(p.settings)),
        ig.inline(flatcar.TOKEN_FILE, p.token.get_secret_value() + "\n", 0o600),
    ]
    unit_list: list[ig.Unit] = []
    if p.sysupdate:
        files += [
            ig.inline(
                f"{flatcar.SYSUPDATE_DIR}/{flatcar.NAME}.conf", units.transfer_file(p.base_url)
            ),
            ig.inline("/etc/sysupdate.d/noop.conf", units.SYSUPDATE_NOOP),
        ]
        unit_list += [
            ig.Unit(name="systemd-sysupdate.timer", enabled=True),
            ig.Unit(
                name="systemd-sysupdate.service",
                dropins=[
                    ig.Dropin(name=f"{flatcar.NAME}.conf", contents=units.SYSUPDATE_SERVICE_DROPIN)
                ],
            ),
        ]
    users = [ig.PasswdUser(name="core", ssh_authorized_keys=list(p.ssh_keys))] if p.ssh_keys else []
    return ig.Config(
        passwd=ig.Passwd(users=users),
        storage=ig.Storage(
            files=files,
            links=[ig.Link(path=flatcar.EXTENSION_LINK, target=p.image_path, hard=False)],
        ),
        systemd=ig.Systemd(units=unit_list),
    )
