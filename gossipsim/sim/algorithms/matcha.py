"""MATCHA: D-PSGD over a random subset of a base graph's matchings each round.

Paper: Wang, Sahu, Yang, Joshi, Kar, "MATCHA: Speeding Up Decentralized SGD via Matching Decomposition
Sampling", arXiv 1905.09435. As the official code (JYWa/MATCHA `decenCommunicator`) runs it, adapt then
combine:

    X^{t+1/2} = X^t - lr D(X^t)                 # local step (the code's momentum defaults to 0)
    W_t       = I - alpha sum_j B_j^t L_j       # B_j^t ~ Bern(p_j), the same draws on every agent
    X^{t+1}   = W_t X^{t+1/2}

The sampling is the topology's, not the algorithm's: `graphs.matcha(base, budget=0.5)` (on the command
line `--topology=BASE+matcha:0.5`) decomposes the base graph, solves for p and alpha, and hands each
round its W_t. So this is `dsgd` under its paper's name, and `gossipsim run --algorithm=matcha` refuses a
topology that is not a MATCHA schedule. Communication: the float32 model on every active edge only;
a round with no active matching sends nothing.
"""
from __future__ import annotations

from .base import register
from .dsgd import dsgd

matcha = register("matcha")(dsgd)
