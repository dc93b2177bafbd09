"""Environment layer: conversions, reset-as-a-step, autoreset bookkeeping, Atari100k protocol, distractors."""
import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from dreamer_ext.envs import Atari100k, Blackout, EnvSpec, PixelNoise, env_spec, make_env, make_single_env
from dreamer_ext.envs.adapter import ActConverter, DreamerAdapter, ImageResizer, ObsConverter

FLAGS = ("reward", "is_first", "is_last", "is_terminal")


def onehot(n, i, rows=1):
    a = np.zeros((rows, n), np.float32)
    a[:, i] = 1.0
    return a


# ------------------------------------------------------------------------------------------------------------ fake envs
class ImageEnv(gym.Env):
    """Constant-colour images of a chosen size, fixed episode length, Discrete(3) actions."""

    def __init__(self, hw=(64, 64), value=100, length=5):
        self.observation_space = spaces.Box(0, 255, (*hw, 3), np.uint8)
        self.action_space = spaces.Discrete(3)
        self.hw, self.value, self.length = hw, value, length

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.full((*self.hw, 3), self.value, np.uint8), {}

    def step(self, action):
        self.t += 1
        return np.full((*self.hw, 3), self.value, np.uint8), 1.0, self.t >= self.length, False, {}


class DictEnv(gym.Env):
    def __init__(self):
        self.observation_space = spaces.Dict(
            {"pixels": spaces.Box(0, 255, (32, 48, 3), np.uint8),
             "pos": spaces.Box(-1, 1, (2,), np.float32),
             "vel": spaces.Box(-1, 1, (3,), np.float64)})
        self.action_space = spaces.Box(np.array([0.0, -4.0], np.float32), np.array([1.0, 4.0], np.float32))
        self.last_action = None

    def _obs(self):
        return {"pixels": np.zeros((32, 48, 3), np.uint8), "pos": np.array([0.5, -0.5], np.float32),
                "vel": np.array([1.0, 2.0, 3.0])}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._obs(), {}

    def step(self, action):
        self.last_action = action
        return self._obs(), 0.0, False, False, {}


class MultiDiscreteEnv(ImageEnv):
    def __init__(self):
        super().__init__()
        self.action_space = spaces.MultiDiscrete([2, 3])


# ------------------------------------------------------------------------------------------------------------ gymnasium
def test_cartpole_shapes_and_reset_step():
    env = make_env("CartPole-v1", seed=0, num_envs=2)
    assert env.spec == EnvSpec(obs={"vector": ((4,), "float32")}, act_dim=2, discrete=True)
    obs = env.reset()
    assert obs["vector"].shape == (2, 4) and obs["vector"].dtype == np.float32
    assert obs["reward"].dtype == np.float32 and (obs["reward"] == 0).all()
    assert obs["is_first"].dtype == bool and obs["is_first"].all()
    assert not obs["is_last"].any() and not obs["is_terminal"].any()
    obs = env.step(onehot(2, 1, 2))
    assert not obs["is_first"].any() and (obs["reward"] == 1).all()
    with pytest.raises(ValueError, match="action"):
        env.step(np.zeros((2, 3), np.float32))
    env.close()


def test_pendulum_continuous_action_rescaled():
    env = make_env("Pendulum-v1", seed=0)
    assert env.spec == EnvSpec(obs={"vector": ((3,), "float32")}, act_dim=1, discrete=False)
    conv = ActConverter(gym.make("Pendulum-v1").action_space)  # Box(-2, 2)
    np.testing.assert_allclose(conv(np.array([-1.0])), [-2.0])
    np.testing.assert_allclose(conv(np.array([0.5])), [1.0])
    np.testing.assert_allclose(conv(np.array([7.0])), [2.0])  # clipped
    assert conv(np.array([0.5])).dtype == np.float32
    # through the real env: torque +2 vs -2 from the same state gives different angular velocities
    env.close()
    outs = []
    for a in (-1.0, 1.0):
        env = make_env("Pendulum-v1", seed=0)
        env.reset()
        outs.append(env.step(np.array([[a]], np.float32))["vector"][0, 2])
        env.close()
    assert outs[1] - outs[0] > 0.5


def test_discrete_and_box_conversion_asymmetric_bounds():
    conv = ActConverter(spaces.Discrete(4, start=2))
    assert conv(np.array([0, 0, 1, 0], np.float32)) == 4
    assert conv(np.array([0.1, 0.7, 0.2, 0.0], np.float32)) == 3
    with pytest.raises(ValueError, match="action"):
        conv(np.zeros(3, np.float32))
    env = DreamerAdapter(DictEnv())
    env.reset()
    env.step(np.array([-1.0, 0.5], np.float32))
    np.testing.assert_allclose(env.unwrapped.last_action, [0.0, 2.0])


def test_dict_obs_and_image_resize():
    env = DreamerAdapter(DictEnv())
    spec = env_spec(env)
    assert spec.obs == {"image": ((64, 64, 3), "uint8"), "vector": ((5,), "float32")}
    assert spec.act_dim == 2 and not spec.discrete
    obs, _ = env.reset()
    assert obs["image"].shape == (64, 64, 3) and obs["image"].dtype == np.uint8
    np.testing.assert_allclose(obs["vector"], [0.5, -0.5, 1, 2, 3])
    assert obs["vector"].dtype == np.float32
    # resizing keeps a constant image constant, downsampling averages
    r = ImageResizer((210, 160), (64, 64))
    assert (r(np.full((210, 160, 3), 77, np.uint8)) == 77).all()
    stripes = np.zeros((128, 128, 3), np.uint8)
    stripes[:, ::2] = 200
    out = ImageResizer((128, 128), (64, 64))(stripes)
    assert abs(int(out[10, 10, 0]) - 100) <= 1  # antialiased: the mean, not a sampled stripe


def test_unsupported_spaces_raise_clear_errors():
    with pytest.raises(ValueError, match="observation_space.*supported observation spaces"):
        make_env("FrozenLake-v1")  # Discrete observations
    with pytest.raises(ValueError, match="action_space.*supported action spaces"):
        DreamerAdapter(MultiDiscreteEnv())
    with pytest.raises(ValueError, match="observation_space"):
        ObsConverter(spaces.Box(0, 255, (8, 8), np.uint8))  # grayscale image
    with pytest.raises(ValueError, match="env_id"):
        make_env("NoSuchEnv-v0")
    with pytest.raises(ValueError, match="num_envs"):
        make_env("CartPole-v1", num_envs=0)


def _reference_stream(env_id, seed, actions, n_steps):
    """Per-step dicts from a plain gymnasium env following the reset-is-a-step convention (the ground truth)."""
    env = gym.make(env_id)
    o, _ = env.reset(seed=seed)
    out = [dict(vector=o, reward=0.0, is_first=True, is_last=False, is_terminal=False)]
    done = False
    for t in range(n_steps):
        if done:
            o, _ = env.reset()
            out.append(dict(vector=o, reward=0.0, is_first=True, is_last=False, is_terminal=False))
            done = False
            continue
        o, r, term, trunc, _ = env.step(int(actions[t]))
        done = term or trunc
        out.append(dict(vector=o, reward=r, is_first=False, is_last=done, is_terminal=term))
    return out


def test_vector_env_autoreset_loses_and_duplicates_nothing():
    n, steps = 3, 120
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 2, size=(steps, n))
    actions[:, 0] = 0  # env 0 always pushes left: many short episodes
    env = make_env("CartPole-v1", seed=5, num_envs=n)
    got = [env.reset()]
    for t in range(steps):
        got.append(env.step(np.eye(2, dtype=np.float32)[actions[t]]))
    episodes = 0
    for i in range(n):
        ref = _reference_stream("CartPole-v1", 5 + i, actions[:, i], steps)
        assert len(ref) == len(got)
        for t, (r, g) in enumerate(zip(ref, got)):
            np.testing.assert_allclose(g["vector"][i], r["vector"], err_msg=f"env {i} step {t}")
            for k in FLAGS:
                assert g[k][i] == r[k], (i, t, k)
        episodes += sum(r["is_last"] for r in ref)
    assert episodes >= 5  # the test actually crossed several resets
    env.close()


def test_vector_env_async_matches_sync():
    a = make_env("CartPole-v1", seed=1, num_envs=2)
    b = make_env("CartPole-v1", seed=1, num_envs=2, asynchronous=True)
    oa, ob = a.reset(), b.reset()
    for t in range(30):
        np.testing.assert_allclose(oa["vector"], ob["vector"])
        assert (oa["is_first"] == ob["is_first"]).all()
        act = onehot(2, t % 2, 2)
        oa, ob = a.step(act), b.step(act)
    a.close()
    b.close()


# --------------------------------------------------------------------------------------------------------------- Atari
def test_atari_asterix_protocol():
    env = make_env("ALE/Asterix-v5", seed=0, num_envs=1)
    assert env.spec.obs == {"image": ((64, 64, 3), "uint8")}
    assert env.spec.discrete and env.spec.act_dim == 9  # minimal action set
    obs = env.reset()
    assert obs["image"].shape == (1, 64, 64, 3) and obs["image"].dtype == np.uint8
    assert obs["is_first"].all() and obs["reward"][0] == 0.0
    assert obs["image"].max() > 0
    total = 0.0
    for _ in range(50):
        obs = env.step(onehot(9, 1))
        total += obs["reward"][0]
        assert not obs["is_first"].any()
    env.close()

    raw = Atari100k("ALE/Asterix-v5")
    assert raw.ale.getFloat("repeat_action_probability") == 0.0
    raw.reset(seed=3)
    f0 = raw.ale.getEpisodeFrameNumber()
    raw.step(0)
    assert raw.ale.getEpisodeFrameNumber() - f0 == 4  # action repeat 4
    noops = {raw.reset(seed=s)[1]["noops"] for s in range(6)}
    assert len(noops) > 2 and min(noops) >= 0 and max(noops) <= 30


def test_atari_frame_cap_truncates_and_seeding_is_deterministic():
    env = make_env("ALE/Asterix-v5", seed=0, num_envs=1, max_frames=40 + 30, noop_max=0)
    obs = env.reset()
    ends = []
    for t in range(25):
        obs = env.step(onehot(9, 0))
        if obs["is_last"][0]:
            ends.append(t)
            assert not obs["is_terminal"][0]  # time limit, not game over
    assert ends and ends[0] <= 18
    env.close()
    a, b = (make_env("ALE/Asterix-v5", seed=7) for _ in range(2))
    oa, ob = a.reset(), b.reset()
    for t in range(20):
        assert (oa["image"] == ob["image"]).all()
        act = onehot(9, t % 9)
        oa, ob = a.step(act), b.step(act)
    a.close()
    b.close()


def test_atari_max_pools_last_two_frames():
    env = Atari100k("ALE/Asterix-v5", noop_max=0)
    env.reset(seed=0)
    for _ in range(5):
        obs, *_ = env.step(1)
    pooled = np.maximum(env._buffers[0], env._buffers[1])
    assert (obs == env._resize(pooled)).all()
    assert not (env._buffers[0] == env._buffers[1]).all()  # two distinct frames were captured
    env.close()


# --------------------------------------------------------------------------------------------------------- distractors
def test_pixel_noise():
    env = PixelNoise(DreamerAdapter(ImageEnv(value=100)), std=20.0, seed=0)
    obs, _ = env.reset()
    img = obs["image"].astype(np.float64)
    assert obs["image"].dtype == np.uint8
    assert 17 < (img - 100).std() < 23 and abs(img.mean() - 100) < 1
    clipped, _ = PixelNoise(DreamerAdapter(ImageEnv(value=250)), std=50.0, seed=0).reset()
    assert clipped["image"].max() == 255  # clipped, not wrapped around
    same, _ = PixelNoise(DreamerAdapter(ImageEnv(value=100)), std=0.0, seed=0).reset()
    assert (same["image"] == 100).all()
    with pytest.raises(ValueError, match="std"):
        PixelNoise(DreamerAdapter(ImageEnv()), std=-1.0)
    with pytest.raises(ValueError, match="image"):
        make_env("CartPole-v1", noise_std=5.0)


def test_blackout():
    env = Blackout(DreamerAdapter(ImageEnv(value=100, length=1000)), prob=0.3, seed=0)
    env.reset()
    black = [not env.step(np.eye(3, dtype=np.float32)[0])[0]["image"].any() for _ in range(400)]
    assert 0.22 < np.mean(black) < 0.38
    never = Blackout(DreamerAdapter(ImageEnv(value=100)), prob=0.0, seed=0)
    assert (never.reset()[0]["image"] == 100).all()
    always = Blackout(DreamerAdapter(ImageEnv(value=100)), prob=1.0, seed=0)
    assert not always.reset()[0]["image"].any()
    with pytest.raises(ValueError, match="prob"):
        Blackout(DreamerAdapter(ImageEnv()), prob=1.5)


def test_distractors_through_make_env_on_atari():
    env = make_env("ALE/Asterix-v5", seed=0, blackout_prob=1.0)
    assert not env.reset()["image"].any()
    env.close()
    clean = make_single_env("ALE/Asterix-v5", seed=0).reset(seed=0)[0]["image"].astype(int)
    noisy = make_single_env("ALE/Asterix-v5", seed=0, noise_std=10.0).reset(seed=0)[0]["image"].astype(int)
    assert 5 < np.abs(noisy - clean).mean() < 12
