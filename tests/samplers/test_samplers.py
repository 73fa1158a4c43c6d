"""Samplers against diffusers' schedulers, a transcription of the DDIM reference loop, and their own contracts.

Conventions of diffusers' DDIMScheduler that differ from the paper (ours follows the paper):
- timestep_spacing="leading": tau_i = i * (T // S) (+ steps_offset), equal to the paper's floor(i * T / S)
  only when S divides T (S = 30: 0, 33, ..., 957 vs 0, 33, 66, 100, ..., 966). DDIMScheduler.step also
  assumes a constant stride T // S, so it cannot run the paper's sequence when S does not divide T.
- steps_offset (1 in Stable Diffusion configs) shifts every timestep by one.
- set_alpha_to_one=False (Stable Diffusion) makes the last step go to a_0 instead of a_{-1} = 1: it ends at
  x_{tau_0} and skips the final denoising.
- "trailing" spacing starts at T - 1; the paper's sequences always start at 0.
Where they coincide the trajectories must agree; where they differ we check that passing diffusers'
sequence as a custom list reproduces it, and that the paper's sequence matches the DDIM reference loop.
"""

from __future__ import annotations

import math

import pytest
import torch

from ddim.diffusion.schedule import Schedule, ScheduleError, timestep_sequence
from ddim.samplers import (
    DDIM,
    consistency,
    encode,
    generalized_step,
    initial_noise,
    interpolate,
    make_sampler,
    per_sample_generators,
    progressive,
    sample,
    slerp,
)
from ddim.samplers.base import sampler_from_settings

T = 1000
SCHED = Schedule.from_config("linear", T, 1e-4, 0.02)
SHAPE = (2, 3, 8, 8)


class TinyEps(torch.nn.Module):
    """A near-denoiser (the exact eps of N(0, 0.25) data) plus a fixed random channel-mixing and
    neighbour term, so trajectories stay O(1) like real ones while eps is still a nonlinear function of
    x and t. Records the timesteps it gets."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(123)
        self.mix = torch.randn(channels, channels, generator=gen, dtype=torch.float64) * 0.5
        self.calls: list[list[int]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.dtype == torch.int64 and t.shape == (x.shape[0],)
        self.calls.append(t.tolist())
        a = SCHED.alphas_cumprod[t].to(x.dtype).view(-1, 1, 1, 1)
        denoiser = (1 - a).sqrt() * x / (0.25 * a + 1 - a)
        # Broadcast-and-sum instead of a matmul: BLAS on tiny float64 tensors is slow under CPU contention.
        mixed = (self.mix.to(x.dtype)[None, :, :, None, None] * x[:, None]).sum(2) + 0.3 * x.roll(1, dims=-1)
        return denoiser + 0.1 * torch.tanh(mixed) * (1 + a)


def x_T(dtype=torch.float64, shape=SHAPE) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(7), dtype=dtype)


def step_noises(seed: int, n: int, dtype=torch.float64, shape=SHAPE) -> list[torch.Tensor]:
    """The draws our sampler makes with Generator(seed): one per noisy step, in step order."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=dtype) for _ in range(n)]


def diffusers_ddim(**config):
    diffusers = pytest.importorskip("diffusers")
    kwargs = dict(timestep_spacing="leading", set_alpha_to_one=True, clip_sample=False, steps_offset=0)
    kwargs.update(config)
    return diffusers.DDIMScheduler(
        num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", **kwargs
    )


def run_diffusers_ddim(scheduler, eps_fn, x, steps: int, eta: float, noises, float64: bool = True):
    scheduler.set_timesteps(steps)
    if float64:
        # Same float64 table as ours, so the comparison tests the update rule and not float32 rounding.
        assert torch.allclose(scheduler.alphas_cumprod.double(), SCHED.alphas_cumprod, rtol=1e-5)
        scheduler.alphas_cumprod = SCHED.alphas_cumprod.clone()
        scheduler.final_alpha_cumprod = (
            torch.tensor(1.0, dtype=torch.float64)
            if scheduler.config.set_alpha_to_one
            else SCHED.alphas_cumprod[0].clone()
        )
    xs, x0s = [x], []
    for k, t in enumerate(scheduler.timesteps.tolist()):
        eps = eps_fn(x, torch.full((x.shape[0],), t, dtype=torch.int64))
        noise = noises[k] if eta > 0 and k < len(noises) else None
        if eta > 0 and noise is None:
            noise = torch.zeros_like(x)  # the last step has sigma = 0 when the final alpha is 1
        out = scheduler.step(eps, t, x, eta=eta, variance_noise=noise)
        x = out.prev_sample
        xs.append(x)
        x0s.append(out.pred_original_sample)
    return scheduler.timesteps.tolist(), xs, x0s


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert len(a) == len(b)
    return max(float((u - v).abs().max()) for u, v in zip(a, b, strict=True))


@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_matches_diffusers_ddim_where_conventions_agree(steps, eta, trajectory):
    net = TinyEps()
    ours = trajectory(
        sample,
        net,
        x_T(),
        timestep_sequence(steps, "uniform", T),
        SCHED,
        eta=eta,
        generator=torch.Generator().manual_seed(1),
    )
    timesteps, xs, x0s = run_diffusers_ddim(
        diffusers_ddim(), net, x_T(), steps, eta, step_noises(1, steps - 1)
    )
    assert sorted(timesteps) == timestep_sequence(steps, "uniform", T).tolist()
    assert max_diff(ours.xs, xs) < 1e-10
    assert max_diff(ours.x0_hats, x0s) < 1e-10
    assert torch.equal(ours.x0, ours.xs[-1])


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_matches_diffusers_ddim_in_float32_with_its_own_tables(eta, trajectory):
    net = TinyEps()
    steps = 20
    ours = trajectory(
        sample,
        net,
        x_T(torch.float32),
        timestep_sequence(steps, "uniform", T),
        SCHED,
        eta=eta,
        generator=torch.Generator().manual_seed(1),
    )
    noises = step_noises(1, steps - 1, torch.float32)
    _, xs, x0s = run_diffusers_ddim(
        diffusers_ddim(), net, x_T(torch.float32), steps, eta, noises, float64=False
    )
    assert max_diff(ours.xs, xs) < 1e-5
    # x0_hat at t = 999 is x / sqrt(4e-5): float32 rounding of a_t is amplified 160x there (measured 2.5e-5).
    assert max_diff(ours.x0_hats, x0s) < 1e-4


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_leading_spacing_differs_from_paper_when_s_does_not_divide_t(eta, trajectory):
    steps = 30
    paper = timestep_sequence(steps, "uniform", T).tolist()
    scheduler = diffusers_ddim()
    scheduler.set_timesteps(steps)
    leading = sorted(scheduler.timesteps.tolist())
    assert leading != paper and leading[1] == paper[1] == 33 and leading[-1] == 957 and paper[-1] == 966
    # diffusers' own sequence, given to our sampler as a custom list, reproduces diffusers exactly.
    net = TinyEps()
    ours = trajectory(sample, net, x_T(), leading, SCHED, eta=eta, generator=torch.Generator().manual_seed(1))
    _, xs, x0s = run_diffusers_ddim(scheduler, net, x_T(), steps, eta, step_noises(1, steps - 1))
    assert max_diff(ours.xs, xs) < 1e-10 and max_diff(ours.x0_hats, x0s) < 1e-10


def test_steps_offset_and_trailing_are_custom_sequences(trajectory):
    net = TinyEps()
    offset = [t + 1 for t in timestep_sequence(10, "uniform", T).tolist()]
    ours = trajectory(sample, net, x_T(), offset, SCHED, eta=0.0)
    _, xs, _ = run_diffusers_ddim(diffusers_ddim(steps_offset=1), net, x_T(), 10, 0.0, [])
    assert max_diff(ours.xs, xs) < 1e-10

    trailing = diffusers_ddim(timestep_spacing="trailing")
    trailing.set_timesteps(10)
    seq = sorted(trailing.timesteps.tolist())
    assert seq == list(range(99, 1000, 100))
    ours = trajectory(sample, net, x_T(), seq, SCHED, eta=0.0)
    _, xs, _ = run_diffusers_ddim(trailing, net, x_T(), 10, 0.0, [])
    assert max_diff(ours.xs, xs) < 1e-10


def test_set_alpha_to_one_false_stops_before_the_last_denoising_step(trajectory):
    net = TinyEps()
    ours = trajectory(sample, net, x_T(), timestep_sequence(10, "uniform", T), SCHED, eta=0.0)
    _, xs, _ = run_diffusers_ddim(diffusers_ddim(set_alpha_to_one=False), net, x_T(), 10, 0.0, [])
    # Its last step maps t = 0 to a_0 itself (a no-op), so it returns our x_{tau_0}, not our x_0.
    assert max_diff(ours.xs[:-1], xs[:-1]) < 1e-10
    assert float((xs[-1] - ours.xs[-2]).abs().max()) < 1e-10
    assert float((xs[-1] - ours.x0).abs().max()) > 1e-4


def reference_generalized_steps(x, seq, model, b, eta, noises):
    """ermongroup/ddim functions/denoising.py::generalized_steps, transcribed (noise passed in, CPU, float64)."""

    def compute_alpha(beta, t):
        beta = torch.cat([torch.zeros(1, dtype=beta.dtype), beta], dim=0)
        return (1 - beta).cumprod(dim=0).index_select(0, t + 1).view(-1, 1, 1, 1)

    n = x.size(0)
    seq_next = [-1] + list(seq[:-1])
    xs, x0_preds = [x], []
    for k, (i, j) in enumerate(zip(reversed(seq), reversed(seq_next), strict=True)):
        t = torch.ones(n, dtype=torch.int64) * i
        next_t = torch.ones(n, dtype=torch.int64) * j
        at, at_next = compute_alpha(b, t), compute_alpha(b, next_t)
        xt = xs[-1]
        et = model(xt, t)
        x0_t = (xt - et * (1 - at).sqrt()) / at.sqrt()
        x0_preds.append(x0_t)
        c1 = eta * ((1 - at / at_next) * (1 - at_next) / (1 - at)).sqrt()
        c2 = ((1 - at_next) - c1**2).sqrt()
        xs.append(at_next.sqrt() * x0_t + c1 * noises[k] + c2 * et)
    return xs, x0_preds


@pytest.mark.parametrize("skip_type,steps", [("uniform", 30), ("quadratic", 50), ("quadratic", 7)])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_matches_ddim_reference_loop_on_paper_sequences(skip_type, steps, eta, trajectory):
    net = TinyEps()
    seq = timestep_sequence(steps, skip_type, T).tolist()
    ours = trajectory(sample, net, x_T(), seq, SCHED, eta=eta, generator=torch.Generator().manual_seed(1))
    # Our sampler skips the draw when sigma = 0 (the last step, and repeated timesteps of quadratic).
    pairs = zip(reversed(seq), reversed([-1, *seq[:-1]]), strict=True)
    noisy = [eta > 0 and s >= 0 and s != t for t, s in pairs]
    draws = iter(step_noises(1, sum(noisy)))
    noises = [next(draws) if flag else torch.zeros(SHAPE, dtype=torch.float64) for flag in noisy]
    xs, x0s = reference_generalized_steps(x_T(), seq, net, SCHED.betas, eta, noises)
    assert max_diff(ours.xs, xs) < 1e-10 and max_diff(ours.x0_hats, x0s) < 1e-10


@pytest.mark.parametrize("steps", [10, 30])
def test_sigma_hat_matches_diffusers_ddpm_fixed_large(steps, trajectory):
    diffusers = pytest.importorskip("diffusers")
    net = TinyEps()
    seq = timestep_sequence(steps, "uniform", T).tolist()
    gens = per_sample_generators(3, range(SHAPE[0]))
    ours = trajectory(sample, net, x_T(), seq, SCHED, variance="sigma_hat", clip_x0=True, generator=gens)
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=T,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        variance_type="fixed_large",
        clip_sample=True,
        clip_sample_range=1.0,
    )
    scheduler.set_timesteps(timesteps=seq[::-1])
    scheduler.alphas_cumprod = SCHED.alphas_cumprod.clone()
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    gens = per_sample_generators(3, range(SHAPE[0]))  # the same per-sample streams, fresh
    x, xs, x0s = x_T(), [x_T()], []
    for t in scheduler.timesteps.tolist():
        out = scheduler.step(net(x, torch.full((SHAPE[0],), t)), t, x, generator=gens)
        x = out.prev_sample
        xs.append(x)
        x0s.append(out.pred_original_sample)
    assert max_diff(ours.xs, xs) < 1e-10 and max_diff(ours.x0_hats, x0s) < 1e-10
    assert float(torch.stack(ours.x0_hats).abs().max()) <= 1.0


def test_sigma_hat_step_is_the_posterior_formula():
    # One step checked against REFERENCE.md's formula written out by hand, for non-trivial a_t, a_s.
    x, eps, z = x_T(), torch.full(SHAPE, 0.3, dtype=torch.float64), torch.ones(SHAPE, dtype=torch.float64)
    a_t, a_s = 0.3, 0.6
    x0 = ((x - math.sqrt(0.7) * 0.3) / math.sqrt(0.3)).clamp(-1, 1)
    beta = 1 - a_t / a_s
    mean = (math.sqrt(a_s) * beta * x0 + math.sqrt(1 - beta) * (1 - a_s) * x) / (1 - a_t)
    out, x0_hat = generalized_step(x, eps, a_t, a_s, 0.0, z, clip_x0=True, variance="sigma_hat")
    assert torch.allclose(out, mean + math.sqrt(beta), atol=1e-12) and torch.equal(x0_hat, x0)
    last, _ = generalized_step(x, eps, a_t, 1.0, 0.0, None, clip_x0=True, variance="sigma_hat")
    assert torch.allclose(last, x0, atol=1e-12)  # the step to a = 1 adds no noise and returns x0_hat


def test_eps_fn_gets_int64_timesteps_in_sampling_order():
    net = TinyEps()
    seq = timestep_sequence(5, "uniform", T).tolist()
    sample(net, x_T(), seq, SCHED)
    assert net.calls == [[t] * SHAPE[0] for t in reversed(seq)]


def test_same_seed_same_samples_and_different_seed_differs():
    net = TinyEps()
    seq = timestep_sequence(10, "uniform", T)

    def run(seed):
        return sample(net, x_T(), seq, SCHED, eta=1.0, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(0), run(0))
    assert not torch.allclose(run(0), run(1))


@pytest.mark.parametrize("variance,eta", [("eta", 1.0), ("eta", 0.5), ("sigma_hat", 1.0)])
def test_per_sample_generators_make_sample_i_independent_of_batch_size(variance, eta):
    net = TinyEps()
    seq = timestep_sequence(10, "uniform", T)

    def run(indices):
        gens = per_sample_generators(5, indices)
        x = initial_noise((len(indices), 3, 8, 8), gens, dtype=torch.float64)
        return sample(net, x, seq, SCHED, eta=eta, variance=variance, generator=gens)

    full = run(range(8))
    for batch in (1, 3, 8):
        parts = torch.cat([run(range(i, min(i + batch, 8))) for i in range(0, 8, batch)])
        assert torch.allclose(parts, full, atol=1e-12, rtol=0)
    one = (1, 3, 8, 8)
    assert not torch.equal(
        initial_noise(one, per_sample_generators(5, [0])), initial_noise(one, per_sample_generators(6, [0]))
    )


def test_bad_inputs_raise_clear_value_errors():
    net, seq = TinyEps(), timestep_sequence(10, "uniform", T)
    with pytest.raises(ValueError, match="eta must be a number >= 0"):
        sample(net, x_T(), seq, SCHED, eta=-0.1)
    with pytest.raises(ValueError, match="Unknown sampler.variance 'large'"):
        sample(net, x_T(), seq, SCHED, variance="large")
    with pytest.raises(ValueError, match="eta=3.0 is too large"):
        sample(net, x_T(), seq, SCHED, eta=3.0, generator=torch.Generator())
    with pytest.raises(ValueError, match="one torch.Generator per sample"):
        sample(net, x_T(), seq, SCHED, eta=1.0, generator=per_sample_generators(0, range(3)))
    with pytest.raises(ValueError, match="increasing order"):
        sample(net, x_T(), [500, 100], SCHED)
    with pytest.raises(ValueError, match=r"lie in \[0, 999\]"):
        sample(net, x_T(), [0, 1000], SCHED)
    assert net.calls == []  # every check happens before the first network call
    with pytest.raises(ScheduleError, match=r"sampler.steps must be an integer in \[1, 1000\]"):
        DDIM(steps=1001).check_schedule(SCHED)
    with pytest.raises(ValueError, match=r"^sampler.eta=-1.0 is invalid: it must be a number >= 0"):
        DDIM(eta=-1)
    with pytest.raises(
        ValueError, match=r"^sampler.variance=big is invalid: it must be one of eta, sigma_hat"
    ):
        DDIM(variance="big")
    with pytest.raises(ValueError, match=r"^sampler.skip_type=cubic is invalid: it must be one of uniform"):
        DDIM(skip_type="cubic")
    with pytest.raises(ValueError, match=r"^sampler.steps=0 is invalid: it must be an integer >= 1"):
        DDIM(steps=0)


def test_the_ddim_sampler_runs_what_sample_runs():
    net = TinyEps()
    cfg = DDIM(eta=0.5, steps=10, skip_type="quadratic")
    a = cfg.run(net, x_T(), SCHED, generator=torch.Generator().manual_seed(2))
    b = sample(
        net,
        x_T(),
        timestep_sequence(10, "quadratic", T),
        SCHED,
        0.5,
        generator=torch.Generator().manual_seed(2),
    )
    assert torch.equal(a, b)
    assert DDIM(timesteps=[0, 500]).sequence(SCHED) == [0, 500]
    assert DDIM(steps=50, skip_type="quadratic").nfe(SCHED) == 50
    assert cfg.tag() == "eta0.5_S10_quadratic"


@pytest.mark.parametrize("name", ["ddim", "ddpm", "ddpm_sigma_hat"])
def test_hydra_sampler_group_composes_with_overrides(name, compose_config):
    cfg = compose_config([f"+sampler={name}", "sampler.eta=0", "sampler.steps=100"])
    custom = compose_config([f"+sampler={name}", "sampler.timesteps=[0,250,500,750]"])
    sampler = sampler_from_settings(cfg.sampler).check_schedule(SCHED)
    assert sampler.eta == 0 and sampler.steps == 100
    assert sampler.variance == ("sigma_hat" if name == "ddpm_sigma_hat" else "eta")
    assert sampler.clip_x0 == (name == "ddpm_sigma_hat")
    assert sampler_from_settings(custom.sampler).sequence(SCHED) == [0, 250, 500, 750]


def test_encode_steps_evaluate_eps_where_each_step_starts(trajectory):
    net = TinyEps()
    seq = [0, 100, 400]
    traj = trajectory(encode, net, x_T(), seq, SCHED)
    assert net.calls == [[0, 0], [0, 0], [100, 100]]  # eps(x_0, tau_0), eps(x_0', 0), eps(x_100', 100)
    assert len(traj.xs) == 4 and torch.equal(traj.x0, traj.xs[-1])
    # Each encoding step is the eta = 0 update with the roles of t and s swapped.
    a = SCHED.alphas_cumprod.tolist()
    net.calls.clear()
    eps = net(traj.xs[1], torch.full((2,), 0))
    expected = (
        math.sqrt(a[100]) * (traj.xs[1] - math.sqrt(1 - a[0]) * eps) / math.sqrt(a[0])
        + math.sqrt(1 - a[100]) * eps
    )
    assert torch.allclose(traj.xs[2], expected, atol=1e-12)


def test_slerp_endpoints_orthogonal_norm_and_parallel_inputs():
    z0, z1 = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randn(4, 3, 8, 8, dtype=torch.float64)
    assert torch.allclose(slerp(z0, z1, 0.0), z0) and torch.allclose(slerp(z0, z1, 1.0), z1)
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert torch.allclose(slerp(e0, e1, 0.5), torch.tensor([1.0, 1.0]) / math.sqrt(2))
    assert torch.allclose(slerp(e0, 2 * e0, 0.5), 1.5 * e0)


def test_interpolate_consistency_progressive_are_built_from_sample(trajectory):
    net = TinyEps()
    seq = timestep_sequence(10, "uniform", T)
    ddim = DDIM(steps=10)
    z0, z1 = x_T(), torch.randn(SHAPE, dtype=torch.float64)
    grid = interpolate(ddim, net, z0, z1, 5, SCHED, batch_size=3)
    assert grid.shape == (2, 5, 3, 8, 8)
    assert torch.allclose(grid[:, 0], sample(net, z0, seq, SCHED), atol=1e-12)
    assert torch.allclose(grid[:, -1], sample(net, z1, seq, SCHED), atol=1e-12)

    grid = consistency(ddim, net, z0, [5, 10, 20], SCHED)
    assert grid.shape == (2, 3, 3, 8, 8)
    assert torch.equal(grid[:, 1], sample(net, z0, seq, SCHED))

    gen = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    traj = trajectory(sample, net, z0, seq, SCHED, eta=1.0, generator=gen())
    ddpm = DDIM(steps=10, eta=1.0)
    frames = progressive(ddpm, net, z0, SCHED, every=4, generator=gen())
    assert frames.shape == (2, 4, 3, 8, 8)  # steps 0, 4, 8 and the last (9)
    for col, k in enumerate([0, 4, 8, 9]):
        assert torch.equal(frames[:, col], traj.x0_hats[k])
    assert torch.equal(frames[:, -1], traj.x0)  # the last x0_hat is the sample (a_{-1} = 1)
    assert progressive(ddim, net, z0, SCHED, every=[2, 5]).shape == (2, 2, 3, 8, 8)
    with pytest.raises(ValueError, match="step indices"):
        progressive(ddim, net, z0, SCHED, every=[10])


def test_dpm_solver_warns_below_the_calls_where_it_measured_worse_than_ddim(caplog):
    """Noise-prediction DPM-Solver diverged at few steps on a trained model (docs/sampling.md): a run below
    UNSTABLE_BELOW_NFE calls says so once, before any network call, and points to dpm_solver_pp."""
    from ddim.samplers.dpm_solver import UNSTABLE_BELOW_NFE

    schedule = SCHED
    with caplog.at_level("WARNING", logger="ddim.samplers.dpm_solver"):
        make_sampler("dpm_solver", steps=UNSTABLE_BELOW_NFE - 1).check_schedule(schedule)
        make_sampler("dpm_solver", steps=UNSTABLE_BELOW_NFE).check_schedule(schedule)
        make_sampler("dpm_solver", order=1, steps=3).check_schedule(schedule)  # order 1 is DDIM's update
    assert len(caplog.records) == 1 and "sampler=dpm_solver_pp" in caplog.records[0].getMessage()
