"""A plain PyTorch training loop with the architecture, optimizer and batch of one of oomph's
shipped recipes, for `benches/tch-vs-pytorch.sh`: what a PyTorch user would write by hand.

usage: python plain_loop.py RECIPE.toml STEPS WARMUP THREADS

Prints the median step time in milliseconds after WARMUP steps (one line: `median_ms X`).
The step: index a batch from tensors in memory, forward, cross-entropy (mean), backward,
gradient clipping when the recipe clips, AdamW step, read the loss (`.item()`, as any loop
that logs it). The gpt is oomph's (crates/models/src/gpt.rs) written out: pre-norm blocks,
a fused qkv projection without bias, causal softmax attention, a GELU MLP of 4 x d_model.
"""
import math, os, statistics, sys, time, tomllib

import torch
import torch.nn as nn
import torch.nn.functional as F


class Mlp(nn.Module):
    def __init__(self, inputs, hidden, classes):
        super().__init__()
        dims = [inputs] + hidden
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        self.out = nn.Linear(dims[-1], classes)

    def forward(self, x):
        for l in self.layers:
            x = F.relu(l(x))
        return self.out(x)


class Block(nn.Module):
    def __init__(self, d, h, d_ff):
        super().__init__()
        self.h = h
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, d_ff), nn.Linear(d_ff, d)

    def forward(self, x, causal):
        n, t, d = x.shape
        q, k, v = (m.reshape(n, t, self.h, d // self.h).transpose(1, 2) for m in self.qkv(self.ln1(x)).chunk(3, 2))
        scores = (q @ k.transpose(2, 3)) / math.sqrt(d // self.h)
        w = torch.softmax(scores.masked_fill(causal, -1e9), dim=3)
        x = x + self.proj((w @ v).transpose(1, 2).reshape(n, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class Gpt(nn.Module):
    def __init__(self, vocab, n_layer, n_head, d, seq_len, d_ff):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(seq_len, d)
        self.blocks = nn.ModuleList(Block(d, n_head, d_ff) for _ in range(n_layer))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)

    def forward(self, x):
        n, t = x.shape
        h = self.tok(x) + self.pos(torch.arange(t).unsqueeze(0).expand(n, t))
        causal = ~torch.ones(t, t, dtype=torch.bool).tril().reshape(1, 1, t, t)
        for b in self.blocks:
            h = b(h, causal)
        return self.head(self.norm(h))


def main():
    path, steps, warmup, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    r = tomllib.load(open(path, "rb"))
    here = os.path.dirname(os.path.abspath(path))
    m, d, o, tr = r["model"], r["data"], r["optimizer"], r["training"]
    batch = tr["effective_batch"]
    if m["kind"] == "mlp":
        rows = [l.strip().split(",") for l in open(os.path.join(here, d["path"]))][1:]
        x = torch.tensor([[float(v) for v in row[:-1]] for row in rows])
        y = torch.tensor([int(row[-1]) for row in rows])
        model = Mlp(x.shape[1], m.get("hidden", [64]), int(y.max()) + 1)

        def sample():
            i = torch.randint(0, len(y), (batch,))
            return x[i], y[i]

        def loss_of(xb, yb):
            return F.cross_entropy(model(xb), yb)
    else:
        text = open(os.path.join(here, d["path"]), encoding="utf-8").read()
        vocab = sorted(set(text))
        index = {c: i for i, c in enumerate(vocab)}
        ids = torch.tensor([index[c] for c in text])
        t = m.get("seq_len", 64)
        dm = m.get("d_model", 64)
        model = Gpt(len(vocab), m.get("n_layer", 2), m.get("n_head", 4), dm, t, m.get("d_ff", 4 * dm))

        def sample():
            s = torch.randint(0, len(ids) - t - 1, (batch,))
            w = torch.stack([ids[i : i + t + 1] for i in s.tolist()])
            return w[:, :-1], w[:, 1:]

        def loss_of(xb, yb):
            logits = model(xb)
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1))

    betas = tuple(o.get("betas", [0.9, 0.999]))
    opt = torch.optim.AdamW(model.parameters(), lr=o.get("lr", 1e-3), betas=betas, eps=o.get("eps", 1e-8),
                            weight_decay=o.get("weight_decay", 0.0))
    clip = o.get("grad_clip_norm")
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        xb, yb = sample()
        loss = loss_of(xb, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        loss.item()
        times.append(time.perf_counter() - t0)
    print(f"median_ms {statistics.median(times[warmup:]) * 1e3:.3f}")


if __name__ == "__main__":
    main()
