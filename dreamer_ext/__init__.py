"""dreamer_ext: DreamerV3 (and RePo) for PyTorch on custom C++/CUDA kernels."""
__version__ = "0.1.0"
