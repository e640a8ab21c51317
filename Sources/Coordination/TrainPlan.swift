/// How a phase's chunks (the leaves of the reduction tree) go out as work
/// units, and how the units' results add up to the tree's sum.
///
/// The tree's sum is the same bits for every plan (docs/PROTOCOL.md): a unit
/// is either a block (every leaf of one node, whose result is that node's sum)
/// or a piece of one leaf (the leaf's first half summed, or one of its
/// remaining tasks), and the pieces of a leaf re-join in task order, which is
/// the leaf's sum bit for bit: a running sum starts from +0, and 0 + x = x.
public struct TrainPlan: Equatable, Sendable {
    /// A node of the partition and the units that make it, in task order
    /// (one unit for a block; a split leaf's pieces).
    public struct Part: Equatable, Sendable {
        public var node: Range<Int>
        public var units: [Int]
        public init(node: Range<Int>, units: [Int]) { self.node = node; self.units = units }
    }
    /// Leaves of the tree (chunks).
    public var leaves: Int
    /// Leaves of each unit (for a piece: its one run of tasks), in unit order.
    public var units: [[[Int]]]
    /// A partition of the tree into nodes, in leaf order.
    public var parts: [Part]
    /// Order in which units are handed out.
    public var dispatchOrder: [Int]

    public init(leaves: Int, units: [[[Int]]], parts: [Part], dispatchOrder: [Int]) {
        self.leaves = leaves; self.units = units; self.parts = parts; self.dispatchOrder = dispatchOrder
    }

    /// Every chunk a part of its own, the last `split` chunks in dispatch order
    /// (the cheapest) cut into pieces: its first half, then each remaining task,
    /// so that a phase with several processes ends on single tasks, not on whole
    /// chunks. Whole chunks go out costliest first, then the pieces.
    public static func split(_ chunks: [[Int]], split: Int, cost: ([Int]) -> Int) -> TrainPlan {
        let byCost = costliestFirst(chunks.map(cost))
        let splitSet = Set(byCost.suffix(max(0, min(split, chunks.count - 1))).filter { chunks[$0].count > 1 })
        var units: [[[Int]]] = [], parts: [Part] = []
        for (c, chunk) in chunks.enumerated() {
            var pieces = [chunk]
            if splitSet.contains(c) {
                let head = chunk.count / 2
                pieces = [Array(chunk[..<head])] + chunk[head...].map { [$0] }
            }
            parts.append(Part(node: c..<(c + 1), units: Array(units.count..<(units.count + pieces.count))))
            units += pieces.map { [$0] }
        }
        let order = byCost.filter { !splitSet.contains($0) }.map { parts[$0].units[0] }
        let pieceIndices = splitSet.sorted().flatMap { parts[$0].units }
        let pieceOrder = costliestFirst(pieceIndices.map { cost(units[$0][0]) }).map { pieceIndices[$0] }
        return TrainPlan(leaves: chunks.count, units: units, parts: parts, dispatchOrder: order + pieceOrder)
    }

    /// Indices sorted by cost, costliest first (ties in index order).
    public static func costliestFirst(_ cost: [Int]) -> [Int] {
        cost.indices.sorted { cost[$0] != cost[$1] ? cost[$0] > cost[$1] : $0 < $1 }
    }
}
