"""Lightning callbacks used during training."""

from ddim.callbacks.random_streams import RandomStreams
from ddim.callbacks.sample_grid import SampleGrid

__all__ = ["RandomStreams", "SampleGrid"]
