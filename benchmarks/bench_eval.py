"""Evaluation generation throughput and the share of its time spent outside the network.

Runs the real path, `generate_samples` through `trainer.predict` (per-sample generators, x_T, the sampler loop,
uint8 quantisation, PNG shards written atomically), with the U-Net wrapped in a timer. Reports
  images/s           generated images per second of the sampling loop;
  outside network    (loop time - time inside the U-Net) / loop time   (target <= 5%);
  network-only       the same number of U-Net calls on their own, as a reference measured in this process.
Repeats are interleaved and medians reported, so load from other processes hits both alike.

    python benchmarks/bench_eval.py                          # CPU: small U-Net, batch 64, S = 10, 256 images
    python benchmarks/bench_eval.py --config cifar10 --device cuda --batch 256 --steps 100 --images 2048
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from ddim.evaluation.generation import generate_samples
from ddim.nets.unet import UNet
from ddim.samplers import SamplerConfig
from ddim.schedule import Schedule

CONFIGS = {
    "cifar10": dict(resolution=32, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,)),
    "small": dict(resolution=32, ch=64, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16,)),
    "tiny": dict(resolution=16, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=()),
}


class TimedNet(torch.nn.Module):
    """The U-Net plus a stopwatch around every call (synchronised on CUDA so the time is the network's)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.seconds = 0.0
        self.calls = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cuda = x.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(x.device)
        start = time.perf_counter()
        out = self.net(x, t)
        if cuda:
            torch.cuda.synchronize(x.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


def network_only(net: torch.nn.Module, calls: int, batch: int, device: torch.device, res: int) -> float:
    x = torch.randn(batch, 3, res, res, device=device)
    t = torch.full((batch,), 500, dtype=torch.int64, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(calls):
            net(x, t)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--eta", type=float, nargs="+", default=[0.0, 1.0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = CONFIGS[args.config]
    res = cfg["resolution"]
    torch.manual_seed(0)
    net = UNet(**cfg, dropout=0.0).eval().requires_grad_(False)
    schedule = Schedule.from_config()
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    print(
        f"config={args.config} device={device} threads={torch.get_num_threads()} batch={args.batch} "
        f"S={args.steps} images={args.images} repeats={args.repeats}"
    )
    for eta in args.eta:
        sampler = SamplerConfig(eta=eta, steps=args.steps)
        loop_s, inside_s, net_only_s = [], [], []
        for rep in range(args.repeats):
            timed = TimedNet(net)
            trainer = pl.Trainer(
                accelerator=accelerator,
                devices=1,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                use_distributed_sampler=False,
            )
            with tempfile.TemporaryDirectory() as tmp:
                result = generate_samples(
                    trainer,
                    timed,
                    schedule,
                    sampler,
                    (3, res, res),
                    Path(tmp) / "samples",
                    n_samples=args.images,
                    seed=rep,
                    batch_size=args.batch,
                    shard_size=args.batch * 4,
                )
            loop_s.append(result.loop_seconds)
            inside_s.append(timed.seconds)
            net.to(device)
            net_only_s.append(network_only(net, timed.calls, args.batch, device, res))
        loop, inside, ref = (statistics.median(v) for v in (loop_s, inside_s, net_only_s))
        outside = (loop - inside) / loop
        print(
            f"eta={eta:g}: {args.images / loop:8.1f} images/s | outside network {100 * outside:5.2f}% "
            f"(loop {loop:.3f} s, in U-Net {inside:.3f} s) | network-only {args.images / ref:8.1f} images/s, "
            f"loop/network-only = {loop / ref:.3f}"
        )


if __name__ == "__main__":
    main()
