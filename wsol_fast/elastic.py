"""Training past one machine (issue 26): what a run does under torchrun's elastic agent. The engine is
PyTorch's own (torchrun, torch.distributed.elastic, the c10d rendezvous); this module only makes a run
fit it. docs/distributed.md says how to launch, and what a restart or a preemption loses at most.

- A restarted group continues its run. With `torchrun --max-restarts N`, a worker that dies makes torchrun
  stop the group and start it again with the same command line (TORCHELASTIC_RESTART_COUNT > 0): the run
  continues from RUN/last.pt when there is one (`resume_after_restart`), not from epoch 0. Without
  --output, every rank and every attempt names the run folder after torchrun's run id (`run_name`), so a
  restart finds it.
- Step checkpoints. `--checkpoint-every STEPS` writes RUN/last.pt (rank 0, atomically) every STEPS steps
  of an epoch, so a restart loses at most that many steps (plus the one in flight); the loaders resume
  mid-epoch exactly (data/base.py, `set_epoch(epoch, start)`).
- One stop for every rank. SIGTERM (a scheduler's preemption; torchrun passes it on to its workers) or
  SIGINT reaches the ranks at different moments: the ranks agree on it after each step (`StepHooks`: one
  all-reduce of the signal number, every step on the CPU, every --log-every steps on CUDA, where reading it
  back is a host sync), so every rank stops after the same step and rank 0 writes that step's last.pt.
"""
from __future__ import annotations

import os
import signal
import sys

import torch
import torch.distributed as dist

# Test hooks (tests/test_elastic.py), read from the environment of the workers that torchrun starts:
# KILL_AT "RANK:EPOCH:STEP" makes that rank SIGKILL itself after that step of that epoch (1-based), on the
# first attempt only; STEP_LOG "PREFIX" makes every rank append "ATTEMPT EPOCH STEP" to PREFIX.rankN after
# each step.
KILL_AT = "WSOL_FAST_TEST_KILL_AT"
STEP_LOG = "WSOL_FAST_TEST_STEP_LOG"


def restart_count() -> int:
    """How many times torchrun has restarted this group (0: the first attempt, or not under torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0)


def run_name() -> str | None:
    """torchrun's run id (--rdzv-id; a fresh one per --standalone launch): the same on every rank and every
    attempt of one launch, so it names a run folder that a restarted group finds again. None outside torchrun."""
    return os.environ.get("TORCHELASTIC_RUN_ID") or None


def init_process_group(backend: str) -> None:
    """dist.init_process_group from torchrun's environment, its keys in a store prefix of this attempt.
    torchrun's workers share the agent's store across restarts, and without the prefix a rank of a restarted
    group can read a dead rank's gloo address from the failed attempt and fail to connect (measured with
    torch 2.14: rank 0 reads rank 1's old address when the new rank 1 starts later than rank 0)."""
    store, rank, world = next(dist.rendezvous("env://"))
    dist.init_process_group(backend, store=dist.PrefixStore(f"wsol_fast/attempt_{restart_count()}", store),
                            rank=rank, world_size=world)


def resume_after_restart(cfg, run_dir) -> None:
    """On an attempt after a torchrun restart, continue the run from RUN/last.pt (the last epoch-end, step
    or stop checkpoint) instead of starting over: cfg.runtime.resume is set to it (an --init-from becomes
    that resume too). Before any checkpoint was written the run starts over, as the first attempt did.
    `run_dir(cfg)`: the run folder the first attempt used."""
    attempt = restart_count()
    if attempt == 0:
        return
    r = cfg.runtime
    out = r.output or (os.path.dirname(os.path.abspath(r.resume)) if r.resume else run_dir(cfg))
    last = os.path.join(out, "last.pt")
    if int(os.environ.get("RANK", "0")) == 0:
        what = f"continuing from {last}" if os.path.isfile(last) else "no checkpoint yet, starting over"
        print(f"torchrun restart {attempt}: {what}", file=sys.stderr, flush=True)
    if os.path.isfile(last):
        r.resume, r.output, r.init_from = last, out, None


class StepHooks:
    """What the training loop does after each step: under torchrun, agree on a stop (every rank stops after
    the same step); write the step checkpoint; the test hooks (KILL_AT, STEP_LOG). info: runtime.DistInfo.

    Under torchrun it makes `guard` catch SIGINT / SIGTERM on every rank (not only rank 0) and answer
    `signals.stop` with the agreed value. `save(name, epoch, step)` is the trainer's (rank 0 writes)."""

    def __init__(self, info, device: torch.device, guard, save, checkpoint_every: int | None,
                 log_every: int):
        self.info, self.device, self.guard, self.save = info, device, guard, save
        self.every = checkpoint_every or 0
        self.agree_every = 1 if device.type == "cpu" else max(1, log_every)
        guard.every_rank = info.enabled
        self.attempt = restart_count()
        kill = os.environ.get(KILL_AT, "")
        self.kill_at = tuple(int(v) for v in kill.split(":")) if kill and self.attempt == 0 else None
        log = os.environ.get(STEP_LOG)
        self.log = f"{log}.rank{info.rank}" if log else None

    def agree_stop(self) -> None:
        """Every rank learns whether any rank was asked to stop (and by which signal): one all-reduce (MAX)
        of the signal number. Call it at the same point on every rank."""
        s = self.guard.signals
        if not self.info.enabled:
            return
        flag = torch.tensor([int(s.signum or 0)], dtype=torch.int32,
                            device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        agreed = int(flag.item())
        if agreed:
            s.signum = s.signum or agreed
            s.agreed = agreed

    def after_step(self, epoch: int, step: int, last: bool) -> None:
        """After step `step` (1-based) of epoch `epoch` (0-based); `last`: the epoch's last step, which the
        epoch-end save follows anyway."""
        if self.log:
            with open(self.log, "a") as fh:
                fh.write(f"{self.attempt} {epoch} {step}\n")
        if self.kill_at == (self.info.rank, epoch + 1, step):
            os.kill(os.getpid(), signal.SIGKILL)
        if self.info.enabled and (step % self.agree_every == 0 or last):
            self.agree_stop()
        if self.every and step % self.every == 0 and not last and not self.guard.signals.stop:
            self.save("last.pt", epoch, step)
