"""Media summaries of a run: open-loop video-prediction grids of the world model (TensorBoard ``recon/<key>``).

PNG/GIF encoding and writing live in :mod:`dreamer_ext.runlog`; this module only makes the uint8 pictures.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["video_prediction", "report_frames"]


@torch.no_grad()
def video_prediction(wm, data: dict, context: int = 5, max_rows: int = 4, max_frames: int = 16) -> dict:
    """Open-loop video-prediction grids, one per image observation key (``{}`` when there is none).

    ``wm``: a :class:`~dreamer_ext.world_model.WorldModel`. ``data``: a batch ``{key: [B, T, ...], "action":
    [B, T, A], "is_first": [B, T]}`` (tensors or arrays; image keys uint8 ``[B, T, H, W, C]``). For the first ``min(B, max_rows)`` sequences: the posterior is filtered over
    steps ``0..context-1`` from the zero state (like ``wm.observe`` without a carry), then the prior is rolled out from
    the last posterior state with the batch's actions (``rssm.img_step(state, action[:, t-1])``; where
    ``is_first[:, t]`` the state and action are zeroed first, as in ``obs_step``). Latents are sampled (global
    torch RNG).

    Returns ``{"recon/<key>": uint8 [rows·3·H, F·W, 3]}``: per sequence three strips stacked vertically — ground
    truth, model frames (posterior reconstruction for t < context, open-loop prediction after), and
    ``|truth − model|``. F ≤ ``max_frames`` columns: every context step is shown when ``context < max_frames``,
    then ``max_frames − context`` open-loop steps evenly spread over ``context..T−1`` (the last one included when
    there are two or more); otherwise ``max_frames`` steps evenly spread over ``0..T−1``. 1-channel images are
    shown grey, 3-channel ones as RGB, others by their first channel in grey. Does not change parameters or the
    module's mode.
    """
    if not wm.image_keys:
        return {}
    for name, v in (("context", context), ("max_rows", max_rows), ("max_frames", max_frames)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
    for key in (*wm.encoders.keys(), "action", "is_first"):
        if key not in data:
            raise ValueError(f"data: missing key {key!r}")
    device = wm.rssm.gru.weight.device
    action = torch.as_tensor(data["action"])
    if action.dim() != 3:
        raise ValueError(f"data['action']: expected [B, T, A], got shape {tuple(action.shape)}")
    B, T = action.shape[:2]
    n, ctx = min(B, int(max_rows)), min(int(context), T)
    batch = {k: torch.as_tensor(data[k])[:n].to(device) for k in (*wm.encoders.keys(), "action", "is_first")}
    batch["action"] = batch["action"].float()
    batch["is_first"] = batch["is_first"].bool()
    post, state = wm.observe({k: v[:, :ctx] for k, v in batch.items()})
    feats = [post["feat"]]                                              # [n, ctx, F]
    for t in range(ctx, T):
        keep = (~batch["is_first"][:, t]).float()
        h, z = state["h"] * keep[:, None], state["z"] * keep[:, None, None]
        state = wm.rssm.img_step({"h": h, "z": z}, batch["action"][:, t - 1] * keep[:, None])
        feats.append(wm.rssm.feat(state)[:, None])
    idx = report_frames(T, ctx, int(max_frames))
    feat = torch.cat(feats, 1)[:, idx]                                  # [n, F', feat]
    out = {}
    for key in wm.image_keys:
        truth = batch[key][:, idx].cpu()                                # [n, F', H, W, C] uint8
        if truth.dtype != torch.uint8 or truth.dim() != 5:
            raise ValueError(f"data[{key!r}]: expected uint8 [B, T, H, W, C], got {truth.dtype} "
                             f"{tuple(torch.as_tensor(data[key]).shape)}")
        mean = wm.decoders[key](feat.reshape(-1, feat.shape[-1])).float()
        model = (mean * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().reshape(truth.shape)
        error = (truth.int() - model.int()).abs().to(torch.uint8)
        strips = torch.stack([_to_rgb(truth), _to_rgb(model), _to_rgb(error)], 1)  # [n, 3, F', H, W, 3]
        n_, s_, f_, H, W, _ = strips.shape
        grid = strips.permute(0, 1, 3, 2, 4, 5).reshape(n_ * s_ * H, f_ * W, 3)
        out[f"recon/{key}"] = grid.numpy()
    return out


def report_frames(T: int, context: int, max_frames: int) -> list:
    """Time indices shown by :func:`video_prediction` (see there): at most ``max_frames`` sorted indices in [0, T)."""
    if T <= max_frames:
        return list(range(T))
    if context < max_frames:
        rest = np.linspace(context, T - 1, max_frames - context).round().astype(int).tolist()
        return list(range(context)) + rest
    return np.linspace(0, T - 1, max_frames).round().astype(int).tolist()


def _to_rgb(x: torch.Tensor) -> torch.Tensor:
    """``[..., C]`` uint8 -> ``[..., 3]``: RGB kept, otherwise channel 0 repeated (grey)."""
    return x if x.shape[-1] == 3 else x[..., :1].expand(*x.shape[:-1], 3)
