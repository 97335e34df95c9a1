"""``python -m trainer.vertex_launch NPROC TRAINER_FLAGS...``: one torchrun per Vertex AI machine.

The container command of multi-GPU and multi-node Vertex AI jobs (``bin/submit-vertex.sh``).
Node rank and master come from CLUSTER_SPEC when Vertex AI sets it, else from the per-machine
MASTER_ADDR / MASTER_PORT / WORLD_SIZE (machines) / RANK (machine rank) variables. One machine
gives a standalone torchrun. ``torch.distributed.run`` then starts NPROC trainer processes.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping, Sequence

from trainer.distributed import env_from_cluster_spec

__all__ = ["torchrun_command", "main"]


def torchrun_command(nproc: str, flags: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """The ``python -m torch.distributed.run ... -m trainer.task FLAGS`` command for this machine."""
    if env.get("CLUSTER_SPEC"):
        node = env_from_cluster_spec(env["CLUSTER_SPEC"])
    else:
        defaults = (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "2222"), ("WORLD_SIZE", "1"), ("RANK", "0"))
        node = {key: env.get(key, default) for key, default in defaults}
    if int(node["WORLD_SIZE"]) > 1:
        topology = [f"--nnodes={node['WORLD_SIZE']}", f"--node_rank={node['RANK']}",
                    f"--master_addr={node['MASTER_ADDR']}", f"--master_port={node['MASTER_PORT']}"]
    else:
        topology = ["--standalone", "--nnodes=1"]
    return [sys.executable, "-m", "torch.distributed.run", *topology, f"--nproc_per_node={nproc}",
            "-m", "trainer.task", *flags]


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or not args[0].isdigit():
        raise SystemExit("usage: python -m trainer.vertex_launch NPROC_PER_MACHINE [trainer flags ...]")
    command = torchrun_command(args[0], args[1:], os.environ)
    print("spanwise launcher: torchrun " + " ".join(command[3:]), flush=True)
    os.execv(sys.executable, command)


if __name__ == "__main__":
    main()
