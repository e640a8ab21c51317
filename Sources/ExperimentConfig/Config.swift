import Foundation

/// A resolved experiment configuration: defaults, then the YAML file, then
/// `--set` overrides, type-checked against the defaults and validated.
public struct Config: Equatable, Sendable {
    public enum Split: String, Sendable, CaseIterable { case byFirstActivity = "by_first_activity", random }
    public enum Algorithm: String, Sendable, CaseIterable { case fomaml, maml, metasgd }
    public enum Scheme: String, Sendable, CaseIterable {
        case uniform, recency, reliability
        case recencyReliability = "recency_reliability"
    }
    public enum RecencyKind: String, Sendable, CaseIterable { case exponential, linear, softmax }

    public struct Data: Equatable, Sendable {
        public var maxSeqLen: Int, kSupport: Int, qQuery: Int, sessionGapS: Int, minItemCount: Int
        public var valFraction: Double, testFraction: Double, trainStride: Int, split: Split
        public var eventsCap: Double, durationCapS: Double
    }
    public struct Model: Equatable, Sendable { public var embeddingDim: Int, hiddenDim: Int, dropout: Double }
    public struct Pretrain: Equatable, Sendable { public var epochs: Int, batchSize: Int, lr: Double, patience: Int }
    public struct MAML: Equatable, Sendable {
        public var algorithm: Algorithm, secondOrder: Bool, innerLR: Double, innerLRBounds: (Double, Double)
        public var outerLR: Double, innerSteps: Int, metaBatchSize: Int, iterations: Int
        public var residualLambda: Double, clipNorm: Double, chunkSize: Int
        public static func == (a: MAML, b: MAML) -> Bool {
            a.algorithm == b.algorithm && a.secondOrder == b.secondOrder && a.innerLR == b.innerLR
                && a.innerLRBounds == b.innerLRBounds && a.outerLR == b.outerLR && a.innerSteps == b.innerSteps
                && a.metaBatchSize == b.metaBatchSize && a.iterations == b.iterations
                && a.residualLambda == b.residualLambda && a.clipNorm == b.clipNorm && a.chunkSize == b.chunkSize
        }
    }
    public struct Weighting: Equatable, Sendable {
        public var scheme: Scheme, recencyKind: RecencyKind, recencyLambda: Double, temperature: Double
    }
    public struct WarmStart: Equatable, Sendable {
        public var checkpoint: String?
        public var freezeEmbeddings: Bool
    }
    public struct Eval: Equatable, Sendable {
        public var every: Int, patience: Int, valEpisodes: Int, bootstrapSamples: Int
        /// Negatives each query is also ranked against (0: none), for sampled metrics beside full ranking.
        public var sampledNegatives: Int
    }
    public struct Checkpoint: Equatable, Sendable { public var every: Int, keep: Int }
    /// Liveness between coordinator and workers: a heartbeat every `heartbeatS`
    /// seconds; a peer that misses `liveness` of them in a row is presumed gone.
    public struct Cluster: Equatable, Sendable {
        public var heartbeatS: Double, liveness: Int
        /// Seconds of silence after which a peer is presumed gone.
        public var silenceS: Double { heartbeatS * Double(liveness) }
    }

    public var seed: UInt64
    public var data: Data
    public var model: Model
    public var pretrain: Pretrain
    public var maml: MAML
    public var weighting: Weighting
    public var warmStart: WarmStart
    public var eval: Eval
    public var checkpoint: Checkpoint
    public var cluster: Cluster

    /// The resolved tree (all keys), for saving as YAML or JSON.
    public let tree: ConfigValue

    /// Defaults only.
    public static func defaults() -> Config {
        try! Config.load(path: nil, overrides: [])
    }

    /// Loads `path` (if given) over the defaults, then applies `key.path=value` overrides.
    public static func load(path: String?, overrides: [String]) throws -> Config {
        var tree = try YAMLReader.parse(defaultConfigYAML, origin: "defaults")
        if let path {
            let text: String
            do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
                throw ConfigError("\(path): cannot read config file")
            }
            let user = try YAMLReader.parse(text, origin: path)
            try merge(&tree, user, origin: path, path: "")
        }
        for o in overrides { try applyOverride(&tree, o) }
        return try Config(tree: tree)
    }

    /// Parses a config from resolved text (e.g. the JSON stored in a checkpoint).
    public static func parse(_ text: String, origin: String) throws -> Config {
        var tree = try YAMLReader.parse(defaultConfigYAML, origin: "defaults")
        try merge(&tree, try YAMLReader.parse(text, origin: origin), origin: origin, path: "")
        return try Config(tree: tree)
    }

    /// Returns a copy with more `key.path=value` overrides applied.
    public func with(_ overrides: [String]) throws -> Config {
        var t = tree
        for o in overrides { try Config.applyOverride(&t, o) }
        return try Config(tree: t)
    }

    public var yaml: String { tree.yaml() }
    public var json: String { tree.json }

    /// How a new learner is adapted to (the inner loop the model was trained with): the
    /// algorithm, inner steps and rate (Meta-SGD's learned rates live beside the weights), and
    /// the support weighting, as JSON.
    public var adaptationJSON: String {
        var w = "null"
        if case .map(let m) = tree, let x = m["weighting"] { w = x.json }
        return "{\"algorithm\":" + jsonString(maml.algorithm.rawValue) + ",\"inner_steps\":\(maml.innerSteps),"
            + "\"inner_lr\":" + ConfigValue.double(maml.innerLR).json + ",\"weighting\":" + w + "}"
    }

    /// What `prepare` records in a dataset and a checkpoint carries (docs/FORMATS.md): the `data`
    /// section, and with an action column the log's count of distinct actions (a session's
    /// composition is its distinct actions over this count), as `{"data": {…}, "actions": N}`.
    public func prepareSettingsJSON(actions: Int?) -> String {
        let d = dataSectionJSON
        guard let actions, d.hasSuffix("}") else { return d }
        return String(d.dropLast()) + ",\"actions\":\(actions)}"
    }

    /// Reads `prepareSettingsJSON`'s text: the data section over the defaults, and the action count.
    public static func prepareSettings(_ text: String, origin: String) throws -> (config: Config, actions: Int?) {
        var tree = try YAMLReader.parse(defaultConfigYAML, origin: "defaults")
        var given = try YAMLReader.parse(text, origin: origin)
        var actions: Int?
        if case .map(var m) = given {
            if let a = m["actions"] {
                guard case .int(let n) = a, n >= 0 else { throw ConfigError("\(origin): actions: not a count") }
                actions = n; m["actions"] = nil; given = .map(m)
            }
        }
        try merge(&tree, given, origin: origin, path: "")
        return (try Config(tree: tree), actions)
    }

    /// The `data` section alone as JSON: what `prepare` used to turn events into pairs and episodes.
    public var dataSectionJSON: String {
        if case .map(let m) = tree, let d = m["data"] { return "{" + "\"data\":" + d.json + "}" }
        return ""
    }

    static func applyOverride(_ tree: inout ConfigValue, _ o: String) throws {
        guard let eq = o.firstIndex(of: "="), eq != o.startIndex else {
            throw ConfigError("--set \(o): expected key.path=value")
        }
        let key = String(o[..<eq]), raw = String(o[o.index(after: eq)...])
        let value = try YAMLReader.parse(raw.isEmpty ? "null" : raw, origin: "--set \(key)")
        var patch: ConfigValue = value
        for part in key.split(separator: ".", omittingEmptySubsequences: false).reversed() {
            guard !part.isEmpty else { throw ConfigError("--set \(o): empty key component") }
            var m = ConfigMap(); m[String(part)] = patch; patch = .map(m)
        }
        try merge(&tree, patch, origin: "--set", path: "")
    }

    /// The key among `keys` nearest to `key` (edit distance, ignoring case and `_`), if any is near.
    static func nearest(_ key: String, in keys: [String]) -> String? {
        func plain(_ s: String) -> [Character] { Array(s.lowercased().filter { $0 != "_" && $0 != "-" }) }
        func distance(_ a: [Character], _ b: [Character]) -> Int {
            guard !a.isEmpty, !b.isEmpty else { return max(a.count, b.count) }
            var row = Array(0...b.count)
            for i in 1...a.count {
                var prev = row[0]
                row[0] = i
                for j in 1...b.count {
                    let cur = row[j]
                    row[j] = min(row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] == b[j - 1] ? 0 : 1))
                    prev = cur
                }
            }
            return row[b.count]
        }
        let k = plain(key)
        let best = keys.map { ($0, distance(k, plain($0))) }.min { $0.1 != $1.1 ? $0.1 < $1.1 : $0.0 < $1.0 }
        guard let (name, d) = best, d <= max(2, k.count / 3) else { return nil }
        return name
    }

    /// Merges `user` into `base`: every user key must exist in base and have a compatible type.
    /// Every leaf key's full path (`maml.iterations`, ...) under `v`.
    static func leafPaths(_ v: ConfigValue, _ prefix: String = "") -> [String] {
        guard case .map(let m) = v else { return [prefix] }
        return m.keys.flatMap { leafPaths(m[$0]!, prefix.isEmpty ? $0 : prefix + "." + $0) }
    }

    /// The hint for an unknown key `k` under `path`: the nearest key at that level, or else a
    /// key of that name (or nearly) in another section (`iterations` → `maml.iterations`).
    static func hint(for k: String, at path: String, siblings: [String], root: ConfigValue) -> String {
        if let near = nearest(k, in: siblings) { return "; did you mean '\(path.isEmpty ? near : path + "." + near)'?" }
        let leaves = leafPaths(root)
        let named = leaves.filter { $0.split(separator: ".").last.map(String.init) == k }
        if named.count == 1 { return "; did you mean '\(named[0])'?" }
        if named.count > 1 { return "; did you mean one of " + named.map { "'\($0)'" }.joined(separator: ", ") + "?" }
        let byName = Dictionary(grouping: leaves) { String($0.split(separator: ".").last ?? "") }
        if let near = nearest(k, in: Array(byName.keys)), let full = byName[near], full.count == 1 {
            return "; did you mean '\(full[0])'?"
        }
        return ""
    }

    static func merge(
        _ base: inout ConfigValue, _ user: ConfigValue, origin: String, path: String, root: ConfigValue? = nil
    ) throws {
        let root = root ?? base
        switch (base, user) {
        case (.map(var bm), .map(let um)):
            for k in um.keys {
                let p = path.isEmpty ? k : "\(path).\(k)"
                guard var bv = bm[k] else {
                    throw ConfigError(
                        "\(origin): unknown key '\(p)'" + hint(for: k, at: path, siblings: bm.keys, root: root))
                }
                try merge(&bv, um[k]!, origin: origin, path: p, root: root)
                bm[k] = bv
            }
            base = .map(bm)
        case (.map, _):
            throw ConfigError("\(origin): '\(path)' must be a mapping, got \(user.kind)")
        case (_, .map):
            throw ConfigError("\(origin): '\(path)' must be \(base.kind), got a mapping")
        case (.int, .int), (.bool, .bool), (.string, .string), (.double, .double), (.list, .list):
            base = user
        case (.double, .int(let i)):
            base = .double(Double(i))
        case (.null, .string), (.null, .null), (.string, .null):
            base = user
        default:
            throw ConfigError("\(origin): '\(path)' must be \(base.kind), got \(user.kind)")
        }
    }

    init(tree: ConfigValue) throws {
        self.tree = tree
        let r = Reader(tree)
        let seedValue = try r.int("seed")
        guard seedValue >= 0 else { throw ConfigError("config: 'seed' must be ≥ 0") }
        seed = UInt64(seedValue)
        data = Data(
            maxSeqLen: try r.int("data.max_seq_len", min: 1, max: 10_000),
            kSupport: try r.int("data.k_support", min: 1, max: 10_000),
            qQuery: try r.int("data.q_query", min: 1, max: 10_000),
            sessionGapS: try r.int("data.session_gap_s", min: 0, max: 1 << 40),
            minItemCount: try r.int("data.min_item_count", min: 1, max: 1 << 40),
            valFraction: try r.double("data.val_fraction", in: 0...1),
            testFraction: try r.double("data.test_fraction", in: 0...1),
            trainStride: try r.int("data.train_stride", min: 1, max: 1 << 30), split: try r.choice("data.split"),
            eventsCap: try r.double("data.reliability.events_cap", in: 1e-9...1e12),
            durationCapS: try r.double("data.reliability.duration_cap_s", in: 1e-9...1e12))
        guard data.valFraction + data.testFraction < 1 else {
            throw ConfigError("config: data.val_fraction + data.test_fraction must be below 1")
        }
        model = Model(
            embeddingDim: try r.int("model.embedding_dim", min: 1, max: 8192),
            hiddenDim: try r.int("model.hidden_dim", min: 1, max: 8192),
            dropout: try r.double("model.dropout", in: 0...0.99))
        pretrain = Pretrain(
            epochs: try r.int("pretrain.epochs", min: 1, max: 1_000_000),
            batchSize: try r.int("pretrain.batch_size", min: 1, max: 1 << 20),
            lr: try r.double("pretrain.lr", in: 0...100),
            patience: try r.int("pretrain.patience", min: 1, max: 1_000_000))
        let bounds = try r.doubles("maml.inner_lr_bounds")
        guard bounds.count == 2, bounds[0] <= bounds[1], bounds[0] >= 0, bounds[1] <= 100 else {
            throw ConfigError("config: 'maml.inner_lr_bounds' must be [low, high] with 0 ≤ low ≤ high ≤ 100")
        }
        maml = MAML(
            algorithm: try r.choice("maml.algorithm"), secondOrder: try r.bool("maml.second_order"),
            innerLR: try r.double("maml.inner_lr", in: 0...100), innerLRBounds: (bounds[0], bounds[1]),
            outerLR: try r.double("maml.outer_lr", in: 0...100),
            innerSteps: try r.int("maml.inner_steps", min: 0, max: 10_000),
            metaBatchSize: try r.int("maml.meta_batch_size", min: 1, max: 1 << 20),
            iterations: try r.int("maml.iterations", min: 0, max: 1 << 40),
            residualLambda: try r.double("maml.residual_lambda", in: 0...1),
            clipNorm: try r.double("maml.clip_norm", in: 0...1e12),
            chunkSize: try r.int("maml.chunk_size", min: 1, max: 1 << 20))
        weighting = Weighting(
            scheme: try r.choice("weighting.scheme"), recencyKind: try r.choice("weighting.recency.kind"),
            recencyLambda: try r.double("weighting.recency.lambda", in: 0...1e6),
            temperature: try r.double("weighting.recency.temperature", in: 1e-9...1e6))
        warmStart = WarmStart(
            checkpoint: try r.optionalString("warm_start.checkpoint"),
            freezeEmbeddings: try r.bool("warm_start.freeze_embeddings"))
        eval = Eval(
            every: try r.int("eval.every", min: 1, max: 1 << 40),
            patience: try r.int("eval.patience", min: 1, max: 1 << 40),
            valEpisodes: try r.int("eval.val_episodes", min: 0, max: 1 << 40),
            bootstrapSamples: try r.int("eval.bootstrap_samples", min: 1, max: 1_000_000),
            sampledNegatives: try r.int("eval.sampled_negatives", min: 0, max: 1_000_000))
        checkpoint = Checkpoint(
            every: try r.int("checkpoint.every", min: 1, max: 1 << 40),
            keep: try r.int("checkpoint.keep", min: 1, max: 1_000_000))
        cluster = Cluster(
            heartbeatS: try r.double("cluster.heartbeat_s", in: 0.05...60),
            liveness: try r.int("cluster.liveness", min: 1, max: 1000))
    }

    public static func == (a: Config, b: Config) -> Bool { a.tree == b.tree }
}

/// Typed access to the resolved tree by key path.
struct Reader {
    let root: ConfigValue
    init(_ r: ConfigValue) { root = r }

    func value(_ path: String) throws -> ConfigValue {
        var cur = root
        for part in path.split(separator: ".") {
            guard case .map(let m) = cur, let v = m[String(part)] else {
                throw ConfigError("config: missing key '\(path)'")
            }
            cur = v
        }
        return cur
    }
    func int(_ p: String, min: Int? = nil, max: Int? = nil) throws -> Int {
        guard case .int(let i) = try value(p) else { throw ConfigError("config: '\(p)' must be an integer") }
        if let min, i < min { throw ConfigError("config: '\(p)' must be ≥ \(min), got \(i)") }
        if let max, i > max { throw ConfigError("config: '\(p)' must be ≤ \(max), got \(i)") }
        return i
    }
    func double(_ p: String, in range: ClosedRange<Double>) throws -> Double {
        let d: Double
        switch try value(p) {
        case .double(let x): d = x
        case .int(let i): d = Double(i)
        default: throw ConfigError("config: '\(p)' must be a number")
        }
        guard d.isFinite else { throw ConfigError("config: '\(p)' must be a finite number, got \(d)") }
        guard range.contains(d) else { throw ConfigError("config: '\(p)' = \(d) is out of range \(range)") }
        return d
    }
    func doubles(_ p: String) throws -> [Double] {
        guard case .list(let l) = try value(p) else { throw ConfigError("config: '\(p)' must be a list") }
        return try l.map {
            switch $0 {
            case .double(let d) where d.isFinite: return d
            case .int(let i): return Double(i)
            default: throw ConfigError("config: '\(p)' must hold finite numbers")
            }
        }
    }
    func bool(_ p: String) throws -> Bool {
        guard case .bool(let b) = try value(p) else { throw ConfigError("config: '\(p)' must be true or false") }
        return b
    }
    func optionalString(_ p: String) throws -> String? {
        switch try value(p) {
        case .null: return nil
        case .string(let s): return s
        default: throw ConfigError("config: '\(p)' must be a string or null")
        }
    }
    func choice<T: RawRepresentable & CaseIterable>(_ p: String) throws -> T where T.RawValue == String {
        let allowed = T.allCases.map { "'\($0.rawValue)'" }.joined(separator: ", ")
        guard case .string(let s) = try value(p) else { throw ConfigError("config: '\(p)' must be one of \(allowed)") }
        guard let v = T(rawValue: s) else {
            throw ConfigError("config: '\(p)' has unknown value '\(s)'; allowed: \(allowed)")
        }
        return v
    }
}
