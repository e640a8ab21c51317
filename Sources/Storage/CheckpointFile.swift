import Core
import GRU4Rec
import Kernels

/// A checkpoint (docs/FORMATS.md, "Checkpoint"): model weights under /model/<state-dict key>, Adam
/// moments under /optimizer/{m,v}/<key>, Meta-SGD rates under /meta_sgd/alpha/<key>,
/// curves under /history/<name>; all float32, row-major, one dataset per named
/// view of the flat parameter layout.
public struct Checkpoint {
    public enum Kind: String, Sendable { case pretrain, meta }

    public var dims: ModelDims
    public var params: FloatBuffer
    public var adamM: FloatBuffer?
    public var adamV: FloatBuffer?
    public var metaSGDAlpha: FloatBuffer?
    /// Adam moments of the Meta-SGD rates (/meta_sgd/optimizer/{m,v}/<key>), for exact resume.
    public var alphaAdamM: FloatBuffer?
    public var alphaAdamV: FloatBuffer?
    /// Training curves, in insertion order.
    public var history: [(name: String, values: [Float])]
    public var iteration: Int
    public var adamStep: Int
    public var seed: UInt64
    public var configJSON: String
    public var datasetFingerprint: String
    public var kind: Kind
    public var algorithm: String
    /// What using the model needs without its dataset (version 2): the course vocabulary
    /// (`/vocab/item_ids`, index 0 is padding) and how often each course is a label among
    /// training pairs (`/vocab/item_counts`, popularity for a learner with no known course);
    /// the prepare settings that made the dataset; the adaptation policy a new learner gets.
    public var itemIds: [String]?
    public var itemCounts: [Int64]?
    public var prepareJSON: String?
    public var adaptationJSON: String?

    public init(
        dims: ModelDims, params: FloatBuffer, adamM: FloatBuffer? = nil, adamV: FloatBuffer? = nil,
        metaSGDAlpha: FloatBuffer? = nil, history: [(name: String, values: [Float])] = [],
        iteration: Int, adamStep: Int, seed: UInt64, configJSON: String, datasetFingerprint: String,
        kind: Kind, algorithm: String
    ) {
        self.dims = dims; self.params = params; self.adamM = adamM; self.adamV = adamV
        self.metaSGDAlpha = metaSGDAlpha; self.history = history; self.iteration = iteration
        self.adamStep = adamStep; self.seed = seed; self.configJSON = configJSON
        self.datasetFingerprint = datasetFingerprint; self.kind = kind; self.algorithm = algorithm
    }

    public var layout: ParameterLayout { ParameterLayout(dims) }
}

public enum CheckpointFile {
    public static let format = "metatrain-checkpoint"
    public static let version: Int64 = 2
    /// Versions read: 1 (no vocabulary: `--data` gives it) and 2.
    public static let readable: [Int64] = [1, 2]

    /// Writes atomically (temporary name, then rename).
    public static func write(_ c: Checkpoint, to path: String) throws {
        let layout = c.layout
        try writeAtomically(to: path) { tmp in
            try HDF5File.write(tmp) { f in
                try f.setAttribute("format", format)
                try f.setAttribute("version", version)
                try f.setAttribute("iteration", Int64(c.iteration))
                try f.setAttribute("adam_step", Int64(c.adamStep))
                try f.setAttribute("seed", Int64(bitPattern: c.seed))
                try f.setAttribute("config", c.configJSON)
                try f.setAttribute("dataset_fingerprint", c.datasetFingerprint)
                try f.setAttribute("kind", c.kind.rawValue)
                try f.setAttribute("algorithm", c.algorithm)
                if let p = c.prepareJSON { try f.setAttribute("prepare", p) }
                if let a = c.adaptationJSON { try f.setAttribute("adaptation", a) }
                if let ids = c.itemIds, let counts = c.itemCounts {
                    precondition(ids.count == c.dims.V && counts.count == c.dims.V)
                    try f.writeStrings("vocab/item_ids", ids)
                    try f.write("vocab/item_counts", counts)
                }
                func views(_ group: String, _ b: FloatBuffer) throws {
                    precondition(b.count == layout.count)
                    for e in layout.entries {
                        try f.write(
                            "\(group)/\(e.name)", UnsafeBufferPointer(start: b.ptr + e.offset, count: e.count),
                            shape: e.shape)
                    }
                }
                try views("model", c.params)
                if let m = c.adamM, let v = c.adamV {
                    try views("optimizer/m", m)
                    try views("optimizer/v", v)
                }
                if let a = c.metaSGDAlpha { try views("meta_sgd/alpha", a) }
                if let m = c.alphaAdamM, let v = c.alphaAdamV {
                    try views("meta_sgd/optimizer/m", m)
                    try views("meta_sgd/optimizer/v", v)
                }
                try f.createGroups("history")
                for h in c.history { try f.write("history/\(h.name)", h.values) }
                try f.setAttribute("tensors_sha256", tensorsChecksum(c))
            }
        }
    }

    /// The SHA-256 of a checkpoint's tensors: each dataset's path and then its
    /// float32 bytes, the parameter views in layout order, the curves by name.
    static func tensorsChecksum(_ c: Checkpoint) -> String {
        var sum = SHA256()
        func views(_ group: String, _ b: FloatBuffer) {
            for e in c.layout.entries {
                sum.update(string: "\(group)/\(e.name)")
                sum.update(UnsafeRawBufferPointer(UnsafeBufferPointer(start: b.ptr + e.offset, count: e.count)))
            }
        }
        views("model", c.params)
        if let m = c.adamM, let v = c.adamV { views("optimizer/m", m); views("optimizer/v", v) }
        if let a = c.metaSGDAlpha { views("meta_sgd/alpha", a) }
        if let m = c.alphaAdamM, let v = c.alphaAdamV {
            views("meta_sgd/optimizer/m", m); views("meta_sgd/optimizer/v", v)
        }
        for h in c.history.sorted(by: { $0.name < $1.name }) {
            sum.update(string: "history/\(h.name)"); sum.update(array: h.values)
        }
        return sum.finalizeHex()
    }

    /// Reads a checkpoint, checking format, version and shapes; if
    /// `expectedFingerprint` is given, the dataset fingerprint must match.
    public static func read(_ path: String, expectedFingerprint: String? = nil) throws -> Checkpoint {
        let f = try HDF5File.open(path)
        guard f.hasAttribute("format"), try f.stringAttribute("format") == format else {
            throw MetatrainError("\(path): not a metatrain checkpoint (format attribute is not '\(format)')")
        }
        let v = try f.intAttribute("version")
        guard readable.contains(v) else {
            throw MetatrainError(
                "\(path): checkpoint version \(v) is not supported (this metatrain reads versions \(readable.map(String.init).joined(separator: " and ")))"
            )
        }
        let fp = try f.stringAttribute("dataset_fingerprint")
        if let expectedFingerprint, fp != expectedFingerprint {
            throw MetatrainError(
                "\(path): checkpoint was trained on dataset \(fp.prefix(12))…, not on this dataset (\(expectedFingerprint.prefix(12))…)"
            )
        }
        let emb = try f.shape("model/embedding.weight")
        let whh = try f.shape("model/gru.weight_hh_l0")
        guard emb.count == 2, whh.count == 2, whh[0] == 3 * whh[1] else {
            throw MetatrainError("\(path): model/embedding.weight or model/gru.weight_hh_l0 has an unexpected shape")
        }
        let dims = ModelDims(V: emb[0], E: emb[1], H: whh[1])
        let layout = ParameterLayout(dims)
        func views(_ group: String) throws -> FloatBuffer {
            let b = FloatBuffer(count: layout.count)
            for e in layout.entries { try f.read("\(group)/\(e.name)", into: b.ptr + e.offset, shape: e.shape) }
            return b
        }
        let params = try views("model")
        var m: FloatBuffer?, vv: FloatBuffer?, alpha: FloatBuffer?
        if f.exists("optimizer/m") { m = try views("optimizer/m"); vv = try views("optimizer/v") }
        if f.exists("meta_sgd/alpha") { alpha = try views("meta_sgd/alpha") }
        var am: FloatBuffer?, av: FloatBuffer?
        if f.exists("meta_sgd/optimizer/m") {
            am = try views("meta_sgd/optimizer/m"); av = try views("meta_sgd/optimizer/v")
        }
        var history: [(name: String, values: [Float])] = []
        if f.exists("history") {
            for n in try f.children("history") {
                history.append((n, try f.read("history/\(n)", as: Float.self).values))
            }
        }
        guard let kind = Checkpoint.Kind(rawValue: try f.stringAttribute("kind")) else {
            throw MetatrainError("\(path): unknown checkpoint kind")
        }
        var c = Checkpoint(
            dims: dims, params: params, adamM: m, adamV: vv, metaSGDAlpha: alpha, history: history,
            iteration: Int(try f.intAttribute("iteration")), adamStep: Int(try f.intAttribute("adam_step")),
            seed: UInt64(bitPattern: try f.intAttribute("seed")), configJSON: try f.stringAttribute("config"),
            datasetFingerprint: fp, kind: kind, algorithm: try f.stringAttribute("algorithm"))
        c.alphaAdamM = am; c.alphaAdamV = av
        if f.exists("vocab/item_ids") {
            let ids = try f.readStrings("vocab/item_ids")
            let counts = try f.read("vocab/item_counts", as: Int64.self, shape: [dims.V]).values
            guard ids.count == dims.V else {
                throw MetatrainError("\(path): vocab/item_ids has \(ids.count) entries, the model has V = \(dims.V)")
            }
            c.itemIds = ids; c.itemCounts = counts
        }
        if f.hasAttribute("prepare") { c.prepareJSON = try f.stringAttribute("prepare") }
        if f.hasAttribute("adaptation") { c.adaptationJSON = try f.stringAttribute("adaptation") }
        // Every tensor as it was written (files from before the checksum have none to check).
        if f.hasAttribute("tensors_sha256") {
            let stored = try f.stringAttribute("tensors_sha256")
            guard tensorsChecksum(c) == stored else {
                throw MetatrainError("\(path): its tensors do not match their checksum (the file is damaged)")
            }
        }
        return c
    }
}
