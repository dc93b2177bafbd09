"""DreamerV3 size1m on Pendulum-v1 (continuous actions) for 30k env steps.

Last line: ``final_eval_return=<mean of 10 eval episodes>`` (random policy about -1200; good policies about -150..-200).
Usage: ``PYTHONPATH=. python bench/learn_pendulum.py [--device=cuda] [--seed=0] [--logdir=...]``.
Train ratio 256 and LaProp lr 1e-4 (the authors' lr is 4e-5), as for CartPole: the critic has only the ~7k updates
that 30k env steps allow (README, *Differences from the authors' DreamerV3*; bench/RESULTS.md, *Pendulum*).
"""
from _learn import run

if __name__ == "__main__":
    run(env="Pendulum-v1", preset="size1m", steps=30_000, train_ratio=256, num_envs=1, options=("--optim.lr=1e-4",))
