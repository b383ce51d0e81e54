"""cluster.yaml is a valid `ray up` config: checked offline against Ray's own autoscaler
schema (ray/autoscaler/ray-schema.json, the check `ray up` runs), plus raybench's rules."""

from __future__ import annotations

import copy
import socket
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster.yaml"
GPU_TYPES = ("gpu_1x", "gpu_4x")


@pytest.fixture
def cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


@pytest.fixture
def offline(monkeypatch):
    """Any network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("cluster.yaml validation tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_valid_against_ray_schema_offline(cluster, offline):
    prepared = prepare_config(copy.deepcopy(cluster))  # fills defaults as `ray up` does
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"


def test_schema_check_is_not_vacuous(cluster, offline):
    for broken in ({"max_workerz": 3}, {"idle_timeout_minutes": "soon"}):
        with pytest.raises(jsonschema.ValidationError):
            validate_config(prepare_config({**copy.deepcopy(cluster), **broken}))


def test_provider_auth_and_head(cluster):
    assert cluster["cluster_name"] == "raybench"
    assert cluster["provider"] == {"type": "aws", "region": "us-east-1",
                                   "cache_stopped_nodes": False}
    assert cluster["auth"]["ssh_user"] == "ubuntu"
    head = cluster["available_node_types"][cluster["head_node_type"]]
    assert head["node_config"]["InstanceType"] == "m5.2xlarge"
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] == 8
    assert cluster["head_start_ray_commands"] and cluster["worker_start_ray_commands"]
    assert cluster["idle_timeout_minutes"] > 0


def test_gpu_workers_scale_from_zero_to_a_maximum(cluster):
    types = cluster["available_node_types"]
    expected = {"gpu_1x": ("g5.xlarge", 1, 8), "gpu_4x": ("g5.12xlarge", 4, 2)}
    for name in GPU_TYPES:
        node = types[name]
        instance, gpus, most = expected[name]
        assert node["node_config"]["InstanceType"] == instance
        assert node["resources"]["GPU"] == gpus
        assert node["min_workers"] == 0 and node["max_workers"] == most
    assert sum(types[n]["max_workers"] for n in GPU_TYPES) <= cluster["max_workers"]


def test_file_mount_sources_exist_and_carry_the_studies(cluster):
    mounts = cluster["file_mounts"]
    assert mounts
    for remote, local in mounts.items():
        assert remote.startswith("/home/ubuntu/")
        assert (ROOT / local).exists(), f"file mount source {local} is not in the repository"
    assert any((ROOT / local / "studies").is_dir() or Path(local).name == "studies"
               for local in mounts.values())


def test_setup_installs_raybench_with_the_local_ray_version(cluster):
    commands = " ".join(cluster["setup_commands"])
    assert "pip install -e /home/ubuntu/raybench" in commands
    assert f"=={ray.__version__}" in commands


def test_every_node_mounts_the_shared_study_storage(cluster):
    """Trials on workers write to the study directory: it must be the same filesystem everywhere."""
    mount = cluster["setup_commands"][0]  # setup_commands run on the head and on every worker
    assert "mount -t nfs4" in mount and "/mnt/efs" in mount
    assert "/mnt/efs" in CLUSTER.read_text().split("cluster_name")[0]  # the header says so
