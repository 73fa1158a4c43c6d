"""What the network predicts, and the reverse-process variance: the one place that reads a network output.

A network output at timestep t (per row of the batch) is turned into eps, x0_hat and the mean of
p(x_{t-1} | x_t) by `predict`; every sampler, loss and likelihood goes through it. Parameterizations:

    eps: the noise (DDPM's choice)              x0: the clean image
    mu:  the mean of p(x_{t-1} | x_t) directly   v:  sqrt(a_t) eps - sqrt(1 - a_t) x0 (Salimans & Ho 2022)

Variances of p(x_{t-1} | x_t) (DDPM, Nichol & Dhariwal 2021):

    fixed_small:   beta_tilde_t = (1 - a_{t-1}) / (1 - a_t) beta_t
    fixed_large:   beta_t (beta_tilde_1 at t = 0, as both reference codes, for a better decoder likelihood)
    learned:       exp(network), a direct log-variance (DDPM's "learned diagonal")
    learned_range: exp(f log beta_t + (1 - f) log beta_tilde_t), f = (network + 1) / 2

Learned variances take a second block of output channels (the network outputs 2C channels, mean part first,
as improved-diffusion). log beta_tilde_0 = -inf is replaced by log beta_tilde_1 ("clipped"): it is used
only by the decoder at t = 0, where both reference codes make the same choice.
All tables are float64, gathered per timestep and cast to the tensors' dtype at use.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from ddim.diffusion.forward import eps_from_x0, gather, x0_from_eps
from ddim.diffusion.schedule import Schedule
from ddim.errors import DDIMError

PARAMETERIZATIONS = ("eps", "x0", "mu", "v")
VARIANCES = ("fixed_small", "fixed_large", "learned", "learned_range")
LEARNED_VARIANCES = ("learned", "learned_range")


class ParameterizationError(DDIMError, ValueError):
    """A model.parameterization / model.variance / model.loss setting that does not exist or does not fit."""


def check_parameterization(name: str) -> str:
    if name not in PARAMETERIZATIONS:
        raise ParameterizationError(
            f"Unknown model.parameterization {name!r}; choose one of {PARAMETERIZATIONS} "
            "(eps = DDPM's noise prediction, the default)."
        )
    return name


def check_variance(name: str) -> str:
    if name not in VARIANCES:
        raise ParameterizationError(
            f"Unknown model.variance {name!r}; choose one of {VARIANCES} "
            "(fixed_large = DDPM's sigma^2 = beta, the default)."
        )
    return name


@dataclass(frozen=True)
class Tables:
    """Float64 per-timestep coefficients of the forward process and the posterior q(x_{t-1} | x_t, x_0)."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef_x0: torch.Tensor
    posterior_mean_coef_xt: torch.Tensor
    log_betas: torch.Tensor
    fixed_large_log_variance: torch.Tensor


@functools.lru_cache(maxsize=16)
def tables(schedule: Schedule) -> Tables:
    """The derived tables of a schedule (computed once per Schedule object: schedules are immutable)."""
    betas = schedule.betas.to(torch.float64)
    a = schedule.alphas_cumprod.to(torch.float64)
    a_prev = torch.cat([a.new_ones(1), a[:-1]])
    post_var = betas * (1 - a_prev) / (1 - a)
    # post_var[0] = 0 exactly; the log uses post_var[1] there (the decoder's variance for fixed_small).
    head = post_var[1:2] if post_var.numel() > 1 else betas[:1]
    post_log_var = torch.log(torch.cat([head, post_var[1:]]))
    large = torch.log(torch.cat([head, betas[1:]]))
    return Tables(
        betas=betas,
        alphas_cumprod=a,
        alphas_cumprod_prev=a_prev,
        posterior_variance=post_var,
        posterior_log_variance_clipped=post_log_var,
        posterior_mean_coef_x0=betas * a_prev.sqrt() / (1 - a),
        posterior_mean_coef_xt=(1 - betas).sqrt() * (1 - a_prev) / (1 - a),
        log_betas=betas.log(),
        fixed_large_log_variance=large,
    )


# ----------------------------------------------------------------------------------------------------------
# Posterior and conversions (float64 tables; all per-row in t)


def posterior_mean(x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """mu_tilde(x_t, x0) = sqrt(a_{t-1}) beta_t/(1 - a_t) x0 + sqrt(1 - beta_t)(1 - a_{t-1})/(1 - a_t) x_t."""
    tab = tables(schedule)
    return gather(tab.posterior_mean_coef_x0, t, x_t) * x0 + gather(tab.posterior_mean_coef_xt, t, x_t) * x_t


def posterior_log_variance(t: torch.Tensor, like: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """log beta_tilde_t (clipped at t = 0, where the bound uses the decoder instead of a KL)."""
    return gather(tables(schedule).posterior_log_variance_clipped, t, like)


def x0_from_eps_at(x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """forward.x0_from_eps with each row's own timestep."""
    a = gather(tables(schedule).alphas_cumprod, t, x_t)
    return x0_from_eps(x_t, eps, a.sqrt(), (1 - a).sqrt())


def eps_from_x0_at(x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """forward.eps_from_x0 with each row's own timestep."""
    a = gather(tables(schedule).alphas_cumprod, t, x_t)
    return eps_from_x0(x_t, x0, a.sqrt(), (1 - a).sqrt())


def x0_from_mean(x_t: torch.Tensor, mean: torch.Tensor, t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """Inverts mu_tilde in x0 (its coefficient is > 0 at every t, and 1 at t = 0)."""
    tab = tables(schedule)
    return (mean - gather(tab.posterior_mean_coef_xt, t, x_t) * x_t) / gather(
        tab.posterior_mean_coef_x0, t, x_t
    )


def v_from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    a = gather(tables(schedule).alphas_cumprod, t, x0)
    return a.sqrt() * eps - (1 - a).sqrt() * x0


class Prediction(NamedTuple):
    """eps and x0_hat implied by a network output, and the mean of p(x_{t-1} | x_t) on the full schedule."""

    eps: torch.Tensor
    x0: torch.Tensor
    mean: torch.Tensor


def predict(
    output: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    schedule: Schedule,
    parameterization: str = "eps",
    clip_x0: bool = False,
) -> Prediction:
    """(eps, x0_hat, mean) from the mean part of a network output (use `split_output` first).

    clip_x0 clips x0_hat to [-1, 1] and recomputes eps and the mean from it, except for `mu`, whose mean is
    the network's own (as DDPM's code: only the reported x0_hat is clipped).
    """
    if parameterization == "eps":
        eps, x0 = output, x0_from_eps_at(x_t, output, t, schedule)
    elif parameterization == "x0":
        eps, x0 = eps_from_x0_at(x_t, output, t, schedule), output
    elif parameterization == "v":
        a = gather(tables(schedule).alphas_cumprod, t, x_t)
        x0 = a.sqrt() * x_t - (1 - a).sqrt() * output
        eps = (1 - a).sqrt() * x_t + a.sqrt() * output
    elif parameterization == "mu":
        x0 = x0_from_mean(x_t, output, t, schedule)
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        return Prediction(eps_from_x0_at(x_t, x0, t, schedule), x0, output)
    else:
        check_parameterization(parameterization)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
        eps = eps_from_x0_at(x_t, x0, t, schedule)
    return Prediction(eps, x0, posterior_mean(x0, x_t, t, schedule))


def target(
    parameterization: str,
    x0: torch.Tensor,
    noise: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    schedule: Schedule,
) -> torch.Tensor:
    """What a perfect network outputs (the regression target of the `simple` objective): the inverse of
    `predict`, given the true x0 and the noise that made x_t."""
    check_parameterization(parameterization)
    if parameterization == "eps":
        return noise
    if parameterization == "x0":
        return x0
    if parameterization == "v":
        return v_from_x0_eps(x0, noise, t, schedule)
    return posterior_mean(x0, x_t, t, schedule)


# ----------------------------------------------------------------------------------------------------------
# Variance


def split_output(output: torch.Tensor, variance: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mean part, variance part or None): learned variances take the second half of the channels."""
    if variance not in LEARNED_VARIANCES:
        return output, None
    mean_part, var_part = output.chunk(2, dim=1)
    return mean_part, var_part


def _learned_log_variance(
    var_part: torch.Tensor, log_beta: torch.Tensor, log_beta_tilde: torch.Tensor, variance: str
) -> torch.Tensor:
    if variance == "learned":
        return var_part
    frac = (var_part + 1) / 2
    return frac * log_beta + (1 - frac) * log_beta_tilde


def model_log_variance(
    var_part: torch.Tensor | None, t: torch.Tensor, like: torch.Tensor, schedule: Schedule, variance: str
) -> torch.Tensor:
    """log sigma_t^2 of p(x_{t-1} | x_t) on the full schedule, broadcastable against `like`."""
    tab = tables(schedule)
    if variance == "fixed_small":
        return gather(tab.posterior_log_variance_clipped, t, like)
    if variance == "fixed_large":
        return gather(tab.fixed_large_log_variance, t, like)
    check_variance(variance)
    if var_part is None:
        raise ParameterizationError(f"model.variance={variance} needs the variance half of the output.")
    return _learned_log_variance(
        var_part,
        gather(tab.log_betas, t, like),
        gather(tab.posterior_log_variance_clipped, t, like),
        variance,
    )


def step_log_variance(var_part: torch.Tensor, a_t: float, a_s: float, variance: str) -> torch.Tensor:
    """A learned log-variance for a sampler step from t to s on a sub-sequence, respaced as improved-diffusion:
    beta and beta_tilde are those of the sub-sequence's own step, beta = 1 - a_t / a_s. Only steps that add
    noise (a_s < 1) need it."""
    beta = 1.0 - a_t / a_s
    beta_tilde = (1.0 - a_s) / (1.0 - a_t) * beta
    if not (beta > 0.0 and beta_tilde > 0.0):
        raise ParameterizationError(
            f"No learned variance for the step a_t={a_t} -> a_s={a_s} (no noise added)."
        )
    return _learned_log_variance(var_part, math.log(beta), math.log(beta_tilde), variance)


# ----------------------------------------------------------------------------------------------------------
# The model as samplers see it


@dataclass(frozen=True)
class ModelSpec:
    """How to read a network's output: stored in the checkpoint's hyper-parameters next to the net config."""

    parameterization: str = "eps"
    variance: str = "fixed_large"

    def __post_init__(self) -> None:
        check_parameterization(self.parameterization)
        check_variance(self.variance)

    @property
    def learned_variance(self) -> bool:
        return self.variance in LEARNED_VARIANCES

    def out_channels(self, in_channels: int) -> int:
        """Output channels the network needs for images of `in_channels` channels."""
        return 2 * in_channels if self.learned_variance else in_channels

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any] | None) -> ModelSpec:
        """The spec of a checkpoint; checkpoints from before these options are eps with DDPM's variance."""
        hparams = hparams or {}
        return cls(
            str(hparams.get("parameterization", cls.parameterization)),
            str(hparams.get("variance", cls.variance)),
        )


class ModelFn(torch.nn.Module):
    """A network read through a ModelSpec: call it as an eps_fn (what every sampler takes), or ask for the
    full Prediction and the variance. A Module wrapping the network (moves, casts and .eval() reach it), with
    no state of its own. A half-precision network sees its own dtype; results come back in x's dtype."""

    def __init__(
        self, net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], spec: ModelSpec, schedule: Schedule
    ) -> None:
        super().__init__()
        self.net, self.spec, self.schedule = net, spec, schedule

    def output(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean part, variance part or None) of one network call, in x's dtype."""
        param = next(self.parameters(), None)
        net_x = x if param is None or not param.is_floating_point() else x.to(param.dtype)
        out = self.net(net_x, t).to(x.dtype)
        return split_output(out, self.spec.variance)

    def predict(
        self, x: torch.Tensor, t: torch.Tensor, clip_x0: bool = False
    ) -> tuple[Prediction, torch.Tensor]:
        """(Prediction, log-variance of p(x_{t-1} | x_t)) from one network call."""
        mean_part, var_part = self.output(x, t)
        pred = predict(mean_part, x, t, self.schedule, self.spec.parameterization, clip_x0)
        return pred, model_log_variance(var_part, t, x, self.schedule, self.spec.variance)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        mean_part, _ = self.output(x, t)
        if self.spec.parameterization == "eps":
            return mean_part  # today's eps-models: the network output itself, no extra work
        return predict(mean_part, x, t, self.schedule, self.spec.parameterization).eps

    @property
    def step_variance(self) -> Callable[..., tuple[torch.Tensor, torch.Tensor]] | None:
        """For ancestral (eta = 1) samplers: (x, t, a_t, a_s) -> (eps, log-variance of the step), or None for
        fixed variances (the sampler's own sigma is then used)."""
        return self._eps_and_step_log_variance if self.spec.learned_variance else None

    def _eps_and_step_log_variance(
        self, x: torch.Tensor, t: torch.Tensor, a_t: float, a_s: float
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        mean_part, var_part = self.output(x, t)
        eps = predict(mean_part, x, t, self.schedule, self.spec.parameterization).eps
        if a_s >= 1.0 or a_t >= a_s:
            return eps, None  # the last step (and a repeated timestep) adds no noise
        return eps, step_log_variance(var_part, a_t, a_s, self.spec.variance)
