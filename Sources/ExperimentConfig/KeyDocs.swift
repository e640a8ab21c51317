/// What every configuration key means and which values it takes, in the order
/// of the defaults (`defaultConfigYAML`). `metatrain config` prints them beside
/// the resolved values, and docs/CONFIG.md is that output as a table; a test
/// keeps the three in step (every key documented, nothing documented that is
/// not a key).
public let configKeyDocs: [(key: String, doc: String)] = baseKeyDocs.map { key, doc in
    (key, Config.mayChangeOnResume(key) ? doc + " May change on --resume." : doc)
}

private let baseKeyDocs: [(key: String, doc: String)] = [
    (
        "seed",
        "Seeds every generator (splits, sampling, dropout, initialisation): same seed and config, same bits. Integer ≥ 0."
    ),
    ("data.max_seq_len", "L: the longest prefix kept before a label (older visits are cut). 1–10000."),
    ("data.k_support", "K: support pairs per episode (the learner's first interactions). 1–10000."),
    ("data.q_query", "Q: query pairs per episode (what is predicted after adapting). 1–10000."),
    ("data.session_gap_s", "Without a session column, a gap longer than this (seconds) starts a new session. ≥ 0."),
    ("data.min_item_count", "Courses with fewer events are dropped from the vocabulary. ≥ 1."),
    (
        "data.val_fraction",
        "Fraction of all users held out for validation (cold-start users, disjoint from training). 0–1, with test below 1 in sum."
    ),
    ("data.test_fraction", "Fraction of all users held out for test. 0–1."),
    ("data.train_stride", "A train user's episodes start every this many pairs. ≥ 1."),
    (
        "data.split",
        "How val/test users are chosen among eligible ones: by_first_activity (the latest users go to test; no future leaks into training) or random."
    ),
    (
        "data.reliability.events_cap",
        "A session with this many events has full intensity in its reliability score. > 0."
    ),
    ("data.reliability.duration_cap_s", "A session this long (seconds) has full extent in its reliability score. > 0."),
    ("model.embedding_dim", "E: course embedding size. 1–8192."),
    ("model.hidden_dim", "H: GRU hidden size. 1–8192."),
    ("model.dropout", "Dropout on the final hidden state while pretraining. 0–0.99."),
    ("pretrain.epochs", "GRU4Rec pretraining epochs (at most; see patience). 1–10^6."),
    ("pretrain.batch_size", "Pairs per pretraining mini-batch. ≥ 1."),
    ("pretrain.lr", "Adam learning rate for pretraining. 0–100."),
    ("pretrain.patience", "Pretraining stops after this many epochs without a better validation HR@10. ≥ 1."),
    (
        "maml.algorithm",
        "fomaml (first-order MAML), maml (MAML; second order with second_order: true) or metasgd (learned per-parameter inner rates)."
    ),
    (
        "maml.second_order",
        "Differentiate through the inner steps (maml, metasgd); false uses the first-order approximation."
    ),
    ("maml.inner_lr", "Inner-loop (adaptation) learning rate; Meta-SGD's initial rate. 0–100."),
    ("maml.inner_lr_bounds", "Meta-SGD: [low, high] the learned rates are clipped to, 0 ≤ low ≤ high ≤ 100."),
    ("maml.outer_lr", "Adam learning rate of the meta-update. 0–100."),
    ("maml.inner_steps", "Gradient steps on the support set per task. 0–10000."),
    ("maml.meta_batch_size", "Tasks (users) per meta-iteration. ≥ 1."),
    ("maml.iterations", "Meta-iterations to run (raise it on --resume to extend a run). ≥ 0."),
    ("maml.residual_lambda", "λ of the residual meta-loss (1-λ)·L_q(θ') + λ·L_q(θ); 0 is plain MAML. 0–1."),
    ("maml.clip_norm", "The meta-gradient (and pretraining gradient) is clipped to this global norm. ≥ 0."),
    ("maml.chunk_size", "Tasks per chunk, the leaves of the reduction tree: the unit of work sent to workers. ≥ 1."),
    (
        "weighting.scheme",
        "Weights of the inner loss over support pairs: uniform, recency, reliability (the session's score) or recency_reliability (their product)."
    ),
    (
        "weighting.recency.kind",
        "Recency kernel over support positions i of n (0 oldest): exponential e^(−λ(n−1−i)), linear (i+1)/n or softmax e^(i/τ)/Σ."
    ),
    ("weighting.recency.lambda", "λ of the exponential kernel. 0–10^6."),
    ("weighting.recency.temperature", "τ of the softmax kernel. > 0."),
    (
        "warm_start.checkpoint",
        "A pretrained GRU4Rec checkpoint (best.h5) to start meta-training from, or null for a fresh initialisation."
    ),
    ("warm_start.freeze_embeddings", "Keep the warm-started course embeddings fixed during meta-training."),
    ("eval.every", "Validate every this many meta-iterations (few-shot HR@10 on val users). ≥ 1."),
    ("eval.patience", "Meta-training stops after this many validations without a better HR@10. ≥ 1."),
    ("eval.val_episodes", "Validation episodes used (0: all). ≥ 0."),
    ("eval.bootstrap_samples", "Bootstrap resamples for the confidence intervals of evaluate. 1–10^6."),
    (
        "eval.sampled_negatives",
        "Studies also rank each query against this many seeded random negatives and report those metrics under separate keys (hr@10_sampled100, ...) beside full-catalogue ranking, for comparison with papers that sample. 0 = off. 0–10^6."
    ),
    ("checkpoint.every", "Write checkpoints/iter-N.h5 every this many iterations. ≥ 1."),
    ("checkpoint.keep", "Periodic checkpoints kept (the newest). ≥ 1."),
    ("cluster.heartbeat_s", "Seconds between heartbeats of a quiet coordinator or worker. 0.05–60."),
    ("cluster.liveness", "Heartbeats missed before a peer is presumed gone (silence = heartbeat_s × liveness). 1–1000.")
]

extension Config {
    /// Keys that may change when a run resumes: how long it runs and how often it
    /// evaluates, checkpoints and gives up; none of them changes a weight.
    public static let resumableKeys = [
        "maml.iterations", "eval.every", "eval.patience", "checkpoint.every", "checkpoint.keep",
        "eval.sampled_negatives", "pretrain.epochs", "pretrain.patience", "cluster.*"
    ]

    public static func mayChangeOnResume(_ key: String) -> Bool {
        resumableKeys.contains { $0.hasSuffix(".*") ? key.hasPrefix($0.dropLast()) : key == $0 }
    }

    /// The resolved configuration as YAML with each key's meaning and allowed values above it.
    public var commentedYAML: String {
        let docs = Dictionary(uniqueKeysWithValues: configKeyDocs.map { ($0.key, $0.doc) })
        var out = ""
        func walk(_ v: ConfigValue, _ path: String, _ indent: Int) {
            guard case .map(let m) = v else { return }
            let pad = String(repeating: " ", count: indent)
            for k in m.keys {
                let p = path.isEmpty ? k : path + "." + k
                let child = m[k]!
                if case .map = child {
                    out += "\(pad)\(k):\n"
                    walk(child, p, indent + 2)
                } else {
                    out += "\(pad)# \(docs[p] ?? "")\n\(pad)\(k): \(child.scalarYAML)\n"
                }
            }
        }
        walk(tree, "", 0)
        return out
    }

    /// Every leaf key of the configuration, in order, with its value as YAML.
    public var leaves: [(key: String, value: String)] {
        var out: [(String, String)] = []
        func walk(_ v: ConfigValue, _ path: String) {
            guard case .map(let m) = v else { out.append((path, v.scalarYAML)); return }
            for k in m.keys { walk(m[k]!, path.isEmpty ? k : path + "." + k) }
        }
        walk(tree, "")
        return out
    }
}
