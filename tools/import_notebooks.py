#!/usr/bin/env python3
"""Turns the seed notebooks' prepared data (parquet + vocabulary JSON) into a
metatrain dataset file that every command accepts.

    tools/import_notebooks.py --dir notebook_data/ --out data/notebooks.h5

The directory is read as the notebooks lay it out (docs/FORMATS.md,
"Importing the notebooks' data"), e.g. data/processed/xuetangx:
  pairs/pairs_{train,val,test}.parquet or pairs/pairs.parquet (or the same
  files directly in --dir)
      pair_id, user_id, prefix (list of item indices, oldest first, or its
      string form "[12, 45]"), label (item index), label_ts_epoch (unix seconds)
  pairs_with_reliability/pairs.parquet
      the pairs with session_reliability (0..1), joined by pair_id; a
      `reliability` or `session_reliability` column in the pairs files works too
  episodes/episodes_{train,val,test}[_K5_Q10].parquet (or in --dir; any K/Q
  suffix, --episodes-suffix picks one when there are several)
      user_id, support_pair_ids (list), query_pair_ids (list)
  vocab/*.json (or one *vocab*.json in --dir, or --vocab)
      {"<item id>": index, ...} with indices 1..V-1 (0 is padding), or a list
      whose position is the index

It prints which file and column it took each field from. Without a
reliability column every pair gets 1.0, and a float column in [0, 1] that it
does not recognise is named in a warning, never dropped silently.

Users, pairs, item indices and episodes are kept exactly: each notebook pair is
one dataset pair, each episode row one episode of its split. Pairs are stored
user by user (users in byte order of their ids), each user's chronologically,
as the dataset format requires. Needs pyarrow, h5py and numpy
(tools/requirements.txt). Errors are one line naming the file and the row.
"""
import argparse
import glob
import hashlib
import json
import os
import sys

SPLITS = ["train", "val", "test"]  # split codes 0, 1, 2


class ImportError_(Exception):
    pass


def fail(msg):
    raise ImportError_(msg)


def read_table(path, required):
    import pyarrow.parquet as pq
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several kinds
        fail(f"{path}: cannot read parquet ({str(e).splitlines()[0]})")
    missing = [c for c in required if c not in table.column_names]
    if missing:
        fail(f"{path}: no column {', '.join(repr(m) for m in missing)} (columns: {', '.join(table.column_names)})")
    return table


def load_vocab(path):
    try:
        with open(path, encoding="utf-8") as f:
            v = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"{path}: cannot read vocabulary JSON ({e})")
    if isinstance(v, dict) and not all(isinstance(x, int) for x in v.values()):
        # A wrapper such as {"course_to_idx": {...}}: the one mapping inside.
        inner = [x for x in v.values() if isinstance(x, dict) and x and all(isinstance(i, int) for i in x.values())]
        if len(inner) != 1:
            fail(f"{path}: expected an object of item id -> index (or a list of item ids)")
        v = inner[0]
    if isinstance(v, list):
        v = {str(name): i for i, name in enumerate(v) if i > 0}
    if not isinstance(v, dict):
        fail(f"{path}: expected an object of item id -> index (or a list of item ids)")
    names = {}
    for name, i in v.items():
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            fail(f"{path}: index of {name!r} is {i!r}, not a non-negative integer")
        if i == 0:
            continue  # the padding entry, whatever it is called
        if i in names:
            fail(f"{path}: index {i} is given to both {names[i]!r} and {name!r}")
        names[i] = str(name)
    if not names:
        fail(f"{path}: the vocabulary is empty")
    V = max(names) + 1
    gaps = [i for i in range(1, V) if i not in names]
    if gaps:
        fail(f"{path}: indices must run 1..{V - 1} without gaps; {len(gaps)} missing, first {gaps[0]}")
    return ["<pad>"] + [names[i] for i in range(1, V)]


def as_seconds(value, where):
    if value is None:
        fail(f"{where}: label_ts_epoch is empty")
    if hasattr(value, "timestamp"):  # a pyarrow/pandas timestamp
        return int(value.timestamp())
    try:
        return int(float(value))
    except (TypeError, ValueError):
        fail(f"{where}: label_ts_epoch {value!r} is not unix seconds")


def fingerprint(d):
    """The dataset fingerprint exactly as docs/FORMATS.md defines it."""
    import numpy as np
    h = hashlib.sha256()

    def name(s):
        h.update(s.encode("utf-8") + b"\0")

    def strings(path, a):
        name(path)
        for s in a:
            h.update(s.encode("utf-8") + b"\0")

    def numbers(path, a, dtype):
        name(path)
        h.update(np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("<")).tobytes())

    strings("vocab/item_ids", d["item_ids"])
    numbers("vocab/item_counts", d["item_counts"], "i8")
    strings("users/ids", d["user_ids"])
    numbers("users/split", d["user_split"], "i1")
    numbers("pairs/user", d["pair_user"], "i4")
    numbers("pairs/prefix_offsets", d["prefix_offsets"], "i8")
    numbers("pairs/prefix_items", d["prefix_items"], "i4")
    numbers("pairs/label", d["label"], "i4")
    numbers("pairs/timestamp", d["timestamp"], "i8")
    numbers("pairs/reliability", d["reliability"], "f4")
    for s in SPLITS:
        e = d["episodes"][s]
        numbers(f"episodes/{s}/support", e["support"], "i8")
        numbers(f"episodes/{s}/query", e["query"], "i8")
        numbers(f"episodes/{s}/user", e["user"], "i4")
    return h.hexdigest()


RELIABILITY_COLUMNS = ["session_reliability", "reliability"]
PAIR_COLUMNS = ["pair_id", "user_id", "prefix", "label", "label_ts_epoch"]


SOURCES = []  # which file and column each field came from, printed once the dataset is written


def say(line):
    SOURCES.append(line)


def locate_pairs(directory):
    """The pairs files: pairs_{train,val,test}.parquet or pairs.parquet, in --dir or --dir/pairs."""
    for base in [directory, os.path.join(directory, "pairs")]:
        split_files = [os.path.join(base, f"pairs_{s}.parquet") for s in SPLITS]
        split_files = [p for p in split_files if os.path.exists(p)]
        if split_files:
            return split_files
        if os.path.exists(os.path.join(base, "pairs.parquet")):
            return [os.path.join(base, "pairs.parquet")]
    return []


def locate_episodes(directory, suffix):
    """Each split's episodes file: episodes_{split}.parquet or episodes_{split}_SUFFIX.parquet (e.g. _K5_Q10)."""
    found = {}
    for s in SPLITS:
        names = []
        for base in [directory, os.path.join(directory, "episodes")]:
            names += sorted(glob.glob(os.path.join(base, f"episodes_{s}.parquet")))
            names += sorted(glob.glob(os.path.join(base, f"episodes_{s}_*.parquet")))
        if suffix is not None:
            names = [n for n in names if os.path.basename(n) == f"episodes_{s}_{suffix}.parquet"]
        if len(names) > 1:
            fail(f"{directory}: several {s} episode files ({', '.join(os.path.relpath(n, directory) for n in names)}); "
                 f"pick one with --episodes-suffix (e.g. K5_Q10)")
        if names:
            found[s] = names[0]
    return found


def locate_vocab(directory):
    found = sorted(glob.glob(os.path.join(directory, "*vocab*.json")))
    if not found:
        found = sorted(glob.glob(os.path.join(directory, "vocab", "*.json")))
    if len(found) != 1:
        fail(f"{directory}: expected one vocabulary JSON (*vocab*.json, or one file in vocab/; found {len(found)}); "
             f"name it with --vocab")
    return found[0]


def parse_prefix(value, where):
    """A prefix as a list of ints, or its string form "[12, 45]"."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            fail(f"{where}: prefix {value!r} is neither a list nor the text of one")
    if not isinstance(value, (list, tuple)):
        fail(f"{where}: prefix {value!r} is not a list of item indices")
    return list(value)


def unrecognised_unit_floats(table, known):
    """Float columns holding only values in [0, 1] that the import does not read: maybe a reliability."""
    import pyarrow as pa
    out = []
    for name in table.column_names:
        if name in known or not pa.types.is_floating(table.schema.field(name).type):
            continue
        values = [v for v in table.column(name).to_pylist() if v is not None]
        if values and all(0.0 <= v <= 1.0 for v in values):
            out.append(name)
    return out


def build(directory, vocab_path, max_seq_len, episodes_suffix=None):
    if not os.path.isdir(directory):
        fail(f"{directory}: no such directory")
    rel = lambda p: os.path.relpath(p, directory)
    if vocab_path is None:
        vocab_path = locate_vocab(directory)
    item_ids = load_vocab(vocab_path)
    V = len(item_ids)
    say(f"vocabulary: {vocab_path} ({V - 1} items)")

    pair_files = locate_pairs(directory)
    reliability_file = os.path.join(directory, "pairs_with_reliability", "pairs.parquet")
    if not os.path.exists(reliability_file):
        reliability_file = None
    if not pair_files and reliability_file:
        pair_files = [reliability_file]
    if not pair_files:
        fail(f"{directory}: no pairs_{{train,val,test}}.parquet or pairs.parquet (in it or in pairs/), "
             f"nor pairs_with_reliability/pairs.parquet")
    say(f"pairs: {', '.join(rel(p) for p in pair_files)} (columns {', '.join(PAIR_COLUMNS)})")
    pairs = {}  # pair_id -> (user, ts, row order, prefix, label, reliability)
    order = 0
    rel_source = None  # (file, column) the reliability came from
    unknown_floats = set()
    for path in pair_files:
        t = read_table(path, PAIR_COLUMNS)
        cols = {c: t.column(c).to_pylist() for c in PAIR_COLUMNS}
        rel_col = next((c for c in RELIABILITY_COLUMNS if c in t.column_names), None)
        rel_values = t.column(rel_col).to_pylist() if rel_col else None
        if rel_col:
            rel_source = (path, rel_col)
        else:
            unknown_floats.update(f"{rel(path)}: {c}" for c in unrecognised_unit_floats(t, PAIR_COLUMNS))
        for r in range(t.num_rows):
            where = f"{path}: row {r}"
            pid = cols["pair_id"][r]
            if pid in pairs:
                fail(f"{where}: pair_id {pid!r} appears twice")
            prefix = parse_prefix(cols["prefix"][r], where)
            if not prefix:
                fail(f"{where}: empty prefix (a pair needs at least one earlier item)")
            label = cols["label"][r]
            for x in list(prefix) + [label]:
                if not isinstance(x, int) or not 1 <= x < V:
                    fail(f"{where}: item index {x!r} is outside the vocabulary's 1..{V - 1}")
            reliability = None if rel_values is None or rel_values[r] is None else float(rel_values[r])
            if reliability is not None and not 0.0 <= reliability <= 1.0:
                fail(f"{where}: {rel_col} {reliability} is outside [0, 1]")
            if cols["user_id"][r] is None:
                fail(f"{where}: empty user_id")
            pairs[pid] = [str(cols["user_id"][r]), as_seconds(cols["label_ts_epoch"][r], where), order, prefix, label,
                          reliability]
            order += 1
    if not pairs:
        fail(f"{directory}: the pairs files hold no rows")
    if reliability_file and reliability_file not in pair_files:
        # The notebooks keep reliability beside the pairs: joined by pair_id.
        t = read_table(reliability_file, ["pair_id"])
        rel_col = next((c for c in RELIABILITY_COLUMNS if c in t.column_names), None)
        if rel_col is None:
            fail(f"{reliability_file}: no column {' or '.join(repr(c) for c in RELIABILITY_COLUMNS)} "
                 f"(columns: {', '.join(t.column_names)})")
        ids, values = t.column("pair_id").to_pylist(), t.column(rel_col).to_pylist()
        for r, (pid, v) in enumerate(zip(ids, values)):
            if pid in pairs and v is not None:
                v = float(v)
                if not 0.0 <= v <= 1.0:
                    fail(f"{reliability_file}: row {r}: {rel_col} {v} is outside [0, 1]")
                pairs[pid][5] = v
        rel_source = (reliability_file, rel_col)
        unknown_floats.clear()
    missing = sum(1 for p in pairs.values() if p[5] is None)
    if rel_source:
        say(f"reliability: {rel(rel_source[0])} column {rel_source[1]}"
            + (f" ({missing} pairs without a value get 1.0)" if missing else ""))
    else:
        say("reliability: no session_reliability or reliability column; every pair gets 1.0")
        for c in sorted(unknown_floats):
            print(f"warning: {c} holds only values in [0, 1] and is not read; if it is the reliability, "
                  f"name it session_reliability", file=sys.stderr)
    for p in pairs.values():
        if p[5] is None:
            p[5] = 1.0

    # Users in byte order of their ids; each user's pairs by (time, row order).
    users = sorted({p[0] for p in pairs.values()}, key=lambda u: u.encode("utf-8"))
    user_index = {u: i for i, u in enumerate(users)}
    ordered = sorted(pairs.items(), key=lambda kv: (user_index[kv[1][0]], kv[1][1], kv[1][2]))
    new_index = {pid: i for i, (pid, _) in enumerate(ordered)}
    L = max_seq_len or max(len(p[3]) for p in pairs.values())

    split = [0] * len(users)
    split_of = {}
    episodes = {}
    K = Q = None
    episode_files = locate_episodes(directory, episodes_suffix)
    for s_code, s in enumerate(SPLITS):
        path = episode_files.get(s)
        e = {"support": [], "query": [], "user": []}
        episodes[s] = e
        if path is None:
            continue
        say(f"episodes {s}: {rel(path)}")
        t = read_table(path, ["user_id", "support_pair_ids", "query_pair_ids"])
        user_col = t.column("user_id").to_pylist()
        sup_col = t.column("support_pair_ids").to_pylist()
        qry_col = t.column("query_pair_ids").to_pylist()
        for r in range(t.num_rows):
            where = f"{path}: row {r}"
            u = str(user_col[r])
            if u not in user_index:
                fail(f"{where}: user {u!r} has no pairs")
            if split_of.setdefault(u, s) != s:
                fail(f"{where}: user {u!r} has episodes in both {split_of[u]} and {s}; splits must be disjoint")
            split[user_index[u]] = s_code
            ids = []
            for kind, col in (("support", sup_col), ("query", qry_col)):
                got = []
                for pid in col[r] or []:
                    if pid not in new_index:
                        fail(f"{where}: {kind} pair {pid!r} is not in the pairs files")
                    if pairs[pid][0] != u:
                        fail(f"{where}: {kind} pair {pid!r} belongs to user {pairs[pid][0]!r}, not {u!r}")
                    got.append(new_index[pid])
                ids.append(sorted(got))  # chronological, as the notebooks sort by label_ts_epoch
            sup, qry = ids
            if K is None:
                K, Q = len(sup), len(qry)
            if (len(sup), len(qry)) != (K, Q) or K == 0 or Q == 0:
                fail(f"{where}: {len(sup)} support and {len(qry)} query pairs; every episode must have the same "
                     f"non-zero counts (the first had K={K}, Q={Q})")
            e["support"].append(sup)
            e["query"].append(qry)
            e["user"].append(user_index[u])
    if K is None:
        fail(f"{directory}: no episodes_{{train,val,test}}[_SUFFIX].parquet with rows (in it or in episodes/)")

    prefix_offsets, prefix_items = [0], []
    pair_user, label, timestamp, reliability = [], [], [], []
    counts = [0] * V
    for pid, (u, ts, _, prefix, lab, rel) in ordered:
        prefix_items.extend(prefix[-L:])
        prefix_offsets.append(len(prefix_items))
        pair_user.append(user_index[u])
        label.append(lab)
        timestamp.append(ts)
        reliability.append(rel)
        counts[lab] += 1
    return {
        "item_ids": item_ids, "item_counts": counts, "user_ids": users, "user_split": split,
        "pair_user": pair_user, "prefix_offsets": prefix_offsets, "prefix_items": prefix_items,
        "label": label, "timestamp": timestamp, "reliability": reliability, "episodes": episodes,
        "L": L, "K": K, "Q": Q,
        "source": f"{os.path.basename(os.path.normpath(directory))} (notebooks' parquet, vocabulary {os.path.basename(vocab_path)})",
    }


def write(d, out):
    import h5py
    import numpy as np
    tmp = f"{out}.tmp-{os.getpid()}"
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = "metatrain-dataset"
            f.attrs["version"] = np.int64(1)
            f.attrs["n_items"] = np.int64(len(d["item_ids"]))
            f.attrs["max_seq_len"] = np.int64(d["L"])
            f.attrs["k_support"] = np.int64(d["K"])
            f.attrs["q_query"] = np.int64(d["Q"])
            f.attrs["fingerprint"] = fingerprint(d)
            f.attrs["source"] = d["source"]
            text = h5py.string_dtype("utf-8")
            f.create_dataset("vocab/item_ids", data=np.array(d["item_ids"], dtype=object), dtype=text)
            f.create_dataset("vocab/item_counts", data=np.array(d["item_counts"], dtype="<i8"))
            f.create_dataset("users/ids", data=np.array(d["user_ids"], dtype=object), dtype=text)
            f.create_dataset("users/split", data=np.array(d["user_split"], dtype="i1"))
            f.create_dataset("pairs/user", data=np.array(d["pair_user"], dtype="<i4"))
            f.create_dataset("pairs/prefix_offsets", data=np.array(d["prefix_offsets"], dtype="<i8"))
            f.create_dataset("pairs/prefix_items", data=np.array(d["prefix_items"], dtype="<i4"))
            f.create_dataset("pairs/label", data=np.array(d["label"], dtype="<i4"))
            f.create_dataset("pairs/timestamp", data=np.array(d["timestamp"], dtype="<i8"))
            f.create_dataset("pairs/reliability", data=np.array(d["reliability"], dtype="<f4"))
            for s in SPLITS:
                e = d["episodes"][s]
                f.create_dataset(f"episodes/{s}/support", data=np.array(e["support"], dtype="<i8").reshape(-1, d["K"]))
                f.create_dataset(f"episodes/{s}/query", data=np.array(e["query"], dtype="<i8").reshape(-1, d["Q"]))
                f.create_dataset(f"episodes/{s}/user", data=np.array(e["user"], dtype="<i4"))
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="example: tools/import_notebooks.py --dir data/processed/xuetangx --out data/notebooks.h5")
    ap.add_argument("--dir", required=True, help="directory of the notebooks' parquet files and vocabulary")
    ap.add_argument("--vocab", help="vocabulary JSON (default: the one *vocab*.json in --dir, or the one file in --dir/vocab)")
    ap.add_argument("--episodes-suffix", help="which episode files when there are several, e.g. K5_Q10 "
                                              "(episodes_train_K5_Q10.parquet)")
    ap.add_argument("--out", required=True, help="dataset file to write (HDF5)")
    ap.add_argument("--max-seq-len", type=int, default=0,
                    help="keep the last N items of each prefix (default: the longest prefix, so nothing is cut)")
    a = ap.parse_args()
    try:
        import h5py, numpy, pyarrow  # noqa: F401
    except ImportError as e:
        print(f"error: {e.name} is not installed (pip install -r tools/requirements.txt)", file=sys.stderr)
        return 1
    try:
        d = build(a.dir, a.vocab, a.max_seq_len, a.episodes_suffix)
        write(d, a.out)
    except ImportError_ as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {a.out}: {e.strerror}", file=sys.stderr)
        return 1
    for line in SOURCES:
        print(line)
    n = {s: len(d["episodes"][s]["user"]) for s in SPLITS}
    print(f"wrote {a.out}: {len(d['user_ids'])} users, {len(d['label'])} pairs, vocabulary {len(d['item_ids'])}, "
          f"K={d['K']} Q={d['Q']}, episodes train {n['train']}, val {n['val']}, test {n['test']}")
    print(f"fingerprint: {fingerprint(d)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
