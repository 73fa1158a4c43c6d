import math

import numpy as np
import pytest
import torch

from ddim.diffusion.forward import q_sample
from ddim.diffusion.objectives import losses
from ddim.diffusion.parameterization import ModelSpec
from ddim.diffusion.schedule import Schedule, make_betas, timestep_sequence


def test_linear_schedule_endpoints_match_closed_form():
    sched = Schedule.from_config("linear", 1000, 1e-4, 0.02)
    assert sched.alphas_cumprod.dtype == torch.float64
    assert sched.alpha_bar(0) == pytest.approx(1 - 1e-4, abs=1e-15)
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
    expected_last = math.exp(sum(math.log1p(-b) for b in betas))
    assert sched.alpha_bar(999) == pytest.approx(expected_last, rel=1e-10)
    assert sched.alpha_bar(999) == pytest.approx(4.035e-5, rel=1e-3)
    assert sched.alpha_bar(-1) == 1.0


def test_cosine_schedule_is_valid():
    betas = make_betas("cosine", 1000)
    assert betas.shape == (1000,) and float(betas.max()) <= 0.999 and float(betas.min()) > 0


def test_timestep_sequences_match_the_paper():
    assert timestep_sequence(10, "uniform").tolist() == list(range(0, 1000, 100))
    assert timestep_sequence(1000, "uniform").tolist() == list(range(1000))
    for steps in (10, 20, 50, 100, 1000):
        # ermongroup/ddim: seq = [int(s) for s in np.linspace(0, np.sqrt(T * 0.8), S) ** 2]
        reference = [int(s) for s in np.linspace(0, np.sqrt(1000 * 0.8), steps) ** 2]
        assert timestep_sequence(steps, "quadratic").tolist() == reference
        assert timestep_sequence(steps, "uniform").tolist() == [int(i * 1000 / steps) for i in range(steps)]
    assert timestep_sequence(50, "quadratic").tolist()[:3] == [0, 0, 1]
    assert timestep_sequence(custom=[0, 500, 999]).tolist() == [0, 500, 999]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(steps=0),
        dict(steps=1001),
        dict(steps=10, skip_type="cubic"),
        dict(custom=[5, 3]),
        dict(custom=[1000]),
    ],
)
def test_bad_timestep_requests_raise_one_clear_error(kwargs):
    with pytest.raises(ValueError):
        timestep_sequence(**kwargs)


def test_q_sample_and_l_simple_zero_for_true_noise():
    sched = Schedule.from_config()
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 10, 500, 999])
    x_t = q_sample(x0, t, noise, sched.alphas_cumprod)
    a = sched.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, a.sqrt() * x0 + (1 - a).sqrt() * noise)
    # L_simple (the training loss of an eps network) is zero for the true noise recovered from x_t, not else.
    true_eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    def l_simple(output: torch.Tensor) -> float:
        return losses(output, x0, x_t, noise, t, sched, ModelSpec(), "simple").mean().item()

    assert l_simple(true_eps) < 1e-10
    assert l_simple(torch.zeros_like(x_t)) > 0.5


def test_schedule_defaults_have_one_value_each():
    """conf/schedule/linear.yaml (configs) and make_betas' defaults (code, checkpoints) name the same schedule."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from ddim.diffusion.schedule import ScheduleError, schedule_config

    conf = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "schedule" / "linear.yaml")
    assert OmegaConf.to_container(conf) == schedule_config()
    assert schedule_config(num_timesteps=100)["beta_end"] == 0.02
    with pytest.raises(ScheduleError, match="Unknown schedule keys \\['steps'\\]"):
        schedule_config(steps=10)
