"""Split a traced model at one activation module, so its suffix can be re-run cheaply.

Distortion extraction runs the network thousands of times with one activation changed. The part
before that activation is the same every time, so we run it once: ``split_at`` returns a prefix
that yields the activation's *input* and every earlier value still needed later (residual
branches), and a suffix that takes the activation's *output* plus those values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn

__all__ = ["Split", "split_at"]


@dataclass
class Split:
    prefix: fx.GraphModule  # x -> (activation input, *live values)
    suffix: fx.GraphModule  # (activation output, *live values) -> model output
    live: int  # how many live values pass between the two

    def run_prefix(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        outs = self.prefix(x)
        return outs[0], list(outs[1:])


def split_at(model: nn.Module, target: str) -> Split:
    """Split ``model`` (traced with ``torch.fx``) at the ``call_module`` node named ``target``."""
    gm = model if isinstance(model, fx.GraphModule) else fx.symbolic_trace(model)
    nodes = list(gm.graph.nodes)
    hits = [i for i, n in enumerate(nodes) if n.op == "call_module" and n.target == target]
    if len(hits) != 1:
        raise ValueError(f"module {target!r} is called {len(hits)} times in the traced graph; "
                         f"need exactly once")
    idx = hits[0]
    act = nodes[idx]
    if len(act.args) != 1 or not isinstance(act.args[0], fx.Node) or act.kwargs:
        raise ValueError(f"module {target!r} must take exactly one tensor argument")
    before = set(nodes[: idx + 1])
    live = [n for n in nodes[:idx] if any(u not in before for u in n.users)]

    pre = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in nodes[:idx]:
        env[n] = pre.node_copy(n, lambda a: env[a])
    pre.output((env[act.args[0]], *[env[n] for n in live]))

    post = fx.Graph()
    env2: dict[fx.Node, fx.Node] = {act: post.placeholder("activation")}
    for i, n in enumerate(live):
        env2[n] = post.placeholder(f"live_{i}")
    for n in nodes[idx + 1:]:
        env2[n] = post.node_copy(n, lambda a: env2[a])
    prefix = fx.GraphModule(gm, pre)
    suffix = fx.GraphModule(gm, post)
    return Split(prefix, suffix, len(live))
