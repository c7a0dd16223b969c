"""Model definitions of the Fashion-MNIST reference models (see README.md).

Imported by train_reference.py, which scripts them with torch.jit.script.
Inputs are float32 [N,1,28,28] with raw pixels in [0,1]; forward() normalises.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

# Fashion-MNIST training-set pixel statistics (of bytes / 255).
FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530


# --------------------------------------------------------------------------
# CNN with BatchNorm and one residual block.
# --------------------------------------------------------------------------


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + x)


class FmnistCNN(nn.Module):
    """28x28 -> conv16 -> residual(16) -> conv32/2 -> conv32 -> maxpool -> fc."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.block = ResidualBlock(16)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(32)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(32 * 7 * 7, num_classes)

    def forward(self, x):
        x = (x - 0.2860) / 0.3530  # FMNIST_MEAN, FMNIST_STD
        x = F.relu(self.bn1(self.conv1(x)))  # 16x28x28
        x = self.block(x)  # 16x28x28
        x = F.relu(self.bn2(self.conv2(x)))  # 32x14x14
        x = F.relu(self.bn3(self.conv3(x)))  # 32x14x14
        x = self.pool(x)  # 32x7x7
        return self.fc(torch.flatten(x, 1))


# --------------------------------------------------------------------------
# DeiT-style tiny ViT (timm naming: patch_embed.proj, cls_token, pos_embed,
# blocks.i.{norm1,attn.{qkv,proj},norm2,mlp.{fc1,fc2}}, norm, head).
# --------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, in_chans: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, N, dim]


class Attention(nn.Module):
    num_heads: int
    scale: float

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x)
        # head_dim comes from qkv's width and the num_heads attribute, so head
        # pruning can slice qkv/proj and set num_heads without other changes.
        head_dim = qkv.shape[-1] // (3 * self.num_heads)
        qkv = qkv.reshape(B, N, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, heads, N, head_dim]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, self.num_heads * head_dim)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class FmnistViT(nn.Module):
    def __init__(self, patch=7, dim=64, depth=4, num_heads=4, hidden=128,
                 num_classes=10, img=28):
        super().__init__()
        num_patches = (img // patch) ** 2
        self.patch_embed = PatchEmbed(patch, 1, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = nn.ModuleList(
            [Block(dim, num_heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        x = (x - 0.2860) / 0.3530  # FMNIST_MEAN, FMNIST_STD
        x = self.patch_embed(x)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        return self.head(x[:, 0])


def build(name):
    if name == "cnn":
        return FmnistCNN()
    if name == "vit":
        return FmnistViT(patch=7, dim=64, depth=4, num_heads=4, hidden=128)
    raise ValueError(name)
