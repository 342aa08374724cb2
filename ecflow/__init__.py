"""ecflow: parameter recovery of neural networks with Expand-and-Cluster.

Martinelli, Şimşek, Gerstner, Brea, "Expand-and-Cluster: Parameter Recovery of Neural
Networks", ICML 2024.
"""

__version__ = "0.1.0"
