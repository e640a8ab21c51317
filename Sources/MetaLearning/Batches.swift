import Datasets
import GRU4Rec

extension PackedBatch {
    /// Packs dataset pairs (prefix → label) with the given weights (default 1).
    public mutating func pack(pairs: some Collection<Int64>, of d: Dataset, weights: [Float]? = nil) {
        let ps = Array(pairs)
        pack(
            count: ps.count,
            length: { d.prefixLength(Int(ps[$0])) },
            item: { i, t in d.prefixItems[Int(d.prefixOffsets[Int(ps[i])]) + t] },
            label: { d.label[Int(ps[$0])] },
            weight: { weights?[$0] ?? 1 })
    }

    public init(pairs: some Collection<Int64>, of d: Dataset, weights: [Float]? = nil) {
        self.init()
        pack(pairs: pairs, of: d, weights: weights)
    }
}
