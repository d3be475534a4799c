"""PyTorch peer for metaformer's benchmarks (CPU). Reads one JSON job from stdin, prints one JSON
result on stdout. Jobs:
  {"kind": "kernels", "iters": n, "warmup": n}
  {"kind": "model", "config": {family, depths, dims, num_classes}, "batch": b, "size": s,
   "dtype": "float32"|"bfloat16", "iters": n, "warmup": n, "weights": optional safetensors path}
  {"kind": "train", "config": {...}, "batch": b, "size": s, "iters": n, "warmup": n}
The MetaFormer definition below follows the official structure (channels-last blocks, official eps
values, res_scale on stages 3-4); it exists only to time PyTorch on the same work.
Run with the tuned settings of PITFALLS.md (set by the caller): passive OpenMP wait, 2 threads, the
right OpenBLAS core type and ATen capability for the CPU."""
import json
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Scale(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.scale


class StarReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.scale * F.relu(x) ** 2 + self.bias


class SquaredReLU(nn.Module):
    def forward(self, x):
        return F.relu(x) ** 2


class NormC(nn.Module):  # LayerNorm over C without bias (eps 1e-6)
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        c = x - x.mean(-1, keepdim=True)
        s = c.pow(2).mean(-1, keepdim=True)
        return c / torch.sqrt(s + self.eps) * self.weight


class NormHWC(nn.Module):  # "modified LayerNorm" over (H, W, C), per-channel weight
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        c = x - x.mean((1, 2, 3), keepdim=True)
        s = c.pow(2).mean((1, 2, 3), keepdim=True)
        return c / torch.sqrt(s + self.eps) * self.weight


class SepConv(nn.Module):
    def __init__(self, dim):
        super().__init__()
        med = 2 * dim
        self.pwconv1 = nn.Linear(dim, med, bias=False)
        self.act1 = StarReLU()
        self.dwconv = nn.Conv2d(med, med, 7, padding=3, groups=med, bias=False)
        self.pwconv2 = nn.Linear(med, dim, bias=False)

    def forward(self, x):
        x = self.act1(self.pwconv1(x)).permute(0, 3, 1, 2)
        return self.pwconv2(self.dwconv(x).permute(0, 2, 3, 1))


class Attention(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.heads = max(1, dim // 32)
        self.adim = self.heads * 32
        self.qkv = nn.Linear(dim, 3 * self.adim, bias=False)
        self.proj = nn.Linear(self.adim, dim, bias=False)

    def forward(self, x):
        b, h, w, c = x.shape
        n = h * w
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, 32).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        a = (q @ k.transpose(-2, -1)) * 32 ** -0.5
        x = (a.softmax(-1) @ v).transpose(1, 2).reshape(b, h, w, self.adim)
        return self.proj(x)


class RandomMixing(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.random_matrix = nn.Parameter(torch.softmax(torch.rand(n, n), -1), requires_grad=False)

    def forward(self, x):
        b, h, w, c = x.shape
        x = torch.einsum("mn, bnc -> bmc", self.random_matrix, x.reshape(b, h * w, c))
        return x.reshape(b, h, w, c)


class Pooling(nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)

    def forward(self, x):
        y = x.permute(0, 3, 1, 2)
        return (self.pool(y) - y).permute(0, 2, 3, 1)


class Mlp(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim, bias=False)
        self.act = StarReLU()
        self.fc2 = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, mixer, norm, res_scale):
        super().__init__()
        self.norm1 = norm(dim)
        self.token_mixer = mixer
        self.res_scale1 = Scale(dim) if res_scale else nn.Identity()
        self.norm2 = norm(dim)
        self.mlp = Mlp(dim)
        self.res_scale2 = Scale(dim) if res_scale else nn.Identity()

    def forward(self, x):
        x = self.res_scale1(x) + self.token_mixer(self.norm1(x))
        return self.res_scale2(x) + self.mlp(self.norm2(x))


class Down(nn.Module):
    def __init__(self, cin, cout, k, s, p, pre, post):
        super().__init__()
        self.pre_norm = NormC(cin) if pre else nn.Identity()
        self.conv = nn.Conv2d(cin, cout, k, s, p)
        self.post_norm = NormC(cout) if post else nn.Identity()
        self.pre = pre

    def forward(self, x):
        x = self.pre_norm(x)
        if self.pre:
            x = x.permute(0, 3, 1, 2)
        x = self.conv(x).permute(0, 2, 3, 1)
        return self.post_norm(x)


MIXERS = {
    "identityformer": ["identity"] * 4, "randformer": ["identity", "identity", "random", "random"],
    "poolformerv2": ["pooling"] * 4, "convformer": ["sepconv"] * 4,
    "caformer": ["sepconv", "sepconv", "attention", "attention"],
}


class MetaFormer(nn.Module):
    def __init__(self, family, depths, dims, num_classes, size):
        super().__init__()
        hw = [size // 4, size // 8, size // 16, size // 32]
        norm = NormC if family in ("convformer", "caformer") else NormHWC
        self.downsample_layers = nn.ModuleList(
            [Down(3, dims[0], 7, 4, 2, False, True)]
            + [Down(dims[i - 1], dims[i], 3, 2, 1, True, False) for i in range(1, 4)])
        stages = []
        for i in range(4):
            blocks = []
            for _ in range(depths[i]):
                kind = MIXERS[family][i]
                mixer = {"identity": lambda: nn.Identity(), "random": lambda: RandomMixing(hw[i] * hw[i]),
                         "pooling": lambda: Pooling(), "sepconv": lambda: SepConv(dims[i]),
                         "attention": lambda: Attention(dims[i])}[kind]()
                blocks.append(Block(dims[i], mixer, norm, i >= 2))
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(dims[3], eps=1e-6)
        if family in ("convformer", "caformer"):
            self.head = nn.Sequential(nn.Linear(dims[3], 4 * dims[3]), SquaredReLU(), nn.LayerNorm(4 * dims[3]),
                                      nn.Linear(4 * dims[3], num_classes))
        else:
            self.head = nn.Linear(dims[3], num_classes)

    def forward(self, x):
        for d, s in zip(self.downsample_layers, self.stages):
            x = s(d(x))
        return self.head(self.norm(x.mean((1, 2))))


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        dt = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[v["dtype"]]
        out[k] = torch.frombuffer(bytearray(data[a:b]), dtype=dt).reshape(v["shape"]).float()
    return out


def timed(fn, iters, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def build(job):
    c = job["config"]
    torch.manual_seed(0)
    m = MetaFormer(c["family"], c["depths"], c["dims"], c.get("num_classes", 1000), job["size"])
    if job.get("weights"):
        sd = load_safetensors(job["weights"])
        m.load_state_dict({k: v for k, v in sd.items() if k in m.state_dict()}, strict=False)
    return m


def main():
    job = json.loads(sys.stdin.read())
    torch.set_num_threads(job.get("threads", 2))
    iters, warmup = job.get("iters", 5), job.get("warmup", 2)
    res = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    with torch.no_grad():
        if job["kind"] == "kernels":
            # depthwise 7x7 at the three SepConv shapes (channels_last, as the SepConv's dwconv sees it)
            for h, c in ((56, 128), (28, 256), (14, 640)):
                x = torch.randn(1, c, h, h).contiguous(memory_format=torch.channels_last)
                conv = nn.Conv2d(c, c, 7, padding=3, groups=c, bias=False)
                res[f"dwconv7x7_1x{h}x{h}x{c}"] = timed(lambda: conv(x), iters, warmup)
            x2 = torch.randn(1, 128, 56, 56)
            conv = nn.Conv2d(128, 128, 7, padding=3, groups=128, bias=False)
            res["dwconv7x7_1x56x56x128_nchw"] = timed(lambda: conv(x2), iters, warmup)
            att = Attention(320)
            t = torch.randn(1, 14, 14, 320)
            res["attention_1x14x14x320"] = timed(lambda: att(t), iters, warmup)
            # the attention core alone (qkv projection excluded), as our kernel
            for n, heads in ((196, 10), (49, 16)):
                q = torch.randn(1, heads, n, 32)
                res[f"attention_core_1x{n}x{heads}x32"] = timed(
                    lambda: ((q @ q.transpose(-2, -1)) * 32 ** -0.5).softmax(-1) @ q, iters, warmup)
        elif job["kind"] == "model":
            m = build(job).eval()
            x = torch.randn(job["batch"], 3, job["size"], job["size"])
            if job.get("dtype") == "bfloat16":
                m = m.to(torch.bfloat16)
                x = x.to(torch.bfloat16)
            res["times"] = timed(lambda: m(x), iters, warmup)
    if job["kind"] == "train":
        m = build(job).train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.05)
        x = torch.randn(job["batch"], 3, job["size"], job["size"])
        y = torch.randint(0, job["config"].get("num_classes", 1000), (job["batch"],))

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(m(x), y).backward()
            opt.step()
        res["times"] = timed(step, iters, warmup)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
