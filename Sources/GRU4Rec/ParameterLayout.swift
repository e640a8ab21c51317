import Kernels

/// Model sizes. V counts items INCLUDING the padding index 0.
public struct ModelDims: Sendable, Hashable, Codable {
    public var V: Int, E: Int, H: Int
    public init(V: Int, E: Int, H: Int) { self.V = V; self.E = E; self.H = H }
}

/// The single (name, shape) table all parameter offsets derive from. Names are
/// the PyTorch state-dict keys of `embedding`, `gru` and `fc`, so checkpoints
/// load into the reference module without renaming. Gradients, Adam moments and
/// Meta-SGD rates use this same layout.
public struct ParameterLayout: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public let name: String
        public let shape: [Int]
        public let offset: Int
        public var count: Int { shape.reduce(1, *) }
        public var range: Range<Int> { offset..<(offset + count) }
    }

    public let dims: ModelDims
    public let entries: [Entry]
    public let count: Int

    public init(_ d: ModelDims) {
        let table: [(String, [Int])] = [
            ("embedding.weight", [d.V, d.E]),
            ("gru.weight_ih_l0", [3 * d.H, d.E]),
            ("gru.weight_hh_l0", [3 * d.H, d.H]),
            ("gru.bias_ih_l0", [3 * d.H]),
            ("gru.bias_hh_l0", [3 * d.H]),
            ("fc.weight", [d.V, d.H]),
            ("fc.bias", [d.V])
        ]
        var off = 0
        var es: [Entry] = []
        for (name, shape) in table {
            let e = Entry(name: name, shape: shape, offset: off)
            es.append(e)
            off += e.count
        }
        dims = d; entries = es; count = off
    }

    public subscript(name: String) -> Entry {
        guard let e = entries.first(where: { $0.name == name }) else { preconditionFailure("no parameter \(name)") }
        return e
    }

    /// Named views into one flat buffer of this layout.
    public func views(_ b: FloatBuffer) -> ParameterViews {
        precondition(b.count == count, "buffer of \(b.count) floats does not match layout of \(count)")
        let p = b.ptr
        return ParameterViews(
            embedding: p + entries[0].offset, Wih: p + entries[1].offset, Whh: p + entries[2].offset,
            bih: p + entries[3].offset, bhh: p + entries[4].offset,
            Wfc: p + entries[5].offset, bfc: p + entries[6].offset)
    }
}

/// Pointers to each named tensor of a flat buffer (parameters or gradients).
public struct ParameterViews {
    /// [V, E], row 0 is padding
    public let embedding: UnsafeMutablePointer<Float>
    /// [3H, E], gate blocks r, z, n
    public let Wih: UnsafeMutablePointer<Float>
    /// [3H, H]
    public let Whh: UnsafeMutablePointer<Float>
    /// [3H]
    public let bih: UnsafeMutablePointer<Float>
    /// [3H]
    public let bhh: UnsafeMutablePointer<Float>
    /// [V, H]
    public let Wfc: UnsafeMutablePointer<Float>
    /// [V]
    public let bfc: UnsafeMutablePointer<Float>
}
