"""dreamer_ext: DreamerV3 for PyTorch on custom C++/CUDA kernels, with a RePo world-model objective."""
__version__ = "0.1.0"
