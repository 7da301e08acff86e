"""Shipping the function host to Flatcar Container Linux (docs/flatcar.md).

- `sysext`: builds `sandbox-host-<version>-x86-64.raw`, a systemd system extension
  (squashfs, only `usr/`) with the host, its Python packages (`payload`, checked by
  `checks`) and the bundled guests, the files of `units` (a hardened unit started by an
  `Upholds=` drop-in of multi-user.target, the launcher, extension-release), plus
  `SHA256SUMS` and a systemd-sysupdate transfer file.
- `provision` + `ignition`: the Ignition config (spec 3.4.0, from typed models) that
  installs it (`settings`: config.toml and the token); `butane` writes the same config
  as Butane (flatcar 1.1.0); `examples` renders the files of deploy/flatcar/.
- `cli`: `python -m sandbox deploy sysext|ignition` (or `python -m sandbox.deploy`).

Python itself comes from Flatcar's opt-in `python` extension (`flatcar.py` says which
versions and why).
"""

from .flatcar import FLATCAR_PYTHON_VERSIONS

__all__ = ["FLATCAR_PYTHON_VERSIONS"]
