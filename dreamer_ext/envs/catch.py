"""``dreamer_ext/Catch-v0``: a small pixel task whose reward depends only on two small objects, for the distractor
experiments on a CPU budget.

A 64x64 RGB frame of one flat background colour. A 4x4 ball falls from a random column at the top, one row of 4
pixels per step (15 steps to the bottom); a 12x3 paddle at the bottom moves left or right by 4 pixels per step or
stays (Discrete(3): left, stay, right). When the ball reaches the paddle's row the reward is +1 if it overlaps the
paddle and -1 otherwise, and a new ball starts. An episode is ``balls`` balls (default 10; returns in [-10, 10];
random play about -6).

Under ``--distractor=video:SEED`` the flat background is replaced by a moving video while the ball and paddle stay:
everything the reward depends on is a few pixels, everything else is distraction, so a world model that reconstructs
the frame spends its capacity on the video while one that predicts reward need not.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

SIZE, BALL, PADDLE_W, PADDLE_H, FALL, MOVE = 64, 4, 12, 3, 4, 4
BACKGROUND = np.array([40, 40, 40], np.uint8)
BALL_COLOR = np.array([250, 220, 40], np.uint8)
PADDLE_COLOR = np.array([60, 200, 250], np.uint8)


class Catch(gym.Env):
    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, balls: int = 10, render_mode: str | None = None):
        if not isinstance(balls, int) or balls < 1:
            raise ValueError(f"balls: must be a positive integer, got {balls!r}")
        self.balls, self.render_mode = balls, render_mode
        self.observation_space = spaces.Box(0, 255, (SIZE, SIZE, 3), np.uint8)
        self.action_space = spaces.Discrete(3)

    def _new_ball(self) -> None:
        self.ball_x = int(self.np_random.integers(0, SIZE - BALL + 1))
        self.ball_y = 0

    def _frame(self) -> np.ndarray:
        img = np.empty((SIZE, SIZE, 3), np.uint8)
        img[:] = BACKGROUND
        img[self.ball_y:self.ball_y + BALL, self.ball_x:self.ball_x + BALL] = BALL_COLOR
        img[SIZE - PADDLE_H:, self.paddle_x:self.paddle_x + PADDLE_W] = PADDLE_COLOR
        return img

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.paddle_x = (SIZE - PADDLE_W) // 2
        self.caught = 0
        self.done_balls = 0
        self._new_ball()
        return self._frame(), {}

    def step(self, action):
        a = int(action)
        if a not in (0, 1, 2):
            raise ValueError(f"action: expected 0, 1 or 2, got {action!r}")
        self.paddle_x = int(np.clip(self.paddle_x + (a - 1) * MOVE, 0, SIZE - PADDLE_W))
        self.ball_y += FALL
        reward = 0.0
        if self.ball_y + BALL >= SIZE - PADDLE_H:  # the ball reached the paddle's row
            hit = self.ball_x < self.paddle_x + PADDLE_W and self.paddle_x < self.ball_x + BALL
            reward = 1.0 if hit else -1.0
            self.caught += hit
            self.done_balls += 1
            self._new_ball()
        terminated = self.done_balls >= self.balls
        return self._frame(), reward, terminated, False, {"caught": self.caught}

    def render(self):
        return self._frame()


def register() -> None:
    if "dreamer_ext/Catch-v0" not in gym.registry:
        gym.register("dreamer_ext/Catch-v0", entry_point=Catch)
