"""Sampler overhead on top of the network: (sampling loop time - network time) / network time.

Runs, interleaved repeat by repeat so load from other processes hits all alike (times are medians):
  network  S calls of the U-Net on the same batch and timesteps, nothing else;
  loop     ddim.samplers.sample with that U-Net (S steps, per-sample generators, noise drawn when eta > 0);
  sampler  the same loop with a free eps function (a precomputed tensor): the sampler's own cost.
overhead = (loop - network) / network is the direct figure; sampler / network is the same quantity measured
without the network's run-to-run noise. Target: <= 3% at batch 64 on the CIFAR10 U-Net.

    python benchmarks/bench_sampler.py                                  # CPU: batch 64, S = 5
    python benchmarks/bench_sampler.py --device cuda --steps 50 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from ddim.nets.unet import UNet
from ddim.samplers import initial_noise, per_sample_generators, sample
from ddim.schedule import Schedule, timestep_sequence

CONFIGS = {
    "cifar10": dict(resolution=32, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,)),
    "small": dict(resolution=32, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16,)),
}


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cifar10")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--eta", type=float, nargs="+", default=[0.0, 1.0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    cfg = CONFIGS[args.config]
    net = UNet(**cfg).to(device).eval().requires_grad_(False)
    schedule = Schedule.from_config()
    seq = timestep_sequence(args.steps, "uniform", schedule.num_timesteps)
    shape = (args.batch, 3, cfg["resolution"], cfg["resolution"])
    x_T = initial_noise(shape, per_sample_generators(0, range(args.batch)), device=device)
    t_batches = [torch.full((args.batch,), int(t), dtype=torch.int64, device=device) for t in seq.flip(0)]
    free_eps = torch.randn(shape, device=device) * 0.1

    def network() -> None:
        for t in t_batches:
            net(x_T, t)

    def loop(eta: float, eps_fn) -> Callable[[], object]:
        def run() -> object:
            gens = per_sample_generators(0, range(args.batch))
            return sample(eps_fn, x_T, seq, schedule, eta=eta, generator=gens)

        return run

    runs: dict[str, Callable[[], object]] = {"network": network}
    for eta in args.eta:
        runs[f"loop eta={eta:g}"] = loop(eta, net)
        runs[f"sampler eta={eta:g}"] = loop(eta, lambda x, t: free_eps)
    times: dict[str, list[float]] = {k: [] for k in runs}
    names = list(runs)
    with torch.no_grad():
        network()  # warm-up (allocator, kernels)
        for r in range(args.repeats):
            # Rotate the order each repeat so no measurement always follows the same one.
            for name in names[r % len(names) :] + names[: r % len(names)]:
                times[name].append(timed(runs[name], device))

    med = {k: statistics.median(v) for k, v in times.items()}
    n = len(seq)
    print(
        f"config={args.config} batch={args.batch} S={n} device={device} threads={torch.get_num_threads()} "
        f"repeats={args.repeats}\n"
    )
    print("| eta | network s/step | loop s/step | (loop - network) / network | sampler-only / network |")
    print("|---|---|---|---|---|")
    for eta in args.eta:
        loop_t, own = med[f"loop eta={eta:g}"], med[f"sampler eta={eta:g}"]
        print(
            f"| {eta:g} | {med['network'] / n:.4g} | {loop_t / n:.4g} | "
            f"{100 * (loop_t - med['network']) / med['network']:+.2f}% | {100 * own / med['network']:.3f}% |"
        )


if __name__ == "__main__":
    main()
