"""python -m wsol_fast.launch [--nproc-per-node N] [--max-restarts N] [--port P] [--dry-run] -- TRAIN_FLAGS

torchrun on every node of a SLURM job, its rendezvous taken from SLURM's environment: run it once per
node (`srun --ntasks-per-node=1 python -m wsol_fast.launch -- ...`, scripts/slurm/train.sbatch), and it
replaces itself with

    python -m torch.distributed.run --nnodes $SLURM_NNODES --nproc-per-node N --max-restarts N
        --shutdown-timeout 120 --rdzv-backend c10d --rdzv-endpoint FIRST_HOST:PORT --rdzv-id $SLURM_JOB_ID
        --rdzv-conf is_host=1 (node 0) / is_host=0 (the others)  -m wsol_fast.train TRAIN_FLAGS

FIRST_HOST is the first host of SLURM_JOB_NODELIST (node 0 hosts the rendezvous store: is_host from
SLURM_NODEID, not from guessing by host name), PORT is 20000 + SLURM_JOB_ID mod 20000 unless --port
gives one (two jobs that share a first node do not collide), and the job id names the rendezvous (and,
without --output, the run folder: elastic.run_name). Everything else (the restarts, the c10d rendezvous,
the workers) is PyTorch's own torchrun; docs/distributed.md.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

from . import errors
from .flags import nonneg_int, positive_int
from .errors import UserError

NEEDED = ("SLURM_JOB_ID", "SLURM_NNODES", "SLURM_NODEID", "SLURM_JOB_NODELIST")


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: "gpu[03-05,9],cpu1" -> "gpu03" (what `scontrol show hostnames
    | head -1` prints, without scontrol)."""
    found = re.match(r"\s*([^,\[]+)(?:\[([^\]]+)\])?([^,]*)", nodelist or "")
    if not found or not found.group(1).strip():
        raise UserError(f"SLURM_JOB_NODELIST={nodelist!r}: no host in it")
    prefix, ranges, suffix = found.groups()
    return prefix + (re.split(r"[-,]", ranges)[0] if ranges else "") + suffix


def rendezvous(env, port: int | None = None) -> dict:
    """The rendezvous of this node of a SLURM job, from its environment `env`."""
    missing = [k for k in NEEDED if not env.get(k) and not (k == "SLURM_JOB_NODELIST" and env.get("SLURM_NODELIST"))]
    if missing:
        raise UserError(f"not inside a SLURM job ({', '.join(missing)} not set): run it under srun, or call "
                        "torchrun yourself (docs/distributed.md)")
    job = env["SLURM_JOB_ID"]
    if not job.isdigit():
        raise UserError(f"SLURM_JOB_ID={job!r} is not a job number")
    return {"host": first_host(env.get("SLURM_JOB_NODELIST") or env["SLURM_NODELIST"]),
            "port": port or 20000 + int(job) % 20000, "id": job, "nnodes": int(env["SLURM_NNODES"]),
            "node": int(env["SLURM_NODEID"])}


def torchrun_command(env, nproc_per_node: str, max_restarts: int, port: int | None, module: str,
                     flags: list[str], shutdown_timeout: int = 120) -> list[str]:
    """The torchrun command line (argv) this node runs."""
    r = rendezvous(env, port)
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(r["nnodes"]),
            "--nproc-per-node", nproc_per_node, "--max-restarts", str(max_restarts),
            "--shutdown-timeout", str(shutdown_timeout), "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"{r['host']}:{r['port']}", "--rdzv-id", r["id"],
            "--rdzv-conf", f"is_host={int(r['node'] == 0)}", "-m", module, *flags]


def default_nproc(env) -> str:
    """Workers per node: SLURM_GPUS_ON_NODE, else one per visible GPU (torchrun's "gpu"), else 1 (CPU)."""
    if env.get("SLURM_GPUS_ON_NODE", "").isdigit():
        return env["SLURM_GPUS_ON_NODE"]
    import torch

    return "gpu" if torch.cuda.is_available() else "1"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m wsol_fast.launch", description=__doc__.split("\n\n")[0])
    p.add_argument("--nproc-per-node", default=None,
                   help="workers on this node (default: SLURM_GPUS_ON_NODE, else one per GPU, else 1)")
    p.add_argument("--max-restarts", type=nonneg_int, default=3,
                   help="times torchrun restarts the group after a worker fails (default 3)")
    p.add_argument("--shutdown-timeout", type=positive_int, default=120, metavar="SECONDS",
                   help="after a SIGTERM, how long torchrun lets the workers finish their step and rank 0 write "
                        "last.pt before it SIGKILLs them (default 120; torchrun's own default is 30)")
    p.add_argument("--port", type=positive_int, default=None,
                   help="the rendezvous port on the first node (default 20000 + SLURM_JOB_ID mod 20000)")
    p.add_argument("--module", default="wsol_fast.train", help="what each worker runs (default wsol_fast.train)")
    p.add_argument("--dry-run", action="store_true", help="print the torchrun command instead of running it")
    p.add_argument("--debug", action="store_true", help="show the traceback of an expected error too")
    p.add_argument("flags", nargs=argparse.REMAINDER, help="-- then the flags of the module")
    a = p.parse_args(argv)
    flags = a.flags[1:] if a.flags[:1] == ["--"] else a.flags

    def run() -> int:
        cmd = torchrun_command(os.environ, a.nproc_per_node or default_nproc(os.environ), a.max_restarts, a.port,
                               a.module, flags, a.shutdown_timeout)
        if a.dry_run:
            import shlex

            print(shlex.join(cmd))
            return 0
        sys.stdout.flush()
        os.execv(cmd[0], cmd)   # torchrun itself receives the scheduler's signals (SIGTERM before the limit)

    return errors.run_command(run, a.debug)


if __name__ == "__main__":
    sys.exit(main())
