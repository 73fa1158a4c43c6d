"""Training objectives of DDPM's ablation (Ho et al. 2020, Table 2) and improved DDPM (Nichol & Dhariwal 2021).

    simple:  || target - output ||^2, unweighted, the target being what the parameterization predicts
             (eps: the noise, as L_simple; x0; v; mu: the posterior mean mu_tilde)
    mse_mu:  || mu_tilde(x_t, x_0) - mu_theta(x_t) ||^2, unweighted, in mean space whatever the network
             predicts (DDPM Table 2's "||mu_tilde - mu_theta||^2" row, the reference code's loss_type="mse"
             for mean_type="xprev"); weighting it by 1 / (2 sigma_t^2) gives the KL of `vlb`
    vlb:     the true bound, one term per example at its t and scaled by T: an unbiased estimate of
             sum_t L_t in bits/dim (the KL terms and the discretized decoder at t = 0)
    hybrid:  simple + lambda * vlb with lambda = 0.001 and the mean part detached in the vlb term, so the
             bound trains only the variance (improved DDPM's L_hybrid)

Each returns one loss per example; the LightningModule averages them (with importance weights when t is
drawn by the loss-aware sampler of `loss_aware_probs`). One network forward per step for every objective.
"""

from __future__ import annotations

import torch

from ddim.diffusion.likelihood import mean_flat, vb_terms_bpd
from ddim.diffusion.parameterization import (
    ModelSpec,
    ParameterizationError,
    model_log_variance,
    posterior_mean,
    predict,
    split_output,
    target,
)
from ddim.diffusion.schedule import Schedule
from ddim.errors import DDIMError

LOSSES = ("simple", "mse_mu", "vlb", "hybrid")
HYBRID_LAMBDA = 1e-3
TIMESTEP_SAMPLERS = ("uniform", "loss_aware")
HISTORY_PER_TIMESTEP = 10  # improved-diffusion's LossSecondMomentResampler
UNIFORM_PROB = 1e-3


def check_loss(loss: str, spec: ModelSpec) -> str:
    """The objective name, checked against the model's variance (a learned variance needs a bound term)."""
    if loss not in LOSSES:
        raise ParameterizationError(
            f"Unknown model.loss {loss!r}; choose one of {LOSSES} (simple = DDPM's L_simple, the default)."
        )
    if spec.learned_variance and loss in ("simple", "mse_mu"):
        raise ParameterizationError(
            f"model.loss={loss} gives no gradient to the learned variance (model.variance={spec.variance}); "
            "use model.loss=hybrid or model.loss=vlb, or a fixed variance (fixed_large, fixed_small)."
        )
    return loss


def check_timestep_sampler(name: str, loss: str) -> str:
    if name not in TIMESTEP_SAMPLERS:
        raise ParameterizationError(
            f"Unknown model.timestep_sampler {name!r}; choose one of {TIMESTEP_SAMPLERS}."
        )
    if name == "loss_aware" and loss != "vlb":
        raise ParameterizationError(
            "model.timestep_sampler=loss_aware reduces the variance of the vlb objective only; "
            "use it with model.loss=vlb (or keep timestep_sampler=uniform)."
        )
    return name


def needs_discrete_data(loss: str) -> bool:
    """The bound's decoder term is a probability of 8-bit pixels, so these objectives need 8-bit data."""
    return loss in ("vlb", "hybrid")


class NonDiscreteDataError(DDIMError, ValueError):
    """The data is not on the 256 levels of [-1, 1], which the discretized decoder needs."""


def losses(
    output: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    schedule: Schedule,
    spec: ModelSpec,
    loss: str = "simple",
) -> torch.Tensor:
    """Per-example loss [B] for a network output at (x_t, t), x_t made from x0 with `noise`."""
    output, x0, x_t, noise = output.float(), x0.float(), x_t.float(), noise.float()
    mean_part, var_part = split_output(output, spec.variance)
    if loss == "simple" or loss == "hybrid":
        simple = mean_flat((target(spec.parameterization, x0, noise, x_t, t, schedule) - mean_part) ** 2)
        if loss == "simple":
            return simple
        mean_part = mean_part.detach()  # the bound term trains only the variance
    elif loss not in LOSSES:
        check_loss(loss, spec)
    pred = predict(mean_part, x_t, t, schedule, spec.parameterization)
    if loss == "mse_mu":
        return mean_flat((posterior_mean(x0, x_t, t, schedule) - pred.mean) ** 2)
    log_var = model_log_variance(var_part, t, x_t, schedule, spec.variance)
    vlb = schedule.num_timesteps * vb_terms_bpd(pred, log_var, x0, x_t, t, schedule)
    return vlb if loss == "vlb" else simple + HYBRID_LAMBDA * vlb


def loss_aware_probs(history: torch.Tensor, counts: torch.Tensor) -> torch.Tensor | None:
    """Timestep probabilities proportional to sqrt(E[loss_t^2]) over the recent losses of each t, mixed with
    a little of the uniform law (improved DDPM, Sec. 3.3); None until every t has a full history."""
    if bool((counts < history.shape[1]).any()):
        return None
    weights = (history.double() ** 2).mean(dim=1).sqrt()
    weights = weights / weights.sum()
    return weights * (1 - UNIFORM_PROB) + UNIFORM_PROB / weights.numel()


def update_history(
    history: torch.Tensor, counts: torch.Tensor, t: torch.Tensor, values: torch.Tensor
) -> None:
    """Push each (t, loss) pair into t's ring of recent losses (in place: the module's buffers)."""
    for step, value in zip(t.tolist(), values.detach().double().tolist(), strict=True):
        n = int(counts[step])
        if n < history.shape[1]:
            history[step, n] = value
        else:
            history[step] = torch.roll(history[step], -1)
            history[step, -1] = value
        counts[step] = n + 1
