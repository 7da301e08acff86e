"""The system extension image, built once for this machine's Python (offline, from the
packages installed here), then checked the way Flatcar would use it: its listing, its
reproducibility, systemd-dissect, systemd-sysext merging it into a scratch root with
Flatcar's os-release (in a private mount namespace), and the function host started from
the merged tree taking a deployment and an invocation."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deploy_support import (
    IGNITION_SCHEMA,
    REPO,
    flatcar_root,
    merge_script,
    require_mounts,
    require_tools,
    run_merged,
)

from sandbox.deploy import flatcar, units
from sandbox.deploy.cli import main as deploy_main
from sandbox.deploy.sysext import SysextBuild, SysextOptions, build_sysext, make_squashfs

EPOCH = 1_700_000_000  # 2023-11-14
BASE_URL = "https://dl.example.com/sandbox-host"
PY = flatcar.running_python_version()
SITE = f"usr/lib/{flatcar.NAME}/python{PY}/site-packages"


def options(out_dir: Path) -> SysextOptions:
    return SysextOptions(
        out_dir=out_dir,
        python_versions=(PY,),
        deps_from="environment",
        base_url=BASE_URL,
        source_date_epoch=EPOCH,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> SysextBuild:
    require_tools("mksquashfs", "unsquashfs")
    return build_sysext(options(tmp_path_factory.mktemp("dist")))


def listing(image: Path) -> list[tuple[str, str, str]]:
    """(mode, owner, path) of every entry, from unsquashfs."""
    out = subprocess.run(
        ["unsquashfs", "-lln", "-d", "", str(image)], capture_output=True, text=True, check=True
    ).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[0][0] in "-dlcbps":
            rows.append((parts[0], parts[1], parts[5].split(" -> ")[0]))
    return rows


def cat(image: Path, path: str) -> str:
    return subprocess.run(
        ["unsquashfs", "-cat", str(image), path], capture_output=True, text=True, check=True
    ).stdout


def test_outputs(built: SysextBuild) -> None:
    assert built.image.name == f"{flatcar.NAME}-{built.build_info['version']}-x86-64.raw"
    assert built.image.read_bytes()[:4] == b"hsqs"  # squashfs
    digest = hashlib.sha256(built.image.read_bytes()).hexdigest()
    assert built.sha256 == digest
    assert built.checksums.read_text() == f"{digest}  {built.image.name}\n"
    assert built.transfer.read_text() == units.transfer_file(BASE_URL)


def test_only_usr_root_owned(built: SysextBuild) -> None:
    rows = listing(built.image)
    paths = {path for _, _, path in rows}
    assert {path.split("/")[1] for path in paths if path != "/"} == {"usr"}
    assert {owner for _, owner, _ in rows} == {"0/0"}
    assert not any(p == "/usr/sbin" or p.startswith("/usr/sbin/") for p in paths)
    modes = {path: mode for mode, _, path in rows}
    assert modes[flatcar.LAUNCHER] == "-rwxr-xr-x"
    for path in (
        f"/usr/lib/systemd/system/{flatcar.SERVICE}",
        f"/usr/lib/systemd/system/multi-user.target.d/{flatcar.UPHOLDS_DROPIN}",
        f"/usr/lib/extension-release.d/extension-release.{flatcar.NAME}",
        f"/{SITE}/sandbox/_guests/demo.elf",
        f"/{SITE}/sandbox/__pycache__/__init__.cpython-{PY.replace('.', '')}.pyc",
        f"{flatcar.SHARE_DIR}/build-info.json",
    ):
        assert modes.get(path, "").startswith("-"), path
    assert all(not m.startswith("-") or m in ("-rw-r--r--", "-rwxr-xr-x") for m in modes.values())


def test_contents(built: SysextBuild) -> None:
    image = built.image
    release = cat(image, f"usr/lib/extension-release.d/extension-release.{flatcar.NAME}")
    assert release == units.extension_release(str(built.build_info["version"]))
    assert cat(image, f"usr/lib/systemd/system/{flatcar.SERVICE}") == units.SERVICE_UNIT
    info = json.loads(cat(image, f"{flatcar.SHARE_DIR.lstrip('/')}/build-info.json"))
    assert info["python"][PY]["dependencies_from"] == "environment"
    assert "imported" in info["python"][PY]["check"]
    assert {"pydantic", "cffi"} <= {name.lower() for name in info["python"][PY]["distributions"]}


def test_ignition_config_for_the_built_image(built: SysextBuild, tmp_path: Path) -> None:
    """`deploy ignition --image DIST`: the hash Ignition will check is the image's (and
    SHA256SUMS's), and the config is valid."""
    jsonschema = pytest.importorskip("jsonschema", reason="pip install jsonschema")
    if not IGNITION_SCHEMA.is_file():
        pytest.skip(f"no Ignition schema at {IGNITION_SCHEMA}")
    out = tmp_path / "machine.ign"
    args = [
        "ignition",
        "--image",
        str(built.image.parent),
        "--base-url",
        BASE_URL,
        "--token-file",
        str(tmp_path / "token"),
        "-o",
        str(out),
    ]
    assert deploy_main(args) == 0
    doc = json.loads(out.read_text())
    jsonschema.Draft4Validator(json.loads(IGNITION_SCHEMA.read_text())).validate(doc)
    image = next(f for f in doc["storage"]["files"] if f["path"].endswith(".raw"))
    assert image["contents"]["verification"]["hash"] == f"sha256-{built.sha256}"
    assert image["contents"]["source"] == f"{BASE_URL}/{built.image.name}"
    assert built.checksums.read_text().split()[0] == built.sha256


def test_reproducible(built: SysextBuild, tmp_path: Path) -> None:
    again = build_sysext(options(tmp_path))
    assert again.sha256 == built.sha256


def test_systemd_dissect_sees_a_system_extension(built: SysextBuild, tmp_path: Path) -> None:
    require_tools("systemd-dissect")
    if os.geteuid() != 0:
        pytest.skip("systemd-dissect needs root to attach the image")
    # Under the name systemd-sysext merges it by (the /etc/extensions link's name).
    named = tmp_path / f"{flatcar.NAME}.raw"
    os.link(built.image, named)
    proc = subprocess.run(
        ["systemd-dissect", "--json=short", str(named)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["useSystemExtension"] is True
    assert "ID=flatcar" in info["extensionRelease"]
    assert [m["fstype"] for m in info["mounts"]] == ["squashfs"]


def install_like_ignition(root: Path, image: Path) -> None:
    """The layout the Ignition config makes: the image under /opt/extensions/NAME/ and
    /etc/extensions/NAME.raw naming it. Ignition makes that a symlink; systemd-sysext
    --root (252) skips symlinks, so here it is a hard link (test_link_is_found_by_its_name
    shows the symlink at /)."""
    store = root / flatcar.EXTENSIONS_STORE.lstrip("/")
    store.mkdir(parents=True)
    os.link(image, store / image.name)
    os.link(image, root / flatcar.EXTENSION_LINK.lstrip("/"))


def test_link_is_found_by_its_name(built: SysextBuild) -> None:
    """At / (as on the machine), a symlink NAME.raw -> NAME-VERSION-ARCH.raw is found
    under the link's name, the one extension-release.NAME matches. /run/extensions is
    searched like /etc/extensions; /run is a tmpfs of the private namespace."""
    require_mounts()
    script = (
        "set -e\nmount -t tmpfs tmpfs /run\nmkdir /run/extensions\n"
        f"ln -s {shlex.quote(str(built.image))} /run/extensions/{flatcar.NAME}.raw\n"
        "systemd-sysext list --no-legend\n"
    )
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:3] == [flatcar.NAME, "raw", f"/run/extensions/{flatcar.NAME}.raw"]


def test_merges_into_flatcar(built: SysextBuild, tmp_path: Path) -> None:
    require_mounts()
    root = flatcar_root(tmp_path / "root")
    install_like_ignition(root, built.image)
    r = shlex.quote(str(root))
    checks = (
        f"test -x {r}{flatcar.LAUNCHER}\n"
        f"cat {r}/usr/lib/systemd/system/{flatcar.SERVICE}\n"
        f"cat {r}/usr/lib/systemd/system/multi-user.target.d/{flatcar.UPHOLDS_DROPIN}\n"
        f"systemd-analyze verify --man=no --root={r} {flatcar.SERVICE} multi-user.target\n"
    )
    proc = run_merged(root, checks)
    assert proc.returncode == 0, proc.stderr
    assert f"Using extensions '{flatcar.NAME}'" in proc.stderr
    assert units.SERVICE_UNIT in proc.stdout and units.UPHOLDS_DROPIN in proc.stdout
    assert flatcar.SERVICE not in proc.stderr.replace(f"extensions '{flatcar.NAME}'", "")
    # Nothing leaked out of the namespace.
    assert not (root / flatcar.LAUNCHER.lstrip("/")).exists()


def mini_image(tmp_path: Path, **release: str) -> Path:
    """An image with our extension-release (changed by `release`) and the launcher."""
    tree = tmp_path / "tree"
    launcher = tree / flatcar.LAUNCHER.lstrip("/")
    launcher.parent.mkdir(parents=True)
    launcher.write_text(units.launcher([PY]))
    launcher.chmod(0o755)
    meta = tree / "usr/lib/extension-release.d" / f"extension-release.{flatcar.NAME}"
    meta.parent.mkdir(parents=True)
    meta.write_text(units.extension_release("0.0.1", **release))
    image = tmp_path / flatcar.image_filename("0.0.1")
    make_squashfs(tree, image, EPOCH, "gzip")
    return image


@pytest.mark.parametrize(
    "release",
    [
        {},
        {"os_id": "fedora"},
        {"architecture": "arm64"},
        {"sysext_level": "2.0"},
    ],
    ids=["matching", "wrong-id", "wrong-architecture", "wrong-level"],
)
def test_refuses_what_does_not_match(tmp_path: Path, release: dict[str, str]) -> None:
    require_tools("mksquashfs")
    require_mounts()
    root = flatcar_root(tmp_path / "root")
    install_like_ignition(root, mini_image(tmp_path, **release))
    proc = run_merged(root, f"test -x {shlex.quote(str(root))}{flatcar.LAUNCHER} && echo merged")
    if not release:
        assert proc.stdout.strip() == "merged", proc.stderr
    else:
        assert "merged" not in proc.stdout
        assert "No suitable extensions found (1 ignored due to incompatible" in proc.stderr


def test_refused_by_another_os(tmp_path: Path) -> None:
    require_tools("mksquashfs")
    require_mounts()
    debian = 'NAME="Debian GNU/Linux"\nID=debian\nVERSION_ID="12"\n'
    root = flatcar_root(tmp_path / "root", os_release=debian)
    install_like_ignition(root, mini_image(tmp_path))
    proc = run_merged(root, f"test -x {shlex.quote(str(root))}{flatcar.LAUNCHER} && echo merged")
    assert "merged" not in proc.stdout
    assert "No suitable extensions found" in proc.stderr


# -- the function host from the merged tree -----------------------------------------------


def host_problem() -> str | None:
    try:
        import sandbox.host  # noqa: F401
        import sandbox.host.__main__  # noqa: F401
    except ImportError as exc:
        return f"function host not available ({exc})"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def request(
    method: str, url: str, token: str, body: bytes | None = None, content_type: str = ""
) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def multipart(manifest: dict[str, Any], module: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="manifest"\r\n\r\n'.encode()
        + json.dumps(manifest).encode()
        + b"\r\n",
        f'--{boundary}\r\nContent-Disposition: form-data; name="module"; filename="g.elf"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + module
        + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@pytest.fixture
def merged_host(built: SysextBuild, tmp_path: Path) -> Iterator[tuple[str, str, int, Path]]:
    """The launcher of the merged tree serving on loopback with a scratch data dir, run
    by this machine's python3 (the base interpreter, not the test venv). Yields (base
    URL, token, pid, root); the namespace and its mounts go away with the process."""
    problem = host_problem()
    if problem is not None:
        pytest.skip(problem)
    require_mounts()
    root = flatcar_root(tmp_path / "root")
    install_like_ignition(root, built.image)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to(getattr(sys, "_base_executable", sys.executable))
    port, token = free_port(), uuid.uuid4().hex
    data = tmp_path / "data"
    launch = (
        f"exec {shlex.quote(str(root))}{flatcar.LAUNCHER} --host 127.0.0.1 --port {port} "
        f"--data-dir {shlex.quote(str(data))}"
    )
    log = (tmp_path / "host.log").open("w")
    proc = subprocess.Popen(
        ["unshare", "-m", "sh", "-c", merge_script(root, launch)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={"PATH": f"{bindir}:/usr/bin:/bin", "SANDBOX_HOST_TOKEN": token, "LANG": "C.UTF-8"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "host.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "host.log").read_text()[-3000:]
            time.sleep(0.2)
        yield url, token, proc.pid, root
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.requires_kvm
def test_host_from_the_merged_tree_deploys_and_invokes(
    merged_host: tuple[str, str, int, Path], demo_bytes: bytes
) -> None:
    url, token, pid, root = merged_host
    body, content_type = multipart({"kind": "native", "entry": "add"}, demo_bytes)
    status, info = request("PUT", f"{url}/functions/add", token, body, content_type)
    assert status in (200, 201), info
    args = json.dumps({"args": [40, 2]}).encode()
    status, out = request("POST", f"{url}/functions/add/invoke", token, args, "application/json")
    assert status == 200, out
    assert out["result"] == 42
    status, _ = request("GET", f"{url}/functions/add", "wrong-token")
    assert status == 401
    # It is the image's code that answered (launcher -> python3 -> sandbox.host, with
    # the native module mapped from the merged /usr), not this checkout's.
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert f"{root}/{SITE}/sandbox/_sbx_native.abi3.so" in maps
    assert str(REPO / "sandbox") not in maps
