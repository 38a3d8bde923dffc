"""The RLOO hot loop, fused. Each module reads kernel -> launcher -> torch reference -> dispatcher:
the Triton kernel runs on CUDA (and on CPU under TRITON_INTERPRET=1 in tests), the torch
reference is also the CPU path. Each module imports Triton at the top inside try/except: without it
(macOS, some CPU installs) only the torch path runs.

    linear_logprob   per-token log-probs (and entropy) from hidden states and the lm_head weight,
                     never materialising the [tokens, vocab] logits; backward included
    rloo_advantage   per-sequence KL, reward - beta*KL, NaN-aware leave-one-out baseline,
                     optional normalisation, in one launch; or pass@k / max@k advantages (pass_k)
"""

from rlft.kernels.linear_logprob import linear_logprobs
from rlft.kernels.rloo_advantage import rloo_advantages

__all__ = ["linear_logprobs", "rloo_advantages"]
