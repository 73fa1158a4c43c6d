"""DDPM training and generalized (DDIM) sampling, reproducing Ho et al. 2020 and Song et al. 2021."""

__version__ = "0.1.0"
