"""The authors' released generators (their ``latest_net_G.pth``) in cutlib's ResnetGenerator, and back:
the reference's ``nn.Sequential`` keys ``model.<index>.<...>`` map onto our named layers in order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from cutlib.networks import ResnetGenerator
from cutlib.runs import load_checkpoint


def to_reference_state_dict(G: ResnetGenerator) -> dict[str, Tensor]:
    """Our generator's state dict in the authors' key layout (model.<index>.<rest>)."""
    position = {name: i for i, name in enumerate(G.tap_names)}
    out = {}
    for key, value in G.state_dict().items():
        _, name, rest = key.split(".", 2)  # "layers", "<layer name>", "<rest>"
        out[f"model.{position[name]}.{rest}"] = value
    return out


_REFERENCE_KEY = re.compile(r"model\.(\d+)\.(.+)")


def _infer_generator_kwargs(state: Mapping[str, Tensor]) -> dict:
    """input_nc, output_nc, ngf, n_blocks and antialias from the reference keys and shapes."""
    if "model.1.weight" not in state:
        raise ValueError(
            "this is not a generator state dict in the authors' layout: key 'model.1.weight' (the first 7x7 conv) "
            f"is missing; first keys found: {list(state)[:5]}"
        )
    conv_in = state["model.1.weight"]  # (ngf, input_nc, 7, 7)
    ngf, input_nc = conv_in.shape[0], conv_in.shape[1]
    parsed = [m for m in map(_REFERENCE_KEY.fullmatch, state) if m]  # (index, rest) of each model.<index>.<rest>
    blocks = {int(m[1]) for m in parsed if m[2].startswith("conv_block.")}
    antialias = "model.7.filt" in state  # the first BlurDownsample; the strided variant has a conv there
    first_block = 12 if antialias else 10
    up_blur = f"model.{first_block + len(blocks)}.filt"
    if antialias != (up_blur in state):
        raise ValueError(
            "this checkpoint mixes anti-aliased and strided sampling (the reference's --no_antialias / "
            f"--no_antialias_up set differently: 'model.7.filt' {'present' if antialias else 'absent'}, "
            f"{up_blur!r} {'present' if up_blur in state else 'absent'}); ResnetGenerator supports one antialias setting"
        )
    last_conv = max(int(m[1]) for m in parsed if m[2] == "weight")  # the final 7x7 conv: (output_nc, ngf, 7, 7)
    output_nc = state[f"model.{last_conv}.weight"].shape[0]
    return dict(input_nc=input_nc, output_nc=output_nc, ngf=ngf, n_blocks=len(blocks), antialias=antialias)


def load_reference_generator(path_or_state_dict: str | Path | Mapping[str, Tensor], **generator_kwargs) -> ResnetGenerator:
    """A ResnetGenerator holding the weights of an authors' checkpoint (e.g. latest_net_G.pth).

    Architecture arguments not given are inferred from the keys; a "module." prefix (DataParallel) is
    stripped. Missing, unexpected or wrongly shaped keys raise a ValueError naming them.
    """
    if isinstance(path_or_state_dict, (str, Path)):
        path = Path(path_or_state_dict)
        if not path.is_file():
            raise FileNotFoundError(f"no generator checkpoint at {path} (expected the authors' *_net_G.pth file)")
        state = load_checkpoint(path)
    else:
        state = path_or_state_dict
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        keys = list(state)[:8] if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(
            f"expected a state dict of tensors in the authors' layout (model.<index>.<...>), got {keys}; "
            "for a cutlib training checkpoint load checkpoint['G'] into a ResnetGenerator instead"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}
    inferred = _infer_generator_kwargs(state)
    kwargs = {**inferred, **generator_kwargs}
    G = ResnetGenerator(**kwargs)
    expected = to_reference_state_dict(G)
    # checkpoints of old PyTorch versions stored running statistics for instance norms, which are not
    # used (track_running_stats=False); the reference's own loader drops them too
    stale = (".running_mean", ".running_var", ".num_batches_tracked")
    state = {k: v for k, v in state.items() if k in expected or not k.endswith(stale)}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k}: {tuple(state[k].shape)} but expected {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong_shape:
        overridden = {k: v for k, v in generator_kwargs.items() if inferred.get(k) != v}
        hint = f" The keys themselves suggest {', '.join(f'{k}={inferred[k]!r}' for k in overridden)}." if overridden else ""
        raise ValueError(
            f"the checkpoint does not match ResnetGenerator({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) "
            f"in the authors' layout: missing keys {missing}, unexpected keys {unexpected}, wrong shapes {wrong_shape}. "
            "Check the architecture arguments (ngf, n_blocks, antialias) or that this is a generator (net_G) file." + hint
        )
    names = G.tap_names
    ours = {}
    for key, value in state.items():
        _, index, rest = key.split(".", 2)  # "model", "<index>", "<rest>"
        ours[f"layers.{names[int(index)]}.{rest}"] = value
    G.load_state_dict(ours, strict=True)
    return G
