"""Speed of our DDPM U-Net against diffusers UNet2DModel with the same config, weights and batch.

Prints one table: forward (no grad, eval) and a training step (train mode, forward + MSE + backward), in fp32
and under bf16 autocast. ratio = diffusers time / our time, so >= 1.0 means we are at least as fast. The two
models run interleaved, repeat by repeat, so load from other processes hits both alike; times are medians.

    python benchmarks/bench_unet.py --config cifar10 --batch 8 --repeats 5
    python benchmarks/bench_unet.py --config celeba64 --batch 64 --device cuda --channels-last
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

from ddim.nets.convert import original_to_diffusers
from ddim.nets.unet import UNet

CONFIGS = {
    "cifar10": dict(
        resolution=32, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1
    ),
    "celeba64": dict(
        resolution=64, ch=128, ch_mult=(1, 2, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1
    ),
    "small": dict(
        resolution=32, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16,), dropout=0.1
    ),
}


def diffusers_unet(cfg: dict) -> torch.nn.Module:
    from diffusers import UNet2DModel

    attn = [cfg["resolution"] // 2**i in cfg["attn_resolutions"] for i in range(len(cfg["ch_mult"]))]
    return UNet2DModel(
        sample_size=cfg["resolution"],
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(cfg["ch"] * m for m in cfg["ch_mult"]),
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        layers_per_block=cfg["num_res_blocks"],
        attention_head_dim=None,
        norm_eps=1e-6,
        flip_sin_to_cos=False,
        freq_shift=1,
        downsample_padding=0,
        dropout=cfg["dropout"],
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_steps(model: torch.nn.Module, unwrap: bool, x: torch.Tensor, t: torch.Tensor, bf16: bool):
    device = x.device
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def call() -> torch.Tensor:
        out = model(x, t)
        return out.sample if unwrap else out

    def forward() -> None:
        model.eval()
        with torch.no_grad(), amp:
            call()
        sync(device)

    def train_step() -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        with amp:
            loss = torch.nn.functional.mse_loss(call().float(), x)
        loss.backward()
        sync(device)

    return {"forward": forward, "train step": train_step}


def time_pair(
    fns: tuple[Callable[[], None], Callable[[], None]], repeats: int, warmup: int, clock: Callable[[], float]
) -> tuple[float, float]:
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, acc in zip(fns, times, strict=True):
            start = clock()
            fn()
            acc.append(clock() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="cifar10")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--channels-last", action="store_true", help="models and input in channels_last memory format"
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--modes", default="forward,train step", help="comma list of: forward, train step")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma list of: fp32, bf16 (autocast)")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu = this process's CPU time: steadier than wall time on a shared CPU machine; use it with "
        "--threads 1 (idle OpenMP threads spin and would be counted)",
    )
    args = p.parse_args(argv)
    try:
        import diffusers  # noqa: F401
    except ImportError:
        sys.exit("diffusers is needed for the reference: pip install -e '.[dev]'")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and args.device != "cpu":
        sys.exit("--clock cpu only measures CPU work; use --clock wall with --device cuda")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    device = torch.device(args.device)
    cfg = CONFIGS[args.config]
    torch.manual_seed(0)
    ours = UNet(**cfg)
    ref = diffusers_unet(cfg)
    ref.load_state_dict(original_to_diffusers(ours.state_dict()), strict=True)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    ours.to(device, memory_format=memory_format)
    ref.to(device, memory_format=memory_format)
    res = cfg["resolution"]
    x = torch.randn(args.batch, 3, res, res, device=device).contiguous(memory_format=memory_format)
    t = torch.randint(0, 1000, (args.batch,), device=device)

    print(
        f"config={args.config} batch={args.batch} device={device} channels_last={args.channels_last} "
        f"threads={torch.get_num_threads()} clock={args.clock} repeats={args.repeats} torch={torch.__version__} "
        f"diffusers={diffusers.__version__}"
    )
    print(f"{'mode':<11} {'dtype':<5} {'ours ms':>9} {'diffusers ms':>13} {'ratio':>6}")
    for dtype in args.dtypes.split(","):
        bf16 = dtype.strip() == "bf16"
        ours_steps = make_steps(ours, False, x, t, bf16)
        ref_steps = make_steps(ref, True, x, t, bf16)
        for mode in args.modes.split(","):
            mode = mode.strip()
            ours_s, ref_s = time_pair((ours_steps[mode], ref_steps[mode]), args.repeats, args.warmup, clock)
            print(f"{mode:<11} {dtype:<5} {ours_s * 1e3:>9.1f} {ref_s * 1e3:>13.1f} {ref_s / ours_s:>6.2f}")


if __name__ == "__main__":
    main()
