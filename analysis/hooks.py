"""Forward hooks on decoder blocks: read a block's output (`capturing`) or add to it (`steering`).

Layer L is the output of decoder block L, i.e. HF `hidden_states[L + 1]` (shared/DESIGN.md).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from toolkit.errors import ToolkitError


def _output_hidden(output):
    return output[0] if isinstance(output, tuple) else output



def _replace_hidden(output, hidden):
    return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden



@contextmanager
def steering(model, vectors: dict[int, torch.Tensor]):
    """Add vectors[L] to decoder block L's output on every forward call (prefill and cached decode steps)
    while inside. A zero or empty dict adds no hook."""
    blocks = decoder_layers(model)
    handles = []

    def make(vec):
        def hook(module, args, output):
            hidden = _output_hidden(output)
            return _replace_hidden(output, hidden + vec.to(hidden.device, hidden.dtype))
        return hook

    try:
        for layer, vec in vectors.items():
            if vec is not None and bool(torch.any(vec != 0)):
                handles.append(blocks[layer].register_forward_hook(make(vec.detach())))
        yield
    finally:
        for handle in handles:
            handle.remove()



@contextmanager
def capturing(model, layers: list[int]):
    """Record decoder block L's output (= hidden_states[L + 1]) into the yielded dict on each forward."""
    blocks = decoder_layers(model)
    store: dict[int, torch.Tensor] = {}
    handles = [blocks[layer].register_forward_hook(
        lambda m, a, out, layer=layer: store.__setitem__(layer, _output_hidden(out).detach()))
        for layer in layers]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()



def decoder_layers(model):
    """The decoder blocks (a ModuleList) of a causal LM, found generically (`toolkit.layout`): model.layers,
    model.language_model.layers, GPT-2's transformer.h, through a PeftModel wrapper too."""
    from toolkit.layout import decoder_layers as find

    try:
        return find(model)
    except ValueError as exc:
        raise ToolkitError(str(exc), hint="steering hooks need the model's list of decoder blocks") from None
