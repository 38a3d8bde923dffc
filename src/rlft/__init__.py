"""rlft: config-driven post-training (SFT, reward models, DPO, RLOO, best-of-N) for small LMs."""

__version__ = "0.1.0"
