"""Reference models scored next to NeuroBridge on the same masked cells."""

from .poisson_glm import PoissonGLMFit, fit_poisson_glm
from .smoothing import SmoothingGLMBaseline, gaussian_kernel, gaussian_smooth_observed

__all__ = [
    "PoissonGLMFit",
    "SmoothingGLMBaseline",
    "fit_poisson_glm",
    "gaussian_kernel",
    "gaussian_smooth_observed",
]
