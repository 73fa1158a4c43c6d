"""DDPM's interpolation of real images (Sec. 4.4): the t convention, the noise fixed across lambda, seeding that
does not depend on batching, and the task's figures and record."""

import json

import numpy as np
import pytest
import torch

from ddim.diffusion.forward import q_sample
from ddim.diffusion.schedule import Schedule
from ddim.errors import DDIMError
from ddim.evaluation import evaluate
from ddim.evaluation.tasks.ddpm_interpolation import (
    PAIR_INDEX,
    decoder,
    interpolate_real,
    pair_noise,
    start_index,
)
from ddim.images import to_uint8
from ddim.samplers import make_sampler, per_sample_generators, sample

T = 100
SCHED = Schedule.from_config("linear", T, 1e-4, 0.2)
VAR = 0.25  # the stand-in network below is the exact eps of N(0, VAR I) data


def linear_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The exact eps of N(0, VAR I) data: linear in x, so a decode is affine in x_bar_t given its noise."""
    a = SCHED.alphas_cumprod[t].to(x.dtype).view(-1, 1, 1, 1)
    return (1 - a).sqrt() * x / (VAR * a + 1 - a)


def smooth_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return linear_eps(x, t) + 0.1 * torch.tanh(x.roll(1, dims=-1))


def pairs(n: int = 3):
    gen = torch.Generator().manual_seed(5)
    x0 = torch.rand(n, 1, 4, 4, generator=gen, dtype=torch.float64) * 2 - 1
    x1 = torch.rand(n, 1, 4, 4, generator=gen, dtype=torch.float64) * 2 - 1
    return x0, x1, tuple(e.double() for e in pair_noise(7, n, (1, 4, 4)))


def test_t_counts_forward_steps_and_the_decoder_starts_at_t_minus_1():
    # x_t after t steps of q has a_t = prod_{s=1..t} (1 - beta_s): the table's index t - 1 (betas[0] = beta_1).
    a = torch.cumprod(1 - SCHED.betas, 0)
    for t in (1, 50, T):
        assert start_index(t) == t - 1 and SCHED.alphas_cumprod[start_index(t)] == a[t - 1]
    assert start_index(0) is None
    # The full ancestral sampler (all T timesteps) decodes x_t over t - 1, ..., 0: t network calls.
    ddpm = make_sampler("ddim", eta=1.0, steps=T)
    assert decoder(ddpm, SCHED, 50).sequence(SCHED) == list(range(50))
    assert decoder(ddpm, SCHED, T).sequence(SCHED) == list(range(T))
    # A coarser grid is cut at t - 1 and ends there.
    ddim10 = make_sampler("ddim", steps=10)  # 0, 10, ..., 90
    assert decoder(ddim10, SCHED, 35).sequence(SCHED) == [0, 10, 20, 30, 34]
    assert decoder(ddim10, SCHED, 1).sequence(SCHED) == [0]
    assert decoder(ddim10, SCHED, T).sequence(SCHED) == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99]


def test_lambda_0_and_1_are_the_reconstructions_and_t_0_the_pixel_blend():
    x0, x1, noise = pairs()
    ddpm = make_sampler("ddim", eta=1.0, steps=T)
    lams = [0.0, 0.25, 1.0]
    out = interpolate_real(ddpm, smooth_eps, x0, x1, noise, 40, lams, SCHED, seed=7, batch_size=4)
    assert out.shape == (3, 3, 1, 4, 4)
    for k in range(3):  # pair k decodes its own x_t with its reverse stream, PAIR_INDEX + 3k + 2
        for col, x, eps in ((0, x0, noise[0]), (2, x1, noise[1])):
            x_t = q_sample(x[k : k + 1], torch.tensor([39]), eps[k : k + 1], SCHED.alphas_cumprod)
            gen = per_sample_generators(7, [PAIR_INDEX + 3 * k + 2])
            expected = sample(smooth_eps, x_t, list(range(40)), SCHED, eta=1.0, generator=gen)
            torch.testing.assert_close(out[k, col], expected[0], rtol=0, atol=1e-12)
    blend = interpolate_real(ddpm, smooth_eps, x0, x1, noise, 0, lams, SCHED, seed=7, batch_size=4)
    torch.testing.assert_close(blend[:, 1], 0.75 * x0 + 0.25 * x1, rtol=0, atol=1e-15)


def test_the_noise_is_fixed_across_lambda():
    # With a linear eps the ancestral decode is affine in x_bar_t plus noise terms that do not depend on it;
    # x_bar_t is affine in lambda, so the decodes are too only if every lambda gets the same noise.
    x0, x1, noise = pairs(2)
    ddpm = make_sampler("ddim", eta=1.0, steps=T)
    lams = [0.0, 0.3, 0.5, 1.0]
    out = interpolate_real(ddpm, linear_eps, x0, x1, noise, 60, lams, SCHED, seed=7, batch_size=3)
    for j, lam in enumerate(lams):
        torch.testing.assert_close(out[:, j], (1 - lam) * out[:, 0] + lam * out[:, 3], rtol=0, atol=1e-12)
    assert (out[0, 0] - out[1, 0]).abs().max() > 0.1  # and the pairs do have different noise


def test_the_images_do_not_depend_on_batching_or_the_pair_count():
    x0, x1, noise = pairs(3)
    ddpm = make_sampler("ddim", eta=1.0, steps=T)

    def run(n: int, batch: int) -> torch.Tensor:
        noise_n = tuple(e[:n] for e in noise)
        return interpolate_real(
            ddpm, smooth_eps, x0[:n], x1[:n], noise_n, 70, [0.0, 0.5, 1.0], SCHED, 7, batch
        )

    whole = run(3, 9)
    assert torch.equal(whole, run(3, 1)) and torch.equal(whole, run(3, 4))
    assert torch.equal(whole[:2], run(2, 5))  # pair k's images whatever the number of pairs
    assert torch.equal(pair_noise(7, 3, (1, 4, 4))[1][:2], pair_noise(7, 2, (1, 4, 4))[1])


def test_task_writes_one_labelled_figure_per_t_and_is_reproducible(
    tiny_ckpt, tmp_path, eval_cfg, eval_overrides, labeled_figure
):
    args = [
        "task=ddpm_interpolation",
        "ddpm_interpolation.n_pairs=2",
        "ddpm_interpolation.diffusion_steps=[100,0,50]",
        "ddpm_interpolation.lambdas=[0.5]",
        "sampler.steps=5",
    ]
    out = tmp_path / "run"
    record = evaluate(eval_cfg([*eval_overrides(tiny_ckpt, out), *args]))
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["task"] == "ddpm_interpolation" and saved["eta"] == 1.0  # DDPM's ancestral sampler
    assert saved["pairs"] == [[0, 1], [2, 3]] and saved["lambdas"] == [0.0, 0.5, 1.0]
    assert saved["diffusion_steps"] == [0, 50, 100] and saved["seed"] == 0
    assert saved["start_timesteps"] == {"t0": None, "t50": 49, "t100": 99}
    # sampler.steps=5 is the grid [0, 20, 40, 60, 80], cut at t - 1: [0, 20, 40, 49] and [0, ..., 80, 99]
    assert saved["decode_nfe"] == {"t0": 0, "t50": 4, "t100": 6}
    assert set(record["figures"]) == {"t0", "t50", "t100"}
    grids = {}
    for key, figure in record["figures"].items():
        assert record["figures_raw"][key] == figure.replace(".png", "_raw.png")
        grids[key] = labeled_figure(figure)
    # Raw grid: 2 rows (pairs), 5 columns (source, lambda = 0, 0.5, 1, source) of 8x8 images, padding 2.
    k = grids["t50"].shape[1] // (5 * 10 + 2)
    assert grids["t50"].shape == (k * (2 * 10 + 2), k * (5 * 10 + 2))
    from ddim.data.digits import DigitsDataModule

    test_set = DigitsDataModule(image_size=8).test_set
    tile = lambda g, r, c: g[k * (2 + 10 * r) :: k][:8, k * (2 + 10 * c) :: k][:, :8]  # noqa: E731
    for r, (a, b) in enumerate(saved["pairs"]):
        assert np.array_equal(tile(grids["t50"], r, 0), to_uint8(test_set[a])[0].numpy())
        assert np.array_equal(tile(grids["t50"], r, 4), to_uint8(test_set[b])[0].numpy())
    # Rerun in another folder, one row per sampler call and t = 50 alone: the same bytes.
    again = tmp_path / "again"
    rerun = [
        *args[:2],
        "ddpm_interpolation.diffusion_steps=[50]",
        *args[3:],
        "ddpm_interpolation.batch_size=1",
    ]
    evaluate(eval_cfg([*eval_overrides(tiny_ckpt, again), *rerun]))
    for name in ("ddpm_interpolation_t50_raw.png", "ddpm_interpolation_t50.png"):
        assert (again / name).read_bytes() == (out / name).read_bytes()


@pytest.mark.parametrize(
    ("option", "match"),
    [
        ("ddpm_interpolation.diffusion_steps=[101]", r"diffusion_steps .* in \[0, 100\]"),
        ("ddpm_interpolation.images=[0,1,2]", "two by two"),
        ("ddpm_interpolation.n_pairs=1000", "needs image 1999 of a split of 297"),
    ],
)
def test_bad_settings_stop_before_anything_is_written(
    tiny_ckpt, tmp_path, eval_cfg, eval_overrides, option, match
):
    out = tmp_path / "run"
    with pytest.raises(DDIMError, match=match):
        args = ["task=ddpm_interpolation", "ddpm_interpolation.diffusion_steps=[50]", option]
        evaluate(eval_cfg([*eval_overrides(tiny_ckpt, out), *args]))
    assert not list(out.glob("*.png")) and not (out / "metrics.json").exists()
