"""Reference text models on Fashion-MNIST token sequences (see README.md).

Token rule (integer arithmetic, no rounding choices): each 28x28 uint8 image
is cut into a 7x7 grid of 4x4 patches, read row-major; patch (r, c) becomes
the token  (sum of its 16 bytes) // 256,  i.e. its mean intensity in 16
levels 0..15. A sequence is BOS (token 16) followed by the 49 patch tokens:
int64 [N, 50], vocabulary 17.

FmnistBert: bidirectional encoder, mean over the 50 positions, Linear to the
10 classes: forward(tokens [N, 50]) -> logits [N, 10].
FmnistGpt: causal decoder, head tied to the token embedding:
forward(tokens [N, T]) -> logits [N, T, 17] (T <= 50).

Both use the same Block: pre-norm, attention with separate q/k/v/o Linear
projections and an int attribute num_heads (head dim = q.out_features //
num_heads, so head surgery can slice q/k/v rows, o columns and set
num_heads), a float attribute scale (head_dim ** -0.5), and a GELU MLP fc1,
fc2.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

LEVELS = 16
BOS = LEVELS
VOCAB = LEVELS + 1
GRID = 7
PATCH = 4
CONTEXT = 1 + GRID * GRID


def tokenize(images):
    """uint8 images [N, 28, 28] -> int64 token sequences [N, 50]."""
    n = images.shape[0]
    x = images.to(torch.int64).reshape(n, GRID, PATCH, GRID, PATCH)
    levels = x.sum(dim=(2, 4)).div(256, rounding_mode="floor").reshape(n, -1)
    bos = torch.full((n, 1), BOS, dtype=torch.int64)
    return torch.cat([bos, levels], dim=1)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, causal: bool):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.num_heads = heads
        self.scale = float((dim // heads) ** -0.5)
        self.causal = causal
        self.register_buffer(
            "mask", torch.tril(torch.ones(CONTEXT, CONTEXT)).bool())

    def forward(self, x):
        b, t, _ = x.shape
        h = self.num_heads
        hd = self.q.out_features // h
        q = self.q(x).reshape(b, t, h, hd).transpose(1, 2)
        k = self.k(x).reshape(b, t, h, hd).transpose(1, 2)
        v = self.v(x).reshape(b, t, h, hd).transpose(1, 2)
        a = (q @ k.transpose(-2, -1)) * self.scale
        if self.causal:
            a = a.masked_fill(~self.mask[:t, :t], float("-inf"))
        a = torch.softmax(a, dim=-1)
        return self.o((a @ v).transpose(1, 2).reshape(b, t, h * hd))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, causal: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, causal)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class FmnistBert(nn.Module):
    def __init__(self, dim: int = 64, depth: int = 4, heads: int = 4):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.pos = nn.Embedding(CONTEXT, dim)
        self.blocks = nn.ModuleList(
            [Block(dim, heads, 4 * dim, causal=False) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, 10)

    def forward(self, tokens):
        t = tokens.shape[1]
        x = self.embed(tokens) + self.pos(torch.arange(t, device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.classifier(self.norm(x).mean(1))


class FmnistGpt(nn.Module):
    def __init__(self, dim: int = 64, depth: int = 4, heads: int = 4):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.pos = nn.Embedding(CONTEXT, dim)
        self.blocks = nn.ModuleList(
            [Block(dim, heads, 4 * dim, causal=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCAB, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens):
        t = tokens.shape[1]
        x = self.embed(tokens) + self.pos(torch.arange(t, device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def init_weights(model):
    """Truncated-normal (std 0.02) Linear weights and embeddings, zero biases."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def build(name, dim, depth, heads):
    cls = {"bert": FmnistBert, "gpt": FmnistGpt}[name]
    model = cls(dim, depth, heads)
    init_weights(model)
    return model
