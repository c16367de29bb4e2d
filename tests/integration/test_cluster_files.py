"""The cluster definitions under cluster/: launcher files valid against the schema inside the ray package,
KubeRay manifests that use only the fields of the RayCluster and RayJob CRDs (ray.io/v1); every cluster
with Ray's token authentication, nodes given only the files and secrets they need."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
LAUNCHERS = ["aws.yaml", "gcp.yaml"]
# What a launcher may copy to its nodes (local side of file_mounts): the package, what pip needs to install
# it, the job files, and the cluster's Ray token at its default path.
NODE_FILES = {"./distkd", "./pyproject.toml", "./README.md", "./jobs"}
RAY_TOKEN = "~/.ray/auth_token"
S3_KEYS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"}

# Field names of the KubeRay v1 CRDs (ray-operator/apis/ray/v1: RayClusterSpec, HeadGroupSpec,
# WorkerGroupSpec, RayJobSpec) that these manifests may use.
RAY_CLUSTER_SPEC = {
    "rayVersion",
    "enableInTreeAutoscaling",
    "autoscalerOptions",
    "headGroupSpec",
    "workerGroupSpecs",
    "headServiceAnnotations",
    "suspend",
    "gcsFaultToleranceOptions",
    "managedBy",
    "authOptions",
}
AUTH_OPTIONS = {"mode", "secretName", "enableK8sTokenAuth"}
HEAD_GROUP = {"rayStartParams", "template", "serviceType", "headService", "enableIngress"}
WORKER_GROUP = {
    "groupName",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "rayStartParams",
    "template",
    "scaleStrategy",
    "numOfHosts",
    "suspend",
    "idleTimeoutSeconds",
}
RAY_JOB_SPEC = {
    "entrypoint",
    "runtimeEnvYAML",
    "rayClusterSpec",
    "clusterSelector",
    "shutdownAfterJobFinishes",
    "ttlSecondsAfterFinished",
    "submissionMode",
    "activeDeadlineSeconds",
    "backoffLimit",
    "jobId",
    "metadata",
    "entrypointNumCpus",
    "entrypointNumGpus",
    "entrypointResources",
    "submitterPodTemplate",
    "suspend",
    "managedBy",
    "deletionStrategy",
    "submitterConfig",
}


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_files_validate_against_rays_schema(name):
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cluster = yaml.safe_load((CLUSTER / name).read_text())
    jsonschema.validate(cluster, schema)
    # the schema allows any node type name: the head must be one of them
    assert cluster["head_node_type"] in cluster["available_node_types"]


def check_cluster_spec(spec: dict) -> None:
    assert set(spec) <= RAY_CLUSTER_SPEC, set(spec) - RAY_CLUSTER_SPEC
    assert set(spec.get("authOptions", {})) <= AUTH_OPTIONS
    assert set(spec["headGroupSpec"]) <= HEAD_GROUP
    assert spec["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    for group in spec["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP, set(group) - WORKER_GROUP
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
    assert all(isinstance(v, str) for v in spec["headGroupSpec"]["rayStartParams"].values())


def test_kuberay_manifests_name_only_crd_fields():
    cluster = yaml.safe_load((CLUSTER / "kuberay.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    check_cluster_spec(cluster["spec"])
    job = yaml.safe_load((CLUSTER / "kuberay-job.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert set(job["spec"]) <= RAY_JOB_SPEC, set(job["spec"]) - RAY_JOB_SPEC
    assert job["spec"]["submissionMode"] in {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
    assert job["spec"]["entrypoint"].startswith("python -m distkd pipeline ")
    check_cluster_spec(job["spec"]["rayClusterSpec"])


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_nodes_start_ray_with_token_auth_and_the_dashboard_on_loopback(name):
    cluster = load(name)
    # without these keys the launcher's defaults apply: no token, the dashboard on 0.0.0.0
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cluster[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token ray start" in c for c in starts), (key, starts)
    [head] = [c for c in cluster["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    # file_mounts go to every node: each gets the token at Ray's default path
    assert cluster["file_mounts"]["/home/ubuntu/.ray/auth_token"] == RAY_TOKEN


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_nodes_get_only_the_files_a_job_needs(name):
    mounts = load(name)["file_mounts"]
    local = set(mounts.values()) - {RAY_TOKEN}
    assert local <= NODE_FILES, local - NODE_FILES  # never "." (the store, .venv, stray secrets)
    assert all((ROOT / path).exists() for path in local)


def containers(spec: dict) -> list[dict]:
    """The containers of a RayCluster spec's pods: the head's and every worker group's."""
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for group in groups for c in group["template"]["spec"]["containers"]]


def ray_cluster_specs() -> list[dict]:
    return [load("kuberay.yaml")["spec"], load("kuberay-job.yaml")["spec"]["rayClusterSpec"]]


@pytest.mark.parametrize("spec", ray_cluster_specs(), ids=["kuberay.yaml", "kuberay-job.yaml"])
def test_kuberay_clusters_have_token_auth(spec):
    assert spec["authOptions"]["mode"] == "token"
    assert Version(spec["rayVersion"]) >= Version("2.52")  # Ray's first release with token authentication
    for container in containers(spec):
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env.get("RAY_AUTH_MODE", "token") == "token"  # not turned off again in a container


@pytest.mark.parametrize("spec", ray_cluster_specs(), ids=["kuberay.yaml", "kuberay-job.yaml"])
def test_kuberay_pods_get_only_the_s3_keys_and_no_whole_secret(spec):
    for container in containers(spec):
        assert "envFrom" not in container  # a whole Secret: every key in it, whatever it holds
        referenced = {e["name"] for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
        assert referenced <= S3_KEYS, referenced - S3_KEYS
        assert all(
            e["valueFrom"]["secretKeyRef"]["key"] == e["name"] for e in container.get("env", []) if "valueFrom" in e
        )
        assert not container.get("volumeMounts"), "no Secret mounted as files"
