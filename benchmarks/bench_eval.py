"""Evaluation generation throughput and the share of its time spent outside the network.

Runs the real path, `generate_samples` through `trainer.predict` (per-sample generators, x_T, the sampler loop,
uint8 quantisation, PNG shards written atomically), with the U-Net wrapped in a timer. Reports
  images/s           generated images per second of the sampling loop;
  outside network    (loop time - time inside the U-Net) / loop time   (target <= 5%);
  network-only       the same number of U-Net calls on their own, as a reference measured in this process.
Repeats are interleaved and medians reported, so load from other processes hits both alike.

task=nll (exact bound, T network calls per image): images/s of `ddim.diffusion.likelihood.bound_terms` as task=nll runs
it, (image, timestep) pairs batched across timesteps `--nll-max-batch` at a time, against a plain loop over t
(one call per timestep for the whole batch of images), on the same images and noise; both give the same bits/dim.

    python benchmarks/bench_eval.py                          # CPU: small U-Net, batch 64, S = 10, 256 images
    python benchmarks/bench_eval.py --config cifar10 --device cuda --batch 256 --steps 100 --images 2048
    python benchmarks/bench_eval.py --eta --nll-images 4 --nll-timesteps 100 --config tiny   # nll only, CPU
    python benchmarks/bench_eval.py --eta --config cifar10 --device cuda --nll-images 32 --nll-max-batch 1024
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from ddim.diffusion.forward import q_sample
from ddim.diffusion.likelihood import bound_terms, exact_bound, prior_bpd, vb_terms_bpd
from ddim.diffusion.parameterization import ModelFn, ModelSpec
from ddim.diffusion.schedule import Schedule
from ddim.evaluation.generation import generate_samples
from ddim.nets.unet import UNet
from ddim.samplers import DDIM

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


def nll_batched(fn: ModelFn, x0: torch.Tensor, noise: torch.Tensor, max_batch: int) -> torch.Tensor:
    """Per-image exact bound (bits/dim) the way task=nll computes it."""
    n, T = noise.shape[:2]
    timesteps = torch.arange(T).repeat(n, 1)
    terms = bound_terms(fn.predict, x0, timesteps, fn.schedule, lambda i, k: noise[i, k], max_batch=max_batch)
    return exact_bound(terms).total


def nll_per_timestep_loop(fn: ModelFn, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The plain reference: for each t, one network call on all images."""
    n, T = noise.shape[:2]
    total = prior_bpd(x0, fn.schedule).double().cpu()
    table = fn.schedule.alphas_cumprod
    for t in range(T):
        t_batch = torch.full((n,), t, dtype=torch.int64, device=x0.device)
        x_t = q_sample(x0, t_batch, noise[:, t], table)
        pred, log_var = fn.predict(x_t, t_batch)
        total += vb_terms_bpd(pred, log_var, x0, x_t, t_batch, fn.schedule).double().cpu()
    return total


def bench_nll(args: argparse.Namespace, net: torch.nn.Module, device: torch.device, res: int) -> None:
    schedule = Schedule.from_config(num_timesteps=args.nll_timesteps)
    fn = ModelFn(net.to(device), ModelSpec(), schedule)
    gen = torch.Generator().manual_seed(0)
    n, T = args.nll_images, args.nll_timesteps
    x0 = (torch.randint(0, 256, (n, 3, res, res), generator=gen) / 127.5 - 1).to(device)
    noise = torch.randn(n, T, 3, res, res, generator=gen).to(device)
    runs = {"batched": (nll_batched, {"max_batch": args.nll_max_batch}), "loop": (nll_per_timestep_loop, {})}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    bpd: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for _ in range(args.repeats):  # interleaved, medians: load from other processes hits both alike
            for name, (run, kwargs) in runs.items():
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                bpd[name] = run(fn, x0, noise, **kwargs)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds[name].append(time.perf_counter() - start)
    a, b = bpd["batched"], bpd["loop"]
    batched_s, loop_s = seconds["batched"], seconds["loop"]
    batched, loop = statistics.median(batched_s), statistics.median(loop_s)
    print(
        f"nll exact (T={T}, {n} images, max_batch={args.nll_max_batch}): batched {n / batched:8.3f} images/s | "
        f"per-timestep loop {n / loop:8.3f} images/s | batched/loop speed = {loop / batched:.2f}x | "
        f"bits/dim {float(a.mean()):.4f} vs {float(b.mean()):.4f} (max |diff| {float((a - b).abs().max()):.1e})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--eta", type=float, nargs="*", default=[0.0, 1.0], help="none: skip generation")
    parser.add_argument("--nll-images", type=int, default=8, help="0: skip the nll benchmark")
    parser.add_argument("--nll-timesteps", type=int, default=1000, help="T of the schedule for nll")
    parser.add_argument("--nll-max-batch", type=int, default=512)
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
        sampler = DDIM(eta=eta, steps=args.steps)
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
    if args.nll_images:
        bench_nll(args, net, device, res)


if __name__ == "__main__":
    main()
