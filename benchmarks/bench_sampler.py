"""Sampler overhead on top of the network: (sampling loop time - network time) / network time.

Runs, interleaved repeat by repeat so load from other processes hits all alike (times are medians):
  network  S calls of the U-Net on the same batch and timesteps, nothing else (time per call);
  loop     Sampler.run with that U-Net (per-sample generators, noise drawn where the sampler draws);
  sampler  the same loop with a free eps function (a precomputed tensor): the sampler's own cost, i.e. the
           solvers' bookkeeping (history of outputs, coefficients, corrector, noise).
Network time of a sampler = its NFE x the time per call. overhead = (loop - network) / network is the
direct figure; sampler / network is the same quantity without the network's run-to-run noise.
Target: <= 3% at batch 64 on the CIFAR10 U-Net.

    python benchmarks/bench_sampler.py                                  # CPU: batch 64, S = 5
    python benchmarks/bench_sampler.py --device cuda --steps 50 --repeats 5
    python benchmarks/bench_sampler.py --samplers ddim dpm_solver_pp:3 unipc:3 heun pndm
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from ddim.diffusion.schedule import Schedule, timestep_sequence
from ddim.nets.unet import UNet
from ddim.samplers import Sampler, initial_noise, make_sampler, per_sample_generators

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
    parser.add_argument(
        "--samplers",
        nargs="+",
        default=["ddim", "ddim:eta=1", "dpm_solver_pp:3", "sde_dpm_solver_pp:2", "unipc:3", "heun", "pndm"],
        help="name[:order][:eta=E]; the first is the reference row",
    )
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

    def loop(sampler: Sampler, eps_fn) -> Callable[[], object]:
        def run() -> object:
            gens = per_sample_generators(0, range(args.batch))
            return sampler.run(eps_fn, x_T, schedule, generator=gens)

        return run

    samplers = {spec: parse(spec, args.steps) for spec in args.samplers}
    runs: dict[str, Callable[[], object]] = {"network": network}
    for spec, sampler in samplers.items():
        runs[f"loop {spec}"] = loop(sampler, net)
        runs[f"sampler {spec}"] = loop(sampler, lambda x, t: free_eps)
    times: dict[str, list[float]] = {k: [] for k in runs}
    names = list(runs)
    with torch.no_grad():
        network()  # warm-up (allocator, kernels)
        for r in range(args.repeats):
            # Rotate the order each repeat so no measurement always follows the same one.
            for name in names[r % len(names) :] + names[: r % len(names)]:
                times[name].append(timed(runs[name], device))

    med = {k: statistics.median(v) for k, v in times.items()}
    per_call = med["network"] / len(seq)
    print(
        f"config={args.config} batch={args.batch} S={len(seq)} device={device} threads={torch.get_num_threads()} "
        f"repeats={args.repeats} network s/call={per_call:.4g}\n"
    )
    print("| sampler | NFE | loop s | (loop - network) / network | sampler-only / network |")
    print("|---|---|---|---|---|")
    for spec, sampler in samplers.items():
        nfe = sampler.nfe(schedule)
        loop_t, own = med[f"loop {spec}"], med[f"sampler {spec}"]
        print(
            f"| {sampler.tag()} | {nfe} | {loop_t:.4g} | "
            f"{100 * (loop_t - nfe * per_call) / (nfe * per_call):+.2f}% | {100 * own / (nfe * per_call):.3f}% |"
        )


def parse(spec: str, steps: int) -> Sampler:
    """'dpm_solver_pp:3' -> the dpm_solver_pp sampler with order=3; 'ddim:eta=1' sets eta."""
    name, *rest = spec.split(":")
    options: dict = dict(steps=steps, skip_type="uniform")
    for item in rest:
        if item.startswith("eta="):
            options["eta"] = float(item[4:])
        else:
            options["order"] = int(item)
    return make_sampler(name, **options)


if __name__ == "__main__":
    main()
