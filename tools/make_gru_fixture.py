#!/usr/bin/env python3
"""Writes Tests/GRU4RecTests/Fixtures/gru4rec_reference.json: the loss and every
parameter gradient of a small GRU4Rec, computed by an implementation independent
of metatrain's (numpy forward pass on padded sequences, differentiated by the
`autograd` package), for the Swift test to compare against.

    pip install autograd numpy && python3 tools/make_gru_fixture.py

Conventions match PyTorch: nn.Embedding(V, E, padding_idx=0), nn.GRU(E, H,
batch_first=True) with gate order r, z, n, nn.Linear(H, V); the loss is the
weighted mean cross-entropy over items 1..V-1 (item 0 excluded).
"""
import json
import os
import sys

try:
    import autograd.numpy as np
    from autograd import grad
except ImportError as e:
    sys.exit(f"error: {e.name} is not installed (pip install -r tools/requirements.txt)")

V, E, H = 11, 4, 9
rs = np.random.RandomState(7)
params = {
    "embedding.weight": rs.normal(size=(V, E)),
    "gru.weight_ih_l0": rs.uniform(-0.6, 0.6, size=(3 * H, E)),
    "gru.weight_hh_l0": rs.uniform(-0.6, 0.6, size=(3 * H, H)),
    "gru.bias_ih_l0": rs.uniform(-0.4, 0.4, size=(3 * H,)),
    "gru.bias_hh_l0": rs.uniform(-0.4, 0.4, size=(3 * H,)),
    "fc.weight": rs.uniform(-1.0, 1.0, size=(V, H)),
    "fc.bias": rs.uniform(-0.3, 0.3, size=(V,)),
}
params["embedding.weight"][0, :] = 0.0
# Store float32-rounded values so both sides start from identical numbers.
params = {k: v.astype(np.float32).astype(np.float64) for k, v in params.items()}
names = list(params.keys())

prefixes = [[1, 2, 3, 4, 5, 6], [7], [3, 3, 9], [10, 2], [4, 5, 6, 7, 8], [9, 1, 2, 3]]
labels = [2, 5, 1, 10, 3, 7]
weights = [1.0, 0.5, 2.0, 0.25, 1.5, 0.75]


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def loss_fn(flat):
    p = dict(zip(names, flat))
    Wih, Whh, bih, bhh = p["gru.weight_ih_l0"], p["gru.weight_hh_l0"], p["gru.bias_ih_l0"], p["gru.bias_hh_l0"]
    total, wsum = 0.0, 0.0
    for seq, lab, w in zip(prefixes, labels, weights):
        h = np.zeros(H)
        for item in seq:
            x = p["embedding.weight"][item]
            gi = np.dot(Wih, x) + bih
            gh = np.dot(Whh, h) + bhh
            r = sigmoid(gi[:H] + gh[:H])
            z = sigmoid(gi[H:2 * H] + gh[H:2 * H])
            n = np.tanh(gi[2 * H:] + r * gh[2 * H:])
            h = (1 - z) * n + z * h
        logits = np.dot(p["fc.weight"], h) + p["fc.bias"]
        z1 = logits[1:]
        m = np.max(z1)
        lse = m + np.log(np.sum(np.exp(z1 - m)))
        total = total + w * (lse - logits[lab])
        wsum += w
    return total / wsum


flat = [params[k] for k in names]
loss = loss_fn(flat)
grads = grad(loss_fn)(flat)
out = {
    "dims": {"V": V, "E": E, "H": H},
    "prefixes": prefixes, "labels": labels, "weights": weights,
    "params": {k: params[k].ravel().tolist() for k in names},
    "loss": float(loss),
    "grads": {k: g.ravel().tolist() for k, g in zip(names, grads)},
}
path = os.path.join(os.path.dirname(__file__), "..", "Tests", "GRU4RecTests", "Fixtures", "gru4rec_reference.json")
try:
    with open(path + ".tmp", "w") as f:
        json.dump(out, f, indent=1)
    os.replace(path + ".tmp", path)
except OSError as e:
    sys.exit(f"error: {path}: {e.strerror}")
print("wrote", os.path.normpath(path), "loss", loss)
