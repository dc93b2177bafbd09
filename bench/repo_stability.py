"""RePo stability on Atari100k Asterix: size1m, ``--objective=repo``, train ratio 256 for 9,216 env steps, i.e. 2,048
updates (training starts after 1,024 stored steps; 0.25 updates per env step). Pass the distractor and the seed:

``PYTHONPATH=. python bench/repo_stability.py --distractor=gauss:20 --seed=0 --logdir=runs/repo_gauss20_s0``

What to read (``python bench/repo_curves.py <logdir>`` prints them per log interval): beta, KL_bal against eps, the
violation, the largest loss term, skipped updates and the alarm counter. Last line: ``final_eval_return=...``.
"""
from _learn import run

if __name__ == "__main__":
    import sys

    run(env="ALE/Asterix-v5", preset="size1m", steps=9_216, train_ratio=256, num_envs=1,
        argv=["--objective=repo", "--eval_every=9216", "--log_every=256", *sys.argv[1:]])
