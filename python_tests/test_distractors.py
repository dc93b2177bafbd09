"""Distractor specs (dreamer_ext/envs/distractors.py): parsing and its errors, the statistics of each distractor in
uint8 space, the video background's seeding (train and eval disjoint), and the specs through make_env."""
import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from dreamer_ext.envs import Distractor, make_env, make_single_env, parse_distractor
from dreamer_ext.envs.adapter import DreamerAdapter
from dreamer_ext.envs.distractors import VideoBackground, apply_distractor

BG = (30, 60, 90)


class SpriteEnv(gym.Env):
    """A 64x64 frame of one background colour with a white 8x8 sprite that moves right one pixel per step."""

    def __init__(self, length=50):
        self.observation_space = spaces.Box(0, 255, (64, 64, 3), np.uint8)
        self.action_space = spaces.Discrete(2)
        self.length = length

    def _frame(self):
        img = np.empty((64, 64, 3), np.uint8)
        img[:] = BG
        x = 4 + self.t % 50
        img[20:28, x:x + 8] = 255
        return img

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._frame(), {}

    def step(self, action):
        self.t += 1
        return self._frame(), 1.0, False, self.t >= self.length, {}


gym.register("DistractorTestSprite-v0", entry_point=SpriteEnv)


@pytest.mark.parametrize("spec, want", [("none", Distractor("none")), ("gauss:20", Distractor("gauss", 20.0)),
                                        ("GAUSS:7.5", Distractor("gauss", 7.5)), ("gauss:0", Distractor("none")),
                                        ("blackout:0.3", Distractor("blackout", 0.3)), ("video:12", Distractor("video", 12.0))])
def test_parse(spec, want):
    assert parse_distractor(spec) == want
    assert parse_distractor(str(want)) == want  # str() gives a spec back


@pytest.mark.parametrize("spec", ["", "gauss", "gauss:", "gauss:x", "gauss:-1", "gauss:300", "blackout:1.5", "video:1.5",
                                  "video:-2", "snow:3", "none:1", 5])
def test_bad_specs_name_the_option_and_what_is_expected(spec):
    with pytest.raises(ValueError, match=r"^--distractor: .*(expected|must|number|integer)"):
        parse_distractor(spec, name="--distractor")


def sprite(distractor, seed=0, role="train"):
    return make_single_env("DistractorTestSprite-v0", seed=seed, distractor=distractor, role=role)


def frames(env, n):
    out = [env.reset(seed=0)[0]["image"]]
    for _ in range(n - 1):
        out.append(env.step(np.eye(2, dtype=np.float32)[0])[0]["image"])
    return np.stack(out)


def test_video_replaces_only_the_background_and_moves():
    clean = frames(sprite("none"), 10)
    vid = frames(sprite("video:3"), 10)
    fg = (clean != np.array(BG, np.uint8)).any(-1)
    assert (vid[fg] == clean[fg]).all()               # the sprite is untouched
    assert (vid[~fg] != clean[~fg]).any(-1).mean() > 0.9  # the background is replaced almost everywhere
    assert vid.dtype == np.uint8
    assert not np.array_equal(vid[0][~fg[0]], vid[5][~fg[5]])  # and it moves
    bg_std = vid[~fg].reshape(-1, 3).std(0)
    assert (bg_std > 10).all()  # a textured video, not a flat colour


def test_video_seeds_reproduce_and_train_eval_are_disjoint():
    a = frames(sprite("video:3", seed=5), 6)
    assert np.array_equal(a, frames(sprite("video:3", seed=5), 6))           # same spec, seed and role: same video
    assert not np.array_equal(a, frames(sprite("video:4", seed=5), 6))       # another video seed
    assert not np.array_equal(a, frames(sprite("video:3", seed=5, role="eval"), 6))  # eval never shares train's video
    assert not np.array_equal(a, frames(sprite("video:3", seed=6), 6))       # each env its own stream
    with pytest.raises(ValueError, match="role"):
        apply_distractor(DreamerAdapter(SpriteEnv()), "video:1", 0, role="test")


def test_gauss_and_blackout_statistics_through_the_spec():
    clean = frames(sprite("none"), 40).astype(np.float64)
    noisy = frames(sprite("gauss:20", seed=1), 40).astype(np.float64)
    bg = np.broadcast_to((clean == np.array(BG)).all(-1)[..., None], clean.shape)
    d = (noisy - clean)[bg]
    assert 18.5 < d.std() < 21.5 and abs(d.mean()) < 0.5       # sigma on the 0-255 scale, zero mean (no clipping near 30-90)
    sat = frames(sprite("gauss:20", seed=1), 40)[~bg[..., 0]]   # the white sprite: noise clipped at 255, never wrapped
    assert sat.max() == 255 and sat.min() > 150
    black = frames(sprite("blackout:0.3", seed=2), 400)
    rate = (~black.reshape(400, -1).any(1)).mean()
    assert 0.24 < rate < 0.36
    assert not np.array_equal(frames(sprite("gauss:20", seed=1), 3), frames(sprite("gauss:20", seed=2), 3))


def test_make_env_applies_the_spec_and_rejects_vector_envs():
    env = make_env("DistractorTestSprite-v0", seed=0, num_envs=2, distractor="video:1")
    obs = env.reset()
    assert obs["image"].shape == (2, 64, 64, 3)
    assert not np.array_equal(obs["image"][0], obs["image"][1])  # each env its own video stream
    env.close()
    with pytest.raises(ValueError, match="image"):
        make_env("CartPole-v1", distractor="gauss:10")
    with pytest.raises(ValueError, match="distractor"):
        make_env("DistractorTestSprite-v0", distractor="fog:1")


def test_video_wrapper_needs_images():
    with pytest.raises(ValueError, match="image"):
        VideoBackground(DreamerAdapter(gym.make("CartPole-v1")), 0)


# ---- dreamer_ext/Catch-v0: the small pixel task for the distractor experiments -------------------------------------
def play(policy, distractor="none", seed=0):
    env = make_env("dreamer_ext/Catch-v0", seed=seed, distractor=distractor)
    obs, total, frames_ = env.reset(), 0.0, []
    while True:
        a = policy(env._envs.envs[0].unwrapped)
        obs = env.step(np.eye(3, dtype=np.float32)[a][None])
        frames_.append(obs["image"][0])
        total += float(obs["reward"][0])
        if obs["is_last"][0]:
            assert obs["is_terminal"][0]
            env.close()
            return total, frames_


def tracker(game):
    centre = game.paddle_x + 6 - (game.ball_x + 2)
    return 0 if centre > 2 else 2 if centre < -2 else 1


def test_catch_rewards_depend_on_the_paddle_and_the_ball():
    caught, _ = play(tracker)
    assert caught == 10.0  # a paddle that follows the ball catches all 10
    still, _ = play(lambda g: 1)
    assert -10.0 <= still <= 0.0 and still < caught
    rng = np.random.default_rng(0)
    randoms = [play(lambda g: int(rng.integers(3)), seed=s)[0] for s in range(6)]
    assert np.mean(randoms) < -2.0


def test_catch_under_a_video_keeps_ball_and_paddle():
    from dreamer_ext.envs.catch import BALL_COLOR, PADDLE_COLOR
    _, clean = play(tracker)
    _, vid = play(tracker, distractor="video:2")
    for c, v in zip(clean[:20], vid[:20]):
        for color in (BALL_COLOR, PADDLE_COLOR):
            mask = (c == color).all(-1)
            assert mask.any() and (v[mask] == color).all()
        assert (c != v).any(-1).mean() > 0.8  # the rest is the video
