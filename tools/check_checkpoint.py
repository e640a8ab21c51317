#!/usr/bin/env python3
"""Checks a metatrain checkpoint with h5py, independently of metatrain's reader:
root attributes, the PyTorch state-dict keys and shapes of
nn.Embedding(V, E, padding_idx=0) / nn.GRU(E, H, batch_first=True) / nn.Linear(H, V),
float32 everywhere, and a zero padding row. With torch installed it also loads
the weights into that module (strict=True). Exit status 0 when all hold.

    python3 tools/check_checkpoint.py runs/gru4rec/best.h5
"""
import json
import sys

import h5py
import numpy as np


def main(path):
    with h5py.File(path, "r") as f:
        a = f.attrs
        assert a["format"] == "metatrain-checkpoint", a["format"]
        assert int(a["version"]) == 1
        for k in ["iteration", "adam_step", "seed", "config", "dataset_fingerprint", "kind", "algorithm"]:
            assert k in a, f"missing attribute {k}"
        json.loads(a["config"])
        assert a["kind"] in ("pretrain", "meta")
        V, E = f["model/embedding.weight"].shape
        H = f["model/gru.weight_hh_l0"].shape[1]
        want = {
            "embedding.weight": (V, E), "gru.weight_ih_l0": (3 * H, E), "gru.weight_hh_l0": (3 * H, H),
            "gru.bias_ih_l0": (3 * H,), "gru.bias_hh_l0": (3 * H,), "fc.weight": (V, H), "fc.bias": (V,),
        }
        state = {}
        for k, shape in want.items():
            d = f["model/" + k]
            assert d.shape == shape, f"{k}: {d.shape} != {shape}"
            assert d.dtype == np.float32, f"{k}: {d.dtype}"
            state[k] = np.asarray(d)
            if "optimizer" in f:
                assert f["optimizer/m/" + k].shape == shape and f["optimizer/v/" + k].shape == shape
        assert not np.any(state["embedding.weight"][0]), "padding row is not zero"
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
    main(sys.argv[1])
