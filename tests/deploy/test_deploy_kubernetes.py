"""deploy/kubernetes/ (the device plugin, KubeRay RayCluster and RayService) and the
Flatcar KVM node config (sandbox/ray/flatcar.py, deploy/flatcar/kvm-node.bu), checked
offline: there is no Kubernetes here. Built-in kinds against the Kubernetes 1.32 JSON
schemas (kubernetes-validate, strict: unknown fields are errors); KubeRay's kinds
against KubeRay's own CRD schemas (pinned in tests/deploy/kuberay/, unknown fields
refused as strict field validation does) and a schema of the fields these manifests
use, with every pod template checked as a Kubernetes PodTemplate; the policy
(no privileged pods, /dev/kvm only through the device plugin, memory requests that
match the sandboxes); the Ignition config against ../shared's schema and
ignition-validate, and its Butane file against the JSON."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from deploy_support import IGNITION_SCHEMA, REPO, require_tools
from test_deploy_butane import from_butane, normalized

from sandbox.ray import flatcar

yaml = pytest.importorskip("yaml", reason="pip install pyyaml")
jsonschema = pytest.importorskip("jsonschema", reason="pip install jsonschema")
kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")

K8S = REPO / "deploy" / "kubernetes"
KUBERNETES = "1.32"
KVM_DEVICE = "squat.ai/kvm"
MiB, GiB = 1 << 20, 1 << 30

_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}
_GROUP = {
    "type": "object",
    "required": ["rayStartParams", "template"],
    "properties": {"rayStartParams": _START_PARAMS, "template": {"type": "object"}},
}
_WORKERS = {
    "type": "array",
    "minItems": 1,
    "items": {
        **_GROUP,
        "required": ["groupName", "replicas", "minReplicas", "maxReplicas", *_GROUP["required"]],
        "properties": {
            **_GROUP["properties"],
            "groupName": {"type": "string"},
            "replicas": {"type": "integer", "minimum": 0},
            "minReplicas": {"type": "integer", "minimum": 0},
            "maxReplicas": {"type": "integer", "minimum": 1},
        },
    },
}
CLUSTER_SPEC = {
    "type": "object",
    "additionalProperties": False,
    "required": ["rayVersion", "headGroupSpec", "workerGroupSpecs"],
    "properties": {
        "rayVersion": {"type": "string", "pattern": r"^2\.60\."},
        "enableInTreeAutoscaling": {"type": "boolean"},
        "headGroupSpec": {**_GROUP, "additionalProperties": False},
        "workerGroupSpecs": _WORKERS,
    },
}
KUBERAY = {  # ray.io/v1, the fields these manifests use
    "RayCluster": CLUSTER_SPEC,
    "RayService": {
        "type": "object",
        "additionalProperties": False,
        "required": ["serveConfigV2", "rayClusterConfig"],
        "properties": {"serveConfigV2": {"type": "string"}, "rayClusterConfig": CLUSTER_SPEC},
    },
}


def strict(schema: Any) -> Any:
    """A CRD's structural schema as the API server applies it with strict field
    validation: an object with `properties` accepts no other field unless it says
    x-kubernetes-preserve-unknown-fields (or has additionalProperties of its own)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


# KubeRay's own schemas of its v1 kinds (see tests/deploy/kuberay/README.md).
CRD_SCHEMAS = {
    kind: strict(schema)
    for kind, schema in json.loads(
        gzip.decompress((Path(__file__).parent / "kuberay" / "crd-schemas-v1.json.gz").read_bytes())
    ).items()
}


def test_the_crd_schemas_refuse_what_the_api_server_would() -> None:
    """The pinned schemas do catch errors: a misspelt field, a wrong type."""
    doc = next(d for d in documents() if d["kind"] == "RayCluster")
    jsonschema.validate(doc, CRD_SCHEMAS["RayCluster"])
    misspelt = {**doc, "spec": {**doc["spec"], "headGroupSpc": {}}}
    with pytest.raises(jsonschema.ValidationError, match="headGroupSpc"):
        jsonschema.validate(misspelt, CRD_SCHEMAS["RayCluster"])
    workers = [{**doc["spec"]["workerGroupSpecs"][0], "replicas": "two"}]
    wrong_type = {**doc, "spec": {**doc["spec"], "workerGroupSpecs": workers}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong_type, CRD_SCHEMAS["RayCluster"])


def documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def cluster_specs() -> list[dict[str, Any]]:
    out = []
    for doc in documents():
        if doc["kind"] == "RayCluster":
            out.append(doc["spec"])
        elif doc["kind"] == "RayService":
            out.append(doc["spec"]["rayClusterConfig"])
    return out


def quantity(text: str) -> int:
    units = {"Ki": 1 << 10, "Mi": MiB, "Gi": GiB}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def test_the_manifests_are_the_expected_kinds() -> None:
    kinds = sorted(d["kind"] for d in documents())
    assert kinds == ["DaemonSet", "Namespace", "PersistentVolumeClaim", "RayCluster", "RayService"]
    assert {d["metadata"].get("namespace", "kvm-sandbox") for d in documents()} == {"kvm-sandbox"}


BUILTIN = [d for d in documents() if not d["apiVersion"].startswith("ray.io")]


@pytest.mark.parametrize("doc", BUILTIN, ids=lambda d: d["kind"])
def test_builtin_kinds_validate_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    kv.validate(doc, KUBERNETES, strict=True)


@pytest.mark.parametrize("doc", [d for d in documents() if d["apiVersion"] == "ray.io/v1"],
                         ids=lambda d: d["kind"])  # fmt: skip
def test_kuberay_kinds_and_their_pod_templates_validate(doc: dict[str, Any]) -> None:
    jsonschema.validate(doc, CRD_SCHEMAS[doc["kind"]])
    jsonschema.validate(doc["spec"], KUBERAY[doc["kind"]])
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterConfig"]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        template = {"apiVersion": "v1", "kind": "PodTemplate",
                    "metadata": {"name": "t"}, "template": group["template"]}  # fmt: skip
        kv.validate(template, KUBERNETES, strict=True)
    with pytest.raises(kv.ValidationError):  # the check does catch a misspelt field
        bad = dict(spec["headGroupSpec"]["template"]["spec"], contianers=[])
        kv.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                     "template": {"spec": bad}}, KUBERNETES, strict=True)  # fmt: skip


def _pod_specs() -> list[dict[str, Any]]:
    specs = []
    for doc in documents():
        if doc["kind"] == "DaemonSet":
            specs.append(doc["spec"]["template"]["spec"])
    for spec in cluster_specs():
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            specs.append(group["template"]["spec"])
    return specs


def test_no_pod_is_privileged_and_capabilities_are_dropped() -> None:
    for pod in _pod_specs():
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        for c in pod["containers"]:
            sc = c.get("securityContext", {})
            assert sc.get("privileged", False) is False
            assert sc.get("allowPrivilegeEscalation") is False
            assert sc.get("capabilities", {}).get("drop") == ["ALL"]
            assert not sc.get("capabilities", {}).get("add")


def test_kvm_reaches_only_the_workers_through_the_device_plugin() -> None:
    (plugin,) = [d for d in documents() if d["kind"] == "DaemonSet"]
    device = yaml.safe_load(plugin["spec"]["template"]["spec"]["containers"][0]["args"][1])
    assert device["name"] == "kvm" and device["groups"][0]["paths"] == [{"path": "/dev/kvm"}]
    for spec in cluster_specs():
        head = spec["headGroupSpec"]
        assert (
            "resources" not in head["rayStartParams"] and head["rayStartParams"]["num-cpus"] == "0"
        )
        for c in head["template"]["spec"]["containers"]:
            assert KVM_DEVICE not in c["resources"]["limits"]
        for group in spec["workerGroupSpecs"]:
            # rayStartParams values are strings; KubeRay passes this one to `ray start
            # --resources` with its outer quotes: the JSON inside must offer kvm.
            resources = json.loads(json.loads(group["rayStartParams"]["resources"]))
            assert resources == {"kvm": 1}
            pod = group["template"]["spec"]
            assert pod["nodeSelector"] == {"kvm-sandbox.io/kvm": "true"}
            assert all(v.get("hostPath") is None for v in pod.get("volumes", []))
            for c in pod["containers"]:
                assert c["resources"]["limits"][KVM_DEVICE] == "1"


def test_worker_memory_matches_the_sandboxes() -> None:
    size_per_node, python_vm = 8, 256 * MiB  # the pool and VM size the comment sizes for
    for spec in cluster_specs():
        for group in spec["workerGroupSpecs"]:
            store = int(group["rayStartParams"]["object-store-memory"])
            for c in group["template"]["spec"]["containers"]:
                req, lim = c["resources"]["requests"], c["resources"]["limits"]
                assert req == lim  # Guaranteed QoS: never overcommitted
                need = 1 * GiB + store + size_per_node * python_vm
                assert need <= quantity(req["memory"]) <= need + 1 * GiB


def test_the_rayservice_names_the_serve_builder() -> None:
    (service,) = [d for d in documents() if d["kind"] == "RayService"]
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    (app,) = config["applications"]
    module, _, name = app["import_path"].partition(":")
    assert (module, name) == ("sandbox.ray.serve", "app_builder")
    pytest.importorskip("ray.serve")
    import sandbox.ray.serve as serve_module

    assert callable(getattr(serve_module, name))
    assert app["args"]["store_dir"] == "/mnt/functions"
    mounts = {m["mountPath"] for s in cluster_specs() for g in s["workerGroupSpecs"]
              for c in g["template"]["spec"]["containers"] for m in c["volumeMounts"]}  # fmt: skip
    assert "/mnt/functions" in mounts


# -- the Flatcar KVM node ------------------------------------------------------------------


def test_kvm_node_butane_is_up_to_date_and_says_what_the_json_says() -> None:
    committed = (REPO / "deploy" / "flatcar" / "kvm-node.bu").read_text()
    assert committed == flatcar.render_example(), "rewrite it: see sandbox/ray/flatcar.py"
    config = flatcar.node_config(flatcar.example_node())
    assert normalized(from_butane(yaml.safe_load(committed))) == normalized(config.to_dict())


def test_kvm_node_ignition_validates(tmp_path: Path) -> None:
    if not IGNITION_SCHEMA.is_file():
        pytest.skip(f"no Ignition schema at {IGNITION_SCHEMA} (the shared/ directory)")
    doc = flatcar.node_config(flatcar.example_node()).to_dict()
    jsonschema.Draft4Validator(json.loads(IGNITION_SCHEMA.read_text())).validate(doc)
    files = {f["path"]: f for f in doc["storage"]["files"]}
    assert files[flatcar.JOIN_CONFIG]["mode"] == 0o600  # the bootstrap token
    join = yaml.safe_load(flatcar.join_configuration(flatcar.example_node()))
    assert join["nodeRegistration"]["kubeletExtraArgs"]["node-labels"] == flatcar.NODE_LABEL
    require_tools("ignition-validate")
    doc["ignition"]["version"] = "3.4.0-experimental"  # Debian 12's Ignition 2.14
    path = tmp_path / "kvm-node.ign"
    path.write_text(json.dumps(doc))
    proc = subprocess.run(["ignition-validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "change",
    [
        {"api_server": "no-port"},
        {"token": "short"},
        {"ca_cert_hash": "md5:00"},
        {"sysext_sha256": "xyz"},
        {"kubernetes_version": "1.32"},
    ],  # fmt: skip
)
def test_kvm_node_refuses_bad_values(change: dict[str, str]) -> None:
    fields = {**flatcar.example_node().__dict__, **change}
    with pytest.raises(ValueError):
        flatcar.KvmNode(**fields)
