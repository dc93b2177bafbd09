"""The float64 run of the data-parallel equivalence test (test_dist.py): a tiny agent, 3 updates on rows ``rows`` of
the same 4-row batches (not a test module)."""
from __future__ import annotations

import torch

from dreamer_ext.agent import Agent
from tiny_agent_config import random_batch, tiny_config, vector_spec


def float64_updates(objective: str, d, rows: slice, updates: int = 3) -> list[torch.Tensor]:
    """Parameters after ``updates`` updates of a float64 tiny agent on rows ``rows`` of batches of 4 rows."""
    torch.manual_seed(0)  # every process: the same initial parameters and the same update keys
    spec = vector_spec()
    agent = Agent(tiny_config(objective=objective, precision="fp32"), spec).double()
    agent.use_dist(d)
    for i in range(updates):
        batch = random_batch(spec, B=4, T=6, seed=i)
        batch = {k: v[rows] for k, v in batch.items()}
        metrics = agent.train_step(batch)
        assert metrics["opt/skipped"] == 0.0
    return [p.detach().clone() for p in agent.parameters()]
