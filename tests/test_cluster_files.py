"""The cluster definitions under cluster/: launcher files valid against the schema inside the ray package,
KubeRay manifests that use only the fields of the RayCluster and RayJob CRDs (ray.io/v1)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"

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
}
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


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_files_validate_against_rays_schema(name):
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cluster = yaml.safe_load((CLUSTER / name).read_text())
    jsonschema.validate(cluster, schema)
    # the schema allows any node type name: the head must be one of them
    assert cluster["head_node_type"] in cluster["available_node_types"]


def check_cluster_spec(spec: dict) -> None:
    assert set(spec) <= RAY_CLUSTER_SPEC, set(spec) - RAY_CLUSTER_SPEC
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
