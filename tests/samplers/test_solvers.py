"""Fast solvers against diffusers' schedulers (float64, same eps, schedule and noise), closed forms and contracts.

diffusers keeps float32 copies of its tables and casts samples to float32 inside some step() calls; to
compare the update rules and not float32 rounding, the tests replace its sigma/alpha tables with ours
(float64) and pass samples as `Keep64` tensors, which ignore requests for float32.

Conventions (ours / diffusers), and which the tests compare:
- final_step="denoise" = final_sigmas_type="zero" (and PNDM's set_alpha_to_one=True): the last call maps x
  to its x0 estimate. final_step="none" with the sequence [0, ...] = final_sigmas_type="sigma_min" (and
  PNDM's set_alpha_to_one=False): the chain stops at t = 0. diffusers only allows "sigma_min" for
  eps-prediction DPM-Solver; ours also defines "denoise" there (the x0 estimate is the step's limit).
- lower_order_final: diffusers applies it only below 15 steps (multistep, UniPC); ours applies it when
  set, so runs with >= 15 steps compare against lower_order_final=False.
- Karras/log-SNR sequences: both round the levels onto integer timesteps, but diffusers' DPM solvers keep
  the unrounded sigma in their coefficients while the network sees the rounded timestep; ours uses the
  table at the rounded timestep for both. The sequences are compared, the updates on shared timesteps.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from ddim.diffusion.oracle import GaussianOracle
from ddim.diffusion.schedule import Schedule, ScheduleError, timestep_sequence
from ddim.errors import DDIMError
from ddim.samplers import PNDM, SAMPLERS, make_sampler, per_sample_generators, sample
from ddim.samplers.base import sampler_from_settings
from ddim.samplers.dpm_solver import dpm_solver_multistep, dpm_solver_singlestep
from ddim.samplers.karras import euler, euler_ancestral, heun
from ddim.samplers.pndm import pndm
from ddim.samplers.unipc import unipc

diffusers = pytest.importorskip("diffusers")

T = 1000
SCHED = Schedule.from_config("linear", T, 1e-4, 0.02)
SHAPE = (2, 3, 4, 4)
TOL = 1e-6


class Keep64(torch.Tensor):
    """A tensor that stays float64 when diffusers asks for float32 (results of ops stay Keep64)."""

    def to(self, *args, **kwargs):
        args = tuple(torch.float64 if a is torch.float32 else a for a in args)
        if kwargs.get("dtype") is torch.float32:
            kwargs["dtype"] = torch.float64
        return super().to(*args, **kwargs)


class CountingEps:
    """A nonlinear eps: the exact eps of N(0, 0.25) data plus a bounded channel-mixing term, so solvers of
    different orders give different answers. Counts its calls."""

    def __init__(self) -> None:
        self.mix = torch.randn(3, 3, generator=torch.Generator().manual_seed(123), dtype=torch.float64) * 0.5
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.dtype == torch.int64 and t.shape == (x.shape[0],)
        self.calls += 1
        x = x.as_subclass(torch.Tensor)
        a = SCHED.alphas_cumprod[t].to(x.dtype).view(-1, 1, 1, 1)
        mixed = (self.mix[None, :, :, None, None] * x[:, None]).sum(2) + 0.3 * x.roll(1, dims=-1)
        return (1 - a).sqrt() * x / (0.25 * a + 1 - a) + 0.1 * torch.tanh(mixed) * (1 + a)


def x_T(shape=SHAPE) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


def sigmas64(timesteps, last: str) -> torch.Tensor:
    """Our table's sigma = sqrt((1 - a) / a) at diffusers' (descending) timesteps, plus the final sigma."""
    a = SCHED.alphas_cumprod
    s = [math.sqrt((1 - float(a[int(t)])) / float(a[int(t)])) for t in timesteps]
    end = {"zero": 0.0, "sigma_min": math.sqrt((1 - float(a[0])) / float(a[0]))}[last]
    return torch.tensor([*s, end], dtype=torch.float64)


def run_diffusers(scheduler, eps_fn, x, scale_input=False, noises=None, generator=None):
    x = x.as_subclass(Keep64)
    for k, t in enumerate(scheduler.timesteps.tolist()):
        inp = scheduler.scale_model_input(x, t) if scale_input else x
        eps = eps_fn(inp, torch.full((x.shape[0],), int(t), dtype=torch.int64))
        kwargs = {}
        if noises is not None:
            kwargs["variance_noise"] = (noises[k] if k < len(noises) else torch.zeros_like(x)).as_subclass(
                Keep64
            )
        if generator is not None:
            kwargs["generator"] = generator
        x = scheduler.step(eps, t, x, **kwargs).prev_sample
    return x.as_subclass(torch.Tensor)


def dpm_scheduler(cls, steps, last="zero", spacing="trailing", **config):
    kwargs = dict(timestep_spacing=spacing) if cls is not diffusers.DPMSolverSinglestepScheduler else {}
    sched = cls(num_train_timesteps=T, beta_schedule="linear", final_sigmas_type=last, **kwargs, **config)
    sched.set_timesteps(steps)
    sched.sigmas = sigmas64(sched.timesteps.tolist(), last)
    return sched


def ours_for(sched, last):
    """Our increasing sequence for a diffusers chain: its timesteps, plus 0 as the endpoint for sigma_min."""
    seq = sorted(sched.timesteps.tolist())
    return ([0] if last == "sigma_min" else []) + seq, ("denoise" if last == "zero" else "none")


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    return float((a - b).abs().max())


# --- parity with diffusers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "order,solver_type,steps,last,lof",
    [
        (2, "midpoint", 10, "zero", True),
        (3, "midpoint", 10, "zero", True),
        (2, "heun", 20, "zero", False),
        (3, "midpoint", 20, "zero", False),
        (3, "midpoint", 8, "sigma_min", True),
    ],
)
def test_dpm_solver_pp_multistep_matches_diffusers(order, solver_type, steps, last, lof):
    net = CountingEps()
    sched = dpm_scheduler(
        diffusers.DPMSolverMultistepScheduler, steps, last, solver_order=order, solver_type=solver_type
    )
    seq, final = ours_for(sched, last)
    assert seq[-1] == 999 and (seq == timestep_sequence(steps, "trailing").tolist() or last == "sigma_min")
    ours = dpm_solver_multistep(
        net, x_T(), seq, SCHED, order, solver_type=solver_type, lower_order_final=lof, final_step=final
    )
    assert net.calls == steps
    assert max_err(ours, run_diffusers(sched, net, x_T())) < TOL


def test_multistep_noise_prediction_matches_diffusers_dpmsolver():
    net = CountingEps()
    sched = dpm_scheduler(diffusers.DPMSolverMultistepScheduler, 10, "sigma_min", algorithm_type="dpmsolver")
    seq, final = ours_for(sched, "sigma_min")
    ours = dpm_solver_multistep(net, x_T(), seq, SCHED, 2, predict_x0=False, final_step=final)
    assert max_err(ours, run_diffusers(sched, net, x_T())) < TOL


def test_sde_dpm_solver_pp_matches_diffusers_with_the_same_noise():
    net = CountingEps()
    steps = 10
    sched = dpm_scheduler(diffusers.DPMSolverMultistepScheduler, steps, algorithm_type="sde-dpmsolver++")
    seq, final = ours_for(sched, "zero")
    ours = dpm_solver_multistep(
        net, x_T(), seq, SCHED, 2, sde=True, generator=torch.Generator().manual_seed(3)
    )
    gen = torch.Generator().manual_seed(3)  # our draws: one per step but the last (which has no noise)
    noises = [torch.randn(SHAPE, generator=gen, dtype=torch.float64) for _ in range(steps - 1)]
    assert max_err(ours, run_diffusers(sched, net, x_T(), noises=noises)) < TOL


@pytest.mark.parametrize(
    "order,solver_type,steps,lof,algorithm",
    [
        (2, "midpoint", 10, False, "dpmsolver"),
        (3, "midpoint", 10, True, "dpmsolver"),
        (3, "midpoint", 9, True, "dpmsolver"),
        (3, "heun", 12, True, "dpmsolver"),
        (2, "midpoint", 10, True, "dpmsolver++"),
    ],
)
def test_dpm_solver_singlestep_matches_diffusers(order, solver_type, steps, lof, algorithm):
    # diffusers allows only sigma_min for eps prediction; DPM-Solver++(2S) is compared with the zero end.
    last = "sigma_min" if algorithm == "dpmsolver" else "zero"
    net = CountingEps()
    sched = dpm_scheduler(
        diffusers.DPMSolverSinglestepScheduler,
        steps,
        last,
        solver_order=order,
        solver_type=solver_type,
        algorithm_type=algorithm,
        lower_order_final=lof,
    )
    seq, final = ours_for(sched, last)
    ours = dpm_solver_singlestep(
        net, x_T(), seq, SCHED, order, algorithm == "dpmsolver++", solver_type, lof, final
    )
    assert max_err(ours, run_diffusers(sched, net, x_T())) < TOL


@pytest.mark.parametrize(
    "order,variant,steps,corrector,last",
    [
        (2, "bh2", 10, True, "zero"),
        (3, "bh2", 10, True, "zero"),
        (3, "bh2", 20, True, "sigma_min"),
        (2, "bh1", 10, True, "sigma_min"),
        (3, "bh1", 10, False, "sigma_min"),  # bh1's B(h) = -h is infinite on the step to sigma = 0: NaN there
    ],
)
def test_unipc_matches_diffusers(order, variant, steps, corrector, last):
    net = CountingEps()
    sched = dpm_scheduler(
        diffusers.UniPCMultistepScheduler,
        steps,
        last,
        solver_order=order,
        solver_type=variant,
        disable_corrector=[] if corrector else list(range(steps)),
    )
    seq, final = ours_for(sched, last)
    # diffusers' UniPC applies lower_order_final at any number of steps, as ours.
    ours = unipc(net, x_T(), seq, SCHED, order, variant, corrector, lower_order_final=True, final_step=final)
    assert max_err(ours, run_diffusers(sched, net, x_T())) < TOL


def test_heun_matches_diffusers_on_a_karras_sequence():
    net = CountingEps()
    seq = timestep_sequence(10, "karras", T, alphas_cumprod=SCHED.alphas_cumprod).tolist()
    sched = diffusers.HeunDiscreteScheduler(num_train_timesteps=T, beta_schedule="linear")
    sched.set_timesteps(timesteps=seq[::-1])
    s = sigmas64(seq[::-1], "zero")
    sched.sigmas = torch.cat([s[:1], s[1:-1].repeat_interleave(2), s[-1:]])
    y_T = x_T() / math.sqrt(float(SCHED.alphas_cumprod[seq[-1]]))  # diffusers' sample is x / alpha
    ours = heun(net, x_T(), seq, SCHED)
    assert net.calls == 2 * len(seq) - 1
    assert max_err(ours, run_diffusers(sched, net, y_T, scale_input=True)) < TOL


@pytest.mark.parametrize("ancestral", [False, True])
def test_euler_and_euler_ancestral_match_diffusers(ancestral):
    net = CountingEps()
    cls = diffusers.EulerAncestralDiscreteScheduler if ancestral else diffusers.EulerDiscreteScheduler
    spacing = "leading" if ancestral else "trailing"
    sched = cls(num_train_timesteps=T, beta_schedule="linear", timestep_spacing=spacing)
    sched.set_timesteps(10)
    seq = sorted(int(t) for t in sched.timesteps.tolist())
    assert seq == timestep_sequence(10, spacing).tolist()
    sched.sigmas = sigmas64(seq[::-1], "zero")
    y_T = x_T() / math.sqrt(float(SCHED.alphas_cumprod[seq[-1]]))
    if ancestral:
        ours = euler_ancestral(net, x_T(), seq, SCHED, generator=torch.Generator().manual_seed(5))
        theirs = run_diffusers(sched, net, y_T, True, generator=torch.Generator().manual_seed(5))
    else:
        ours, theirs = euler(net, x_T(), seq, SCHED), run_diffusers(sched, net, y_T, True)
    assert max_err(ours, theirs) < TOL


def test_euler_is_ddim_and_euler_ancestral_is_ddim_eta_one():
    net = CountingEps()
    seq = timestep_sequence(10, "quadratic")
    assert max_err(euler(net, x_T(), seq, SCHED), sample(net, x_T(), seq, SCHED, eta=0.0)) < 1e-10
    gens = per_sample_generators(0, range(2))
    ancestral = euler_ancestral(net, x_T(), seq, SCHED, generator=gens)
    ddpm = sample(net, x_T(), seq, SCHED, eta=1.0, generator=per_sample_generators(0, range(2)))
    assert max_err(ancestral, ddpm) < 1e-10


@pytest.mark.parametrize("skip_prk,alpha_one", [(False, True), (True, True), (False, False)])
def test_pndm_matches_diffusers(skip_prk, alpha_one):
    net = CountingEps()
    steps = 10
    sched = diffusers.PNDMScheduler(
        num_train_timesteps=T, beta_schedule="linear", skip_prk_steps=skip_prk, set_alpha_to_one=alpha_one
    )
    sched.set_timesteps(steps)
    sched.alphas_cumprod = SCHED.alphas_cumprod.clone()
    sched.final_alpha_cumprod = (
        torch.tensor(1.0, dtype=torch.float64) if alpha_one else SCHED.alphas_cumprod[0]
    )
    seq = timestep_sequence(steps, "leading").tolist()
    final = "denoise" if alpha_one else "none"  # set_alpha_to_one=False ends with a no-op step at t = 0
    ours = pndm(net, x_T(), seq, SCHED, "plms" if skip_prk else "prk", final)
    cfg = PNDM(steps=steps, skip_type="leading", warm_start="plms" if skip_prk else "prk", final_step=final)
    assert net.calls == cfg.nfe(SCHED) == (steps + 9 if not skip_prk else steps + 1) - (not alpha_one)
    assert max_err(ours, run_diffusers(sched, net, x_T())) < TOL


@pytest.mark.parametrize("steps", [5, 10, 20])
def test_noise_level_sequences_match_diffusers(steps):
    karras = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T, use_karras_sigmas=True)
    karras.set_timesteps(steps)
    lu = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T, use_lu_lambdas=True)
    lu.set_timesteps(steps)
    table = SCHED.alphas_cumprod
    assert timestep_sequence(steps, "karras", T, alphas_cumprod=table).tolist() == sorted(
        karras.timesteps.tolist()
    )
    assert timestep_sequence(steps, "logsnr", T, alphas_cumprod=table).tolist() == sorted(
        lu.timesteps.tolist()
    )
    ddim = diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing="leading", steps_offset=0)
    ddim.set_timesteps(steps + 3)  # 13, 23: T // S differs from T / S
    assert timestep_sequence(steps + 3, "leading").tolist() == sorted(ddim.timesteps.tolist())


# --- order of accuracy on Gaussian data ----------------------------------------------------------------

MEAN = torch.tensor([0.5, -0.3, 0.7, -0.6], dtype=torch.float64)
STD = torch.tensor([0.05, 0.1, 0.2, 0.4], dtype=torch.float64)
END = 99  # the ODE is solved from t = 999 to t = 99 (final_step=none): every step is a full solver step


def exact_ode(x: torch.Tensor, t_from: int, t_to: int) -> torch.Tensor:
    """The probability-flow ODE moves each Gaussian marginal onto the next by the increasing affine map, so
    the standardised coordinate (x - sqrt(a) mu) / sqrt(a s^2 + 1 - a) is conserved along it."""
    a0, a1 = float(SCHED.alphas_cumprod[t_from]), float(SCHED.alphas_cumprod[t_to])
    z = (x - math.sqrt(a0) * MEAN) / (a0 * STD**2 + 1 - a0).sqrt()
    return math.sqrt(a1) * MEAN + (a1 * STD**2 + 1 - a1).sqrt() * z


ORDERS = {  # solver -> (run(eps, x, seq), expected slope of log error vs log steps)
    "euler": (lambda e, x, s: euler(e, x, s, SCHED, "none"), 1),
    "heun": (lambda e, x, s: heun(e, x, s, SCHED, "none"), 2),
    "dpm_solver_pp2": (
        lambda e, x, s: dpm_solver_multistep(e, x, s, SCHED, 2, lower_order_final=False, final_step="none"),
        2,
    ),
    # The reference code's (and diffusers') 3M weighs D2 by half its Taylor weight: second order.
    "dpm_solver_pp3": (
        lambda e, x, s: dpm_solver_multistep(e, x, s, SCHED, 3, lower_order_final=False, final_step="none"),
        2,
    ),
    "dpm_solver_pp3_heun": (
        lambda e, x, s: dpm_solver_multistep(
            e, x, s, SCHED, 3, solver_type="heun", lower_order_final=False, final_step="none"
        ),
        3,
    ),
    "dpm_solver2": (
        lambda e, x, s: dpm_solver_singlestep(e, x, s, SCHED, 2, lower_order_final=False, final_step="none"),
        2,
    ),
    "dpm_solver3": (
        lambda e, x, s: dpm_solver_singlestep(e, x, s, SCHED, 3, lower_order_final=False, final_step="none"),
        3,
    ),
    "unip2": (
        lambda e, x, s: unipc(e, x, s, SCHED, 2, corrector=False, lower_order_final=False, final_step="none"),
        2,
    ),
    # The corrector raises the order by one at no extra call.
    "unipc1": (lambda e, x, s: unipc(e, x, s, SCHED, 1, lower_order_final=False, final_step="none"), 2),
    "unipc2": (lambda e, x, s: unipc(e, x, s, SCHED, 2, lower_order_final=False, final_step="none"), 3),
    "unipc2_bh1": (
        lambda e, x, s: unipc(e, x, s, SCHED, 2, "bh1", lower_order_final=False, final_step="none"),
        3,
    ),
    "unipc3": (lambda e, x, s: unipc(e, x, s, SCHED, 3, lower_order_final=False, final_step="none"), 4),
    # PLMS's 4th-order weights act on eps in t, not on the ODE's variable: measured second order.
    "pndm": (lambda e, x, s: pndm(e, x, s, SCHED, "prk", "none"), 2),
}


@pytest.mark.parametrize("name", list(ORDERS))
def test_error_against_the_exact_ode_falls_at_the_solvers_order(name):
    run, expected = ORDERS[name]
    oracle = GaussianOracle(MEAN, STD, SCHED)
    # The solvers map x_T affinely (exact eps is affine); rows 0 and 1 give that map's offset and slope.
    x = torch.stack([torch.zeros(4), torch.ones(4)]).to(torch.float64)
    steps = [150, 225, 300, 450]  # evenly spaced in t (PNDM assumes it), 900 / steps apart; asymptotic regime
    errors = [
        float((run(oracle.eps, x, list(range(END, T, 900 // n))) - exact_ode(x, T - 1, END)).abs().max())
        for n in steps
    ]
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(slope - expected) < 0.3, (name, slope, errors)


# --- the config: dispatch, NFE, validation, noise contract, Hydra group -------------------------------

NAMES = [
    "ddim",
    "dpm_solver_pp",
    "sde_dpm_solver_pp",
    "dpm_solver",
    "unipc",
    "heun",
    "euler",
    "euler_ancestral",
    "pndm",
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "skip_type,final", [("uniform", "denoise"), ("quadratic", "none"), ("karras", "denoise")]
)
def test_nfe_counts_the_network_calls_actually_made(name, skip_type, final):
    if name == "ddim" and final == "none":
        final = "denoise"
    options = {} if name == "ddim" else {"final_step": final}
    cfg = make_sampler(name, steps=50, skip_type=skip_type, **options)
    net = CountingEps()
    out = cfg.run(net, x_T((1, 3, 2, 2)), SCHED, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all()
    assert net.calls == cfg.nfe(SCHED)
    distinct = len(set(cfg.sequence(SCHED)))  # quadratic S=50 repeats 0
    if name not in ("ddim", "heun", "pndm"):
        assert net.calls == distinct - (final == "none")
    assert cfg.tag().startswith("eta0_" if name == "ddim" else name)


def test_config_dispatches_to_the_solver_functions():
    seq = timestep_sequence(10, "logsnr", T, alphas_cumprod=SCHED.alphas_cumprod)
    net = CountingEps()
    cfg = make_sampler("dpm_solver_pp", order=3, steps=10, skip_type="logsnr", lower_order_final=False)
    assert torch.equal(
        cfg.run(net, x_T(), SCHED), dpm_solver_multistep(net, x_T(), seq, SCHED, 3, lower_order_final=False)
    )
    cfg = make_sampler("unipc", order=3, variant="bh1", steps=10, skip_type="logsnr", final_step="none")
    assert torch.equal(cfg.run(net, x_T(), SCHED), unipc(net, x_T(), seq, SCHED, 3, "bh1", final_step="none"))
    assert cfg.tag() == "unipc3_S10_logsnr_bh1_nodenoise"
    cfg = make_sampler("pndm", steps=10, skip_type="uniform", warm_start="plms")
    assert torch.equal(cfg.run(net, x_T(), SCHED), pndm(net, x_T(), timestep_sequence(10), SCHED, "plms"))
    assert make_sampler("heun", steps=10).nfe(SCHED) == 19 and make_sampler("pndm", steps=10).nfe(SCHED) == 19
    # Existing behaviour: the ddim tag is unchanged.
    assert make_sampler("ddim", steps=10).tag() == "eta0_S10_uniform"


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("dpm_solver_ppp", {}, "Unknown sampler 'dpm_solver_ppp'; choose one of ddim, dpm_solver_pp"),
        ("dpm_solver_pp", dict(order=4), r"^sampler.order=4 is invalid: it must be one of 1, 2, 3"),
        ("sde_dpm_solver_pp", dict(order=3), r"^sampler.order=3 is invalid: it must be one of 1, 2"),
        ("unipc", dict(variant="bh3"), r"^sampler.variant=bh3 is invalid: it must be one of bh1, bh2"),
        (
            "dpm_solver",
            dict(solver_type="rk"),
            r"^sampler.solver_type=rk is invalid: it must be one of midpoint",
        ),
        ("pndm", dict(warm_start="rk4"), r"^sampler.warm_start=rk4 is invalid: it must be one of prk, plms"),
        (
            "heun",
            dict(final_step="zero"),
            r"^sampler.final_step=zero is invalid: it must be one of denoise, none",
        ),
        ("heun", dict(eta=0.5), r"^sampler.eta is not a setting of sampler=heun; its settings are: steps,"),
        ("unipc", dict(clip_x0=True), r"^sampler.clip_x0 is not a setting of sampler=unipc"),
        ("ddim", dict(final_step="none"), r"^sampler.final_step is not a setting of sampler=ddim"),
        ("euler", dict(steps=1, final_step="none"), "at least two distinct timesteps"),
        ("unipc", dict(corrector="yes"), r"^sampler.corrector=yes is invalid: it must be true or false"),
    ],
)
def test_bad_solver_settings_raise_one_clear_error(name, kwargs, match):
    net = CountingEps()
    with pytest.raises(DDIMError, match=match):
        make_sampler(name, **kwargs).check_schedule(SCHED).run(net, x_T(), SCHED)
    assert net.calls == 0


@pytest.mark.parametrize(
    "name,key,value",
    [
        ("heun", "order", 3),
        ("ddim", "variant", "bh1"),
        ("euler", "lower_order_final", False),
        ("pndm", "solver_type", "heun"),
        ("unipc", "warm_start", "plms"),
        ("dpm_solver_pp", "corrector", False),
        ("euler_ancestral", "variance", "sigma_hat"),
        ("ddim", "order", 3),
    ],
)
def test_an_option_the_sampler_does_not_have_is_refused(name, key, value):
    valid = ", ".join(f.name for f in dataclasses.fields(SAMPLERS[name]))
    with pytest.raises(
        DDIMError, match=f"^sampler.{key} is not a setting of sampler={name}; its settings are: {valid}"
    ):
        make_sampler(name, **{key: value})
    owner = next(n for n, cls in SAMPLERS.items() if key in {f.name for f in dataclasses.fields(cls)})
    make_sampler(owner, **{key: value}).check_schedule(SCHED)  # the same value where it applies


def test_steps_that_are_not_a_number_give_one_line():
    with pytest.raises(
        DDIMError,
        match=r"^sampler.steps=ten is invalid: it must be an integer >= 1, e.g. sampler.steps=100\.$",
    ):
        make_sampler("ddim", steps="ten")


def test_schedule_errors_keep_their_type():
    with pytest.raises(ScheduleError, match=r"sampler.steps must be an integer in \[1, 1000\]"):
        make_sampler("unipc", steps=1001).check_schedule(SCHED)


def test_noise_level_schedules_span_the_table():
    seq = make_sampler("unipc", steps=10, skip_type="karras").sequence(SCHED)
    assert seq[0] == 0 and seq[-1] == T - 1


@pytest.mark.parametrize("name", ["sde_dpm_solver_pp", "euler_ancestral"])
def test_stochastic_solvers_keep_the_per_sample_noise_contract(name):
    cfg = make_sampler(name, steps=8, skip_type="trailing")
    xs = x_T((4, 3, 2, 2))
    full = cfg.run(CountingEps(), xs, SCHED, generator=per_sample_generators(3, range(4)))
    part = cfg.run(CountingEps(), xs[2:], SCHED, generator=per_sample_generators(3, range(2, 4)))
    assert torch.equal(full[2:], part)  # sample i does not depend on the batch it is in
    other = cfg.run(CountingEps(), xs, SCHED, generator=per_sample_generators(4, range(4)))
    assert not torch.allclose(full, other)
    # One draw per step with noise (all but the last), as ddim.samplers.sample.
    gens = per_sample_generators(3, range(4))
    cfg.run(CountingEps(), xs, SCHED, generator=gens)
    replay = per_sample_generators(3, range(4))
    for _ in range(7):
        [torch.randn((1, 3, 2, 2), generator=g, dtype=torch.float64) for g in replay]
    assert all(torch.equal(g.get_state(), r.get_state()) for g, r in zip(gens, replay, strict=True))


@pytest.mark.parametrize("name", ["dpm_solver_pp", "dpm_solver", "unipc", "heun", "euler", "pndm"])
def test_deterministic_solvers_draw_nothing(name):
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    make_sampler(name, steps=6).run(CountingEps(), x_T(), SCHED, generator=gen)
    assert torch.equal(gen.get_state(), state)


@pytest.mark.parametrize(
    "name",
    ["dpm_solver_pp", "sde_dpm_solver_pp", "dpm_solver", "unipc", "heun", "euler", "euler_ancestral", "pndm"],
)
def test_hydra_sampler_group_has_every_solver(name):
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        as_shipped = sampler_from_settings(compose(overrides=[f"+sampler={name}"]).sampler)
        order = ["sampler.order=3"] * hasattr(as_shipped, "order")
        cfg = compose(overrides=[f"+sampler={name}", "sampler.steps=12", *order])
    as_shipped.check_schedule(SCHED)  # every file of conf/sampler/ is valid as it stands
    # ... and lists exactly the settings of its class, with the class's defaults
    assert {k: v for k, v in cfg.sampler.items() if k != "_target_"}.keys() == as_shipped.settings().keys()
    assert as_shipped == type(as_shipped)()
    if name == "sde_dpm_solver_pp":
        with pytest.raises(DDIMError, match="^sampler.order=3 is invalid: it must be one of 1, 2"):
            sampler_from_settings(cfg.sampler)
        return
    sampler = sampler_from_settings(cfg.sampler)
    assert sampler.check_schedule(SCHED).name == name and sampler.steps == 12
    assert sampler.nfe(SCHED) >= 11


@pytest.mark.parametrize("skip_type", ["logsnr", "karras"])
def test_noise_level_sequences_stay_distinct_on_the_integer_grid(skip_type):
    for steps in (2, 50, 200, 1000):
        seq = timestep_sequence(steps, skip_type, T, alphas_cumprod=SCHED.alphas_cumprod).tolist()
        assert len(seq) == steps and seq == sorted(set(seq)) and seq[0] == 0 and seq[-1] == T - 1
    assert timestep_sequence(1000, skip_type, T, alphas_cumprod=SCHED.alphas_cumprod).tolist() == list(
        range(T)
    )
    with pytest.raises(ValueError, match="needs the noise schedule"):
        timestep_sequence(10, skip_type, T)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_reports_each_step_to_the_callback(name):
    sampler = make_sampler(name, steps=6, skip_type="uniform")
    steps = []
    out = sampler.run(
        CountingEps(), x_T(), SCHED, generator=torch.Generator().manual_seed(0), callback=steps.append
    )
    assert [s.i for s in steps] == list(range(len(steps))) and len(steps) >= 5
    seq = sampler.sequence(SCHED)
    assert steps[0].t == seq[-1]  # the first network call is at the noisiest timestep
    assert [s.t_next for s in steps[:-1]] == [s.t for s in steps[1:]]  # each step starts where the last ended
    assert steps[-1].t_next == -1 and torch.equal(steps[-1].x, out)  # final_step=denoise: the clean end
    assert all(s.x0_hat is not None and s.x0_hat.shape == out.shape for s in steps)
    # The estimate of the last step is the sample itself for every sampler that ends with the denoise call.
    assert torch.allclose(steps[-1].x0_hat, out)
