"""The DDPM U-Net against diffusers UNet2DModel, and checkpoint import (layouts, files, errors)."""

from __future__ import annotations

import argparse
import inspect

import pytest
import torch

from ddim.checkpoints import (
    DIFFUSERS_DEFAULTS,
    build_unet,
    default_resolution,
    detect_layout,
    infer_unet_config,
    load_unet,
    read_checkpoint,
)
from ddim.errors import DDIMError
from ddim.nets.convert import diffusers_to_original, original_to_diffusers
from ddim.nets.unet import UNet

diffusers = pytest.importorskip("diffusers")

CIFAR10 = dict(resolution=32, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,))
CELEBA64 = dict(resolution=64, ch=128, ch_mult=(1, 2, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,))
# Other depth, widths, block count, channels and attention at two levels (the top one included).
SMALL = dict(
    in_channels=1,
    out_channels=2,
    resolution=16,
    ch=32,
    ch_mult=(1, 2, 3),
    num_res_blocks=1,
    attn_resolutions=(16, 4),
    dropout=0.0,
)


def diffusers_kwargs(cfg: dict) -> dict:
    """The diffusers UNet2DModel that computes the DDPM network for `cfg` (google/ddpm-cifar10-32 settings)."""
    levels = len(cfg["ch_mult"])
    attn = [cfg["resolution"] // 2**i in cfg["attn_resolutions"] for i in range(levels)]
    return dict(
        sample_size=cfg["resolution"],
        in_channels=cfg.get("in_channels", 3),
        out_channels=cfg.get("out_channels", 3),
        block_out_channels=tuple(cfg["ch"] * m for m in cfg["ch_mult"]),
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        layers_per_block=cfg["num_res_blocks"],
        attention_head_dim=None,
        norm_eps=1e-6,
        flip_sin_to_cos=False,
        freq_shift=1,
        downsample_padding=0,
        dropout=0.0,
    )


def randomized_diffusers(cfg: dict, seed: int = 0):
    """Random-init diffusers model with non-trivial norm affines and biases (defaults are 1/0 for norms)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = diffusers.UNet2DModel(**diffusers_kwargs(cfg)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model


def random_unet(cfg: dict, seed: int) -> UNet:
    torch.manual_seed(seed)
    return UNet(**cfg).eval()


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def cifar_pair():
    ref = randomized_diffusers(CIFAR10)
    ours = UNet(**CIFAR10).eval()
    ours.load_state_dict(diffusers_to_original(ref.state_dict()), strict=True)
    return ref, ours


# ---------------------------------------------------------------------------------------------------------
# Architecture
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cfg", "count"), [(CIFAR10, 35_746_307), (CELEBA64, 78_700_803)])
def test_parameter_counts_match_ddpm(cfg, count):
    with torch.device("meta"):
        model = UNet(**cfg)
    assert sum(p.numel() for p in model.parameters()) == count


def test_cifar10_has_the_328_original_tensor_names(cifar_pair):
    _, ours = cifar_pair
    names = list(ours.state_dict())
    assert len(names) == 328
    for name in (
        "temb.dense.0.weight",
        "temb.dense.1.bias",
        "conv_in.weight",
        "down.0.block.1.conv2.weight",
        "down.1.block.0.nin_shortcut.weight",
        "down.1.attn.1.proj_out.weight",
        "down.2.downsample.conv.weight",
        "mid.block_1.temb_proj.weight",
        "mid.attn_1.q.weight",
        "mid.block_2.norm2.bias",
        "up.0.block.2.nin_shortcut.weight",
        "up.1.attn.2.k.weight",
        "up.3.upsample.conv.bias",
        "norm_out.weight",
        "conv_out.bias",
    ):
        assert name in names, name
    assert not any(n.startswith("down.3.downsample") or n.startswith("up.0.upsample") for n in names)


# ---------------------------------------------------------------------------------------------------------
# Equivalence with diffusers
# ---------------------------------------------------------------------------------------------------------


def test_cifar10_matches_diffusers_ddpm_unet(cifar_pair):
    ref, ours = cifar_pair
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 32, 32, generator=gen)
    t = torch.tensor([3, 917])
    with torch.no_grad():
        expected = ref(x, t).sample
        got = ours(x, t)
    assert expected.abs().max() > 0.1  # a dead network would match trivially
    assert (got - expected).abs().max().item() <= 1e-4


def test_small_config_matches_diffusers_both_directions():
    ref = randomized_diffusers(SMALL, seed=2)
    ours = UNet(**SMALL).eval()
    ours.load_state_dict(diffusers_to_original(ref.state_dict()), strict=True)
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0, 250, 999])
    with torch.no_grad():
        assert (ours(x, t) - ref(x, t).sample).abs().max().item() <= 1e-4

    # Ours -> diffusers: a fresh diffusers model loads our weights strictly and computes the same.
    src = random_unet(SMALL, seed=4)
    dst = diffusers.UNet2DModel(**diffusers_kwargs(SMALL)).eval()
    dst.load_state_dict(original_to_diffusers(src.state_dict()), strict=True)
    with torch.no_grad():
        assert (src(x, t) - dst(x, t).sample).abs().max().item() <= 1e-4


def test_gradients_match_diffusers():
    ref = randomized_diffusers(SMALL, seed=13)
    ours = UNet(**SMALL).eval()
    ours.load_state_dict(diffusers_to_original(ref.state_dict()), strict=True)
    gen = torch.Generator().manual_seed(14)
    x, target = torch.randn(2, 1, 16, 16, generator=gen), torch.randn(2, 2, 16, 16, generator=gen)
    t = torch.tensor([7, 480])
    torch.nn.functional.mse_loss(ours(x, t), target).backward()
    torch.nn.functional.mse_loss(ref(x, t).sample, target).backward()
    ours_grads = original_to_diffusers({n: p.grad for n, p in ours.named_parameters()})
    for name, p in ref.named_parameters():
        scale = p.grad.abs().max().item()
        assert scale > 0, name
        assert (ours_grads[name] - p.grad).abs().max().item() <= 1e-4 * scale + 1e-7, name


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_output_keeps_the_input_memory_format(memory_format):
    model = random_unet({**SMALL, "in_channels": 3, "out_channels": 3}, 15)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(16))
    t = torch.tensor([1, 2])
    with torch.no_grad():
        expected = model(x, t)
        got = model(x.contiguous(memory_format=memory_format), t)
    assert got.is_contiguous(memory_format=memory_format)
    assert (got - expected).abs().max().item() <= 1e-5


def _train_step(model: UNet, seed: int) -> tuple[dict[str, torch.Tensor], int]:
    """Gradients of one MSE step in train mode (dropout on), and the bytes autograd saved for backward."""
    gen = torch.Generator().manual_seed(seed)
    x, target = torch.randn(2, 1, 16, 16, generator=gen), torch.randn(2, 2, 16, 16, generator=gen)
    saved = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    model.train().zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the dropout masks
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = torch.nn.functional.mse_loss(model(x, torch.tensor([3, 700])), target)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}, sum(saved)


def test_grad_checkpointing_gives_the_plain_networks_gradients_with_less_saved():
    model = random_unet({**SMALL, "dropout": 0.3}, 17)
    plain, plain_bytes = _train_step(model, 18)
    model.grad_checkpointing = True
    ckpt, ckpt_bytes = _train_step(model, 18)
    assert plain.keys() == ckpt.keys()
    for name, grad in plain.items():
        assert grad.abs().max() > 0, name
        # The recomputed blocks redraw the same dropout masks, so the gradients are the same numbers.
        assert torch.allclose(ckpt[name], grad, rtol=1e-5, atol=1e-7), name
    assert ckpt_bytes < 0.5 * plain_bytes  # only block inputs are kept
    # A runtime switch, not architecture: the stored config and the tensor names do not change.
    assert "grad_checkpointing" not in model.config
    assert list(model.state_dict()) == list(random_unet(SMALL, 0).state_dict())
    # In eval mode (and under no_grad) nothing is recomputed: the plain forward runs.
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(19))
    with torch.no_grad():
        assert torch.equal(
            model.eval()(x, torch.tensor([5])), random_unet(SMALL, 17).eval()(x, torch.tensor([5]))
        )


def test_grad_checkpointing_is_a_model_option_outside_the_net_config(compose_config):
    import hydra

    cfg = compose_config(["model=ddpm_tiny", "model.grad_checkpointing=true"], "train")
    module = hydra.utils.instantiate(cfg.model, _convert_="all")
    assert module.net.grad_checkpointing and not module.ema_net.grad_checkpointing
    assert module.hparams["grad_checkpointing"] is True and "grad_checkpointing" not in module.hparams["net"]
    default = hydra.utils.instantiate(compose_config(["model=ddpm_tiny"], "train").model, _convert_="all")
    assert not default.net.grad_checkpointing


def test_round_trip_is_exact(cifar_pair):
    ref, ours = cifar_pair
    sd = ours.state_dict()
    back = diffusers_to_original(original_to_diffusers(sd))
    assert list(back) == list(sd) or set(back) == set(sd)
    assert all(torch.equal(back[k], v) for k, v in sd.items())
    # And the diffusers side: the converted names and shapes are exactly diffusers' own.
    converted = original_to_diffusers(sd)
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in ref.state_dict().items()}


def test_legacy_diffusers_attention_names_convert():
    sd = randomized_diffusers(SMALL).state_dict()
    legacy = {}
    for key, value in sd.items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            key = key.replace(f".{new}.", f".{old}.")
        legacy[key] = value
    assert any(".proj_attn." in k for k in legacy)
    a, b = diffusers_to_original(legacy), diffusers_to_original(sd)
    assert max_diff(a, b) == 0.0


def test_diffusers_defaults_table_is_current():
    params = inspect.signature(diffusers.UNet2DModel.__init__).parameters
    for name, value in DIFFUSERS_DEFAULTS.items():
        assert params[name].default == value, name


# ---------------------------------------------------------------------------------------------------------
# Layout detection and config inference
# ---------------------------------------------------------------------------------------------------------


def test_detect_layout():
    sd = random_unet(SMALL, 0).state_dict()
    assert detect_layout(sd) == "original"
    assert detect_layout({f"module.{k}": v for k, v in sd.items()}) == "original"
    assert detect_layout(original_to_diffusers(sd)) == "diffusers"
    assert detect_layout({f"net.{k}": v for k, v in sd.items()}) == "lightning"
    assert detect_layout({"state_dict": {f"ema_net.{k}": v for k, v in sd.items()}}) == "lightning"
    assert detect_layout([sd, {"state": {}, "param_groups": []}, 3, 100, sd]) == "original"
    with pytest.raises(DDIMError, match="unknown checkpoint layout"):
        detect_layout({"encoder.weight": torch.zeros(1)})


@pytest.mark.parametrize("cfg", [CIFAR10, CELEBA64, SMALL])
def test_infer_config_rebuilds_the_same_network(cfg):
    with torch.device("meta"):
        sd = UNet(**cfg).state_dict()
    inferred = infer_unet_config(sd, resolution=cfg["resolution"])
    expected = {**{"in_channels": 3, "out_channels": 3}, **cfg, "dropout": 0.0}
    assert inferred == expected
    assert infer_unet_config(original_to_diffusers(sd), resolution=cfg["resolution"]) == expected


def test_default_resolution_rule():
    with torch.device("meta"):
        cifar, celeba = UNet(**CIFAR10).state_dict(), UNet(**CELEBA64).state_dict()
    assert infer_unet_config(cifar)["resolution"] == 32
    assert infer_unet_config(celeba)["resolution"] == 64
    assert [default_resolution(n) for n in (3, 4, 5, 6, 7)] == [16, 32, 64, 256, 256]


# ---------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------


def assert_same_weights(model: UNet, sd: dict[str, torch.Tensor]) -> None:
    assert max_diff(model.state_dict(), {k: v for k, v in sd.items()}) == 0.0


def test_load_lightning_checkpoint_prefers_ema(tmp_path):
    net, ema = random_unet(SMALL, 5).state_dict(), random_unet(SMALL, 6).state_dict()
    ckpt = {
        "state_dict": {
            **{f"net.{k}": v for k, v in net.items()},
            **{f"ema_net.{k}": v for k, v in ema.items()},
        },
        "hyper_parameters": {
            "net": dict(SMALL),
            "schedule": {"kind": "linear", "num_timesteps": 1000},
        },
        "pytorch-lightning_version": "2.6.6",
    }
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    model, config = load_unet(path)
    assert config == SMALL
    assert_same_weights(model, ema)
    assert not model.training
    model, _ = load_unet(path, prefer_ema=False)
    assert_same_weights(model, net)
    read = read_checkpoint(path)
    assert (read.layout, read.ema, read.hyper_parameters["schedule"]["num_timesteps"]) == (
        "lightning",
        True,
        1000,
    )
    # Same tensors at another image size: attention stays at the same levels.
    _, config = load_unet(path, resolution=32)
    assert config["attn_resolutions"] == (32, 8)
    # Without EMA weights the only set is used and reported as such.
    ckpt["state_dict"] = {f"net.{k}": v for k, v in net.items()}
    torch.save(ckpt, path)
    read = read_checkpoint(path)
    assert read.ema is None
    assert_same_weights(build_unet(read.state_dict, read.config), net)


def test_load_checkpoint_of_the_lightning_module(tmp_path):
    lit = pytest.importorskip("ddim.training.module")
    module = lit.DiffusionModule(net=dict(SMALL))
    with torch.no_grad():
        for p in module.ema_net.parameters():
            p.add_(1.0)
    path = tmp_path / "module.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    model, config = load_unet(path)
    assert config == SMALL
    assert_same_weights(model, module.ema_net.state_dict())


def test_load_original_plain_dict_with_module_prefix(tmp_path):
    sd = random_unet(SMALL, 7).state_dict()
    path = tmp_path / "model.pth"
    torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    model, config = load_unet(path, resolution=16)
    assert config == SMALL
    assert_same_weights(model, sd)
    assert read_checkpoint(path).layout == "original"


def test_load_ddim_list_checkpoint_prefers_ema(tmp_path):
    model_sd, ema_sd = random_unet(SMALL, 8).state_dict(), random_unet(SMALL, 9).state_dict()
    prefixed = [{f"module.{k}": v for k, v in sd.items()} for sd in (model_sd, ema_sd)]
    optim = torch.optim.Adam(random_unet(SMALL, 0).parameters()).state_dict()
    path = tmp_path / "ckpt.pth"
    torch.save([prefixed[0], optim, 12, 3400, prefixed[1]], path)
    assert_same_weights(load_unet(path, resolution=16)[0], ema_sd)
    assert_same_weights(load_unet(path, resolution=16, prefer_ema=False)[0], model_sd)
    # Without EMA the DDIM repo saves [model, optimizer, epoch, step]: the model is the only choice.
    torch.save([prefixed[0], optim, 12, 3400], path)
    assert_same_weights(load_unet(path, resolution=16)[0], model_sd)


@pytest.mark.parametrize("safetensors", [True, False])
def test_load_diffusers_folder(tmp_path, safetensors):
    ref = randomized_diffusers(SMALL, seed=10)
    ref.save_pretrained(tmp_path / "ddpm", safe_serialization=safetensors)
    model, config = load_unet(tmp_path / "ddpm")
    assert config == SMALL  # resolution comes from config.json's sample_size
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(11))
    t = torch.tensor([5, 600])
    with torch.no_grad():
        assert (model(x, t) - ref(x, t).sample).abs().max().item() <= 1e-4
    # The weights file alone (no config.json beside it) converts too.
    suffix = ".safetensors" if safetensors else ".bin"
    alone = tmp_path / f"alone{suffix}"
    (tmp_path / "ddpm" / f"diffusion_pytorch_model{suffix}").rename(alone)
    model, config = load_unet(alone, resolution=16)
    assert config == SMALL and read_checkpoint(alone, resolution=16).layout == "diffusers"
    # A saved pipeline keeps the model in unet/.
    ref.save_pretrained(tmp_path / "pipeline" / "unet", safe_serialization=safetensors)
    assert_same_weights(load_unet(tmp_path / "pipeline")[0], model.state_dict())


def test_diffusers_folder_with_another_architecture_is_refused(tmp_path):
    kwargs = {**diffusers_kwargs(SMALL), "flip_sin_to_cos": True}
    diffusers.UNet2DModel(**kwargs).save_pretrained(tmp_path / "other")
    with pytest.raises(DDIMError, match="flip_sin_to_cos=True"):
        load_unet(tmp_path / "other")


def test_missing_checkpoint_says_what_to_pass(tmp_path):
    with pytest.raises(DDIMError, match=r"checkpoint not found: .*nope\.ckpt.*pass ckpt="):
        load_unet(tmp_path / "nope.ckpt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DDIMError, match="not a diffusers UNet2DModel folder"):
        load_unet(tmp_path / "empty")


@pytest.mark.parametrize("name", ["broken.ckpt", "broken.pth", "broken.safetensors"])
def test_corrupt_checkpoint_is_reported(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(
        torch.randint(0, 256, (4096,), dtype=torch.uint8, generator=torch.Generator()).numpy().tobytes()
    )
    with pytest.raises(DDIMError, match="could not read checkpoint .*corrupt"):
        load_unet(path)


def test_truncated_checkpoint_is_reported(tmp_path):
    path = tmp_path / "cut.ckpt"
    torch.save(random_unet(SMALL, 0).state_dict(), path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DDIMError, match="could not read checkpoint"):
        load_unet(path)


def test_shape_mismatch_names_the_tensor(tmp_path):
    sd = random_unet(SMALL, 12).state_dict()
    ckpt = {
        "state_dict": {f"net.{k}": v for k, v in sd.items()},
        "hyper_parameters": {"net": {**SMALL, "ch": 64}},
    }
    path = tmp_path / "wrong.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(
        DDIMError, match=r"shape mismatch for tensor 'temb\.dense\.0\.weight'.*\(128, 32\).*\(256, 64\)"
    ):
        load_unet(path)
    # Structure mismatch (attention where the tensors have none) lists the missing tensors.
    ckpt["hyper_parameters"]["net"] = {**SMALL, "attn_resolutions": (16, 8, 4)}
    torch.save(ckpt, path)
    with pytest.raises(DDIMError, match=r"missing \['down\.1\.attn\.0"):
        load_unet(path)


def test_pickled_objects_outside_lightning_checkpoints_are_refused(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"model": random_unet(SMALL, 0).state_dict(), "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(DDIMError, match="holds Python objects besides tensors"):
        load_unet(path)


def test_unknown_layout_file_is_reported(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(3)}, path)
    with pytest.raises(DDIMError, match="unknown checkpoint layout"):
        load_unet(path)
