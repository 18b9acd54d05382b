"""Offline checks of the Kubernetes manifests (k8s/) and the image definition (docker/).

No Kubernetes API server, KubeRay operator or container engine exists here, so nothing is
applied or built. Instead the manifests are rendered with ``kubectl kustomize`` (the same
renderer ``kubectl apply -k`` uses) and the rendered objects are checked offline:

- core objects against the Kubernetes OpenAPI schemas bundled with kubernetes-validate
  (strict: unknown fields fail, as with server-side field validation);
- RayCluster and RayJob against the KubeRay v1.7.0 CRD schemas (``<repo>/../shared/data/
  kuberay-crds``), made strict the same way;
- the platform's own rules: security defaults of every container, the Ray cluster's shape,
  network policies, and agreement with ``mmplatform.paths`` and the pins in pyproject.toml.

Every rule checker returns a list of violations, and each is also run on a deliberately
broken copy of the rendered manifests to show that it can fail.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from mmplatform.paths import (
    AIM_REPO_ENV,
    CLUSTER_MAX_GPUS_ENV,
    AIM_TRACKING_PORT,
    AIM_UI_PORT,
    DATA_ROOT_ENV,
    DATASETS_DIR_ENV,
    RESULTS_DIR_ENV,
    TRIAL_DRIVER_RESOURCE,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
K8S_DIR = REPO_ROOT / "k8s"
KUSTOMIZATIONS = {
    "cluster": K8S_DIR,
    "shards": K8S_DIR / "jobs" / "build-shards",
    "sweep": K8S_DIR / "jobs" / "sweep",
}
CRD_DIR = REPO_ROOT.parent / "shared" / "data" / "kuberay-crds"
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"

# The newest Kubernetes minor that the kubectl here (v1.32) speaks; kubernetes-validate 1.37
# bundles its schemas.
KUBERNETES_VERSION = "1.32.0"

PATH_ENV_KEYS = (DATA_ROOT_ENV, DATASETS_DIR_ENV, RESULTS_DIR_ENV)
CONTRACT_ENV_KEYS = (*PATH_ENV_KEYS, AIM_REPO_ENV, CLUSTER_MAX_GPUS_ENV)
RAY_HEAD_PORTS = {"dashboard": 8265, "gcs": 6379, "client": 10001}
EXTERNAL_SERVICE_TYPES = {"LoadBalancer", "NodePort"}
GPU_RESOURCE = "nvidia.com/gpu"
SWEEP_COMMAND = "sweeps/polymnist_fmean.py --profile cluster"


# --- rendering -------------------------------------------------------------------------------


def render(directory: Path) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: the manifests cannot be rendered")
    completed = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, f"kubectl kustomize {directory}:\n{completed.stderr}"
    return [obj for obj in yaml.load_all(completed.stdout, Loader=_yaml_loader()) if obj]


def _yaml_loader():
    # The CRD files are megabytes of YAML: the C loader reads them in a fraction of a second.
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@pytest.fixture(scope="module")
def renders() -> dict[str, list[dict]]:
    return {name: render(directory) for name, directory in KUSTOMIZATIONS.items()}


@pytest.fixture
def objects(renders) -> list[dict]:
    """Everything the three kustomizations create, as one deployment; a fresh copy per test
    so tests that break manifests cannot leak into each other."""
    return copy.deepcopy([obj for objs in renders.values() for obj in objs])


def only(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


# --- pod templates ---------------------------------------------------------------------------


@dataclass
class PodTemplate:
    where: str
    spec: dict
    labels: dict
    namespace: str | None
    runs_platform_code: bool  # Ray nodes and batch Jobs: they need the path contract


def _ray_cluster_pods(where: str, spec: dict, namespace: str | None) -> Iterator[PodTemplate]:
    head = spec["headGroupSpec"]["template"]
    yield PodTemplate(
        f"{where} head", head["spec"], head.get("metadata", {}).get("labels", {}), namespace, True
    )
    for group in spec.get("workerGroupSpecs", []):
        template = group["template"]
        yield PodTemplate(
            f"{where} worker group {group['groupName']}",
            template["spec"],
            template.get("metadata", {}).get("labels", {}),
            namespace,
            True,
        )


def pod_templates(objects: list[dict]) -> Iterator[PodTemplate]:
    for obj in objects:
        kind, meta, spec = obj["kind"], obj["metadata"], obj.get("spec", {})
        where, namespace = f"{kind}/{meta['name']}", meta.get("namespace")
        if kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
            template = spec["template"]
            labels = template.get("metadata", {}).get("labels", {})
            yield PodTemplate(where, template["spec"], labels, namespace, kind == "Job")
        elif kind == "CronJob":
            template = spec["jobTemplate"]["spec"]["template"]
            labels = template.get("metadata", {}).get("labels", {})
            yield PodTemplate(where, template["spec"], labels, namespace, True)
        elif kind == "Pod":
            yield PodTemplate(where, spec, meta.get("labels", {}), namespace, False)
        elif kind == "RayCluster":
            yield from _ray_cluster_pods(where, spec, namespace)
        elif kind == "RayJob":
            if "rayClusterSpec" in spec:
                yield from _ray_cluster_pods(where, spec["rayClusterSpec"], namespace)
            if "submitterPodTemplate" in spec:
                template = spec["submitterPodTemplate"]
                labels = template.get("metadata", {}).get("labels", {})
                yield PodTemplate(f"{where} submitter", template["spec"], labels, namespace, False)


def containers(pod: dict) -> list[dict]:
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


# --- checker: security defaults --------------------------------------------------------------


def _container_security_violations(where: str, container: dict, pod_security: dict) -> list[str]:
    where = f"{where} container {container.get('name', '?')}"
    security = container.get("securityContext") or {}

    def effective(field: str):
        # Container settings override the pod's, as in the kubelet.
        return security.get(field, pod_security.get(field))

    violations = []
    if effective("runAsNonRoot") is not True:
        violations.append(f"{where}: runAsNonRoot is not true")
    if effective("runAsUser") in (None, 0):
        violations.append(f"{where}: runAsUser is not a non-zero uid")
    if security.get("privileged") is True:
        violations.append(f"{where}: privileged")
    if security.get("allowPrivilegeEscalation") is not False:
        violations.append(f"{where}: allowPrivilegeEscalation is not false")
    capabilities = security.get("capabilities") or {}
    if "ALL" not in (capabilities.get("drop") or []):
        violations.append(f"{where}: capabilities do not drop ALL")
    if capabilities.get("add"):
        violations.append(f"{where}: adds capabilities {capabilities['add']}")
    if security.get("readOnlyRootFilesystem") is not True:
        violations.append(f"{where}: root filesystem is writable")
    seccomp = effective("seccompProfile") or {}
    if seccomp.get("type") not in {"RuntimeDefault", "Localhost"}:
        violations.append(f"{where}: no RuntimeDefault seccomp profile")
    resources = container.get("resources") or {}
    for bound in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in (resources.get(bound) or {}):
                violations.append(f"{where}: no {resource} {bound}")
    return violations


def security_violations(objects: list[dict]) -> list[str]:
    violations = []
    for pod in pod_templates(objects):
        pod_security = pod.spec.get("securityContext") or {}
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if pod.spec.get(flag):
                violations.append(f"{pod.where}: {flag}")
        for volume in pod.spec.get("volumes", []):
            if "hostPath" in volume:
                violations.append(f"{pod.where}: hostPath volume {volume['name']}")
        for container in containers(pod.spec):
            violations += _container_security_violations(pod.where, container, pod_security)
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        spec = obj.get("spec", {})
        if obj["kind"] == "Service" and spec.get("type") in EXTERNAL_SERVICE_TYPES:
            violations.append(f"{where}: exposed outside the cluster as {spec['type']}")
        if obj["kind"] == "Ingress":
            violations.append(f"{where}: exposed outside the cluster by an Ingress")
        clusters = {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec")}
        cluster = clusters.get(obj["kind"])
        if cluster:
            head = cluster["headGroupSpec"]
            if head.get("serviceType") in EXTERNAL_SERVICE_TYPES:
                violations.append(f"{where}: head service is {head['serviceType']}")
            if head.get("enableIngress"):
                violations.append(f"{where}: head exposed by an Ingress")
            if cluster.get("enableInTreeAutoscaling"):
                # The operator injects this container into the head pod from these options.
                autoscaler = {"name": "autoscaler", **(cluster.get("autoscalerOptions") or {})}
                head_pod_security = head["template"]["spec"].get("securityContext") or {}
                violations += _container_security_violations(
                    f"{where} autoscaler", autoscaler, head_pod_security
                )
    return violations


# --- checker: Ray cluster shape --------------------------------------------------------------


def _advertised_resources(group: dict) -> dict:
    raw = (group.get("rayStartParams") or {}).get("resources")
    if raw is None:
        return {}
    # The operator passes the value through a shell, hence the extra quoting around the JSON.
    return json.loads(raw.strip().strip("'").strip('"').replace('\\"', '"'))


def _ray_container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]


def _gpus(group: dict) -> tuple[int, int]:
    resources = _ray_container(group).get("resources") or {}
    return tuple(int((resources.get(b) or {}).get(GPU_RESOURCE, 0)) for b in ("requests", "limits"))


def ray_cluster_violations(cluster: dict) -> list[str]:
    spec, violations = cluster["spec"], []
    head = spec["headGroupSpec"]
    if (head.get("rayStartParams") or {}).get("num-cpus") != "0":
        violations.append("head does not set num-cpus 0: trials could be scheduled on it")
    if spec.get("enableInTreeAutoscaling") is not True:
        violations.append("in-tree autoscaling is off")
    groups = spec.get("workerGroupSpecs", [])
    gpu_groups = [g for g in groups if max(_gpus(g)) > 0]
    cpu_groups = [g for g in groups if max(_gpus(g)) == 0]
    if not gpu_groups:
        violations.append("no worker group requests nvidia.com/gpu")
    for group in gpu_groups:
        name = group["groupName"]
        requests, limits = _gpus(group)
        if requests != limits:
            violations.append(f"{name}: nvidia.com/gpu requests {requests} != limits {limits}")
        if group.get("minReplicas") != 0:
            violations.append(f"{name}: GPU group is not scaled from zero (minReplicas)")
        tolerations = group["template"]["spec"].get("tolerations") or []
        if not any(t.get("key") == GPU_RESOURCE for t in tolerations):
            violations.append(f"{name}: no toleration for the {GPU_RESOURCE} taint")
        if TRIAL_DRIVER_RESOURCE in _advertised_resources(group):
            violations.append(f"{name}: GPU group advertises {TRIAL_DRIVER_RESOURCE}")
    if not any(_advertised_resources(g).get(TRIAL_DRIVER_RESOURCE, 0) > 0 for g in cpu_groups):
        violations.append(f"no CPU worker group advertises {TRIAL_DRIVER_RESOURCE}")
    for where, template in [("head", head["template"])] + [
        (g["groupName"], g["template"]) for g in groups
    ]:
        pod = template["spec"]
        memory_volumes = {
            v["name"]
            for v in pod.get("volumes", [])
            if (v.get("emptyDir") or {}).get("medium") == "Memory"
        }
        mounts = pod["containers"][0].get("volumeMounts", [])
        if not any(m["mountPath"] == "/dev/shm" and m["name"] in memory_volumes for m in mounts):
            violations.append(f"{where}: /dev/shm is not an in-memory emptyDir")
    return violations


# --- checker: network policies ---------------------------------------------------------------


def _selects(selector: dict, labels: dict) -> bool:
    if selector.get("matchExpressions"):
        return False  # not needed by our manifests; unsupported means "not shown to admit"
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _in_cluster_peer(peer: dict) -> bool:
    return "ipBlock" not in peer and ("podSelector" in peer or "namespaceSelector" in peer)


@dataclass
class Client:
    """A pod that may want to reach the platform's ports, as NetworkPolicy peers see it."""

    what: str
    labels: dict
    namespace: str
    namespace_labels: dict


# The labels the KubeRay Helm chart puts on the operator pod; the operator polls the head's
# dashboard for the status of RayJobs.
OPERATOR_LABELS = {"app.kubernetes.io/name": "kuberay-operator"}
CLIENT_ACCESS_LABEL = {"mmplatform/client-access": "true"}


def _peer_admits(peer: dict, policy_namespace: str | None, client: Client) -> bool:
    if "ipBlock" in peer:
        return False  # pods are never matched by address here
    if "namespaceSelector" in peer:
        namespace_labels = {"kubernetes.io/metadata.name": client.namespace}
        namespace_ok = _selects(
            peer["namespaceSelector"], namespace_labels | client.namespace_labels
        )
    else:
        namespace_ok = client.namespace == policy_namespace
    return namespace_ok and _selects(peer.get("podSelector") or {}, client.labels)


def _admitted(policies: list[dict], labels: dict, namespace: str, port: int, client: Client):
    """Whether `client` may open `port` on pods with `labels` in `namespace`. Only pods that
    some ingress policy selects are isolated; others admit everything."""
    selecting = [
        p
        for p in policies
        if p["metadata"].get("namespace") == namespace
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and _selects(p["spec"]["podSelector"], labels)
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress") or []:
            ports = rule.get("ports")
            if ports is not None and not any(p.get("port") == port for p in ports):
                continue
            peers = rule.get("from")
            if not peers or any(_peer_admits(peer, namespace, client) for peer in peers):
                return True
    return False


def network_policy_violations(objects: list[dict]) -> list[str]:
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    violations = []
    for policy in policies:
        for rule in policy["spec"].get("ingress") or []:
            peers = rule.get("from") or []
            if not peers or not all(_in_cluster_peer(p) for p in peers):
                name = policy["metadata"]["name"]
                violations.append(f"NetworkPolicy/{name} admits traffic from outside the cluster")

    cluster = only(objects, "RayCluster")
    namespace = cluster["metadata"]["namespace"]
    head_labels = cluster["spec"]["headGroupSpec"]["template"]["metadata"]["labels"]
    aim = only(objects, "Deployment", "mmplatform-aim")
    aim_labels = aim["spec"]["template"]["metadata"]["labels"]
    targets = [(f"Ray {name}", head_labels, port) for name, port in RAY_HEAD_PORTS.items()]
    targets += [
        ("Aim tracking", aim_labels, AIM_TRACKING_PORT),
        ("Aim UI", aim_labels, AIM_UI_PORT),
    ]
    # Unlabelled pods: the RayJob submitter, a notebook, a pod in a team's namespace.
    welcome = [
        Client("a pod of this namespace", {}, namespace, {}),
        Client("a pod of a client-access namespace", {}, "team-a", CLIENT_ACCESS_LABEL),
    ]
    stranger = Client("a pod of another namespace", {}, "elsewhere", {})
    for what, labels, port in targets:
        for client in welcome:
            if not _admitted(policies, labels, namespace, port, client):
                violations.append(f"{client.what} cannot reach {what} ({port})")
        if _admitted(policies, labels, namespace, port, stranger):
            violations.append(f"{stranger.what} can reach {what} ({port})")
    operator = Client("the KubeRay operator", OPERATOR_LABELS, "kuberay-system", {})
    if not _admitted(policies, head_labels, namespace, RAY_HEAD_PORTS["dashboard"], operator):
        violations.append("the KubeRay operator cannot reach the Ray dashboard (8265)")
    for pod in pod_templates(objects):
        isolated = any(
            p["metadata"].get("namespace") == pod.namespace
            and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
            and _selects(p["spec"]["podSelector"], pod.labels)
            for p in policies
        )
        if not isolated:
            violations.append(f"{pod.where}: no ingress policy selects it")
    return violations


# --- checker: the path and tracking contract of mmplatform.paths -------------------------------


def _effective_env(container: dict, objects: list[dict]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            config_map = only(objects, "ConfigMap", source["configMapRef"]["name"])
            prefix = source.get("prefix", "")
            env.update({prefix + k: v for k, v in (config_map.get("data") or {}).items()})
    for variable in container.get("env") or []:
        if "value" in variable:
            env[variable["name"]] = variable["value"]
    return env


def _claim_of(mount: dict, volumes: dict[str, dict]) -> str | None:
    return (volumes.get(mount["name"], {}).get("persistentVolumeClaim") or {}).get("claimName")


def contract_violations(objects: list[dict]) -> list[str]:
    """Every pod that runs platform code sees the same contract env, and each path in it lies
    on a shared ReadWriteMany volume mounted at the same place in every pod."""
    violations = []
    envs: dict[str, dict] = {}
    claim_paths: dict[str, set[str]] = {}
    claims = {o["metadata"]["name"]: o for o in objects if o["kind"] == "PersistentVolumeClaim"}
    for pod in pod_templates(objects):
        volumes = {v["name"]: v for v in pod.spec.get("volumes", [])}
        for container in pod.spec.get("containers", []):
            where = f"{pod.where} container {container['name']}"
            mounts = container.get("volumeMounts") or []
            for mount in mounts:
                claim = _claim_of(mount, volumes)
                if claim:
                    claim_paths.setdefault(claim, set()).add(mount["mountPath"])
            env = _effective_env(container, objects)
            if not pod.runs_platform_code:
                continue
            envs[where] = {k: env.get(k) for k in CONTRACT_ENV_KEYS}
            for key in PATH_ENV_KEYS:
                if env.get(key) is None:
                    violations.append(f"{where}: {key} is not set")
                    continue
                on_shared_volume = False
                for mount in mounts:
                    claim = _claim_of(mount, volumes)
                    modes = claims.get(claim, {}).get("spec", {}).get("accessModes", [])
                    if (
                        claim
                        and "ReadWriteMany" in modes
                        and PurePosixPath(env[key]).is_relative_to(mount["mountPath"])
                    ):
                        on_shared_volume = True
                if not on_shared_volume:
                    violations.append(f"{where}: {key}={env[key]} is not on a mounted RWX volume")
    for job in (o for o in objects if o["kind"] == "RayJob"):
        runtime_env = yaml.safe_load(job["spec"].get("runtimeEnvYAML") or "{}") or {}
        env_vars = runtime_env.get("env_vars") or {}
        envs[f"RayJob/{job['metadata']['name']} runtimeEnvYAML"] = {
            k: env_vars.get(k) for k in CONTRACT_ENV_KEYS
        }
    distinct = {json.dumps(env, sort_keys=True) for env in envs.values()}
    if len(distinct) > 1:
        detail = "; ".join(f"{where}: {env}" for where, env in envs.items())
        violations.append(f"the contract env differs between pods: {detail}")
    for claim, paths in claim_paths.items():
        if len(paths) > 1:
            violations.append(f"claim {claim} is mounted at different paths: {sorted(paths)}")
    return violations


def _command(container: dict) -> list[str]:
    return [*(container.get("command") or []), *(container.get("args") or [])]


def _flag(command: list[str], flag: str) -> str | None:
    return command[command.index(flag) + 1] if flag in command else None


def aim_violations(objects: list[dict]) -> list[str]:
    """MMPLATFORM_AIM_REPO names the Aim Service, whose ports reach `aim server` (tracking) and
    `aim up` (UI) on one pod that alone mounts the RWO repo volume."""
    violations = []
    config_map = only(objects, "ConfigMap", "mmplatform-env")
    url = urlsplit(config_map["data"][AIM_REPO_ENV])
    if url.scheme != "aim":
        violations.append(f"{AIM_REPO_ENV} is not an aim:// URL")
    if url.port != AIM_TRACKING_PORT:
        violations.append(f"{AIM_REPO_ENV} port {url.port} != {AIM_TRACKING_PORT}")
    service_name, *domain = (url.hostname or "").split(".")
    namespace = config_map["metadata"].get("namespace")
    if domain and domain[0] != namespace:
        violations.append(f"{AIM_REPO_ENV} points at namespace {domain[0]}, not {namespace}")
    services = [
        o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == service_name
    ]
    if not services:
        return violations + [f"{AIM_REPO_ENV} host {url.hostname} is no Service in the manifests"]
    service = services[0]
    if service["metadata"].get("namespace") != namespace:
        violations.append(f"Service/{service_name} is not in namespace {namespace}")
    deployments = [
        o
        for o in objects
        if o["kind"] == "Deployment"
        and _selects(
            {"matchLabels": service["spec"].get("selector")},
            o["spec"]["template"]["metadata"].get("labels", {}),
        )
    ]
    if len(deployments) != 1:
        return violations + [
            f"Service/{service_name} selects {len(deployments)} Deployments, not one"
        ]
    deployment = deployments[0]
    pod = deployment["spec"]["template"]["spec"]
    if deployment["spec"].get("replicas", 1) != 1:
        violations.append("the Aim Deployment runs more than one pod on the repo")
    if (deployment["spec"].get("strategy") or {}).get("type") != "Recreate":
        violations.append("the Aim Deployment does not use the Recreate strategy")
    for port, subcommand in ((AIM_TRACKING_PORT, "server"), (AIM_UI_PORT, "up")):
        service_ports = [p for p in service["spec"]["ports"] if p["port"] == port]
        if not service_ports:
            violations.append(f"Service/{service_name} has no port {port}")
            continue
        target = service_ports[0].get("targetPort", port)
        serving = [
            c
            for c in pod["containers"]
            if any(
                target in (p.get("name"), p["containerPort"]) and p["containerPort"] == port
                for p in c.get("ports", [])
            )
        ]
        if not serving:
            violations.append(
                f"Service/{service_name} port {port} reaches no container port {port}"
            )
            continue
        command = _command(serving[0])
        if command[:2] != ["aim", subcommand] or _flag(command, "--port") != str(port):
            violations.append(f"port {port} is not served by `aim {subcommand} --port {port}`")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        repo_mounts = {
            m["mountPath"]
            for m in serving[0].get("volumeMounts", [])
            if "persistentVolumeClaim" in volumes.get(m["name"], {})
        }
        if _flag(command, "--repo") not in repo_mounts:
            violations.append(f"`aim {subcommand}` --repo is not its mounted repo volume")
    repo_claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in pod.get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    claims = {o["metadata"]["name"]: o for o in objects if o["kind"] == "PersistentVolumeClaim"}
    for claim in repo_claims:
        if claims.get(claim, {}).get("spec", {}).get("accessModes") != ["ReadWriteOnce"]:
            violations.append(f"Aim repo claim {claim} is not ReadWriteOnce")
        for other in pod_templates(objects):
            if other.spec is pod:
                continue
            if any(
                (v.get("persistentVolumeClaim") or {}).get("claimName") == claim
                for v in other.spec.get("volumes", [])
            ):
                violations.append(f"{other.where} mounts the Aim repo claim {claim}")
    return violations


# --- pins ------------------------------------------------------------------------------------


def pins() -> dict[str, str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    pinned = {}
    for requirement in project["dependencies"]:
        name, _, version = requirement.partition("==")
        pinned[re.sub(r"\[.*\]", "", name).strip()] = version.strip()
    pinned["python"] = re.search(r">=\s*(3\.\d+)", project["requires-python"]).group(1)
    return pinned


def image_violations(objects: list[dict]) -> list[str]:
    """Every pod runs the one project image, whose tag spells out the pinned stack, and the
    RayCluster declares the pinned Ray version."""
    pinned, violations = pins(), []
    images = {c["image"] for pod in pod_templates(objects) for c in containers(pod.spec)}
    if len(images) != 1:
        violations.append(f"pods run different images: {sorted(images)}")
    for image in images:
        tag = image.rpartition(":")[2]
        for part in (
            f"ray{pinned['ray']}",
            f"torch{pinned['torch']}",
            "cu130",
            f"py{pinned['python']}",
        ):
            if part not in tag.split("-"):
                violations.append(f"image tag {tag} does not carry {part}")
    for cluster in (o for o in objects if o["kind"] == "RayCluster"):
        if cluster["spec"].get("rayVersion") != pinned["ray"]:
            violations.append(
                f"rayVersion {cluster['spec'].get('rayVersion')} != ray pin {pinned['ray']}"
            )
    return violations


# --- tests: rendering and schemas -------------------------------------------------------------


def test_all_kustomizations_render(renders):
    for name, objs in renders.items():
        assert objs, f"{name} renders nothing"
        assert {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"} == {
            "mmplatform"
        }


def test_cluster_apply_starts_no_work(renders):
    # `kubectl apply -k k8s/` must only bring the platform up; jobs are applied explicitly.
    kinds = {o["kind"] for o in renders["cluster"]}
    assert {
        "Namespace",
        "RayCluster",
        "Deployment",
        "Service",
        "NetworkPolicy",
        "PersistentVolumeClaim",
    } <= kinds
    assert not kinds & {"RayJob", "Job", "CronJob"}
    # The build job and the ConfigMap that says which dataset it builds from where.
    assert sorted(o["kind"] for o in renders["shards"]) == ["ConfigMap", "Job"]
    assert [o["kind"] for o in renders["sweep"]] == ["RayJob"]


def test_site_parameters_reach_the_volume_claims(renders):
    params = yaml.safe_load((K8S_DIR / "params.yaml").read_text())["data"]
    claims = {
        o["metadata"]["name"]: o["spec"]
        for o in renders["cluster"]
        if o["kind"] == "PersistentVolumeClaim"
    }
    assert claims["mmplatform-data"]["storageClassName"] == params["rwxStorageClass"]
    assert claims["mmplatform-ray-results"]["storageClassName"] == params["rwxStorageClass"]
    assert claims["mmplatform-aim-repo"]["storageClassName"] == params["rwoStorageClass"]
    # The parameters object is kustomize-local and must never reach the cluster.
    assert not any(o["metadata"]["name"] == "mmplatform-params" for o in renders["cluster"])


def _validate_core(obj: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_core_objects_validate_against_kubernetes_schemas(objects):
    core = [o for o in objects if not o["apiVersion"].startswith("ray.io/")]
    assert core
    for obj in core:
        _validate_core(obj)


@pytest.mark.parametrize(
    "break_it",
    [
        lambda d: d["spec"].update(replicas="one"),
        lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name"),
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(volumeMount=[]),
    ],
    ids=["wrong-type", "missing-required", "unknown-field"],
)
def test_kubernetes_schema_check_rejects_broken_manifests(objects, break_it):
    import kubernetes_validate

    deployment = only(objects, "Deployment", "mmplatform-aim")
    break_it(deployment)
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate_core(deployment)


def _strict(schema):
    """Close every object schema that lists its properties, as the API server's strict field
    validation does; fields marked x-kubernetes-preserve-unknown-fields stay open."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@pytest.fixture(scope="module")
def crd_validators():
    import jsonschema

    if not CRD_DIR.is_dir():
        pytest.skip(f"KubeRay CRD schemas not found at {CRD_DIR}")
    validators = {}
    for crd_file in sorted(CRD_DIR.glob("ray.io_*.yaml")):
        crd = yaml.load(crd_file.read_text(), Loader=_yaml_loader())
        for version in crd["spec"]["versions"]:
            schema = _strict(version["schema"]["openAPIV3Schema"])
            # metadata is validated by the API server's own schema, not the CRD's.
            schema["properties"]["metadata"] = {"type": "object"}
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            validators[key] = jsonschema.Draft4Validator(schema)
    return validators


def _crd_errors(validators, obj: dict) -> list[str]:
    validator = validators.get((obj["apiVersion"], obj["kind"]))
    assert validator is not None, f"no CRD schema for {obj['apiVersion']} {obj['kind']}"
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)
    ]


def test_ray_objects_validate_against_kuberay_crds(objects, crd_validators):
    ray_objects = [o for o in objects if o["apiVersion"].startswith("ray.io/")]
    assert {o["kind"] for o in ray_objects} == {"RayCluster", "RayJob"}
    for obj in ray_objects:
        assert _crd_errors(crd_validators, obj) == [], obj["kind"]


@pytest.mark.parametrize(
    "break_it",
    [
        lambda c: c["spec"]["workerGroupSpecs"][0].update(minReplicas="one"),
        lambda c: c["spec"]["headGroupSpec"].update(rayStartParam={"num-cpus": "0"}),
        lambda c: c["spec"]["autoscalerOptions"].update(upscalingMode="Eager"),
    ],
    ids=["wrong-type", "unknown-field", "bad-enum"],
)
def test_crd_check_rejects_broken_ray_cluster(objects, crd_validators, break_it):
    cluster = only(objects, "RayCluster")
    break_it(cluster)
    assert _crd_errors(crd_validators, cluster)


# --- tests: security defaults ----------------------------------------------------------------


def test_every_container_meets_the_security_defaults(objects):
    assert security_violations(objects) == []


def _worker(objects, group_name):
    cluster = only(objects, "RayCluster")
    return next(g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == group_name)


def _gpu_container(objects):
    return _worker(objects, "gpu")["template"]["spec"]["containers"][0]


def _submitter(objects):
    return only(objects, "RayJob")["spec"]["submitterPodTemplate"]["spec"]


SECURITY_BREAKS: dict[str, Callable[[list[dict]], None]] = {
    "runs as root": lambda o: _gpu_container(o)["securityContext"].update(runAsUser=0),
    "root allowed": lambda o: only(o, "Job")["spec"]["template"]["spec"]["securityContext"].pop(
        "runAsNonRoot"
    ),
    "privileged": lambda o: _submitter(o)["containers"][0]["securityContext"].update(
        privileged=True
    ),
    "escalation": lambda o: only(o, "Deployment")["spec"]["template"]["spec"]["initContainers"][0][
        "securityContext"
    ].pop("allowPrivilegeEscalation"),
    "capabilities": lambda o: _gpu_container(o)["securityContext"]["capabilities"].update(
        drop=["NET_RAW"]
    ),
    "writable root": lambda o: _gpu_container(o)["securityContext"].update(
        readOnlyRootFilesystem=False
    ),
    "no seccomp": lambda o: _worker(o, "trial-drivers")["template"]["spec"]["securityContext"].pop(
        "seccompProfile"
    ),
    "no cpu limit": lambda o: only(o, "Deployment")["spec"]["template"]["spec"]["containers"][1][
        "resources"
    ]["limits"].pop("cpu"),
    "no memory request": lambda o: _gpu_container(o)["resources"]["requests"].pop("memory"),
    "autoscaler unbounded": lambda o: only(o, "RayCluster")["spec"]["autoscalerOptions"].pop(
        "resources"
    ),
    "host path": lambda o: _submitter(o)["volumes"].append(
        {"name": "h", "hostPath": {"path": "/"}}
    ),
    "load balancer": lambda o: (
        only(o, "Service").setdefault("spec", {}).update(type="LoadBalancer")
    ),
    "node port head": lambda o: only(o, "RayCluster")["spec"]["headGroupSpec"].update(
        serviceType="NodePort"
    ),
}


# What the checker must say about each breakage: the right rule fired, not some other one.
SECURITY_FINDINGS = {
    "runs as root": "runAsUser is not a non-zero uid",
    "root allowed": "runAsNonRoot is not true",
    "privileged": "privileged",
    "escalation": "allowPrivilegeEscalation is not false",
    "capabilities": "do not drop ALL",
    "writable root": "root filesystem is writable",
    "no seccomp": "seccomp",
    "no cpu limit": "no cpu limits",
    "no memory request": "no memory requests",
    "autoscaler unbounded": "autoscaler container autoscaler: no cpu requests",
    "host path": "hostPath",
    "load balancer": "LoadBalancer",
    "node port head": "head service is NodePort",
}


@pytest.mark.parametrize("breakage", sorted(SECURITY_BREAKS))
def test_security_check_rejects_broken_manifests(objects, breakage):
    SECURITY_BREAKS[breakage](objects)
    violations = security_violations(objects)
    assert any(SECURITY_FINDINGS[breakage] in v for v in violations), violations


def volume_reference_violations(objects: list[dict]) -> list[str]:
    """Every volumeMount names a volume of its pod. For Ray pods the operator builds the pod,
    so a dangling name would only show up as a pod that never starts."""
    violations = []
    mounting = [(pod, containers(pod.spec)) for pod in pod_templates(objects)]
    for cluster in (o for o in objects if o["kind"] == "RayCluster"):
        # The operator injects the autoscaler into the head pod, with these mounts.
        head = next(pod for pod in pod_templates([cluster]) if pod.where.endswith(" head"))
        autoscaler = {"name": "autoscaler", **(cluster["spec"].get("autoscalerOptions") or {})}
        mounting.append((head, [autoscaler]))
    for pod, pod_containers in mounting:
        volumes = {v["name"] for v in pod.spec.get("volumes", [])}
        for container in pod_containers:
            for mount in container.get("volumeMounts") or []:
                if mount["name"] not in volumes:
                    violations.append(
                        f"{pod.where} container {container['name']}: no volume {mount['name']}"
                    )
    return violations


def test_every_volume_mount_names_a_volume(objects):
    assert volume_reference_violations(objects) == []


def test_volume_check_rejects_a_dangling_mount(objects):
    head = only(objects, "RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]
    head["volumes"] = [v for v in head["volumes"] if v["name"] != "home"]
    violations = volume_reference_violations(objects)
    assert any("autoscaler: no volume home" in v for v in violations), violations
    assert any("ray-head: no volume home" in v for v in violations), violations


# --- tests: Ray cluster shape ----------------------------------------------------------------


def test_ray_cluster_shape(objects):
    assert ray_cluster_violations(only(objects, "RayCluster")) == []


RAY_BREAKS: dict[str, Callable[[dict], None]] = {
    "head computes": lambda c: c["spec"]["headGroupSpec"]["rayStartParams"].pop("num-cpus"),
    "no autoscaler": lambda c: c["spec"].update(enableInTreeAutoscaling=False),
    "gpu not from zero": lambda c: c["spec"]["workerGroupSpecs"][1].update(minReplicas=1),
    "no toleration": lambda c: c["spec"]["workerGroupSpecs"][1]["template"]["spec"].pop(
        "tolerations"
    ),
    "gpu advertises drivers": lambda c: c["spec"]["workerGroupSpecs"][1].update(
        rayStartParams={"resources": '"{\\"trial_driver\\": 1}"'}
    ),
    "no driver group": lambda c: c["spec"]["workerGroupSpecs"][0]["rayStartParams"].pop(
        "resources"
    ),
    "no gpus": lambda c: [
        c["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["resources"][b].pop(
            GPU_RESOURCE
        )
        for b in ("requests", "limits")
    ],
    "gpu limit only": lambda c: c["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][
        0
    ]["resources"]["requests"].pop(GPU_RESOURCE),
    "disk shm": lambda c: c["spec"]["workerGroupSpecs"][1]["template"]["spec"]["volumes"][2][
        "emptyDir"
    ].pop("medium"),
}


RAY_FINDINGS = {
    "head computes": "num-cpus 0",
    "no autoscaler": "autoscaling is off",
    "gpu not from zero": "not scaled from zero",
    "no toleration": "no toleration",
    "gpu advertises drivers": f"GPU group advertises {TRIAL_DRIVER_RESOURCE}",
    "no driver group": f"no CPU worker group advertises {TRIAL_DRIVER_RESOURCE}",
    "no gpus": "no worker group requests nvidia.com/gpu",
    "gpu limit only": "requests 0 != limits 1",
    "disk shm": "/dev/shm is not an in-memory emptyDir",
}


@pytest.mark.parametrize("breakage", sorted(RAY_BREAKS))
def test_ray_cluster_check_rejects_broken_cluster(objects, breakage):
    cluster = only(objects, "RayCluster")
    assert [g["groupName"] for g in cluster["spec"]["workerGroupSpecs"]] == ["trial-drivers", "gpu"]
    RAY_BREAKS[breakage](cluster)
    violations = ray_cluster_violations(cluster)
    assert any(RAY_FINDINGS[breakage] in v for v in violations), violations


def test_trial_driver_resource_parsing_reads_the_operator_quoting(objects):
    drivers = _worker(objects, "trial-drivers")
    assert _advertised_resources(drivers)[TRIAL_DRIVER_RESOURCE] > 0


# --- tests: network policies -----------------------------------------------------------------


def test_network_policies_admit_only_in_cluster_clients(objects):
    assert network_policy_violations(objects) == []


def _policy(objects, name):
    return only(objects, "NetworkPolicy", name)["spec"]


NETWORK_BREAKS: dict[str, Callable[[list[dict]], None]] = {
    "dashboard port missing": lambda o: _policy(o, "ray-head-clients")["ingress"][0]["ports"].pop(
        0
    ),
    "aim ui port missing": lambda o: _policy(o, "aim-clients")["ingress"][0]["ports"].pop(1),
    "open to the world": lambda o: _policy(o, "aim-clients")["ingress"][0].pop("from"),
    "ip block": lambda o: _policy(o, "ray-head-clients")["ingress"][0]["from"].append(
        {"ipBlock": {"cidr": "0.0.0.0/0"}}
    ),
    "head not selected": lambda o: _policy(o, "ray-head-clients")["podSelector"][
        "matchLabels"
    ].update({"mmplatform/ray-node": "something-else"}),
    "no default deny": lambda o: o.remove(only(o, "NetworkPolicy", "default-deny-ingress")),
    "any namespace": lambda o: _policy(o, "aim-clients")["ingress"][0]["from"][1].update(
        namespaceSelector={}
    ),
    "operator shut out": lambda o: _policy(o, "ray-head-clients")["ingress"].pop(1),
}


NETWORK_FINDINGS = {
    "dashboard port missing": "a pod of this namespace cannot reach Ray dashboard (8265)",
    "aim ui port missing": f"client-access namespace cannot reach Aim UI ({AIM_UI_PORT})",
    "open to the world": "aim-clients admits traffic from outside the cluster",
    "ip block": "ray-head-clients admits traffic from outside the cluster",
    "head not selected": "a pod of this namespace cannot reach Ray gcs (6379)",
    "no default deny": "Job/build-shards: no ingress policy selects it",
    "any namespace": "a pod of another namespace can reach Aim tracking",
    "operator shut out": "the KubeRay operator cannot reach the Ray dashboard",
}


@pytest.mark.parametrize("breakage", sorted(NETWORK_BREAKS))
def test_network_policy_check_rejects_broken_policies(objects, breakage):
    NETWORK_BREAKS[breakage](objects)
    violations = network_policy_violations(objects)
    assert any(NETWORK_FINDINGS[breakage] in v for v in violations), violations


# --- tests: agreement with mmplatform.paths, the sweep and the pins ---------------------------


def test_contract_env_names_are_those_mmplatform_paths_reads(objects):
    config_map = only(objects, "ConfigMap", "mmplatform-env")
    assert set(config_map["data"]) == set(CONTRACT_ENV_KEYS)
    data = config_map["data"]
    assert PurePosixPath(data[DATASETS_DIR_ENV]).is_relative_to(data[DATA_ROOT_ENV])


def test_max_gpus_is_what_the_gpu_group_can_scale_to(objects):
    cluster = only(objects, "RayCluster")
    gpu_group = next(g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu")
    per_pod = int(gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"][GPU_RESOURCE])
    configured = only(objects, "ConfigMap", "mmplatform-env")["data"][CLUSTER_MAX_GPUS_ENV]
    assert float(configured) == gpu_group["maxReplicas"] * per_pod


def test_paths_and_env_agree_across_pods(objects):
    assert contract_violations(objects) == []


CONTRACT_BREAKS: dict[str, Callable[[list[dict]], None]] = {
    "worker overrides env": lambda o: (
        _gpu_container(o)
        .setdefault("env", [])
        .append({"name": DATASETS_DIR_ENV, "value": "/somewhere/else"})
    ),
    "job without env": lambda o: only(o, "Job")["spec"]["template"]["spec"]["containers"][0].pop(
        "envFrom"
    ),
    "results not mounted": lambda o: _gpu_container(o).update(
        volumeMounts=[m for m in _gpu_container(o)["volumeMounts"] if m["name"] != "ray-results"]
    ),
    "data mounted elsewhere": lambda o: only(o, "Job")["spec"]["template"]["spec"]["containers"][0][
        "volumeMounts"
    ][0].update(mountPath="/data"),
    "rayjob env drifts": lambda o: only(o, "RayJob")["spec"].update(
        runtimeEnvYAML=only(o, "RayJob")["spec"]["runtimeEnvYAML"].replace("53800", "53801")
    ),
    "results not shared": lambda o: only(o, "PersistentVolumeClaim", "mmplatform-ray-results")[
        "spec"
    ].update(accessModes=["ReadWriteOnce"]),
}


CONTRACT_FINDINGS = {
    "worker overrides env": "the contract env differs between pods",
    "job without env": f"build-shards: {DATASETS_DIR_ENV} is not set",
    "results not mounted": f"gpu container ray-worker: {RESULTS_DIR_ENV}",
    "data mounted elsewhere": "claim mmplatform-data is mounted at different paths",
    "rayjob env drifts": "the contract env differs between pods",
    "results not shared": f"head container ray-head: {RESULTS_DIR_ENV}",
}


@pytest.mark.parametrize("breakage", sorted(CONTRACT_BREAKS))
def test_contract_check_rejects_broken_manifests(objects, breakage):
    CONTRACT_BREAKS[breakage](objects)
    violations = contract_violations(objects)
    assert any(CONTRACT_FINDINGS[breakage] in v for v in violations), violations


def test_aim_url_reaches_the_aim_server(objects):
    assert aim_violations(objects) == []


AIM_BREAKS: dict[str, Callable[[list[dict]], None]] = {
    "wrong port": lambda o: only(o, "ConfigMap", "mmplatform-env")["data"].update(
        {AIM_REPO_ENV: f"aim://mmplatform-aim:{AIM_UI_PORT}"}
    ),
    "unknown host": lambda o: only(o, "ConfigMap", "mmplatform-env")["data"].update(
        {AIM_REPO_ENV: f"aim://aim-server:{AIM_TRACKING_PORT}"}
    ),
    "other namespace": lambda o: only(o, "ConfigMap", "mmplatform-env")["data"].update(
        {AIM_REPO_ENV: f"aim://mmplatform-aim.default.svc:{AIM_TRACKING_PORT}"}
    ),
    "rolling update": lambda o: only(o, "Deployment")["spec"].update(
        strategy={"type": "RollingUpdate"}
    ),
    "two replicas": lambda o: only(o, "Deployment")["spec"].update(replicas=2),
    "server on ui port": lambda o: only(o, "Deployment")["spec"]["template"]["spec"]["containers"][
        0
    ].update(command=["aim", "server", "--repo", "/aim", "--port", str(AIM_UI_PORT)]),
    "repo on nfs": lambda o: only(o, "PersistentVolumeClaim", "mmplatform-aim-repo")["spec"].update(
        accessModes=["ReadWriteMany"]
    ),
    "repo shared with ray": lambda o: _worker(o, "gpu")["template"]["spec"]["volumes"].append(
        {"name": "aim", "persistentVolumeClaim": {"claimName": "mmplatform-aim-repo"}}
    ),
}


AIM_FINDINGS = {
    "wrong port": f"port {AIM_UI_PORT} != {AIM_TRACKING_PORT}",
    "unknown host": "is no Service",
    "other namespace": "points at namespace default",
    "rolling update": "Recreate",
    "two replicas": "more than one pod",
    "server on ui port": f"not served by `aim server --port {AIM_TRACKING_PORT}`",
    "repo on nfs": "is not ReadWriteOnce",
    "repo shared with ray": "worker group gpu mounts the Aim repo claim",
}


@pytest.mark.parametrize("breakage", sorted(AIM_BREAKS))
def test_aim_check_rejects_broken_manifests(objects, breakage):
    AIM_BREAKS[breakage](objects)
    violations = aim_violations(objects)
    assert any(AIM_FINDINGS[breakage] in v for v in violations), violations


def test_aim_fqdn_in_the_right_namespace_is_accepted(objects):
    only(objects, "ConfigMap", "mmplatform-env")["data"][AIM_REPO_ENV] = (
        f"aim://mmplatform-aim.mmplatform.svc.cluster.local:{AIM_TRACKING_PORT}"
    )
    assert aim_violations(objects) == []


def test_sweep_rayjob_runs_the_cluster_profile_on_the_platform_cluster(objects):
    job, cluster = only(objects, "RayJob"), only(objects, "RayCluster")
    entrypoint = job["spec"]["entrypoint"]
    assert SWEEP_COMMAND in entrypoint
    assert re.search(r"--workers-per-trial \d+", entrypoint)
    assert re.search(r"--gpus-per-trial \d+", entrypoint)
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert job["metadata"]["namespace"] == cluster["metadata"]["namespace"]
    # A RayJob on a selected cluster must not tear that cluster down.
    assert not job["spec"].get("shutdownAfterJobFinishes")
    # The script path is where the image puts the sweeps folder.
    script = PurePosixPath(next(w for w in entrypoint.split() if w.endswith("polymnist_fmean.py")))
    copy_line = re.search(r"^COPY\s+sweeps\s+(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert copy_line, "the Dockerfile does not copy sweeps/ into the image"
    assert script == PurePosixPath(copy_line.group(1)) / "polymnist_fmean.py"


def test_shard_job_builds_the_configured_dataset_into_the_datasets_dir(objects):
    from data_pipelines.datasets import registered_datasets

    container = only(objects, "Job")["spec"]["template"]["spec"]["containers"][0]
    command = _command(container)
    env = _effective_env(container, objects)
    # The kubelet expands $(VAR) from the container's env (envFrom included).
    expanded = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], word) for word in command]
    assert expanded[:2] == ["mmplatform", "data"] and expanded[2] in registered_datasets()
    assert _flag(command, "--out") == f"$({DATASETS_DIR_ENV})/$(DATASET)"
    assert DATASETS_DIR_ENV in env
    # The default builds PolyMNIST offline: an empty source, which the CLI reads as none.
    assert (env["DATASET"], env["DATASET_SOURCE"]) == ("polymnist", "")
    completed = subprocess.run([sys.executable, "-m", "mmplatform", "data", "celeba", "--source", "", "--out", "/x"],
                               capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert completed.returncode == 2 and "--source: celeba is built from its official files" in completed.stderr


def test_images_and_ray_version_match_the_pins(objects):
    assert image_violations(objects) == []


@pytest.mark.parametrize(
    "break_it",
    [
        lambda o: only(o, "RayCluster")["spec"].update(rayVersion="2.59.0"),
        lambda o: _gpu_container(o).update(image="rayproject/ray:2.60.0-py311-gpu"),
        lambda o: [
            c.update(image=c["image"].replace("cu130", "cu128"))
            for pod in pod_templates(o)
            for c in containers(pod.spec)
        ],
    ],
    ids=["ray-version", "foreign-image", "cuda-build"],
)
def test_image_check_rejects_drift(objects, break_it):
    break_it(objects)
    assert image_violations(objects)


def test_dockerfile_builds_the_pinned_stack_as_non_root(objects):
    dockerfile, pinned = DOCKERFILE.read_text(), pins()
    assert re.search(rf"^FROM python:{re.escape(pinned['python'])}[-.]", dockerfile, re.MULTILINE)
    # Versions come from pyproject.toml alone; the build asserts the CUDA 13 (cu130) build.
    assert not re.search(r"\b(torch|torchvision|ray)\S*==", dockerfile), (
        "pins repeated in the image"
    )
    assert "torch.version.cuda.startswith('13.')" in dockerfile
    assert re.search(r"^RUN pip install (--no-deps )?/src\b", dockerfile, re.MULTILINE), (
        "the project is not installed"
    )
    user = re.findall(r"^USER\s+(\d+)(?::(\d+))?", dockerfile, re.MULTILINE)
    assert user and user[-1][0] != "0", "the image does not end as a numeric non-root user"
    # The manifests run as the image's user, and mount $HOME where the image puts it.
    home = re.search(r"^ENV HOME=(\S+)", dockerfile, re.MULTILINE).group(1)
    for pod in pod_templates(objects):
        assert pod.spec["securityContext"]["runAsUser"] == int(user[-1][0]), pod.where
        for container in pod.spec["containers"]:
            assert home in {m["mountPath"] for m in container.get("volumeMounts", [])}, pod.where


def test_dockerignore_keeps_generated_state_out_of_the_build_context():
    ignored = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()}
    assert {".venv", "data", "ray_results", ".aim"} <= ignored
