"""Small CNNs whose channels are coupled, for tests of the channel-dependency graph and of
structured passes: residual adds, concatenation, depthwise and grouped convolutions, channel
shuffle, squeeze-excitation.

``CoupledNet(spec)`` runs ``(N, C, H, W)`` inputs through a list of blocks (tokens below), then
global average pooling, flatten and a Linear head. :func:`coupled_models` draws random specs
(needs ``hypothesis``); :func:`duplicate_channels` doubles every resizable group's channels of a
traced model so that merging the copies again is exact.

Tokens:

    ("conv", width, bn)              conv 3x3 -> [BN] -> ReLU
    ("residual", bn, relu_after)     x + conv -> BN? -> ReLU -> conv -> BN?  [-> ReLU]
    ("concat", wa, wb)               cat([conv1x1 -> ReLU, conv3x3 -> ReLU])
    ("depthwise", expand)            conv1x1 (x expand) -> ReLU -> depthwise 3x3 -> BN -> ReLU -> conv1x1
    ("grouped", groups, per)         conv1x1 -> ReLU -> grouped conv 3x3 -> ReLU -> conv1x1
    ("shuffle", groups[, spelling])  channel shuffle: "view" (view, transpose, reshape; the
                                     default), "module" (nn.ChannelShuffle), "function"
                                     (torch.channel_shuffle)
    ("se", hidden)                   x * sigmoid(conv1x1(ReLU(conv1x1(mean(x)))))
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

from tropfx.channels import ChannelGraph, read_rows, resize_channels

__all__ = ["CoupledNet", "coupled_models", "duplicate_channels"]


def _bn(c: int, on: bool) -> nn.Module:
    return nn.BatchNorm2d(c) if on else nn.Identity()


class _Block(nn.Module):
    def __init__(self, token: tuple, c: int):
        super().__init__()
        self.token, kind = token, token[0]
        if kind == "conv":
            self.out = token[1]
            self.conv, self.bn = nn.Conv2d(c, self.out, 3, padding=1), _bn(self.out, token[2])
        elif kind == "residual":
            self.out = c
            self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), _bn(c, token[1])
            self.conv2, self.bn2 = nn.Conv2d(c, c, 1), _bn(c, token[1])
        elif kind == "concat":
            self.out = token[1] + token[2]
            self.a, self.b = nn.Conv2d(c, token[1], 1), nn.Conv2d(c, token[2], 3, padding=1)
        elif kind == "depthwise":
            hidden = c * token[1]
            self.out = c
            self.expand, self.dw = nn.Conv2d(c, hidden, 1), nn.Conv2d(hidden, hidden, 3, padding=1,
                                                                      groups=hidden)
            self.bn, self.project = nn.BatchNorm2d(hidden), nn.Conv2d(hidden, c, 1)
        elif kind == "grouped":
            hidden = token[1] * token[2]
            self.out = c
            self.reduce = nn.Conv2d(c, hidden, 1)
            self.grouped = nn.Conv2d(hidden, hidden, 3, padding=1, groups=token[1])
            self.expand = nn.Conv2d(hidden, c, 1)
        elif kind == "shuffle":
            self.out = c
            if len(token) > 2 and token[2] == "module":
                self.shuffle = nn.ChannelShuffle(token[1])
        elif kind == "se":
            self.out = c
            self.fc1, self.fc2 = nn.Conv2d(c, token[1], 1), nn.Conv2d(token[1], c, 1)
        else:
            raise ValueError(f"unknown block {token!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind = self.token[0]
        if kind == "conv":
            return torch.relu(self.bn(self.conv(x)))
        if kind == "residual":
            y = x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(y) if self.token[2] else y
        if kind == "concat":
            return torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        if kind == "depthwise":
            return self.project(torch.relu(self.bn(self.dw(torch.relu(self.expand(x))))))
        if kind == "grouped":
            return self.expand(torch.relu(self.grouped(torch.relu(self.reduce(x)))))
        if kind == "shuffle":
            n, c, h, w = x.shape
            g, spelling = self.token[1], self.token[2] if len(self.token) > 2 else "view"
            if spelling == "module":
                return self.shuffle(x)
            if spelling == "function":
                return torch.channel_shuffle(x, g)
            return x.view(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * s


class CoupledNet(nn.Module):
    """A stem conv, the blocks of ``spec``, global average pooling and a Linear head."""

    def __init__(self, spec: list[tuple], in_channels: int = 2, stem: int = 4, classes: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, stem, 3, padding=1)
        blocks, c = [], stem
        for token in spec:
            block = _Block(token, c)
            blocks.append(block)
            c = block.out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(torch.relu(self.stem(x)))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _randomize(model: nn.Module, generator: torch.Generator) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
    return model.eval()


def coupled_models() -> Any:
    """Hypothesis strategy of ``(model, x)``: a random :class:`CoupledNet` in eval mode with
    random weights and BatchNorm statistics, and an input batch."""
    from hypothesis import strategies as st

    token = st.one_of(
        st.tuples(st.just("conv"), st.integers(2, 6), st.booleans()),
        st.tuples(st.just("residual"), st.booleans(), st.booleans()),
        st.tuples(st.just("concat"), st.integers(1, 3), st.integers(1, 3)),
        st.tuples(st.just("depthwise"), st.integers(1, 2)),
        st.tuples(st.just("grouped"), st.sampled_from([2, 3]), st.integers(1, 2)),
        st.tuples(st.just("shuffle"), st.sampled_from([2, 4]),
                  st.sampled_from(["view", "module", "function"])),
        st.tuples(st.just("se"), st.integers(1, 3)),
    )

    @st.composite
    def draw(draw_: Any) -> tuple[nn.Module, torch.Tensor]:
        spec = draw_(st.lists(token, min_size=1, max_size=4))
        spec = [t for t in spec if t[0] != "shuffle"] + [t for t in spec if t[0] == "shuffle"][:1]
        seed = draw_(st.integers(0, 2**16))
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        model = _randomize(CoupledNet(_even(spec)), gen)
        return model, torch.randn(2, 2, 5, 5, generator=gen)

    return draw()


def _even(spec: list[tuple]) -> list[tuple]:
    """A shuffle needs a channel count divisible by its groups: put it after an even conv."""
    out = []
    for t in spec:
        if t[0] == "shuffle":
            out.append(("conv", 4, False))
        out.append(t)
    return out


def duplicate_channels(gm: fx.GraphModule) -> tuple[fx.GraphModule, int]:
    """Double every resizable group's channels in place: each channel is followed by a copy
    (producers, depthwise kernels and BatchNorm entries repeated, consumers reading each copy
    with half the weight), which computes the same function. Returns ``gm`` and the number of
    groups doubled. Merging the copies back (TropNNC at ratio 0.5) must then be exact."""
    done = 0
    for group in ChannelGraph(gm).groups:
        if group.frozen is not None:
            continue
        rows = []
        for part in group.parts:
            if part.member.role == "view":
                rows.append(None)
                continue
            r = read_rows(gm, part).repeat_interleave(2, 0)
            rows.append(r / 2 if part.member.role == "consumer" else r)
        n = group.size
        copies = torch.zeros(2 * n, n, dtype=torch.float64)
        copies[torch.arange(2 * n), torch.arange(n).repeat_interleave(2)] = 1.0
        resize_channels(gm, group, rows, merge=copies)
        done += 1
    gm.recompile()
    return gm, done
