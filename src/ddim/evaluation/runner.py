"""evaluate(cfg): everything `python src/eval.py` does, for each task of conf/task/.

Order of work, so that a mistake costs nothing: check the config and the checkpoint, validate the sampler
against the checkpoint's schedule, find the Inception weights and the reference statistics, and only then
generate. metrics.json is written last, by rank 0, only when everything succeeded.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from ddim.errors import DDIMError
from ddim.evaluation.fid import FID_LAYER, IS_LAYER, Statistics, compute_metrics, extract_features
from ddim.evaluation.generation import generate_samples
from ddim.evaluation.inception import build_inception, resolve_inception_weights
from ddim.evaluation.reference import reference_statistics
from ddim.evaluation.reporting import report
from ddim.evaluation.shards import ShardImages, ShardPlan, read_images
from ddim.evaluation.tables import paper_key, write_table1
from ddim.images import save_grid
from ddim.io import write_json
from ddim.samplers import SamplerConfig
from ddim.schedule import Schedule

log = logging.getLogger(__name__)

TASKS = ("fid", "sample", "sweep", "reconstruction", "interpolation", "consistency", "progressive")


# ----------------------------------------------------------------------------------------------------------
# Context: the checkpoint, its schedule and the validated sampler


@dataclass
class Context:
    cfg: DictConfig
    output_dir: Path
    net: torch.nn.Module
    unet_config: dict[str, Any]
    schedule: Schedule
    sampler: SamplerConfig
    checkpoint: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, r = int(self.unet_config.get("in_channels", 3)), int(self.unet_config["resolution"])
        return (c, r, r)


def sampler_from_config(node: Any) -> SamplerConfig:
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    try:
        return SamplerConfig(**values)
    except TypeError as err:
        fields = [f.name for f in dataclasses.fields(SamplerConfig)]
        raise DDIMError(f"Unknown sampler option in {sorted(values)}; valid keys are {fields}.") from err


def load_context(cfg: DictConfig) -> Context:
    if OmegaConf.is_missing(cfg, "ckpt") or not cfg.get("ckpt"):
        raise DDIMError(
            "No checkpoint given: pass ckpt=PATH (our Lightning .ckpt, an original DDPM/DDIM .ckpt/.pth, or a "
            "diffusers UNet2DModel folder), e.g. python src/eval.py ckpt=outputs/train/.../last.ckpt"
        )
    from ddim.nets.convert import build_unet, read_checkpoint

    path = str(Path(str(cfg.ckpt)).expanduser())
    ckpt = read_checkpoint(path, resolution=cfg.get("resolution"), prefer_ema=bool(cfg.get("use_ema", True)))
    net = build_unet(ckpt.state_dict, ckpt.config)
    hparams = ckpt.hyper_parameters or {}
    schedule_cfg = hparams.get("schedule") or OmegaConf.to_container(cfg.schedule, resolve=True)
    try:
        schedule = Schedule.from_config(**schedule_cfg)
    except (TypeError, ValueError) as err:
        raise DDIMError(f"Bad noise schedule {schedule_cfg}: {err}") from err
    sampler = sampler_from_config(cfg.sampler).validate(schedule.num_timesteps)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)  # Hydra makes it for CLI runs; the Python API may not
    ema = {True: "EMA", False: "raw", None: "only"}[ckpt.ema]
    log.info(f"Checkpoint {path} ({ckpt.layout} layout, {ema} weights), T={schedule.num_timesteps}")
    return Context(cfg, output_dir, net, dict(ckpt.config), schedule, sampler, path)


def check_positive(cfg: DictConfig, *keys: str) -> None:
    for key in keys:
        value = OmegaConf.select(cfg, key)
        if value is None or int(value) < 1:
            raise DDIMError(f"{key} must be a positive integer, got {value!r}.")


# ----------------------------------------------------------------------------------------------------------
# Trainer, device, data


def build_trainer(cfg: DictConfig, output_dir: Path) -> pl.Trainer:
    """The configured Trainer for predict-only work: no logger/checkpoints, and no DistributedSampler (shards
    are split by rank explicitly, so nothing is padded or generated twice)."""
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    devices = _devices_for_launcher(OmegaConf.select(cfg, "trainer.devices", default="auto"))
    try:
        return hydra.utils.instantiate(
            cfg.trainer,
            devices=devices,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            use_distributed_sampler=False,
            default_root_dir=str(output_dir),
        )
    except Exception as err:
        cause = err.__cause__ or err
        # e.g. accelerator=gpu on a machine without one, an unknown strategy or precision
        if isinstance(cause, (MisconfigurationException, ValueError, TypeError)):
            raise DDIMError(f"Bad trainer settings ({cause}); check trainer.* in the command.") from err
        raise


def _devices_for_launcher(devices: Any) -> Any:
    """Hydra's local multirun runs jobs one after another in one process, where DDP cannot start; on one
    machine the multirun gets one device per job, and the single-job grid (task=sweep) is the DDP route."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        local_multirun = hc.mode == RunMode.MULTIRUN and "BasicLauncher" in str(
            hc.launcher.get("_target_", "")
        )
    except (ValueError, ImportError):
        local_multirun = False
    if not local_multirun:
        return devices
    many = (
        devices == -1
        or (isinstance(devices, int) and devices > 1)
        or (isinstance(devices, list) and len(devices) > 1)
    )
    if many or (isinstance(devices, str) and devices not in ("auto", "1")):
        raise DDIMError(
            f"trainer.devices={devices} in a local Hydra multirun: DDP cannot start inside Hydra's local launcher. "
            "Use task=sweep sweep.etas=[...] sweep.steps=[...] trainer.devices=N (one DDP job over the grid), "
            "or hydra/launcher=submitit_slurm, or trainer.devices=1."
        )
    if devices == "auto":
        log.info("Local multirun: one device per job (use task=sweep for a multi-GPU grid).")
        return 1
    return devices


def single_device(cfg: DictConfig) -> torch.device:
    """For the small in-process tasks (interpolation, consistency, progressive): the first GPU if allowed."""
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="auto"))
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def make_datamodule(cfg: DictConfig) -> Any:
    if not cfg.get("data"):
        raise DDIMError("This task needs a data set: add data=cifar10 (or celeba64, digits, ...).")
    try:
        return hydra.utils.instantiate(cfg.data, _convert_="all")
    except Exception as err:
        from ddim.errors import user_error_in

        user = user_error_in(err)
        if user is not None:
            raise user from err
        if isinstance(err.__cause__, (ValueError, FileNotFoundError)):
            raise DDIMError(f"Bad data config: {err.__cause__}") from err
        raise


def check_data_shape(ctx: Context, datamodule: Any) -> None:
    if tuple(datamodule.image_shape) != tuple(ctx.image_shape):
        raise DDIMError(
            f"The data config gives images of shape {tuple(datamodule.image_shape)} but the checkpoint's model makes "
            f"{tuple(ctx.image_shape)}. Pick the matching data (e.g. data=cifar10 for 3x32x32, data=digits for the "
            "quickstart) or fid.reference=path/to/stats.npz."
        )


# ----------------------------------------------------------------------------------------------------------
# Metrics


@dataclass
class Scorer:
    """The feature extractor and reference statistics, ready before any sample is generated."""

    extractor: torch.nn.Module
    extractor_name: str
    fid_layer: str
    reference: Statistics
    reference_desc: str
    isc: bool
    kid: bool
    batch_size: int
    device: torch.device
    num_workers: int
    kid_subsets: int
    kid_subset_size: int

    def score(self, images: ShardImages) -> dict[str, float]:
        feats = extract_features(images, self.extractor, self.batch_size, self.device, self.num_workers)
        return compute_metrics(
            feats,
            self.reference,
            fid_layer=self.fid_layer,
            isc=self.isc,
            kid=self.kid,
            kid_subsets=self.kid_subsets,
            kid_subset_size=self.kid_subset_size,
        )


def _metric_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def prepare_scorer(cfg: DictConfig, ctx: Context, is_zero: bool) -> Scorer | None:
    """Resolve weights on every rank (so each fails fast), build the extractor and statistics on rank 0."""
    f = cfg.fid
    isc, kid = bool(f.get("isc", False)), bool(f.get("kid", False))
    custom = f.get("feature_extractor")
    reference_src = str(f.get("reference", "data"))
    datamodule, data_cfg = None, None
    if reference_src == "data":
        datamodule = make_datamodule(cfg)
        check_data_shape(ctx, datamodule)
        data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    weights = None
    if not custom:
        weights = resolve_inception_weights(
            str(f.get("weights", "auto")),
            f.get("weights_path"),
            f.get("detector_path"),
            f.cache_dir,
            bool(f.download),
        )
        if isc and not weights.has_logits:
            build_inception(weights, isc=True)  # raises the "no logits" message
    if not is_zero:
        return None
    device = _metric_device(str(f.get("device", "auto")))
    if custom:
        extractor = hydra.utils.instantiate(custom, _convert_="all")
        name = extractor.get_name()
        fid_layer = extractor.get_default_feature_layer_for_metric("fid")
        if isc and IS_LAYER not in extractor.get_requested_features_list():
            raise DDIMError(
                f"fid.isc=true but the feature extractor {name} provides no {IS_LAYER!r} features."
            )
    else:
        assert weights is not None
        extractor = build_inception(weights, isc=isc)
        name, fid_layer = "inception-2015-12-05", FID_LAYER
    reference, desc = reference_statistics(
        reference_src,
        extractor,
        name,
        f.cache_dir,
        fid_layer,
        datamodule=datamodule,
        data_cfg=data_cfg,
        data_dir=cfg.paths.data_dir,
        limit=f.get("reference_limit"),
        keep_features=kid,
        download=bool(f.download),
        batch_size=int(f.batch_size),
        device=device,
        num_workers=int(f.get("num_workers", 0)),
    )
    return Scorer(
        extractor,
        name if custom else f"inception-2015-12-05 ({weights.source})",  # type: ignore[union-attr]
        fid_layer,
        reference,
        desc,
        isc,
        kid,
        int(f.batch_size),
        device,
        int(f.get("num_workers", 0)),
        int(f.get("kid_subsets", 100)),
        int(f.get("kid_subset_size", 1000)),
    )


# ----------------------------------------------------------------------------------------------------------
# Tasks


def sampler_record(ctx: Context, sampler: SamplerConfig) -> dict[str, Any]:
    return {
        "eta": float(sampler.eta),
        "steps": int(sampler.steps) if sampler.timesteps is None else len(sampler.timesteps),
        "skip_type": sampler.skip_type if sampler.timesteps is None else "custom",
        "variance": sampler.variance,
        "clip_x0": bool(sampler.clip_x0),
        "nfe": sampler.nfe(ctx.schedule.num_timesteps),
        "checkpoint": ctx.checkpoint,
        "seed": int(ctx.cfg.seed),
        "num_timesteps": ctx.schedule.num_timesteps,
    }


def _identity(ctx: Context, sampler: SamplerConfig) -> dict[str, Any]:
    return {
        "checkpoint": ctx.checkpoint,
        "sampler": sampler.to_dict(),
        "image_shape": list(ctx.image_shape),
        "schedule": [float(ctx.schedule.betas[0]), float(ctx.schedule.betas[-1]), ctx.schedule.num_timesteps],
    }


def generate_and_score(
    ctx: Context, trainer: pl.Trainer, sampler: SamplerConfig, samples_dir: Path, scorer: Scorer | None
) -> dict[str, Any] | None:
    """One grid point: generate (all ranks), then on rank 0 score and describe it. None on other ranks."""
    cfg = ctx.cfg
    t0 = time.perf_counter()
    result = generate_samples(
        trainer,
        ctx.net,
        ctx.schedule,
        sampler,
        ctx.image_shape,
        samples_dir,
        n_samples=int(cfg.n_samples),
        seed=int(cfg.seed),
        batch_size=int(cfg.batch_size),
        shard_size=int(cfg.shard_size),
        identity=_identity(ctx, sampler),
    )
    if not trainer.is_global_zero:
        return None
    plan = ShardPlan(int(cfg.n_samples), int(cfg.shard_size))
    grid = save_grid(
        read_images(samples_dir, plan, limit=int(cfg.get("grid_size", 64))),
        samples_dir.parent / f"{samples_dir.name}_grid.png",
    )
    record: dict[str, Any] = {
        **sampler_record(ctx, sampler),
        "n_samples": plan.n_samples,
        "generated": result.generated,
        "generation_s": round(result.seconds, 3),
        "images_per_s": None if result.images_per_second is None else round(result.images_per_second, 3),
        "world_size": trainer.world_size,
        "samples_dir": str(samples_dir),
        "grid": str(grid),
    }
    if scorer is not None:
        t1 = time.perf_counter()
        metrics = scorer.score(ShardImages(samples_dir, plan))
        record.update(
            fid=metrics.get("fid"),
            **{"is": metrics.get("is"), "is_std": metrics.get("is_std")},
            kid=metrics.get("kid"),
            kid_std=metrics.get("kid_std"),
            metric_s=round(time.perf_counter() - t1, 3),
            feature_extractor=scorer.extractor_name,
            reference=scorer.reference_desc,
            reference_n=scorer.reference.n,
        )
        log.info(f"{sampler.tag()}: FID {record['fid']:.4f} ({plan.n_samples} samples)")
    record["wall_time_s"] = round(time.perf_counter() - t0, 3)
    return record


def run_fid(ctx: Context, with_metrics: bool = True) -> dict[str, Any]:
    cfg = ctx.cfg
    check_positive(cfg, "n_samples", "batch_size", "shard_size")
    trainer = build_trainer(cfg, ctx.output_dir)
    scorer = prepare_scorer(cfg, ctx, trainer.is_global_zero) if with_metrics else None
    record = generate_and_score(ctx, trainer, ctx.sampler, Path(cfg.samples_dir), scorer)
    if record is None:
        return {}
    record = {"task": "fid" if with_metrics else "sample", **record}
    images = {"samples": Path(record["grid"])}
    return finish(ctx, record, images=images)


def sweep_grid(cfg: DictConfig, base: SamplerConfig) -> list[SamplerConfig]:
    """eta x S points, plus the sigma_hat row (DDPM, larger variance, clipped x0_hat) when asked."""
    s = cfg.sweep
    etas, steps = list(s.etas), list(s.steps)
    if not steps or (not etas and not s.get("sigma_hat", False)):
        raise DDIMError("sweep.steps and sweep.etas (or sweep.sigma_hat=true) must not be empty.")
    points = [
        dataclasses.replace(base, eta=float(e), steps=int(n), variance="eta", timesteps=None)
        for e in etas
        for n in steps
    ]
    if s.get("sigma_hat", False):
        points += [
            dataclasses.replace(
                base, eta=0.0, steps=int(n), variance="sigma_hat", clip_x0=True, timesteps=None
            )
            for n in steps
        ]
    return points


def run_sweep(ctx: Context) -> dict[str, Any]:
    cfg = ctx.cfg
    check_positive(cfg, "n_samples", "batch_size", "shard_size")
    points = sweep_grid(cfg, ctx.sampler)
    for p in points:  # every point is checked before the first image
        p.validate(ctx.schedule.num_timesteps)
    trainer = build_trainer(cfg, ctx.output_dir)
    scorer = prepare_scorer(cfg, ctx, trainer.is_global_zero) if cfg.sweep.get("metrics", True) else None
    records = []
    for i, p in enumerate(points):
        if trainer.is_global_zero:
            log.info(f"Grid point {i + 1}/{len(points)}: {p.tag()}")
        record = generate_and_score(ctx, trainer, p, Path(cfg.samples_dir) / p.tag(), scorer)
        if record is not None:
            records.append(record)
            write_json(ctx.output_dir / "points" / f"{p.tag()}.json", record)
    if not trainer.is_global_zero:
        return {}
    summary: dict[str, Any] = {"task": "sweep", "checkpoint": ctx.checkpoint, "points": records}
    tables, images = {}, {}
    if scorer is not None:
        data = cfg.get("data")
        paths = write_table1(
            records, ctx.output_dir, "fid", paper_key(data.get("_target_") if data else None)
        )
        summary["table"] = {k: str(v) for k, v in paths.items()}
        tables = {"table1": paths["table1.csv"], "results": paths["results.csv"]}
        images = {"fid_vs_steps": paths["fid_vs_steps.png"]}
    return finish(ctx, summary, images=images, tables=tables)


def run_reconstruction(ctx: Context) -> dict[str, Any]:
    from ddim.evaluation.experiments import reconstruction_mse

    cfg = ctx.cfg
    r = cfg.reconstruction
    steps = [int(s) for s in r.steps]
    seqs = {}
    for s in steps:
        seqs[s] = dataclasses.replace(ctx.sampler, steps=s, timesteps=None).validate(
            ctx.schedule.num_timesteps
        )
    dm = make_datamodule(cfg)
    check_data_shape(ctx, dm)
    try:
        test_set = dm.test_set
    except FileNotFoundError as err:
        raise DDIMError(f"The reconstruction task needs the test set: {err}") from err
    n = len(test_set) if r.get("n_images") is None else min(int(r.n_images), len(test_set))
    trainer = build_trainer(cfg, ctx.output_dir)
    t0 = time.perf_counter()
    mse, examples = reconstruction_mse(
        trainer,
        ctx.net,
        ctx.schedule,
        {s: c.timestep_sequence(ctx.schedule.num_timesteps) for s, c in seqs.items()},
        test_set,
        n,
        int(r.get("batch_size") or cfg.batch_size),
        int(r.get("n_show", 8)),
    )
    if not trainer.is_global_zero:
        return {}
    from ddim.evaluation.tables import write_table2

    paths = write_table2(mse, ctx.output_dir, n)
    figure = save_grid(examples, ctx.output_dir / "reconstruction.png")
    record = {
        "task": "reconstruction",
        "checkpoint": ctx.checkpoint,
        "n_images": n,
        "skip_type": ctx.sampler.skip_type,
        "mse": {str(s): v for s, v in mse.items()},
        "rows_of_figure": ["original"] + [f"S={s}" for s in steps],
        "wall_time_s": round(time.perf_counter() - t0, 3),
        "table": {k: str(v) for k, v in paths.items()},
    }
    metrics = {f"mse_S{s}": v for s, v in mse.items()}
    return finish(
        ctx,
        record,
        images={"reconstruction": figure},
        tables={"table2": paths["table2.csv"]},
        numbers=metrics,
    )


def run_visual(ctx: Context, kind: str) -> dict[str, Any]:
    """interpolation / consistency / progressive: small, single-process, one figure each."""
    from ddim.evaluation import experiments

    device = single_device(ctx.cfg)
    t0 = time.perf_counter()
    grid, info = getattr(experiments, f"{kind}_grid")(ctx, device)
    path = save_grid(grid, ctx.output_dir / f"{kind}.png")
    record = {
        "task": kind,
        "checkpoint": ctx.checkpoint,
        **sampler_record(ctx, ctx.sampler),
        **info,
        "figure": str(path),
        "wall_time_s": round(time.perf_counter() - t0, 3),
    }
    return finish(ctx, record, images={kind: path})


def finish(
    ctx: Context,
    record: dict[str, Any],
    images: dict[str, Path] | None = None,
    tables: dict[str, Path] | None = None,
    numbers: dict[str, float] | None = None,
) -> dict[str, Any]:
    """metrics.json (always, written last) and the configured loggers (csv / wandb)."""
    from ddim.training import instantiate_group

    write_json(ctx.output_dir / "metrics.json", record)
    loggers = instantiate_group(ctx.cfg.get("logger"))
    if loggers:
        hparams = OmegaConf.to_container(ctx.cfg, resolve=True)
        report(loggers, {**record, **(numbers or {})}, images=images, tables=tables, hparams=hparams)  # type: ignore[arg-type]
    log.info(f"Results: {ctx.output_dir / 'metrics.json'}")
    return record


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the configured task (cfg.task_type) and return what it measured (empty on non-zero ranks)."""
    task = str(cfg.get("task_type", "fid"))
    if task not in TASKS:
        raise DDIMError(f"Unknown task {task!r}; choose task= one of {', '.join(TASKS)}.")
    start = time.perf_counter()
    ctx = load_context(cfg)
    if task in ("fid", "sample"):
        out = run_fid(ctx, with_metrics=task == "fid")
    elif task == "sweep":
        out = run_sweep(ctx)
    elif task == "reconstruction":
        out = run_reconstruction(ctx)
    else:
        out = run_visual(ctx, task)
    if out:
        log.info(f"{task} finished in {time.perf_counter() - start:.1f} s")
    return out
