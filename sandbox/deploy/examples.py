"""The generated files of deploy/flatcar/, rendered from this package.

tests/deploy/test_deploy_butane.py checks that the committed copies equal these; after a
change here, rewrite them with

    python -c "from sandbox.deploy.examples import write_examples; write_examples('deploy/flatcar')"

Hand-written files there (Containerfile, the container unit, README.md) are not listed.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from . import butane, flatcar, units
from .provision import ImageRef, Provisioning, ignition_config

EXAMPLE_BASE_URL = "https://downloads.example.com/sandbox-host"
EXAMPLE_VERSION = "0.1.0"
# Placeholders that cannot work by accident: the hash matches no image, the token and
# the key are not valid ones.
EXAMPLE_SHA256 = "0" * 64
EXAMPLE_TOKEN = "REPLACE-WITH-A-RANDOM-TOKEN-openssl-rand-hex-32"
EXAMPLE_SSH_KEY = "ssh-ed25519 REPLACE-WITH-YOUR-PUBLIC-KEY core@example"

BUTANE_HEADER = f"""\
Flatcar Container Linux: the sandbox function host as a system extension.
An example with placeholders (image version and SHA-256, token, SSH key): write the real
one with
  python -m sandbox deploy sysext --out dist --base-url {EXAMPLE_BASE_URL}
  python -m sandbox deploy ignition --image dist --base-url {EXAMPLE_BASE_URL} \\
      --token-file token --ssh-key ~/.ssh/id_ed25519.pub --sysupdate \\
      -o sandbox-host.ign --butane sandbox-host.bu
or edit this file and transpile it: butane --strict < sandbox-host.bu > sandbox-host.ign
See docs/flatcar.md."""


def example_provisioning() -> Provisioning:
    """The example machine: every option on, placeholder values."""
    return Provisioning(
        image=ImageRef(filename=flatcar.image_filename(EXAMPLE_VERSION), sha256=EXAMPLE_SHA256),
        base_url=EXAMPLE_BASE_URL,
        token=SecretStr(EXAMPLE_TOKEN),
        settings={"host": "0.0.0.0", "port": flatcar.DEFAULT_PORT},
        ssh_keys=(EXAMPLE_SSH_KEY,),
        sysupdate=True,
    )


def render_examples() -> dict[str, str]:
    """{path relative to deploy/flatcar/: text}."""
    config = ignition_config(example_provisioning())
    return {
        "sandbox-host.bu": butane.render(config, BUTANE_HEADER),
        f"units/{flatcar.SERVICE}": units.SERVICE_UNIT,
        f"units/multi-user.target.d/{flatcar.UPHOLDS_DROPIN}": units.UPHOLDS_DROPIN,
        f"sysupdate/{flatcar.NAME}.conf": units.transfer_file(EXAMPLE_BASE_URL),
    }


def write_examples(directory: str | Path) -> None:
    """Writes render_examples() under `directory`."""
    for rel, text in render_examples().items():
        path = Path(directory) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
