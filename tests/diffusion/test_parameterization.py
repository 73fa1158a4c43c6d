"""Parameterizations, posterior and variances (float64), learned-variance sampling, objectives, errors."""

import math

import pytest
import torch

from ddim.diffusion.parameterization import (
    PARAMETERIZATIONS,
    ModelFn,
    ModelSpec,
    model_log_variance,
    posterior_mean,
    predict,
    step_log_variance,
    tables,
    target,
)
from ddim.diffusion.schedule import Schedule, timestep_sequence
from ddim.errors import DDIMError
from ddim.samplers import sample
from ddim.training.module import DiffusionModule

SCHEDULE = Schedule.from_config()  # DDPM's linear schedule, T = 1000
T = SCHEDULE.num_timesteps
TINY_NET = dict(in_channels=1, out_channels=1, resolution=8, ch=32, ch_mult=[1], num_res_blocks=1,
                attn_resolutions=[], dropout=0.0)  # fmt: skip


def _pairs(seed=0, shape=(T, 2, 3, 3)):
    """x0, noise, x_t at every timestep (row i is t = i), float64."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.arange(T)
    a = SCHEDULE.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    return x0, noise, a.sqrt() * x0 + (1 - a).sqrt() * noise, t


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_conversions_round_trip_at_every_t(parameterization):
    x0, noise, x_t, t = _pairs()
    out = target(parameterization, x0, noise, x_t, t, SCHEDULE)
    pred = predict(out, x_t, t, SCHEDULE, parameterization)
    scale = 1 + x_t.abs().amax()
    assert (pred.eps - noise).abs().max() < 1e-10 * scale
    assert (pred.x0 - x0).abs().max() < 1e-10 * scale
    assert (pred.mean - posterior_mean(x0, x_t, t, SCHEDULE)).abs().max() < 1e-12 * scale
    # and back: the eps-parameterization's output from the prediction is the same network output
    again = target(parameterization, pred.x0, pred.eps, x_t, t, SCHEDULE)
    assert (again - out).abs().max() < 1e-10 * scale


def test_posterior_is_bayes_rule_and_mean_at_t0_is_x0():
    """q(x_{t-1} | x_t, x_0) from q(x_{t-1} | x_0) q(x_t | x_{t-1}) by completing the square (t >= 1)."""
    x0, _, x_t, t = _pairs(1)
    tab = tables(SCHEDULE)
    a_prev, beta = tab.alphas_cumprod_prev, tab.betas
    precision = 1 / (1 - a_prev[1:]) + (1 - beta[1:]) / beta[1:]
    var = 1 / precision
    shape = (-1, 1, 1, 1)
    mean = var.reshape(shape) * (
        a_prev[1:].sqrt().reshape(shape) * x0[1:] / (1 - a_prev[1:]).reshape(shape)
        + (1 - beta[1:]).sqrt().reshape(shape) * x_t[1:] / beta[1:].reshape(shape)
    )
    assert torch.allclose(posterior_mean(x0, x_t, t, SCHEDULE)[1:], mean, rtol=0, atol=1e-12)
    assert torch.allclose(tab.posterior_variance[1:], var, rtol=1e-12, atol=0)
    assert torch.allclose(posterior_mean(x0, x_t, t, SCHEDULE)[0], x0[0], atol=1e-15)


def test_variance_choices():
    tab = tables(SCHEDULE)
    t = torch.arange(T)
    like = torch.zeros(T, 1, 1, 1, dtype=torch.float64)
    small = model_log_variance(None, t, like, SCHEDULE, "fixed_small").reshape(-1)
    large = model_log_variance(None, t, like, SCHEDULE, "fixed_large").reshape(-1)
    assert torch.allclose(small[1:].exp(), tab.posterior_variance[1:], rtol=1e-12)
    assert torch.allclose(large[1:].exp(), tab.betas[1:], rtol=1e-12)
    assert small[0] == large[0] == tab.posterior_variance[1].log()  # the decoder's variance, both codes
    v = torch.linspace(-1, 1, T, dtype=torch.float64).reshape(-1, 1, 1, 1)
    ranged = model_log_variance(v, t, like, SCHEDULE, "learned_range").reshape(-1)
    f = (v.reshape(-1) + 1) / 2
    assert torch.allclose(ranged[1:], (f * tab.betas.log() + (1 - f) * tab.posterior_variance.log())[1:])
    assert torch.equal(model_log_variance(v, t, like, SCHEDULE, "learned"), v)


def test_v_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(num_train_timesteps=T, prediction_type="v_prediction")
    x0, noise, x_t, t = _pairs(2)
    v = target("v", x0, noise, x_t, t, SCHEDULE)
    ref = sched.get_velocity(x0.float(), noise.float(), t)
    assert (v.float() - ref).abs().max() < 1e-5


def _oracle_net(var_value: float = 0.3, x0_scale: float = 0.5):
    """A fixed smooth 'network' with 2 output blocks, to compare samplers with an independent implementation."""

    def net(x, t):
        a = SCHEDULE.alphas_cumprod.to(x.dtype)[t].reshape(-1, 1, 1, 1)
        v = a.sqrt() * x * 0.7 - (1 - a).sqrt() * torch.tanh(x) * x0_scale
        return torch.cat([v, torch.full_like(x, var_value) * torch.cos(x)], dim=1)

    return net


def test_learned_range_ancestral_sampler_matches_diffusers_on_a_subsequence():
    """eta = 1 with a learned_range variance = diffusers' DDPMScheduler (v_prediction, learned_range) on
    S = 20 uniformly respaced steps, same noise from one generator."""
    diffusers = pytest.importorskip("diffusers")
    net = _oracle_net()
    fn = ModelFn(net, ModelSpec("v", "learned_range"), SCHEDULE)
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = sample(fn, x_T, timestep_sequence(20, num_timesteps=T), SCHEDULE, eta=1.0,
                  generator=torch.Generator().manual_seed(1))  # fmt: skip

    sched = diffusers.DDPMScheduler(num_train_timesteps=T, prediction_type="v_prediction",
                                    variance_type="learned_range", clip_sample=False)  # fmt: skip
    sched.alphas_cumprod = SCHEDULE.alphas_cumprod.clone()
    sched.one = torch.tensor(1.0, dtype=torch.float64)
    sched.set_timesteps(20)
    g, x = torch.Generator().manual_seed(1), x_T
    for t in sched.timesteps:
        x = sched.step(net(x, torch.full((2,), int(t))), int(t), x, generator=g).prev_sample
    assert (ours - x).abs().max() < 1e-10
    # eta = 0 ignores the variance: same as the eps-function alone
    det = sample(fn, x_T, timestep_sequence(20, num_timesteps=T), SCHEDULE, eta=0.0)
    plain = sample(lambda x, t: fn(x, t), x_T, timestep_sequence(20, num_timesteps=T), SCHEDULE, eta=0.0)
    assert torch.equal(det, plain)


def test_step_log_variance_on_the_full_schedule_is_the_models():
    tab = tables(SCHEDULE)
    v = torch.full((1, 1, 1, 1), 0.25, dtype=torch.float64)
    for t in (1, 10, 500, T - 1):
        a_t, a_s = float(tab.alphas_cumprod[t]), float(tab.alphas_cumprod[t - 1])
        full = model_log_variance(v, torch.tensor([t]), v, SCHEDULE, "learned_range")
        assert torch.allclose(step_log_variance(v, a_t, a_s, "learned_range"), full, rtol=1e-10)


def _module(**kw):
    torch.manual_seed(0)
    return DiffusionModule(net=TINY_NET, optim={"lr": 1e-3, "warmup_steps": 0}, ema_decay=0.0, **kw)


def test_defaults_are_the_eps_model_and_a_learned_variance_doubles_the_output():
    m = _module()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 900])
    assert torch.equal(m.eps_fn()(x, t), m.ema_net(x, t))  # old eps checkpoints: the network itself
    assert (m.hparams["parameterization"], m.hparams["variance"], m.hparams["loss"]) == (
        "eps",
        "fixed_large",
        "simple",
    )
    learned = _module(variance="learned_range", loss="hybrid")
    assert learned.hparams["net"]["out_channels"] == 2 and learned.net.conv_out.out_channels == 2
    with torch.no_grad():
        x = sample(learned.eps_fn(), torch.randn(3, 1, 8, 8), [0, 500, 999], learned.schedule, eta=1.0,
                   generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()


def _discrete_batch(n=8):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 1, 8, 8), generator=g).float() / 127.5 - 1


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(parameterization="x0"),
        dict(parameterization="v"),
        dict(parameterization="mu", loss="mse_mu"),
        dict(parameterization="mu", loss="vlb", variance="fixed_large"),
        dict(loss="vlb", variance="fixed_small"),
        dict(loss="vlb", variance="learned"),
        dict(loss="hybrid", variance="learned_range"),
    ],
    ids=lambda kw: "-".join(kw.values()) or "default",
)
def test_each_objective_decreases_in_a_few_steps(kw):
    """Adam on one batch with fixed (t, noise): the objective falls within 8 steps (float32, tiny U-Net)."""
    m = _module(**kw)
    x0 = _discrete_batch()
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([0, 1, 5, 50, 200, 500, 800, 999])
    noise = torch.randn(x0.shape, generator=g)
    opt = torch.optim.Adam(m.net.parameters(), lr=1e-3)
    values = []
    for _ in range(8):
        loss = m.objective(m.net, x0, t, noise).mean()
        values.append(float(loss))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(math.isfinite(v) for v in values)
    assert values[-1] < 0.9 * values[0], values


def test_hybrid_bound_term_trains_only_the_variance():
    m = _module(variance="learned_range", loss="hybrid")
    x0 = _discrete_batch(4)
    t, noise = torch.tensor([0, 3, 300, 900]), torch.randn(x0.shape)
    from ddim.diffusion.objectives import HYBRID_LAMBDA, losses

    x_t = SCHEDULE.alphas_cumprod[t].float().reshape(-1, 1, 1, 1).sqrt() * x0
    x_t = x_t + (1 - SCHEDULE.alphas_cumprod[t].float().reshape(-1, 1, 1, 1)).sqrt() * noise
    out = m.net(x_t, t).detach().requires_grad_(True)
    hybrid = losses(out, x0, x_t, noise, t, m.schedule, m.spec, "hybrid")
    simple = losses(out, x0, x_t, noise, t, m.schedule, m.spec, "simple")
    (hybrid - simple).sum().backward()
    assert out.grad[:, :1].abs().max() == 0  # the mean half gets no gradient from the bound term
    assert out.grad[:, 1:].abs().max() > 0 and HYBRID_LAMBDA == 1e-3


def test_loss_aware_sampler_weights_are_unbiased():
    from ddim.diffusion.objectives import loss_aware_probs, update_history

    history, counts = torch.zeros(4, 10, dtype=torch.float64), torch.zeros(4, dtype=torch.int64)
    assert loss_aware_probs(history, counts) is None
    for step in range(4):
        update_history(history, counts, torch.full((12,), step), torch.full((12,), float(step + 1)))
    p = loss_aware_probs(history, counts)
    assert torch.allclose(p.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose(p, 0.999 * torch.tensor([1, 2, 3, 4.0], dtype=torch.float64) / 10 + 0.001 / 4)
    losses_per_t = torch.tensor([1, 2, 3, 4.0], dtype=torch.float64)
    assert torch.allclose((p * losses_per_t / (4 * p)).sum(), losses_per_t.mean())  # E_p[w l] = E_uniform[l]
    m = _module(loss="vlb", timestep_sampler="loss_aware")
    assert "loss_history" in m.state_dict()


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(parameterization="score"), "model.parameterization"),
        (dict(variance="learnt"), "model.variance"),
        (dict(loss="l1"), "model.loss"),
        (dict(variance="learned_range"), "model.loss=hybrid"),
        (dict(loss="mse_mu", variance="learned"), "gives no gradient"),
        (dict(timestep_sampler="loss_aware"), "model.loss=vlb"),
        (dict(timestep_sampler="stratified", loss="vlb"), "model.timestep_sampler"),
    ],
)
def test_bad_settings_give_one_clear_error(kw, message):
    with pytest.raises(DDIMError, match=message):
        _module(**kw)


def test_bad_output_channels_and_non_discrete_data():
    with pytest.raises(DDIMError, match="out_channels"):
        DiffusionModule(net={**TINY_NET, "out_channels": 3}, variance="learned", loss="vlb")
    m = _module(loss="vlb")
    with pytest.raises(DDIMError, match="8-bit data"):
        m._check_data(torch.rand(2, 1, 8, 8) * 2 - 1)
    m._check_data(_discrete_batch(2))
