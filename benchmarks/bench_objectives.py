"""Cost of one training step per objective, as a ratio to `simple` (target: vlb/hybrid <= 1.10).

Every objective does one network forward; vlb/hybrid add elementwise work (posterior, KL, decoder CDFs).
Steps (forward, backward, Adam) are interleaved across objectives and the median of each is reported, so load
from other processes hits all alike. CPU-time clock on CPU (shared machines), wall clock on CUDA.

    python benchmarks/bench_objectives.py                        # CPU, small U-Net 1x16x16, batch 32
    python benchmarks/bench_objectives.py --device cuda --config cifar10 --batch 128
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ddim.training.module import DiffusionModule

CONFIGS = {
    "cifar10": dict(
        in_channels=3,
        resolution=32,
        ch=128,
        ch_mult=[1, 2, 2, 2],
        num_res_blocks=2,
        attn_resolutions=[16],
        dropout=0.1,
    ),  # fmt: skip
    "small": dict(
        in_channels=1,
        resolution=16,
        ch=32,
        ch_mult=[1, 2],
        num_res_blocks=1,
        attn_resolutions=[],
        dropout=0.0,
    ),  # fmt: skip
}
ROWS = {
    "simple": dict(),
    "vlb": dict(loss="vlb"),
    "hybrid+learned_range": dict(loss="hybrid", variance="learned_range"),
    "mse_mu (mu)": dict(loss="mse_mu", parameterization="mu"),
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="small", choices=CONFIGS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    net = CONFIGS[args.config]
    c, r = net["in_channels"], net["resolution"]
    x0 = (torch.randint(0, 256, (args.batch, c, r, r)).float() / 127.5 - 1).to(args.device)
    setups = {}
    for name, kw in ROWS.items():
        torch.manual_seed(0)
        m = DiffusionModule(net={**net, "out_channels": c}, **kw).to(args.device)
        setups[name] = (m, torch.optim.Adam(m.net.parameters(), lr=1e-4))
    clock = time.process_time if args.device == "cpu" else time.perf_counter
    times = {name: [] for name in ROWS}
    for rep in range(args.repeats + 2):
        for name, (m, opt) in setups.items():
            t = torch.randint(0, 1000, (args.batch,), device=args.device)
            noise = torch.randn_like(x0)
            if args.device != "cpu":
                torch.cuda.synchronize()
            start = clock()
            loss = m.objective(m.net, x0, t, noise).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if args.device != "cpu":
                torch.cuda.synchronize()
            if rep >= 2:  # warm-up
                times[name].append(clock() - start)
    base = statistics.median(times["simple"])
    print(f"{args.config} batch {args.batch} on {args.device}: median step time, ratio to simple")
    for name, ts in times.items():
        print(f"  {name:24s} {statistics.median(ts) * 1e3:8.2f} ms   x{statistics.median(ts) / base:.3f}")


if __name__ == "__main__":
    main()
