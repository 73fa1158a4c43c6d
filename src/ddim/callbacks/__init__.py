"""Lightning callbacks used during training."""

from ddim.callbacks.sample_grid import SampleGrid

__all__ = ["SampleGrid"]
