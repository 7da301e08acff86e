"""`python -m sandbox deploy sysext|ignition` (also `python -m sandbox.deploy ...`).

Errors are one line on stderr: exit status 2 for bad arguments, 1 when the build fails.
Only argparse is imported here; the work is imported when a command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import flatcar

_VERSIONS = " and ".join(flatcar.FLATCAR_PYTHON_VERSIONS)
SYSEXT_DESCRIPTION = (
    "Build the function host as a Flatcar system extension: "
    f"{flatcar.image_filename('VERSION')} (squashfs, only usr/), SHA256SUMS and the "
    "systemd-sysupdate transfer file, in DIR. Python itself comes from Flatcar's python "
    f"extension: the image carries packages for Python {_VERSIONS} "
    "by default and the launcher picks the one the machine has. Reproducible: set "
    "SOURCE_DATE_EPOCH (or --source-date-epoch)."
)
IGNITION_DESCRIPTION = (
    "Write the Ignition config (spec 3.4.0, JSON) that installs the image on a Flatcar "
    "machine: download and SHA-256 check, /etc/extensions link, the python extension, "
    "config.toml and the token; the image's Upholds= drop-in starts the service. "
    "--butane also writes the same config as Butane (variant flatcar, version 1.1.0)."
)


def add_sysext_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `deploy sysext`."""
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    parser.add_argument(
        "--python-version",
        dest="python_versions",
        action="append",
        metavar="X.Y",
        help="build packages for this Python (repeatable; default: "
        f"{' '.join(flatcar.FLATCAR_PYTHON_VERSIONS)}, the versions of Flatcar's python "
        "extension)",
    )
    parser.add_argument(
        "--deps-from",
        choices=["auto", "environment", "pip"],
        default="auto",
        help="environment: copy what is installed here (offline; only for this "
        "Python's version); pip: binary wheels for the target version; auto (default): "
        "environment where it can, pip otherwise",
    )
    parser.add_argument(
        "--wheelhouse",
        type=Path,
        metavar="DIR",
        help="pip: install from these wheels only (no index)",
    )
    parser.add_argument(
        "--extra",
        dest="extras",
        action="append",
        metavar="NAME",
        help="extras of kvm-sandbox to bundle (default: host)",
    )
    parser.add_argument(
        "--with",
        dest="requirements",
        action="append",
        default=[],
        metavar="REQUIREMENT",
        help="one more requirement to bundle",
    )
    parser.add_argument(
        "--base-url",
        metavar="URL",
        help="where the images will be served (for the sysupdate transfer file)",
    )
    parser.add_argument(
        "--source-date-epoch",
        type=int,
        metavar="SECONDS",
        help="timestamp of every file (default: $SOURCE_DATE_EPOCH, else 0)",
    )
    parser.add_argument("--compression", choices=["gzip", "xz", "zstd", "lz4"], default="gzip")
    parser.add_argument(
        "--no-bytecode", dest="bytecode", action="store_false", help="do not ship .pyc files"
    )
    parser.add_argument("--version", help="image version (default: the package's)")


def run_sysext(args: argparse.Namespace) -> int:
    """Builds the image; prints its path and SHA-256."""
    from pydantic import ValidationError

    try:
        from .payload import PayloadError
        from .sysext import PLACEHOLDER_BASE_URL, SysextError, SysextOptions, build_sysext
    except ImportError as exc:  # packaging: see the `deploy` extra
        print(f"error: {exc}: pip install 'kvm-sandbox[deploy]'", file=sys.stderr)
        return 1

    epoch = args.source_date_epoch
    if epoch is None:
        epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0") or 0)
    fields: dict[str, Any] = {
        "out_dir": args.out,
        "deps_from": args.deps_from,
        "wheelhouse": args.wheelhouse,
        "extras": tuple(args.extras) if args.extras else None,
        "requirements": tuple(args.requirements),
        "base_url": args.base_url or PLACEHOLDER_BASE_URL,
        "source_date_epoch": epoch,
        "compression": args.compression,
        "bytecode": args.bytecode,
        "version": args.version,
    }
    if args.python_versions:
        fields["python_versions"] = tuple(args.python_versions)
    try:
        options = SysextOptions(**fields)
    except (ValidationError, ValueError) as exc:
        print(f"error: {_describe(exc)}", file=sys.stderr)
        return 2
    if args.base_url is None:
        print(
            f"note: no --base-url: the transfer file points at {PLACEHOLDER_BASE_URL}",
            file=sys.stderr,
        )
    try:
        build = build_sysext(options, log=lambda line: print(line, file=sys.stderr))
    except (SysextError, PayloadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{build.image}\nsha256 {build.sha256}")
    return 0


def add_ignition_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `deploy ignition`."""
    parser.add_argument(
        "--image",
        type=Path,
        required=True,
        metavar="PATH",
        help="the built .raw image, or the directory `deploy sysext` wrote",
    )
    parser.add_argument(
        "--base-url",
        required=True,
        metavar="URL",
        help="where the machine downloads the image from (BASE_URL/IMAGE.raw)",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        required=True,
        metavar="FILE",
        help="the host's bearer token (generated into FILE, mode 0600, if missing)",
    )
    parser.add_argument(
        "--listen",
        metavar="ADDRESS:PORT",
        help=f"where the host listens (default 0.0.0.0:{flatcar.DEFAULT_PORT})",
    )
    parser.add_argument(
        "--settings",
        type=Path,
        metavar="FILE",
        help="more host settings for config.toml (a TOML table, see HostConfig)",
    )
    parser.add_argument(
        "--ssh-key",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a public key file for the `core` user (repeatable)",
    )
    parser.add_argument(
        "--sysupdate",
        action="store_true",
        help="also keep the image updated with systemd-sysupdate (hourly)",
    )
    parser.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="write the JSON here (default: stdout)"
    )
    parser.add_argument(
        "--butane", type=Path, metavar="FILE", help="also write the equivalent Butane config here"
    )


def run_ignition(args: argparse.Namespace) -> int:
    """Writes the Ignition config (and the Butane file)."""

    from . import butane
    from .provision import ImageRef, Provisioning, ignition_config
    from .settings import SettingsError, host_settings, read_or_create_token

    try:
        image = _image_path(args.image)
        token = read_or_create_token(args.token_file)
        settings = host_settings(args.settings, args.listen)
        keys = tuple(k for path in args.ssh_key for k in _keys(path))
        plan = Provisioning(
            image=ImageRef.from_file(image),
            base_url=args.base_url,
            token=token,
            settings=settings,
            ssh_keys=keys,
            sysupdate=args.sysupdate,
        )
    except (OSError, SettingsError, ValueError) as exc:
        print(f"error: {_describe(exc)}", file=sys.stderr)
        return 2
    config = ignition_config(plan)
    text = config.to_json()
    if args.output is None:
        sys.stdout.write(text)
    else:
        _write_private(args.output, text)
    if args.butane is not None:
        header = (
            f"Butane config for {plan.image.filename}; "
            "written by `python -m sandbox deploy ignition`."
        )
        _write_private(args.butane, butane.render(config, header))
    return 0


def _describe(exc: Exception) -> str:
    """One line: the first problem of a pydantic ValidationError, with its field."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return str(exc)
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else str(first["msg"])


def _write_private(path: Path, text: str) -> None:
    """The configs hold the token: 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _image_path(path: Path) -> Path:
    """`path` if it is a .raw file, else the one image of this extension in directory
    `path`. Raises ValueError."""
    if path.is_dir():
        images = sorted(path.glob(f"{flatcar.NAME}-*-*.raw"))
        if len(images) != 1:
            found = ", ".join(i.name for i in images) or "none"
            raise ValueError(f"{path} must hold exactly one {flatcar.NAME} image (found: {found})")
        return images[0]
    if not path.is_file():
        raise ValueError(f"no image at {path}")
    return path


def _keys(path: Path) -> list[str]:
    return [
        line.strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def add_commands(subparsers: Any) -> None:
    """Adds `sysext` and `ignition` to `subparsers`; each sets `func` to the function
    that runs it (it returns the exit status)."""
    sysext = subparsers.add_parser(
        "sysext", help="build the systemd-sysext image", description=SYSEXT_DESCRIPTION
    )
    add_sysext_arguments(sysext)
    sysext.set_defaults(func=run_sysext)
    ignition = subparsers.add_parser(
        "ignition", help="write the Ignition (and Butane) config", description=IGNITION_DESCRIPTION
    )
    add_ignition_arguments(ignition)
    ignition.set_defaults(func=run_ignition)


def add_deploy_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds `deploy sysext|ignition` to the subparsers of `python -m sandbox`."""
    deploy: argparse.ArgumentParser = subparsers.add_parser(
        "deploy",
        help="package the function host for Flatcar (sysext image, Ignition)",
        description="Ship the function host to Flatcar Container Linux (docs/flatcar.md).",
    )
    add_commands(deploy.add_subparsers(dest="deploy_command", required=True, metavar="COMMAND"))
    return deploy


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m sandbox.deploy sysext|ignition ...`."""
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.deploy",
        description="Ship the function host to Flatcar Container Linux (docs/flatcar.md).",
    )
    add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return int(args.func(args))
