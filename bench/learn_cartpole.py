"""DreamerV3 size1m on CartPole-v1 for 30k env steps. Last line: ``final_eval_return=<mean of 10 eval episodes>``.

Usage: ``PYTHONPATH=. python bench/learn_cartpole.py [--device=cuda] [--seed=0] [--logdir=...]``. Solved is 500.
Train ratio 256 and LaProp lr 1e-4 (the authors' lr is 4e-5): at 4e-5 the critic's value grows about 0.01 per update
and is still far below the return of a balancing policy after the 7k updates that 30k env steps allow (README,
*Differences from the authors' DreamerV3*; bench/RESULTS.md, *CartPole*).
"""
from _learn import run

if __name__ == "__main__":
    run(env="CartPole-v1", preset="size1m", steps=30_000, train_ratio=256, num_envs=1, options=("--optim.lr=1e-4",))
