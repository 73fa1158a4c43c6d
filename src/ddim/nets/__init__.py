"""Networks: pure torch, no diffusion logic."""

from ddim.nets.unet import UNet

__all__ = ["UNet"]
