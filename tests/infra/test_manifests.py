"""Static checks of everything under infra/: no cluster, no network.

* core Kubernetes kinds against the OpenAPI-derived schemas kubernetes-validate ships (strict:
  unknown fields fail), pinned to one Kubernetes version;
* KubeRay RayCluster / RayJob against infra/kuberay/schema/ray.io-v1.schema.json, with every pod
  template inside them validated as a core PodTemplateSpec;
* the cluster-launcher YAML with Ray's own validator (the one `ray up` runs);
* cross-references: entrypoint modules and config files exist, Secrets and URLs line up, no
  credential-looking values are committed;
* negative cases proving each validator rejects broken input.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
LAUNCHER = INFRA / "cluster-launcher" / "aws.yaml"
RAY_SCHEMA_PATH = INFRA / "kuberay" / "schema" / "ray.io-v1.schema.json"
# Newest schema set bundled with kubernetes-validate 1.37; pinned so results don't drift with the
# package, and old enough features (apps/v1, core/v1) are identical across recent releases.
K8S_VERSION = "1.37"
PLACEHOLDER = "CHANGE-ME"


# ---------------------------------------------------------------------------------------------
# loading


def _k8s_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*.yaml") if "cluster-launcher" not in p.parts)


def _documents() -> list[tuple[str, dict]]:
    docs = []
    for path in _k8s_files():
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                docs.append((f"{path.relative_to(REPO)}#{i}", doc))
    return docs


DOCS = _documents()
RAY_DOCS = [(n, d) for n, d in DOCS if d.get("apiVersion", "").startswith("ray.io/")]
CORE_DOCS = [(n, d) for n, d in DOCS if not d.get("apiVersion", "").startswith("ray.io/")]


def _one(kind: str, name: str | None = None) -> dict:
    found = [d for _, d in DOCS if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def ray_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(RAY_SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def _pod_templates(doc: dict) -> list[tuple[str, dict]]:
    spec = _cluster_spec(doc)
    out = [("headGroupSpec", spec["headGroupSpec"]["template"])]
    out += [(f"workerGroupSpecs[{w['groupName']}]", w["template"]) for w in spec.get("workerGroupSpecs", [])]
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in doc["spec"]:
        out.append(("submitterPodTemplate", doc["spec"]["submitterPodTemplate"]))
    return out


def _validate_pod_template(template: dict) -> None:
    # PodTemplate is the core kind whose only payload is a PodTemplateSpec: wrapping the template
    # in one validates it against the same schema the API server would use for a Deployment's.
    wrapper = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template}
    kubernetes_validate.validate(wrapper, K8S_VERSION, strict=True)


def _containers(template: dict) -> list[dict]:
    spec = template["spec"]
    return spec.get("containers", []) + spec.get("initContainers", [])


def _all_pod_templates() -> list[tuple[str, dict]]:
    out = []
    for name, doc in RAY_DOCS:
        out += [(f"{name}:{where}", t) for where, t in _pod_templates(doc)]
    for name, doc in CORE_DOCS:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            out.append((name, doc["spec"]["template"]))
    return out


# ---------------------------------------------------------------------------------------------
# schema validation


def test_infra_has_the_expected_objects():
    kinds = sorted(d["kind"] for _, d in DOCS)
    for kind in ("RayCluster", "RayJob", "Deployment", "Service", "Secret", "PersistentVolumeClaim",
                 "ConfigMap", "Namespace"):
        assert kind in kinds, f"no {kind} under infra/"
    for path in _k8s_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path


@pytest.mark.parametrize("name,doc", CORE_DOCS, ids=[n for n, _ in CORE_DOCS])
def test_core_object_is_valid_kubernetes(name, doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name,doc", RAY_DOCS, ids=[n for n, _ in RAY_DOCS])
def test_kuberay_object_matches_schema(name, doc, ray_validator):
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in ray_validator.iter_errors(doc)]
    assert not errors, errors
    for where, template in _pod_templates(doc):
        try:
            _validate_pod_template(template)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")


def _launcher() -> dict:
    return yaml.safe_load(LAUNCHER.read_text())


def _ray_validate_launcher(config: dict) -> None:
    # What `ray up` does before touching the cloud: merge the provider defaults, then validate
    # against Ray's bundled ray-schema.json plus its cross-field checks.
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_launcher_passes_rays_validator():
    config = _launcher()
    _ray_validate_launcher(config)
    # the raw file too, so a default from defaults.yaml can't paper over a mistake of ours
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)


# ---------------------------------------------------------------------------------------------
# negative cases: the validators must bite


def _deployment() -> dict:
    return copy.deepcopy(_one("Deployment", "mlflow"))


@pytest.mark.parametrize("mutate,why", [
    (lambda d: d["spec"].pop("selector"), "missing required spec.selector"),
    (lambda d: d["spec"].__setitem__("replicas", "one"), "replicas of the wrong type"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].__setitem__("imagee", "x"), "unknown container field"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name"), "container without a name"),
])
def test_kubernetes_validate_rejects_broken_deployment(mutate, why):
    doc = _deployment()
    mutate(doc)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _raycluster() -> dict:
    return copy.deepcopy(_one("RayCluster"))


def _rayjob() -> dict:
    return copy.deepcopy(_one("RayJob"))


@pytest.mark.parametrize("make,why", [
    (lambda: (d := _raycluster(), d["spec"].pop("headGroupSpec"))[0], "missing headGroupSpec"),
    (lambda: (d := _raycluster(), d["spec"]["headGroupSpec"].pop("template"))[0], "head without template"),
    (lambda: (d := _raycluster(), d["spec"]["workerGroupSpecs"][0].pop("groupName"))[0], "worker group without name"),
    (lambda: (d := _raycluster(), d["spec"]["workerGroupSpecs"][0].__setitem__("maxReplicas", "4"))[0], "maxReplicas as string"),
    (lambda: (d := _raycluster(), d["spec"].__setitem__("workerGroupSpec", []))[0], "misspelt field"),
    (lambda: (d := _raycluster(), d["spec"]["headGroupSpec"]["rayStartParams"].__setitem__("num-cpus", 0))[0], "non-string rayStartParams"),
    (lambda: (d := _raycluster(), d["spec"]["authOptions"].__setitem__("mode", "off"))[0], "bad auth mode"),
    (lambda: (d := _rayjob(), d["spec"].__setitem__("entrypoint", 42))[0], "entrypoint not a string"),
    (lambda: (d := _rayjob(), d["spec"].__setitem__("shutdownAfterJobFinishes", "yes"))[0], "boolean as string"),
    (lambda: (d := _rayjob(), d["spec"].pop("rayClusterSpec"))[0], "no cluster to run on"),
    (lambda: (d := _rayjob(), d.__setitem__("apiVersion", "ray.io/v1alpha1"))[0], "wrong apiVersion"),
])
def test_ray_schema_rejects_broken_objects(make, why, ray_validator):
    assert list(ray_validator.iter_errors(make())), why


def test_pod_template_check_rejects_broken_template():
    template = copy.deepcopy(_raycluster()["spec"]["workerGroupSpecs"][0]["template"])
    template["spec"]["containers"][0]["resources"]["limits"] = ["nvidia.com/gpu"]
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate_pod_template(template)


@pytest.mark.parametrize("mutate,why", [
    (lambda c: c.__setitem__("max_workers", "lots"), "wrong type"),
    (lambda c: c.pop("provider"), "missing required provider"),
    (lambda c: c.__setitem__("setup_command", []), "misspelt top-level field"),
    (lambda c: c.__setitem__("head_node_type", "nope"), "head type not among node types"),
])
def test_ray_launcher_validator_rejects_broken_config(mutate, why):
    config = _launcher()
    mutate(config)
    with pytest.raises(Exception):
        _ray_validate_launcher(config)


# ---------------------------------------------------------------------------------------------
# what the manifests promise


def test_raycluster_has_autoscaled_gpu_workers_and_token_auth():
    for doc in (_raycluster(), _rayjob()):
        spec = _cluster_spec(doc)
        assert spec["enableInTreeAutoscaling"] is True
        assert spec["authOptions"]["mode"] == "token"
        assert spec["authOptions"]["secretName"] == _one("Secret", spec["authOptions"]["secretName"])["metadata"]["name"]
        gpu_groups = []
        for group in spec["workerGroupSpecs"]:
            assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], group["groupName"]
            for c in _containers(group["template"]):
                limits = c.get("resources", {}).get("limits", {})
                if "nvidia.com/gpu" in limits:
                    gpu_groups.append(group["groupName"])
                    assert group["maxReplicas"] >= 1
        assert gpu_groups, "no worker group asks for nvidia.com/gpu"


def test_ray_pods_use_project_image_shm_secrets_and_in_cluster_mlflow():
    mlflow_svc = _one("Service", "mlflow")
    port = mlflow_svc["spec"]["ports"][0]["port"]
    ns = mlflow_svc["metadata"]["namespace"]
    expected_uri = f"http://mlflow.{ns}.svc.cluster.local:{port}"
    object_store = _one("Secret", "anysat-object-store")["metadata"]["name"]
    for doc in (_raycluster(), _rayjob()):
        for where, template in _pod_templates(doc):
            volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
            for c in template["spec"]["containers"]:
                assert c["image"] == "anysat-ray:latest", where
                env = {e["name"]: e for e in c.get("env", [])}
                assert env["MLFLOW_TRACKING_URI"]["value"] == expected_uri, where
                refs = [s["secretRef"]["name"] for s in c.get("envFrom", []) if "secretRef" in s]
                assert object_store in refs, where
                shm = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
                assert shm and volumes[shm[0]["name"]]["emptyDir"]["medium"] == "Memory", where


def test_mlflow_server_uses_db_secret_and_object_store():
    deploy = _one("Deployment", "mlflow")
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert "--backend-store-uri=$(MLFLOW_BACKEND_STORE_URI)" in args
    assert "--artifacts-destination=$(MLFLOW_ARTIFACTS_DESTINATION)" in args
    assert "--serve-artifacts" in args
    env = {e["name"]: e for e in container["env"]}
    ref = env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]
    db_secret = _one("Secret", ref["name"])
    assert ref["key"] in db_secret["stringData"]
    assert db_secret["stringData"][ref["key"]].startswith("postgresql://")
    config = _one("ConfigMap", "anysat-mlflow")["data"]
    assert config["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    # the Service name Ray pods use must pass MLflow's Host-header allow-list
    assert "mlflow.anysat.svc.cluster.local:*" in config["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    # postgres Service/claim the Secret's URI and the Deployment point at exist
    assert _one("Service", "mlflow-postgres")["spec"]["ports"][0]["port"] == 5432
    claim = _one("Deployment", "mlflow-postgres")["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    _one("PersistentVolumeClaim", claim)


def test_services_stay_inside_the_cluster():
    for _, doc in CORE_DOCS:
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", doc["metadata"]["name"]
    assert _raycluster()["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"


def test_every_object_is_namespaced_consistently():
    for name, doc in DOCS:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "anysat", name


def _entrypoint_argv(entrypoint: str) -> list[str]:
    return shlex.split(entrypoint)


def test_rayjob_entrypoint_shape():
    spec = _rayjob()["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    argv = _entrypoint_argv(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "ray_jobs.pretrain"]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert any(s.startswith("data.root=s3://") for s in sets)
    assert any(s.startswith("storage_path=s3://") for s in sets)


def _module_file(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__main__.py"):
        if candidate.exists():
            return candidate
    return None


def _referenced_entrypoints() -> list[tuple[str, str]]:
    """(where, module) for every `python -m X` in the RayJob and infra/README.md."""
    refs = [("rayjob-pretrain.yaml", _entrypoint_argv(_rayjob()["spec"]["entrypoint"])[2])]
    readme = (INFRA / "README.md").read_text()
    refs += [("infra/README.md", m) for m in sorted(set(re.findall(r"python3? -m ([a-z_][\w.]*)", readme)))]
    return refs


@pytest.mark.parametrize("where,module", _referenced_entrypoints(), ids=lambda x: str(x))
def test_entrypoint_modules_exist(where, module):
    root = module.split(".")[0]
    if root in ("pip", "venv", "mlflow", "ray", "moto"):  # third-party tools, not project code
        return
    assert _module_file(module) is not None, f"{where} runs `python -m {module}` but there is no such module"


def test_rayjob_config_file_exists():
    argv = _entrypoint_argv(_rayjob()["spec"]["entrypoint"])
    config = REPO / argv[argv.index("--config") + 1]
    assert config.exists(), f"RayJob --config {config.relative_to(REPO)} does not exist"


def test_launcher_installs_the_project_and_keeps_dashboard_local():
    config = _launcher()
    local = [v for v in config["file_mounts"].values() if v == "."]
    assert local, "the project is not mounted onto the nodes"
    assert (REPO / "pyproject.toml").exists()
    assert any("pip install" in c and "-e ." in c for c in config["setup_commands"])
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    for cmd in config["head_start_ray_commands"][1:] + config["worker_start_ray_commands"][1:]:
        assert "RAY_AUTH_MODE=token" in cmd
    assert config["available_node_types"][config["head_node_type"]]["resources"].get("CPU") == 0


# ---------------------------------------------------------------------------------------------
# secrets


_CREDENTIAL_PATTERNS = [
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), "AWS access key id"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "private key"),
    (re.compile(r"\b[0-9a-f]{32,}\b"), "long hex token"),
    (re.compile(r"(?<![\w/+])[A-Za-z0-9/+]{40}(?![\w/+=])"), "40-char secret (AWS secret key shape)"),
    (re.compile(r"://[^/\s:@]+:(?!CHANGE-ME@|\$)[^@\s/]+@"), "password inside a URL"),
]


def credential_findings(text: str) -> list[str]:
    return [why for pattern, why in _CREDENTIAL_PATTERNS if pattern.search(text)]


def _secret_like(key: str) -> bool:
    return bool(re.search(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|_URI$|_URL$|auth_token", key, re.I))


def test_infra_files_hold_no_credentials():
    for path in sorted(INFRA.rglob("*")):
        if path.is_file() and path.suffix in (".yaml", ".yml", ".md", ".json", ".py", "") :
            findings = credential_findings(path.read_text(errors="replace"))
            assert not findings, f"{path.relative_to(REPO)}: {findings}"


def test_secrets_hold_placeholders_only():
    secrets = [d for _, d in DOCS if d["kind"] == "Secret"]
    assert secrets
    for secret in secrets:
        assert "data" not in secret, "base64 `data` hides what is committed; use stringData placeholders"
        for key, value in secret.get("stringData", {}).items():
            if _secret_like(key):
                assert PLACEHOLDER in value, f"{secret['metadata']['name']}.{key} is not a placeholder"


def test_no_inline_secret_values_in_pod_env():
    for where, template in _all_pod_templates():
        for c in _containers(template):
            for e in c.get("env", []):
                if _secret_like(e["name"]) and e["name"] != "MLFLOW_TRACKING_URI":
                    assert "valueFrom" in e, f"{where}: {e['name']} set inline"


def test_credential_check_bites():
    assert credential_findings("AWS_ACCESS_KEY_ID: AKIAABCDEFGHIJKLMNOP")
    assert credential_findings("key: wJalrXUtnFEMIK7MDENGbPxRfiCYzEXAMPLEKEYA")
    assert credential_findings("uri: postgresql://mlflow:hunter2@db:5432/mlflow")
    assert credential_findings("auth_token: " + "ab" * 32)
    assert not credential_findings("uri: postgresql://mlflow:CHANGE-ME@db:5432/mlflow")
