"""The curriculum core: which source each step draws from."""

from toolkit.curriculum.sampler import SourceSampler

__all__ = ["SourceSampler"]
