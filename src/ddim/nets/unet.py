"""The DDPM epsilon-network (Ho et al. 2020), exactly as in the original code.

Module names follow the original DDPM/DDIM checkpoints (temb.dense.0, down.{i}.block.{j}, mid.attn_1, ...),
so those state dicts load without renaming. The network maps (x, t) -> eps and knows nothing about diffusion.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ddim.settings import Count, InvalidSetting, Range


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding, sin half first, frequencies exp(-log(10000) i / (half - 1)) as in DDPM."""
    half = dim // 2
    freqs = torch.exp(
        torch.arange(half, dtype=torch.float32, device=t.device) * -(math.log(10000) / (half - 1))
    )
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # DDPM uses a 1x1 "network-in-network" projection when the channel count changes.
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:  # decoder blocks take the encoder's feature map concatenated to their input
            x = torch.cat([x, skip], dim=1)
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, with 1x1 convolutions for q, k, v and the output."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        # A 1x1 convolution is a linear map over channels. Applying the conv weights with F.linear on
        # (b, hw, c) pixels gives SDPA inputs whose last dimension is contiguous, which its fused (flash /
        # memory-efficient) kernels require; (b, 1, c, hw).transpose(-1, -2) sends it to the math fallback
        # that stores the hw x hw attention matrix. Same math and parameters as the 1x1 convolutions.
        h = self.norm(x).permute(0, 2, 3, 1).reshape(b, height * width, c)  # a view when channels_last
        q, k, v = (F.linear(h, p.weight.reshape(c, c), p.bias).unsqueeze(1) for p in (self.q, self.k, self.v))
        # One head: softmax(q k^T / sqrt(c)) v, as in the original.
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        out = F.linear(out, self.proj_out.weight.reshape(c, c), self.proj_out.bias)
        return x + out.reshape(b, height, width, c).permute(0, 3, 1, 2)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Asymmetric (0, 1, 0, 1) padding as in the TensorFlow original.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _down_stages(
    ch: int, ch_mult: Sequence[int], num_res_blocks: int, attn_resolutions: Sequence[int], resolution: int,
    temb_ch: int, dropout: float,
) -> tuple[nn.ModuleList, int]:  # fmt: skip
    """down.{level}: residual blocks (and attention at attn_resolutions), then a downsample but on the last
    level; returns the stages and the channels they end with."""
    in_mult, res, down = (1, *ch_mult), resolution, nn.ModuleList()
    for level, mult in enumerate(ch_mult):
        stage = nn.Module()
        stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
        block_in = ch * in_mult[level]
        for _ in range(num_res_blocks):
            stage.block.append(ResnetBlock(block_in, ch * mult, temb_ch, dropout))
            block_in = ch * mult
            if res in attn_resolutions:
                stage.attn.append(AttnBlock(block_in))
        if level != len(ch_mult) - 1:
            stage.downsample = Downsample(block_in)
            res //= 2
        down.append(stage)
    return down, block_in


def _up_stages(
    ch: int, ch_mult: Sequence[int], num_res_blocks: int, attn_resolutions: Sequence[int], resolution: int,
    temb_ch: int, dropout: float,
) -> tuple[nn.ModuleList, int]:  # fmt: skip
    """up.{level}, built from the lowest resolution up (stored in level order, as the original code): blocks
    that take the matching down-path skips, attention at attn_resolutions, an upsample but on level 0."""
    in_mult, res, block_in, stages = (1, *ch_mult), resolution, ch * ch_mult[-1], []
    for level in reversed(range(len(ch_mult))):
        stage = nn.Module()
        stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
        for i in range(num_res_blocks + 1):
            # The last block of a level takes the skip coming from the level's input (before its blocks).
            skip = ch * (in_mult[level] if i == num_res_blocks else ch_mult[level])
            stage.block.append(ResnetBlock(block_in + skip, ch * ch_mult[level], temb_ch, dropout))
            block_in = ch * ch_mult[level]
            if res in attn_resolutions:
                stage.attn.append(AttnBlock(block_in))
        if level != 0:
            stage.upsample = Upsample(block_in)
            res *= 2
        stages.insert(0, stage)
    return nn.ModuleList(stages), block_in


class UNet(nn.Module):
    """DDPM U-Net. CIFAR10: ch_mult (1,2,2,2), 35,746,307 parameters; CelebA 64: (1,2,2,2,4), 78,700,803."""

    def __init__(
        self,
        in_channels: Count = 3,
        out_channels: Count = 3,
        resolution: Count = 32,
        ch: Count = 128,
        ch_mult: Sequence[Count] = (1, 2, 2, 2),
        num_res_blocks: Count = 2,
        attn_resolutions: Sequence[Count] = (16,),
        dropout: Annotated[float, Range(ge=0, lt=1)] = 0.1,
    ):
        super().__init__()
        try:  # attention at no level's resolution is refused for new runs only: old checkpoints may have it
            UNet.check_settings(dict(resolution=resolution, ch=ch, ch_mult=ch_mult, attn_resolutions=()))
        except InvalidSetting as err:
            raise ValueError(f"{err.key}: {err.why}") from None
        # The constructor arguments as plain JSON/YAML values (diffusers' register_to_config does the same):
        # checkpoints store this dict, so a network is rebuilt from its record, not guessed from tensor shapes.
        self.config: dict[str, Any] = {
            "in_channels": int(in_channels),
            "out_channels": int(out_channels),
            "resolution": int(resolution),
            "ch": int(ch),
            "ch_mult": [int(m) for m in ch_mult],
            "num_res_blocks": int(num_res_blocks),
            "attn_resolutions": [int(r) for r in attn_resolutions],
            "dropout": float(dropout),
        }
        self.ch = ch
        self.num_res_blocks = num_res_blocks
        # Activation checkpointing: each block's inner activations are recomputed in the backward pass
        # instead of stored. A runtime choice (about half the activation memory for ~25% more step time),
        # not architecture, so it is not in `config`: the same weights and checkpoints work either way.
        self.grad_checkpointing = False
        temb_ch = 4 * ch
        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, temb_ch), nn.Linear(temb_ch, temb_ch)])
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)

        self.down, block_in = _down_stages(
            ch, ch_mult, num_res_blocks, attn_resolutions, resolution, temb_ch, dropout
        )
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, temb_ch, dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in, temb_ch, dropout)
        lowest = resolution // 2 ** (len(ch_mult) - 1)
        self.up, block_in = _up_stages(
            ch, ch_mult, num_res_blocks, attn_resolutions, lowest, temb_ch, dropout
        )

        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    @staticmethod
    def check_settings(values: dict[str, Any]) -> None:
        """What the types alone do not say: the levels must fit the resolution, and ch the 32-group norm."""
        resolution, ch_mult = values.get("resolution", 32), list(values.get("ch_mult", (1, 2, 2, 2)))
        if resolution % 2 ** (len(ch_mult) - 1):
            raise InvalidSetting(
                "resolution", f"{len(ch_mult)} levels (ch_mult) halve it {len(ch_mult) - 1} times, so it must be "
                f"divisible by {2 ** (len(ch_mult) - 1)}"
            )  # fmt: skip
        if values.get("ch", 128) % 32:
            raise InvalidSetting(
                "ch", "it must be a multiple of 32 (GroupNorm uses 32 groups), e.g. 32, 64, 128"
            )
        levels = [resolution // 2**i for i in range(len(ch_mult))]
        unknown = [r for r in values.get("attn_resolutions", (16,)) if r not in levels]
        if unknown:
            raise InvalidSetting(
                "attn_resolutions", f"{unknown} matches no level's resolution; the levels are {levels}"
            )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        out_format = torch.channels_last if _is_channels_last(x) else torch.contiguous_format
        if x.device.type == "cpu":
            # oneDNN convolutions run natively on NHWC: on CPU channels_last makes the forward ~10% faster in
            # fp32 and ~3x under bf16 autocast (contiguous bf16 convs take the reference kernel). The format
            # only changes memory order; every later op keeps it, and the result comes back as x was.
            x = x.contiguous(memory_format=torch.channels_last)
        temb = timestep_embedding(t, self.ch).to(x.dtype)
        temb = self.temb.dense[1](F.silu(self.temb.dense[0](temb)))

        hs = [self.conv_in(x)]
        for stage in self.down:
            for i, block in enumerate(stage.block):
                h = self._block(block, hs[-1], temb)
                hs.append(self._block(stage.attn[i], h) if len(stage.attn) else h)
            if hasattr(stage, "downsample"):
                hs.append(stage.downsample(hs[-1]))

        h = self._block(self.mid.block_1, hs[-1], temb)
        h = self._block(self.mid.block_2, self._block(self.mid.attn_1, h), temb)

        for stage in reversed(self.up):
            for i, block in enumerate(stage.block):
                h = self._block(block, h, temb, hs.pop())
                if len(stage.attn):
                    h = self._block(stage.attn[i], h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h))).contiguous(memory_format=out_format)

    def _block(self, block: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            # Inputs are kept, everything inside the block (the decoder's concatenation too) is recomputed.
            # use_reentrant=False: the recommended variant (works with inputs that need no grad, keyword
            # arguments and torch.compile); the RNG state is restored, so dropout draws the same masks again.
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
