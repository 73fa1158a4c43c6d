"""DDPM's progressive decompression (Sec. 4.3): x0_hat from x_t of a real image, and samples sharing x_t."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ddim.diffusion.schedule import Schedule, timestep_sequence
from ddim.evaluation import evaluate
from ddim.images import upscale_factor
from ddim.samplers import denoise_from, sample, shared_latents

T = 100
SCHED = Schedule.from_config("linear", T, 1e-4, 0.2)


def smooth_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The exact eps of N(0, 0.25 I) data plus a nonlinear term: a stand-in network, cheap and O(1)."""
    a = SCHED.alphas_cumprod[t].to(x.dtype).view(-1, 1, 1, 1)
    return (1 - a).sqrt() * x / (0.25 * a + 1 - a) + 0.1 * torch.tanh(x.roll(1, dims=-1))


def test_a_perfect_denoiser_recovers_the_image_at_every_t():
    x0 = torch.rand(2, 1, 4, 4, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    table = SCHED.alphas_cumprod.to(torch.float64)

    def true_eps(x_t, t):  # the noise that made x_t, read back from x_t and the known x0
        a = table[t].view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    ts = [99, 50, 10, 0]
    x_ts, x0_hats = denoise_from(true_eps, x0, ts, SCHED, noise)
    assert x_ts.shape == x0_hats.shape == (2, 4, 1, 4, 4)
    torch.testing.assert_close(x0_hats, x0[:, None].expand_as(x0_hats), rtol=0, atol=1e-10)
    a = float(table[50])
    torch.testing.assert_close(x_ts[:, 1], a**0.5 * x0 + (1 - a) ** 0.5 * noise, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="timesteps"):
        denoise_from(true_eps, x0, [T], SCHED, noise)


def test_continuations_share_the_chain_state_and_end_in_the_chain_sample(trajectory):
    seq = timestep_sequence(10, "uniform", T).tolist()
    x_T = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    gen = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731
    chain = trajectory(sample, smooth_eps, x_T, seq, SCHED, eta=1.0, generator=gen(3))
    stops = [seq[-1], seq[5], seq[0]]
    conts = [[gen(3), gen(4), gen(5)] for _ in stops]  # continuation 0 redraws the chain's own noise
    x_ts, samples = shared_latents(smooth_eps, x_T, seq, SCHED, stops, gen(3), conts, eta=1.0)
    assert x_ts.shape == (3, 1, 4, 4) and samples.shape == (3, 3, 1, 4, 4)
    # x_t of each stop is the chain's state there (xs[k] is the state after k steps, at seq[-1 - k])
    for k, t in enumerate(stops):
        torch.testing.assert_close(x_ts[k], chain.xs[len(seq) - 1 - seq.index(t)][0], rtol=0, atol=0)
    # From x_T with the chain's own generator: the chain's sample; other generators: other samples
    torch.testing.assert_close(samples[0, 0], chain.x0[0], rtol=0, atol=1e-12)
    assert (samples[0, 1] - samples[0, 2]).abs().max() > 0.1
    # A middle stop: different noise gives different samples that are closer to each other than from x_T
    spread = lambda s: (s - s.mean(0)).pow(2).mean()  # noqa: E731
    assert 0 < spread(samples[1]) < spread(samples[0])
    # From the lowest timestep only the last, noiseless step remains: every continuation is the chain's sample
    for c in range(3):
        torch.testing.assert_close(samples[2, c], chain.x0[0], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="stops"):
        shared_latents(smooth_eps, x_T, seq, SCHED, [seq[1] + 1], gen(3), [[gen(0)]])


def test_progressive_task_writes_the_decompression_and_shared_latent_figures(
    tiny_ckpt, tmp_path, eval_cfg, eval_overrides, labeled_figure
):
    out = tmp_path / "run"
    args = ["task=progressive", "progressive.n_samples=2", "progressive.every=2", "sampler.steps=5"]
    extra = ["progressive.n_images=3", "progressive.timesteps=[99,60,20,0]", "progressive.n_continuations=4"]
    record = evaluate(eval_cfg([*eval_overrides(tiny_ckpt, out), *args, *extra]))
    figures = record["figures"]
    assert set(figures) == {"progressive", "decompression", "shared_latents"}
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["figures"] == figures and saved["task"] == "progressive"
    assert saved["frame_timesteps"] == [80, 40, 0]  # every 2nd step of [0, 20, 40, 60, 80], from the top
    # decompression: 2 rows per test image (x_t, x0_hat), columns x_0 then each t
    cols, rows = 1 + 4, 2 * 3
    k = upscale_factor(cols * 10 + 2)
    assert labeled_figure(figures["decompression"]).shape == (k * (rows * 10 + 2), k * (cols * 10 + 2))
    # shared latents: one row per stop on the 5-step sequence [0, 20, 40, 60, 80] (99 -> 80, 60, 20, 0),
    # columns x_t then the continuations
    assert saved["shared_latent_timesteps"] == [80, 60, 20, 0]
    cols, rows = 1 + 4, 4
    k = upscale_factor(cols * 10 + 2)
    assert labeled_figure(figures["shared_latents"]).shape == (k * (rows * 10 + 2), k * (cols * 10 + 2))
    assert saved["figures_raw"]["shared_latents"].endswith("shared_latents_raw.png")
    # the first tile of the decompression figure is test image 0 itself
    from ddim.data.digits import DigitsDataModule
    from ddim.images import to_uint8

    assert saved["decompression_timesteps"] == [99, 60, 20, 0] and saved["split"] == "test"
    pixels = torch.from_numpy(np.array(Image.open(saved["figures_raw"]["decompression"]).convert("L")))
    k = upscale_factor(5 * 10 + 2)
    tile = pixels[2 * k :: k][:8, 2 * k :: k][:, :8]
    assert torch.equal(tile, to_uint8(DigitsDataModule(image_size=8).test_set[0])[0])


def test_progressive_refuses_bad_timesteps(tiny_ckpt, tmp_path, eval_cfg, eval_overrides):
    from ddim.errors import DDIMError

    with pytest.raises(DDIMError, match="progressive.timesteps"):
        evaluate(
            eval_cfg(
                [*eval_overrides(tiny_ckpt, tmp_path), "task=progressive", "progressive.timesteps=[100]"]
            )
        )
