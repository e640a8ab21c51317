#!/usr/bin/env python3
"""Checks a metatrain checkpoint with h5py, independently of metatrain's reader:
root attributes, the PyTorch state-dict keys and shapes of
nn.Embedding(V, E, padding_idx=0) / nn.GRU(E, H, batch_first=True) / nn.Linear(H, V),
float32 everywhere, and a zero padding row. With torch installed it also loads
the weights into that module (strict=True). Exit status 0 when all hold.

    python3 tools/check_checkpoint.py runs/gru4rec/best.h5
"""
import json
import os
import sys


class Failed(Exception):
    pass


def check(cond, message):
    if not cond:
        raise Failed(message)


def main(path):
    import h5py
    import numpy as np
    if not os.path.exists(path):
        raise Failed("no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise Failed(f"not an HDF5 file ({e})")
    with f:
        a = f.attrs
        check(a.get("format") == "metatrain-checkpoint", f"not a metatrain checkpoint (format {a.get('format')!r})")
        check(int(a["version"]) in (1, 2), f"version {a['version']} is not 1 or 2")
        for k in ["iteration", "adam_step", "seed", "config", "dataset_fingerprint", "kind", "algorithm"]:
            check(k in a, f"missing attribute {k}")
        try:
            json.loads(a["config"])
        except ValueError as e:
            raise Failed(f"attribute config is not JSON ({e})")
        check(a["kind"] in ("pretrain", "meta"), f"kind {a['kind']!r} is not pretrain or meta")
        V, E = f["model/embedding.weight"].shape
        H = f["model/gru.weight_hh_l0"].shape[1]
        want = {
            "embedding.weight": (V, E), "gru.weight_ih_l0": (3 * H, E), "gru.weight_hh_l0": (3 * H, H),
            "gru.bias_ih_l0": (3 * H,), "gru.bias_hh_l0": (3 * H,), "fc.weight": (V, H), "fc.bias": (V,),
        }
        state = {}
        for k, shape in want.items():
            check("model/" + k in f, f"missing dataset model/{k}")
            d = f["model/" + k]
            check(d.shape == shape, f"{k}: shape {d.shape}, expected {shape}")
            check(d.dtype == np.float32, f"{k}: {d.dtype}, expected float32")
            state[k] = np.asarray(d)
            if "optimizer" in f:
                check(f["optimizer/m/" + k].shape == shape and f["optimizer/v/" + k].shape == shape, f"optimizer state of {k}: wrong shape")
        check(not np.any(state["embedding.weight"][0]), "padding row is not zero")
        if int(a["version"]) >= 2:
            # Version 2 is self-contained: the vocabulary, the prepare settings, the adaptation policy.
            check("vocab/item_ids" in f and "vocab/item_counts" in f, "version 2 without /vocab")
            check(f["vocab/item_ids"].shape == (V,) and f["vocab/item_counts"].shape == (V,), "vocab: shape is not [V]")
            for k in ["prepare", "adaptation"]:
                check(k in a, f"missing attribute {k}")
                try:
                    json.loads(a[k])
                except ValueError as e:
                    raise Failed(f"attribute {k} is not JSON ({e})")
        try:
            import torch
        except ImportError:
            torch = None
        if torch is not None:
            class GRU4Rec(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.embedding = torch.nn.Embedding(V, E, padding_idx=0)
                    self.gru = torch.nn.GRU(E, H, batch_first=True)
                    self.fc = torch.nn.Linear(H, V)
            GRU4Rec().load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    print(f"ok: {path} (V={V}, E={E}, H={H})")


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        sys.exit("usage: tools/check_checkpoint.py CHECKPOINT.h5")
    try:
        main(sys.argv[1])
    except ImportError as e:
        sys.exit(f"error: {e.name} is not installed (pip install -r tools/requirements.txt)")
    except (Failed, KeyError) as e:
        sys.exit(f"error: {sys.argv[1]}: {e}")
