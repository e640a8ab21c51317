"""Reads `metatrain export`'s files as a notebook would, without metatrain or torch.

usage: export_check.py MODEL.safetensors MODEL.vocab.json LEARNER.csv ANSWER.json

Loads the tensors with the safetensors package (numpy), checks they carry the names and
shapes of the notebooks' nn.Embedding / nn.GRU / nn.Linear module, runs PyTorch's GRU
equations (docs at torch.nn.GRU) in float64 over the learner's latest courses, and compares
the logits with `recommend --steps 0 --include-seen --json`'s scores (ANSWER.json): every
course within 1e-5.
"""
import csv
import json
import sys

import numpy as np
from safetensors.numpy import load_file

model_path, vocab_path, events_path, answer_path = sys.argv[1:5]
t = load_file(model_path)
vocab = json.load(open(vocab_path))
ids = vocab["item_ids"]
V, E = t["embedding.weight"].shape
H = t["gru.weight_hh_l0"].shape[1]
expected = {
    "embedding.weight": (V, E), "gru.weight_ih_l0": (3 * H, E), "gru.weight_hh_l0": (3 * H, H),
    "gru.bias_ih_l0": (3 * H,), "gru.bias_hh_l0": (3 * H,), "fc.weight": (V, H), "fc.bias": (V,),
}
assert set(t) == set(expected), f"tensor names {sorted(t)}"
for name, shape in expected.items():
    assert t[name].shape == shape and t[name].dtype == np.float32, (name, t[name].shape, t[name].dtype)
assert len(ids) == V and ids[vocab["padding_index"]] == "<pad>"

# The learner's courses in time order, repeats of the previous one merged, unknown ones dropped.
index = {c: i for i, c in enumerate(ids) if i > 0}
rows = sorted(
    ((int(r["time"]) if r["time"].lstrip("-").isdigit() else r["time"], n, r["course_id"])
     for n, r in enumerate(csv.DictReader(open(events_path)))))
visits = []
for _, _, course in rows:
    i = index.get(course)
    if i is not None and (not visits or visits[-1] != i):
        visits.append(i)
prefix = visits[-vocab["max_seq_len"]:]

f64 = {k: v.astype(np.float64) for k, v in t.items()}
def sigmoid(x):
    return 1 / (1 + np.exp(-x))
h = np.zeros(H)
for item in prefix:
    x = f64["embedding.weight"][item]
    gi = f64["gru.weight_ih_l0"] @ x + f64["gru.bias_ih_l0"]
    gh = f64["gru.weight_hh_l0"] @ h + f64["gru.bias_hh_l0"]
    r = sigmoid(gi[:H] + gh[:H])
    z = sigmoid(gi[H:2 * H] + gh[H:2 * H])
    n = np.tanh(gi[2 * H:] + r * gh[2 * H:])
    h = (1 - z) * n + z * h
logits = f64["fc.weight"] @ h + f64["fc.bias"]

answer = json.load(open(answer_path))
assert answer["adapted"] is False, "the answer must be unadapted (--steps 0)"
scores = {it["item"]: it["score"] for it in answer["items"]}
assert len(scores) == V - 1, len(scores)
worst = max(abs(scores[ids[i]] - logits[i]) for i in range(1, V))
print(f"{len(prefix)} courses in the prefix, {V - 1} scores, max |difference| {worst:.2e}")
sys.exit(0 if worst <= 1e-5 else 1)
