import Kernels

/// A batch of (prefix → label, weight) examples packed for the GRU: examples
/// sorted by prefix length (longest first, ties by input position); an example
/// whose prefix is a prefix of a longer example's shares that example's chain
/// (an episode's consecutive pairs all do), so the GRU runs once per chain.
/// Built once per batch and reusable: packing again keeps capacity.
public struct PackedBatch: Sendable {
    public private(set) var layout = PackedLayout()
    /// Item index per packed row. [N]
    public private(set) var tokens: [Int32] = []
    /// Label per sorted example. [examples]
    public private(set) var labels: [Int32] = []
    /// Loss weight per sorted example. [examples]
    public private(set) var weights: [Float] = []
    /// Caller's index of each sorted example. [examples]
    public private(set) var order: [Int] = []
    private var chainItems: [[Int32]] = []

    public init() {}

    /// Packs `count` examples: example i has prefix length `length(i)` (≥ 1),
    /// items `item(i, 0..<length)`, oldest first, `label(i)` and `weight(i)`.
    public mutating func pack(
        count: Int, length: (Int) -> Int, item: (Int, Int) -> Int32,
        label: (Int) -> Int32, weight: (Int) -> Float
    ) {
        order.removeAll(keepingCapacity: true)
        order.append(contentsOf: 0..<count)
        // Stable sort by length, descending (ties keep input order).
        let lens = (0..<count).map(length)
        order.sort { lens[$0] != lens[$1] ? lens[$0] > lens[$1] : $0 < $1 }
        // Chains: each example joins the first existing chain it is a prefix of.
        chainItems.removeAll(keepingCapacity: true)
        var byFirst: [Int32: [Int]] = [:]
        var readouts: [(chain: Int, length: Int)] = []
        readouts.reserveCapacity(count)
        for i in order {
            let l = lens[i]
            precondition(l >= 1, "empty prefix in batch")
            let first = item(i, 0)
            var chain = -1
            for c in byFirst[first] ?? [] where chainItems[c].count >= l {
                var same = true
                for t in 1..<l where chainItems[c][t] != item(i, t) { same = false; break }
                if same { chain = c; break }
            }
            if chain < 0 {
                chain = chainItems.count
                chainItems.append((0..<l).map { item(i, $0) })
                byFirst[first, default: []].append(chain)
            }
            readouts.append((chain, l))
        }
        layout.reset(sortedLengths: chainItems.map(\.count), readouts: readouts)
        tokens.removeAll(keepingCapacity: true)
        tokens.reserveCapacity(layout.N)
        for t in 0..<layout.T {
            for b in 0..<layout.batchSizes[t] { tokens.append(chainItems[b][t]) }
        }
        labels.removeAll(keepingCapacity: true)
        weights.removeAll(keepingCapacity: true)
        for i in order { labels.append(label(i)); weights.append(weight(i)) }
    }

    /// Convenience for tests and small callers.
    public init(prefixes: [[Int32]], labels: [Int32], weights: [Float]? = nil) {
        pack(
            count: prefixes.count, length: { prefixes[$0].count }, item: { prefixes[$0][$1] },
            label: { labels[$0] }, weight: { weights?[$0] ?? 1 })
    }

    /// Number of examples.
    public var count: Int { layout.examples }
}
