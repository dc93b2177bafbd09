"""DreamerV3 size1m on CartPole-v1 for 30k env steps. Last line: ``final_eval_return=<mean of 10 eval episodes>``.

Usage: ``PYTHONPATH=. python bench/learn_cartpole.py [--device=cuda] [--seed=0] [--logdir=...]``. Solved is 500.
"""
from _learn import run

if __name__ == "__main__":
    run(env="CartPole-v1", preset="size1m", steps=30_000, train_ratio=128, num_envs=1)
