"""What Flatcar Container Linux expects of a system extension, and where things go.

Sources (see docs/flatcar.md for the links):

- Flatcar's sysext documentation: an extension image carries
  `usr/lib/extension-release.d/extension-release.NAME` with `ID=flatcar` and
  `SYSEXT_LEVEL=1.0` (not `VERSION_ID`, which would tie the image to one OS release);
  units are started by an `Upholds=` drop-in of a target, not by `.wants` symlinks.
- Flatcar's opt-in ("official, disabled") extensions are enabled by a line in
  `/etc/flatcar/enabled-sysext.conf`; `python` (dev-lang/python + dev-python/pip, on the
  instance `flatcar-python`) exists since Flatcar 4012.0.0. It is built with the OS and
  updated in lockstep with it, so its Python minor version follows the OS release.
- The Python version: Flatcar's base profile (coreos-overlay
  `profiles/coreos/base/make.defaults`) sets `python_single_target_python3_11`, so
  the python extension of current Stable/LTS releases is CPython 3.11; flatcar/scripts
  PR #4240 (merged 2026-08-26) moves the main branch (Alpha first, then Beta and
  Stable) to 3.13. An image built for both runs on either side of that change.
- systemd-sysupdate transfer files as the Flatcar sysext bakery writes them:
  `url-file` source with `MatchPattern=NAME-@v-%a.raw`, target under
  `/opt/extensions/NAME/`, `CurrentSymlink=/etc/extensions/NAME.raw`.
"""

from __future__ import annotations

import sys
from typing import Final

OS_ID: Final = "flatcar"
SYSEXT_LEVEL: Final = "1.0"
ARCHITECTURE: Final = "x86-64"  # systemd's name (uname: x86_64)

# The Python versions of Flatcar's `python` extension, oldest first (see above).
FLATCAR_PYTHON_VERSIONS: Final = ("3.11", "3.13")
PYTHON_EXTENSION: Final = "python"  # the line in /etc/flatcar/enabled-sysext.conf
ENABLED_SYSEXT_CONF: Final = "/etc/flatcar/enabled-sysext.conf"

# The extension and its service. The extension name is what systemd-sysext matches the
# extension-release file against: the image must be visible as NAME.raw in an
# extensions directory (a symlink is fine: that is how Flatcar and sysupdate do it).
NAME: Final = "sandbox-host"
SERVICE: Final = f"{NAME}.service"
UPHOLDS_DROPIN: Final = f"10-{NAME}.conf"  # in multi-user.target.d/
LAUNCHER: Final = f"/usr/bin/{NAME}"
LIB_DIR: Final = f"/usr/lib/{NAME}"  # python<X.Y>/site-packages/ per Python version
SHARE_DIR: Final = f"/usr/share/{NAME}"  # build-info.json

# Where Ignition puts things on the instance.
EXTENSIONS_STORE: Final = f"/opt/extensions/{NAME}"  # versioned images (sysupdate's target)
EXTENSION_LINK: Final = f"/etc/extensions/{NAME}.raw"  # what systemd-sysext merges
CONFIG_DIR: Final = f"/etc/{NAME}"
CONFIG_FILE: Final = f"{CONFIG_DIR}/config.toml"
TOKEN_FILE: Final = f"{CONFIG_DIR}/token"  # root-only; reaches the service as a credential
STATE_DIR: Final = f"/var/lib/{NAME}"  # StateDirectory=, the host's data_dir
SYSUPDATE_DIR: Final = f"/etc/sysupdate.{NAME}.d"  # for `systemd-sysupdate -C NAME`
DEFAULT_PORT: Final = 8080


def image_filename(version: str, architecture: str = ARCHITECTURE) -> str:
    """`sandbox-host-0.1.0-x86-64.raw`: the name sysupdate's `NAME-@v-%a.raw` matches."""
    return f"{NAME}-{version}-{architecture}.raw"


def python_tag(version: str) -> str:
    """'3.11' -> 'cp311' (the CPython ABI tag of wheels and extension modules)."""
    major, minor = parse_python_version(version)
    return f"cp{major}{minor}"


def parse_python_version(version: str) -> tuple[int, int]:
    """'3.11' -> (3, 11). Raises ValueError for anything but MAJOR.MINOR of Python 3."""
    parts = version.split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or parts[0] != "3":
        raise ValueError(f"not a Python version of the form 3.MINOR: {version!r}")
    return int(parts[0]), int(parts[1])


def running_python_version() -> str:
    """This interpreter's MAJOR.MINOR."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"
