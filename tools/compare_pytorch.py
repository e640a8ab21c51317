#!/usr/bin/env python3
"""Times MAML-family meta-iterations in PyTorch on a metatrain dataset, as a peer to compare with.

The same model (GRU4Rec: embedding -> PyTorch GRU -> linear, item 0 left out of
the softmax), the same defaults as metatrain's config (E 64, H 128, K 5 support
and Q 10 query pairs per task, 5 inner SGD steps at 0.01, 32 tasks per
meta-iteration, Adam 0.001 with the meta-gradient clipped to norm 10), on the
same prepared dataset (read with h5py from docs/FORMATS.md's layout). Tasks are
drawn uniformly from the train episodes. It times; it does not try to give
metatrain's bits (its kernels round differently).

Two ways to write the peer; the faster is the fair comparison:
  fused    per task, the model through torch.nn.GRU (PyTorch's own fused GRU
           operator) with torch.func.functional_call, packed sequences;
  batched  all tasks of a meta-iteration at once: parameters stacked per task,
           the GRU written as batched matrix products over tasks (torch.bmm),
           one autograd graph for the meta-batch.

Example:
  python tools/compare_pytorch.py --data bench.h5 --algorithm fomaml --threads 2
  python tools/compare_pytorch.py --data bench.h5 --algorithm maml --variant batched

Prints one JSON line: seconds per meta-iteration (the mean of the timed
iterations after --warmup), and the settings. --check instead computes one
meta-gradient both ways on the same tasks and fails unless they agree (to
float32 rounding): the two peers time the same computation.
"""

import argparse
import json
import sys
import time

import h5py
import numpy as np
import torch
import torch.nn.functional as F


def load(path):
    with h5py.File(path, "r") as f:
        offsets = f["pairs/prefix_offsets"][:]
        items = f["pairs/prefix_items"][:]
        labels = f["pairs/label"][:]
        support = f["episodes/train/support"][:]
        query = f["episodes/train/query"][:]
        vocab = int(f["vocab/item_counts"].shape[0])
    return offsets, items, labels, support, query, vocab


def batch(pair_ids, offsets, items, labels):
    """Pairs as (padded prefixes [B, L] left-aligned, lengths [B], labels [B])."""
    lengths = [int(offsets[p + 1] - offsets[p]) for p in pair_ids]
    out = np.zeros((len(pair_ids), max(lengths)), dtype=np.int64)
    for i, p in enumerate(pair_ids):
        out[i, : lengths[i]] = items[offsets[p] : offsets[p + 1]]
    return torch.from_numpy(out), torch.tensor(lengths), torch.from_numpy(labels[pair_ids].astype(np.int64))


class GRU4Rec(torch.nn.Module):
    def __init__(self, vocab, e, h):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, e)
        self.gru = torch.nn.GRU(e, h, batch_first=True)
        self.fc = torch.nn.Linear(h, vocab)

    def forward(self, prefixes, lengths, labels):
        x = self.embedding(prefixes)
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)
        logits = self.fc(h[0])[:, 1:]  # item 0 is never predicted
        return F.cross_entropy(logits, labels - 1)


def fused_meta_gradient(model, names, theta, tasks, args):
    """Sum over tasks of each task's meta-gradient, one task at a time through nn.GRU."""
    total = [torch.zeros_like(p) for p in theta]
    for sup, qry in tasks:
        second = args.algorithm == "maml"
        fast = list(theta) if second else [p.detach().requires_grad_() for p in theta]
        for _ in range(args.inner_steps):
            loss = torch.func.functional_call(model, dict(zip(names, fast)), sup)
            grads = torch.autograd.grad(loss, fast, create_graph=second)
            fast = [p - args.inner_lr * g for p, g in zip(fast, grads)]
            if not second:
                fast = [p.detach().requires_grad_() for p in fast]
        loss = torch.func.functional_call(model, dict(zip(names, fast)), qry)
        grads = torch.autograd.grad(loss, theta if second else fast)
        for t, g in zip(total, grads):
            t += g
    return total


def gru_last(p, prefixes, lengths):
    """Stacked per-task parameters p; prefixes [T, B, L]; lengths [T, B] -> last hidden states [T, B, H]."""
    emb, w_ih, w_hh, b_ih, b_hh = p[0], p[1], p[2], p[3], p[4]
    t_count, b, length = prefixes.shape
    hidden = w_hh.shape[2]
    x = emb[torch.arange(t_count)[:, None, None], prefixes]  # [T, B, L, E]
    gi = torch.bmm(x.reshape(t_count, b * length, -1), w_ih.transpose(1, 2)).reshape(t_count, b, length, -1)
    gi = gi + b_ih[:, None, None, :]
    h = torch.zeros(t_count, b, hidden)
    for step in range(length):
        gh = torch.bmm(h, w_hh.transpose(1, 2)) + b_hh[:, None, :]
        i_r, i_z, i_n = gi[:, :, step].chunk(3, dim=2)
        h_r, h_z, h_n = gh.chunk(3, dim=2)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        new = (1 - z) * n + z * h
        h = torch.where((step < lengths)[:, :, None], new, h)
    return h


def batched_loss(p, data):
    prefixes, lengths, labels = data
    h = gru_last(p, prefixes, lengths)
    logits = (torch.bmm(h, p[5].transpose(1, 2)) + p[6][:, None, :])[:, :, 1:]
    t_count, b, v = logits.shape
    # Each task's mean loss, summed over tasks: the gradient of task t's parameters is its own.
    return F.cross_entropy(logits.reshape(t_count * b, v), (labels - 1).reshape(-1), reduction="sum") / b


def batched_meta_gradient(theta, sup, qry, args):
    t_count = sup[0].shape[0]
    second = args.algorithm == "maml"
    stacked = [p.unsqueeze(0).expand(t_count, *p.shape) for p in theta]
    fast = stacked if second else [s.detach().clone().requires_grad_() for s in stacked]
    for _ in range(args.inner_steps):
        grads = torch.autograd.grad(batched_loss(fast, sup), fast, create_graph=second)
        fast = [p - args.inner_lr * g for p, g in zip(fast, grads)]
        if not second:
            fast = [p.detach().requires_grad_() for p in fast]
    loss = batched_loss(fast, qry)
    if second:
        return torch.autograd.grad(loss, theta)
    return [g.sum(0) for g in torch.autograd.grad(loss, fast)]


def stack(batches):
    """Per-task batches -> [T, B, Lmax] prefixes, [T, B] lengths, [T, B] labels."""
    length = max(b[0].shape[1] for b in batches)
    prefixes = torch.stack([F.pad(b[0], (0, length - b[0].shape[1])) for b in batches])
    return prefixes, torch.stack([b[1] for b in batches]), torch.stack([b[2] for b in batches])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--algorithm", choices=["fomaml", "maml"], default="fomaml")
    ap.add_argument("--variant", choices=["fused", "batched"], default="fused")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--embedding-dim", type=int, default=64)
    ap.add_argument("--hidden-dim", type=int, default=128)
    ap.add_argument("--inner-steps", type=int, default=5)
    ap.add_argument("--inner-lr", type=float, default=0.01)
    ap.add_argument("--meta-batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--check", action="store_true", help="compare the two ways' meta-gradients; time nothing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    offsets, items, labels, support, query, vocab = load(args.data)
    model = GRU4Rec(vocab, args.embedding_dim, args.hidden_dim)
    names = [n for n, _ in model.named_parameters()]
    theta = [p for _, p in model.named_parameters()]
    adam = torch.optim.Adam(theta, lr=0.001)
    rng = np.random.default_rng(args.seed)

    def draw():
        """A meta-batch of tasks: (support, query) batches of uniformly drawn train episodes."""
        chosen = rng.integers(0, support.shape[0], args.meta_batch_size)
        return [(batch(support[e], offsets, items, labels), batch(query[e], offsets, items, labels)) for e in chosen]

    if args.check:
        tasks = draw()
        a = fused_meta_gradient(model, names, theta, tasks, args)
        b = batched_meta_gradient(theta, stack([s for s, _ in tasks]), stack([q for _, q in tasks]), args)
        worst = max(float((x - y).abs().max() / y.abs().max().clamp_min(1e-12)) for x, y in zip(a, b))
        print(json.dumps({"algorithm": args.algorithm, "max_relative_difference": worst}))
        return 0 if worst < 1e-3 else 1
    times = []
    for it in range(args.warmup + args.iterations):
        start = time.perf_counter()
        tasks = draw()
        if args.variant == "fused":
            grads = fused_meta_gradient(model, names, theta, tasks, args)
        else:
            grads = batched_meta_gradient(theta, stack([s for s, _ in tasks]), stack([q for _, q in tasks]), args)
        for p, g in zip(theta, grads):
            p.grad = g / args.meta_batch_size
        torch.nn.utils.clip_grad_norm_(theta, 10.0)
        adam.step()
        if it >= args.warmup:
            times.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "framework": f"pytorch {torch.__version__}",
                "variant": args.variant,
                "algorithm": args.algorithm,
                "threads": args.threads,
                "s_per_iter": sum(times) / len(times),
                "best_s_per_iter": min(times),
                "iterations": len(times),
                "vocab": vocab,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
