"""DreamerV3 size1m on Atari100k Asterix (ALE/Asterix-v5, the Atari100k protocol) for 30k env steps at train ratio 64:
the CPU-budget Atari check (about 1,800 updates; a few hours on a 2-core CPU with one thread).

Random play scores about 210. The learning curve (training-episode score, i.e. the return of the episodes the agent
plays while it trains, and the eval score every 5k env steps) comes from the run directory:
``python bench/curves.py <logdir>``. Last line: ``final_eval_return=<mean of 10 eval episodes>``.
Usage: ``PYTHONPATH=. python bench/learn_asterix.py --logdir=runs/asterix_s0 [--seed=0] [--device=cuda]``.
"""
from _learn import run

if __name__ == "__main__":
    run(env="ALE/Asterix-v5", preset="size1m", steps=30_000, train_ratio=64, num_envs=1)
