"""A toy training run for tests/test_distributed.py, started by torchrun (or plain python for 1 process).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dist_toy.py RUN_DIR [--parallel fsdp]
        [--kill-at STEP] [--steps N]

No dropout: with it, each process would draw its own masks and the curves could not match.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, when run by path

from train.loop import LoopConfig, LossOutput, train_loop  # noqa: E402


class ToyTask:
    def __init__(self):
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 1))
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(256, 8, generator=g)
        self.y = torch.sin(self.x @ torch.randn(8, 1, generator=g))

    def batch(self, step, micro, batch_size):
        g = torch.Generator().manual_seed(step * 1000 + micro)  # a pure function of (step, micro)
        idx = torch.randint(0, len(self.x), (batch_size,), generator=g)
        return self.x[idx], self.y[idx]

    def loss(self, batch, step):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.model(x), y)
        return LossOutput(loss, {"loss": loss.item()})

    def items(self, batch):
        return len(batch[0])


def config(steps: int = 12, parallel: str = "ddp") -> LoopConfig:
    return LoopConfig(steps=steps, batch_size=8, grad_accum=2, lr=1e-2, warmup_steps=3, ckpt_every=3,
                      log_every=1, ema_decay=0.9, progress=False, device="cpu", parallel=parallel)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--parallel", default="ddp")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--kill-at", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)

    def die(step):
        if step == a.kill_at:
            os._exit(3)  # as a killed job: no cleanup, no final checkpoint

    task = ToyTask()
    try:
        train_loop(task, config(a.steps, a.parallel), a.run, on_step=die if a.kill_at else None)
        if int(os.environ.get("RANK", "0")) == 0:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in task.model.state_dict().items()},
                      os.path.join(a.run, "final.safetensors"))
        from train.distributed import barrier

        # as the stages end (a barrier after the export): no process tears its group down while another is
        # still at work; without it rank 1 left during rank 0's save and gloo aborted one of them at exit
        barrier()
    finally:
        # leave the process group as `tessera` does: a gloo group still alive at interpreter exit can abort
        # the process ("terminate called without an active exception"), seen once in CI
        from train.distributed import destroy

        destroy()


if __name__ == "__main__":
    main()
