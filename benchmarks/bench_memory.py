"""Peak memory of a U-Net training step with and without activation checkpointing (model.grad_checkpointing).

Each variant runs in a fresh process (so one cannot reuse the other's freed memory): it builds the network and
its input, then runs train steps (forward, MSE, backward). Reported per variant: the step's peak memory above
what the process held before it (CPU: peak resident set size from getrusage; CUDA: torch's peak allocated
bytes), and the median step time. The plain network is the reference; checkpointing should cut the peak by
keeping only each block's inputs, for one more forward of each block in the backward pass.

    python benchmarks/bench_memory.py                                  # CelebA 64x64 U-Net, batch 4, CPU
    python benchmarks/bench_memory.py --config celeba64 --batch 128 --device cuda --bf16
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from ddim.nets.unet import UNet

CONFIGS = {
    "cifar10": dict(resolution=32, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,)),
    "celeba64": dict(
        resolution=64, ch=128, ch_mult=(1, 2, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,)
    ),
    "tiny": dict(resolution=16, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,)),
}


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(
    config: str, batch: int, device: torch.device, checkpointing: bool, bf16: bool, steps: int
) -> dict[str, float]:
    """Peak memory of a train step above the memory held before it, and the median step time."""
    torch.manual_seed(0)
    cfg = CONFIGS[config]
    net = UNet(**cfg, dropout=0.1).to(device).train()
    net.grad_checkpointing = checkpointing
    res = cfg["resolution"]
    x = torch.randn(batch, 3, res, res, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    # Gradients exist before the measured steps, so both variants start from the same held memory.
    net(x[:1], t[:1]).sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else peak_bytes(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.mse_loss(net(x, t).float(), x)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return {"peak_above_start_mib": (peak_bytes(device) - before) / 2**20, "step_s": statistics.median(times)}


def run_child(args: argparse.Namespace, checkpointing: bool) -> dict[str, float]:
    """One variant in a fresh interpreter; its JSON line is the last line of its output."""
    cmd = [sys.executable, __file__, "--child", "1" if checkpointing else "0", "--config", args.config]
    cmd += ["--batch", str(args.batch), "--device", args.device, "--steps", str(args.steps)]
    cmd += ["--threads", str(args.threads)] + (["--bf16"] if args.bf16 else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="celeba64")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--child", choices=("0", "1"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.child is not None:
        print(json.dumps(measure(args.config, args.batch, device, args.child == "1", args.bf16, args.steps)))
        return
    results = {name: run_child(args, name == "checkpointing") for name in ("plain", "checkpointing")}
    plain, ckpt = results["plain"], results["checkpointing"]
    print(
        f"config={args.config} batch={args.batch} device={device} bf16={args.bf16} steps={args.steps} "
        f"threads={args.threads} torch={torch.__version__}"
    )
    print(f"{'variant':<14} {'peak above start MiB':>21} {'step s':>8}")
    for name, r in results.items():
        print(f"{name:<14} {r['peak_above_start_mib']:>21.0f} {r['step_s']:>8.2f}")
    print(
        f"checkpointing: peak x{ckpt['peak_above_start_mib'] / plain['peak_above_start_mib']:.2f}, "
        f"step time x{ckpt['step_s'] / plain['step_s']:.2f} of the plain network's"
    )


if __name__ == "__main__":
    main()
