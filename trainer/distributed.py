"""Process group set-up for torchrun and Vertex AI, NCCL on GPUs and gloo on CPUs.

Under torchrun (and Vertex AI's PyTorch set-up) the environment already holds MASTER_ADDR,
MASTER_PORT, WORLD_SIZE and RANK. A Vertex AI custom container started without them still gets
CLUSTER_SPEC (JSON: the hosts of each worker pool and this replica's pool and index); one process
per replica is then derived from it: workerpool0 replica 0 is rank 0 and the master.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistContext", "init_distributed", "shutdown_distributed", "env_from_cluster_spec"]

_TRAINING_POOLS = ("workerpool0", "workerpool1")  # chief + workers; pool 2 (reduction server) and 3 (evaluators) excluded


def env_from_cluster_spec(spec_json: str) -> dict[str, str]:
    """MASTER_ADDR/MASTER_PORT/WORLD_SIZE/RANK for this replica from Vertex AI's CLUSTER_SPEC."""
    try:
        spec = json.loads(spec_json)
        cluster, task = spec["cluster"], spec["task"]
        hosts = [host for pool in _TRAINING_POOLS for host in cluster.get(pool, [])]
        rank = sum(len(cluster.get(pool, [])) for pool in _TRAINING_POOLS[: _TRAINING_POOLS.index(task["type"])]) + int(task["index"])
        master_host, _, master_port = cluster["workerpool0"][0].rpartition(":")
    except (KeyError, ValueError, IndexError, TypeError) as error:
        raise ValueError(f"CLUSTER_SPEC is not a Vertex AI cluster spec this trainer understands: {error!r}") from error
    return {"MASTER_ADDR": master_host, "MASTER_PORT": master_port or "2222", "WORLD_SIZE": str(len(hosts)), "RANK": str(rank)}


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(use_cpu: bool = False) -> DistContext:
    """Join the process group that torchrun or Vertex AI describes in the environment (if any)."""
    if "WORLD_SIZE" not in os.environ and os.environ.get("CLUSTER_SPEC"):
        for key, value in env_from_cluster_spec(os.environ["CLUSTER_SPEC"]).items():
            os.environ.setdefault(key, value)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and not use_cpu
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo", device_id=device if cuda else None)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
