"""Export to diffusers and safetensors: diffusers' own pipelines sample what our samplers sample from the
same noise, the exported files read back into our evaluation unchanged, and what diffusers cannot express is
refused in one line before anything is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddim.checkpoints import build_unet, read_checkpoint
from ddim.checkpoints.export import export_diffusers, export_safetensors
from ddim.diffusion.parameterization import ModelFn, ModelSpec
from ddim.diffusion.schedule import Schedule
from ddim.errors import DDIMError
from ddim.evaluation import evaluate
from ddim.export import main
from ddim.nets.unet import UNet
from ddim.samplers import DDIM, initial_noise, per_sample_generators

diffusers = pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parents[2]
# Attention at 4x4, so the attention layers' conv <-> Linear conversion is part of every round trip.
NET = dict(
    in_channels=1,
    out_channels=1,
    resolution=8,
    ch=32,
    ch_mult=[1, 2],
    num_res_blocks=1,
    attn_resolutions=[4],
    dropout=0.0,
)
SCHEDULE = {"kind": "linear", "num_timesteps": 100, "beta_start": 1e-4, "beta_end": 0.2}


def write_checkpoint(
    path: Path, parameterization: str = "eps", variance: str = "fixed_large", kind: str = "linear"
) -> Path:
    """A Lightning-layout checkpoint (EMA weights perturbed, raw weights zero) with the given model options."""
    net_kwargs = {**NET, "out_channels": 2 if variance.startswith("learned") else 1}
    torch.manual_seed(0)
    net = UNet(**net_kwargs)
    with torch.no_grad():  # a fresh U-Net outputs ~0 (zeroed last conv): give it some signal
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sd = {f"ema_net.{k}": v for k, v in net.state_dict().items()}
    sd.update({f"net.{k}": torch.zeros_like(v) for k, v in net.state_dict().items()})
    hparams = {
        "net": net_kwargs,
        "schedule": {**SCHEDULE, "kind": kind},
        "parameterization": parameterization,
        "variance": variance,
    }
    torch.save({"state_dict": sd, "hyper_parameters": hparams}, path)
    return path


def our_model(ckpt: Path) -> ModelFn:
    """The checkpoint as our samplers see it (float64), read the way evaluation reads it."""
    checkpoint = read_checkpoint(ckpt)
    schedule = Schedule.from_config(**checkpoint.hyper_parameters["schedule"])
    net = build_unet(checkpoint.state_dict, checkpoint.config).double()
    return ModelFn(net, ModelSpec.from_hparams(checkpoint.hyper_parameters), schedule)


def float64_tables(scheduler, schedule: Schedule) -> None:
    """Give a diffusers scheduler our float64 table, after checking its own float32 one (built from the
    exported config alone) is the same schedule: the comparison then tests the steps, not float32 rounding."""
    assert torch.allclose(scheduler.betas.double(), schedule.betas, rtol=1e-6, atol=0)
    scheduler.alphas_cumprod = schedule.alphas_cumprod.clone()
    scheduler.betas = schedule.betas.clone()
    scheduler.alphas = 1.0 - schedule.betas
    scheduler.one = scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)


def our_samples(model, sampler, n: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """Our sampler's x_0 from per-sample noise (x_T first, then each step's draws)."""
    gens = per_sample_generators(seed, range(n))
    x_T = initial_noise((n, 1, 8, 8), gens, dtype=dtype)
    with torch.no_grad():
        return sampler.run(model, x_T, model.schedule, generator=gens)


def their_samples(pipe, n: int, seed: int, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """(the pipeline's images in [0, 1], its x_0 before that clamp): an untrained network's samples leave
    [-1, 1], so the unclamped x_0 is what shows every difference."""
    finals, step = [], pipe.scheduler.step

    def recording_step(*args, **kwargs):
        out = step(*args, **kwargs)
        finals.append(out.prev_sample)
        return out

    pipe.scheduler.step = recording_step
    gens = per_sample_generators(seed, range(n))
    images = pipe(batch_size=n, generator=gens, output_type="pt", **options).images
    return images, finals[-1]


def their_network(pipe, like: ModelFn) -> ModelFn:
    """The pipeline's own UNet2DModel, read through our parameterization."""
    return ModelFn(lambda x, t: pipe.unet(x, t).sample, like.spec, like.schedule)


def as_image(x: torch.Tensor) -> torch.Tensor:
    return (x / 2 + 0.5).clamp(0, 1)  # the pipelines' output map


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp(min=1)).item()


@pytest.mark.parametrize(("parameterization", "kind"), [("eps", "linear"), ("x0", "linear"), ("v", "cosine")])
def test_ddim_pipeline_samples_what_our_ddim_samples(tmp_path, parameterization, kind):
    ckpt = write_checkpoint(tmp_path / "model.ckpt", parameterization, kind=kind)
    folder = export_diffusers(ckpt, tmp_path / "pipe")
    pipe = diffusers.DDIMPipeline.from_pretrained(str(folder)).to(torch.float64)
    pipe.set_progress_bar_config(disable=True)
    model = our_model(ckpt)
    float64_tables(pipe.scheduler, model.schedule)
    n, steps = 4, 10  # 10 divides T = 100: diffusers' "leading" steps are our uniform ones
    images, x0 = their_samples(pipe, n, 3, eta=0.0, num_inference_steps=steps)
    ddim = DDIM(steps=steps, eta=0.0)
    # The scheduler config: our sampler driving the pipeline's own network reproduces the pipeline.
    same_net = relative(x0, our_samples(their_network(pipe, model), ddim, n, 3))
    # End to end: our network too. Both codes compute the sinusoidal time embedding in float32 (rounded
    # differently), which bounds the agreement at ~1e-7 even in float64.
    ours = our_samples(model, ddim, n, 3)
    end_to_end = relative(x0, ours)
    image_diff = (images - as_image(ours)).abs().max().item()
    print(f"DDIMPipeline vs ours ({parameterization}, {kind}, float64, eta 0, {steps} steps): images {image_diff:.2g}; "
          f"x_0 relative {end_to_end:.2g} end to end, {same_net:.2g} with the same network")  # fmt: skip
    assert same_net < 1e-13 and end_to_end < 1e-5 and image_diff < 1e-5
    assert 0.05 < ours.std().item()  # images, not a constant


def test_ddpm_pipeline_samples_what_our_ddpm_samples_with_a_learned_variance(tmp_path):
    ckpt = write_checkpoint(tmp_path / "model.ckpt", "eps", "learned_range")
    folder = export_diffusers(ckpt, tmp_path / "pipe")
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert config["variance_type"] == "learned_range" and config["prediction_type"] == "epsilon"
    pipe = diffusers.DDPMPipeline.from_pretrained(str(folder)).to(torch.float64)
    pipe.set_progress_bar_config(disable=True)
    model = our_model(ckpt)
    float64_tables(pipe.scheduler, model.schedule)
    # 20 of T = 100 steps: both respace the learned variance to the sub-sequence's own beta and beta_tilde.
    n, steps = 3, 20
    _, x0 = their_samples(pipe, n, 5, num_inference_steps=steps)
    # sampler=ddpm: eta 1, which samples with the model's learned variance.
    diff = relative(x0, our_samples(their_network(pipe, model), DDIM(steps=steps, eta=1.0), n, 5))
    print(
        f"DDPMPipeline vs our DDPM (learned_range, float64, {steps} steps, same network): x_0 relative {diff:.2g}"
    )
    assert diff < 1e-12


def test_the_float32_pipeline_as_users_run_it_is_close(tmp_path):
    # x0: an untrained x0-network's samples stay mostly inside [-1, 1], so the images themselves differ.
    folder = export_diffusers(write_checkpoint(tmp_path / "model.ckpt", "x0"), tmp_path / "pipe")
    pipe = diffusers.DDIMPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    images, _ = their_samples(pipe, 4, 0, eta=0.0, num_inference_steps=10)
    model = our_model(tmp_path / "model.ckpt").float()
    ours = as_image(our_samples(model, DDIM(steps=10), 4, 0, dtype=torch.float32))
    assert ((ours > 0) & (ours < 1)).float().mean() > 0.8
    diff = (images - ours).abs().max().item()
    print(f"DDIMPipeline float32 (its own float32 tables) vs ours float32: images {diff:.2g}")
    assert diff < 1e-3  # float32 rounding of two codes; a quarter of one uint8 level


def sample_pngs(ckpt: Path, out: Path, eval_cfg, cache: Path) -> dict[str, bytes]:
    cfg = eval_cfg([f"ckpt={ckpt}", "task=sample", "data=digits", "n_samples=6", "batch_size=3",
                    "shard_size=6", "sampler.steps=5", "trainer.accelerator=cpu", "trainer.devices=1",
                    "logger=none", f"fid.cache_dir={cache}", f"paths.output_dir={out}"])  # fmt: skip
    record = evaluate(cfg)
    assert record["num_timesteps"] == 100  # the checkpoint's schedule, not eval.yaml's T = 1000
    return {p.name: p.read_bytes() for p in sorted((out / "samples").rglob("*.png"))}


@pytest.mark.slow
def test_exported_files_read_back_into_evaluation_unchanged(tmp_path, eval_cfg):
    # x0 and the cosine schedule are not evaluation's defaults: only a correct re-import reproduces the images.
    ckpt = write_checkpoint(tmp_path / "model.ckpt", "x0", kind="cosine")
    folder = export_diffusers(ckpt, tmp_path / "pipe")
    single = export_safetensors(ckpt, tmp_path / "model.safetensors")
    original = read_checkpoint(ckpt)
    for path in (folder, folder / "unet", single):
        back = read_checkpoint(path)
        assert {k: back.hyper_parameters[k] for k in ("schedule", "parameterization", "variance")} == {
            k: original.hyper_parameters[k] for k in ("schedule", "parameterization", "variance")
        }
        assert back.config == {**original.config, "ch_mult": (1, 2), "attn_resolutions": (4,)}
        assert all(torch.equal(back.state_dict[k], v) for k, v in original.state_dict.items())
    cache = tmp_path / "cache"
    reference = sample_pngs(ckpt, tmp_path / "from_ckpt", eval_cfg, cache)
    assert sample_pngs(folder, tmp_path / "from_diffusers", eval_cfg, cache) == reference
    assert sample_pngs(single, tmp_path / "from_safetensors", eval_cfg, cache) == reference


def test_the_diffusers_folder_is_what_diffusers_writes(tmp_path):
    folder = export_diffusers(write_checkpoint(tmp_path / "model.ckpt"), tmp_path / "pipe", use_ema=False)
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
    ]
    unet = diffusers.UNet2DModel.from_pretrained(str(folder / "unet"))
    assert all(p.abs().max() == 0 for p in unet.parameters())  # use_ema=false: the raw (here zero) weights
    scheduler = diffusers.DDIMScheduler.from_pretrained(str(folder / "scheduler"))
    scheduler.set_timesteps(10)
    assert scheduler.timesteps.tolist() == list(range(90, -1, -10))  # our uniform floor(i T / S), reversed
    assert scheduler.config.clip_sample is False and scheduler.config.set_alpha_to_one is True


def test_the_safetensors_file_carries_the_model_record(tmp_path):
    from safetensors import safe_open

    ckpt = write_checkpoint(tmp_path / "model.ckpt", "v", "fixed_small")
    path = export_safetensors(ckpt, tmp_path / "model.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert json.loads(meta["ddim.net"]) == NET and json.loads(meta["ddim.schedule"]) == SCHEDULE
    assert (meta["ddim.parameterization"], meta["ddim.variance"], meta["ddim.weights"]) == (
        "v",
        "fixed_small",
        "ema",
    )
    assert keys == set(UNet(**NET).state_dict())  # our own (original DDPM) key layout


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"parameterization": "mu"}, r"model.parameterization=mu .* has no diffusers prediction_type"),
        ({"variance": "learned"}, r"model.variance=learned .* has no diffusers variance_type"),
    ],
)
def test_what_diffusers_cannot_express_is_refused_before_writing(tmp_path, options, message):
    ckpt = write_checkpoint(tmp_path / "model.ckpt", **options)
    with pytest.raises(DDIMError, match=message):
        export_diffusers(ckpt, tmp_path / "pipe")
    assert not (tmp_path / "pipe").exists()
    # The safetensors export keeps such a model for our own evaluation.
    assert read_checkpoint(export_safetensors(ckpt, tmp_path / "m.safetensors")).hyper_parameters["net"]


def test_command_line_one_line_errors_and_no_overwrite(tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "model.ckpt")
    out = tmp_path / "pipe"
    assert main([f"ckpt={ckpt}", f"out={out}", "spacing=quadratic"]) == 2
    assert not out.exists()
    assert main([f"ckpt={ckpt}", f"out={out}"]) == 0
    stamp = (out / "unet" / "config.json").stat().st_mtime_ns
    assert main([f"ckpt={ckpt}", f"out={out}"]) == 2  # a non-empty folder is kept
    assert (out / "unet" / "config.json").stat().st_mtime_ns == stamp
    assert main([f"ckpt={ckpt}", f"out={out}", "overwrite=true", "use_ema=false"]) == 0
    assert main([f"ckpt={ckpt}", f"out={tmp_path / 'x.bin'}", "format=safetensors"]) == 2
    assert main([f"ckpt={tmp_path / 'nope.ckpt'}", f"out={tmp_path / 'y'}"]) == 2
    assert main([f"ckpt={ckpt}", f"out={tmp_path / 'z'}", "use_ema=maybe"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(errors) == 5 and all(line.startswith("Error: ") for line in errors), errors
    assert "spacing=quadratic has no diffusers timestep_spacing" in errors[0]
    assert "already exists and is not empty" in errors[1] and "overwrite=true" in errors[1]
    assert "use_ema=maybe is invalid: it must be true or false" in errors[4]


@pytest.mark.slow
def test_python_dash_m_entry_point(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ddim.export", f"ckpt={tmp_path / 'missing.ckpt'}", f"out={tmp_path / 'o'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "checkpoint not found" in proc.stderr
    assert not (tmp_path / "o").exists()
