#!/usr/bin/env python3
"""PyTorch peer of dfp's GPU benchmark (bench/src/bin/gpu.rs), on the same GPU.

The same per-user autoencoders as dfp at Morpheus' size: 3 numerics and 6 categoricals with
16, 8, 10, 8, 6, 6 slots, embeddings of dfencoder's width (min(600, round(1.6 n^0.56))), a
[512, 500] ReLU encoder, a [512] ReLU decoder and one linear head; MSE on the numerics plus the
mean cross-entropy of each categorical; SGD at lr 0.001 x 0.99^epoch, batches of 512, swap noise
0.2 drawn on the GPU, the last 10% of each user's rows for validation, evaluated every epoch (as
Morpheus' early stopping needs; early stopping itself is off so that every run does the same
work). Three measurements:

  * one user at a time, as Morpheus trains (a fresh torch module and optimizer per user):
    --one-at-a-time-users users, the time per user, and that time x --users;
  * all --users users at once: the users' weights stacked into [users, in, out] tensors,
    torch.bmm for every layer, autograd over the sum of the users' losses (each user's gradient
    is its own);
  * scoring: the stacked forward pass, per-feature losses, z-scores, max and mean |z| of
    --score-rows rows over --score-users users.

    python3 bench/peers/torch_gpu.py [--users 1000 --rows 1000 --epochs 30] > torch.json
"""

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

NUMERIC = 3
SLOTS = [16, 8, 10, 8, 6, 6]
HIDDEN = [512, 500, 512]
LR, DECAY, BATCH, EVAL_BATCH, SWAP = 0.001, 0.99, 512, 1024, 0.2


def width(n):
    return min(600, round(1.6 * n ** 0.56))


WIDTHS = [width(n) for n in SLOTS]
IN_W = NUMERIC + sum(WIDTHS)
OUT_W = NUMERIC + sum(SLOTS)
DIMS = [IN_W] + HIDDEN + [OUT_W]
FEATURES = NUMERIC + len(SLOTS)


def data(users, rows, dev, gen):
    num = torch.rand(users, rows, NUMERIC, device=dev, generator=gen) * 4 - 2
    cat = torch.stack(
        [torch.randint(0, n, (users, rows), device=dev, generator=gen) for n in SLOTS], dim=2
    )
    return num, cat


def swap_noise(num, cat, gen):
    """dfencoder's swap noise over the last-but-one axis (rows of one batch)."""
    rows = num.shape[-2]

    def swap(x):
        mask = torch.rand(x.shape, device=x.device, generator=gen) < SWAP
        src = torch.randint(0, rows, x.shape, device=x.device, generator=gen)
        return torch.where(mask, torch.gather(x, -2, src), x)

    return swap(num), swap(cat)


def feature_losses(y, num, cat):
    """Per-row losses [..., FEATURES]: squared errors, then each categorical's cross-entropy."""
    out = [(y[..., :NUMERIC] - num) ** 2]
    at = NUMERIC
    for i, n in enumerate(SLOTS):
        logits = y[..., at : at + n]
        ce = F.cross_entropy(logits.reshape(-1, n), cat[..., i].reshape(-1), reduction="none")
        out.append(ce.reshape(cat.shape[:-1] + (1,)))
        at += n
    return torch.cat(out, dim=-1)


def objective(losses):
    """dfencoder's: mean MSE + the sum of each categorical's mean cross-entropy."""
    return losses[..., :NUMERIC].mean() + losses[..., NUMERIC:].mean(dim=tuple(range(losses.dim() - 1))).sum()


class One(torch.nn.Module):
    """One user's autoencoder (torch modules, as dfencoder builds it)."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.ModuleList(torch.nn.Embedding(n, w) for n, w in zip(SLOTS, WIDTHS))
        self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(DIMS, DIMS[1:]))

    def forward(self, num, cat):
        x = torch.cat([num] + [e(cat[:, i]) for i, e in enumerate(self.emb)], dim=1)
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)


def train_one_user(num, cat, epochs, dev, gen):
    split = num.shape[0] * 9 // 10
    model = One().to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, DECAY)
    for _ in range(epochs):
        perm = torch.randperm(split, device=dev, generator=gen)
        for s in range(0, split, BATCH):
            idx = perm[s : s + BATCH]
            n, c = num[idx], cat[idx]
            nn_, nc = swap_noise(n, c, gen)
            loss = objective(feature_losses(model(nn_, nc), n, c))
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        with torch.no_grad():
            val = []
            for s in range(split, num.shape[0], EVAL_BATCH):
                n, c = num[s : s + EVAL_BATCH], cat[s : s + EVAL_BATCH]
                val.append(feature_losses(model(n, c), n, c).mean())
            # Morpheus reads the validation loss on the host every epoch (early stopping).
            float(torch.stack(val).mean())
    return model


class Stacked:
    """Every user's weights stacked: [users, in, out] per layer, [users, slots, width] per table."""

    def __init__(self, users, dev, gen):
        self.w, self.b, self.emb = [], [], []
        for a, b in zip(DIMS, DIMS[1:]):
            bound = 1 / math.sqrt(a)
            self.w.append(((torch.rand(users, a, b, device=dev, generator=gen) * 2 - 1) * bound).requires_grad_())
            self.b.append(((torch.rand(users, 1, b, device=dev, generator=gen) * 2 - 1) * bound).requires_grad_())
        for n, w in zip(SLOTS, WIDTHS):
            self.emb.append(torch.randn(users, n, w, device=dev, generator=gen).requires_grad_())
        self.users = torch.arange(users, device=dev)[:, None]

    def params(self):
        return self.w + self.b + self.emb

    def forward(self, num, cat):
        x = torch.cat([num] + [e[self.users, cat[..., i]] for i, e in enumerate(self.emb)], dim=2)
        for w, b in zip(self.w[:-1], self.b[:-1]):
            x = torch.relu(torch.baddbmm(b, x, w))
        return torch.baddbmm(self.b[-1], x, self.w[-1])


def train_stacked(num, cat, epochs, dev, gen):
    users, rows = num.shape[:2]
    split = rows * 9 // 10
    model = Stacked(users, dev, gen)
    for epoch in range(epochs):
        lr = LR * DECAY**epoch
        perm = torch.randperm(split, device=dev, generator=gen)
        for s in range(0, split, BATCH):
            idx = perm[s : s + BATCH]
            n, c = num[:, idx], cat[:, idx]
            nn_, nc = swap_noise(n, c, gen)
            losses = feature_losses(model.forward(nn_, nc), n, c)
            # Sum over users of each user's objective: each user's gradient is its own.
            loss = users * objective(losses)
            for p in model.params():
                p.grad = None
            loss.backward()
            with torch.no_grad():
                for p in model.params():
                    p -= lr * p.grad
        with torch.no_grad():
            n, c = num[:, split:], cat[:, split:]
            val = feature_losses(model.forward(n, c), n, c).mean(dim=(1, 2))
            val.cpu()
    return model


def score(model, num, cat, mean, std, chunk):
    out = []
    with torch.no_grad():
        for s in range(0, num.shape[1], chunk):
            n, c = num[:, s : s + chunk], cat[:, s : s + chunk]
            z = ((feature_losses(model.forward(n, c), n, c) - mean) / std).abs()
            out.append((z.max(dim=-1).values, z.mean(dim=-1)))
    sync()
    return out


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(f):
    sync()
    start = time.perf_counter()
    out = f()
    sync()
    return time.perf_counter() - start, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--one-at-a-time-users", type=int, default=50)
    ap.add_argument("--score-users", type=int, default=1000)
    ap.add_argument("--score-rows", type=int, default=4_000_000)
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke test")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    gen = torch.Generator(device=dev).manual_seed(0)

    num, cat = data(args.users, args.rows, dev, gen)
    # Warm-up (cuBLAS handles, kernels), then one user at a time.
    train_one_user(num[0], cat[0], 1, dev, gen)
    k = min(args.one_at_a_time_users, args.users)
    one_s, _ = timed(lambda: [train_one_user(num[u], cat[u], args.epochs, dev, gen) for u in range(k)])
    per_user = one_s / k

    train_stacked(num[:8], cat[:8], 1, dev, gen)
    stacked_s, model = timed(lambda: train_stacked(num, cat, args.epochs, dev, gen))

    per = args.score_rows // args.score_users
    snum, scat = data(args.score_users, per, dev, gen)
    smodel = Stacked(args.score_users, dev, gen)
    mean = torch.ones(FEATURES, device=dev)
    std = torch.full((FEATURES,), 0.5, device=dev)
    score(smodel, snum[:, :64], scat[:, :64], mean, std, 64)
    chunk = max(1, (1 << 16) // args.score_users)
    score_s, _ = timed(lambda: score(smodel, snum, scat, mean, std, chunk))

    print(
        json.dumps(
            {
                "peer": f"PyTorch {torch.__version__} on "
                + (torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu")
                + " (fp32, TF32 off)",
                "users": args.users,
                "rows_per_user": args.rows,
                "epochs": args.epochs,
                "one_at_a_time": {
                    "users_timed": k,
                    "seconds_per_user": per_user,
                    "seconds_for_all_users": per_user * args.users,
                    "user_models_per_s": 1 / per_user,
                },
                "stacked": {"seconds": stacked_s, "user_models_per_s": args.users / stacked_s},
                "scoring": {
                    "users": args.score_users,
                    "rows": per * args.score_users,
                    "seconds": score_s,
                    "rows_per_s": per * args.score_users / score_s,
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
