/// The coordinator's reduce: unit gradient sums added IN A FIXED ORDER, so the
/// bits depend neither on which worker computed a unit nor on when it arrived.

/// out[i] = ((s₀[i] + s₁[i]) + s₂[i]) + … for every i (the sources in the given
/// order), and returns Σ out[i]² accumulated exactly as `BLAS.sumSquares(out, n)`
/// would (the same bits), in the same pass. Sources are float32 runs that may be
/// unaligned (views into received frames); there must be at least one.
///
/// One pass in cache-sized blocks: each block of `out` is written once and read
/// back from L1 for the next source and the squares, instead of a sweep over the
/// whole 1.5 MB buffer per source.
public func sumInOrder(_ sources: [UnsafeRawPointer], count n: Int, into out: UnsafeMutablePointer<Float>) -> Double {
    precondition(!sources.isEmpty, "nothing to reduce")
    let block = 2048 // a multiple of 8 (and of sumSquares' 4 lanes)
    var acc = SIMD4<Double>()
    var start = 0
    while start < n {
        let len = min(block, n - start)
        let o = out + start
        UnsafeMutableRawPointer(o).copyMemory(from: sources[0] + 4 * start, byteCount: 4 * len)
        for s in sources.dropFirst() {
            let p = s + 4 * start
            var i = 0
            while i + 8 <= len {
                let x = UnsafeRawPointer(o + i).loadUnaligned(as: SIMD8<Float>.self)
                let y = p.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
                UnsafeMutableRawPointer(o + i).storeBytes(of: x + y, as: SIMD8<Float>.self)
                i += 8
            }
            while i < len { o[i] += p.loadUnaligned(fromByteOffset: 4 * i, as: Float.self); i += 1 }
        }
        blockSquares(o, len, into: &acc)
        start += len
    }
    return finishSquares(acc, tail: UnsafePointer(out + (n - n % 4)), n % 4)
}

/// Adds the squares of `o[0..<len]`'s whole groups of 4 to `acc`, in
/// `BLAS.sumSquares`' order (4 interleaved lanes); blocks MUST start at
/// multiples of 4 from the vector's start, and only the last may be short.
@inline(__always)
func blockSquares(_ o: UnsafePointer<Float>, _ len: Int, into acc: inout SIMD4<Double>) {
    var i = 0
    while i + 4 <= len {
        let v = SIMD4<Double>(Double(o[i]), Double(o[i + 1]), Double(o[i + 2]), Double(o[i + 3]))
        acc += v * v
        i += 4
    }
}

/// `BLAS.sumSquares`' total: the lanes, then the last `count` (< 4) elements at `tail`.
@inline(__always)
func finishSquares(_ acc: SIMD4<Double>, tail: UnsafePointer<Float>, _ count: Int) -> Double {
    var s = (acc[0] + acc[1]) + (acc[2] + acc[3])
    for i in 0..<count { let v = Double(tail[i]); s += v * v }
    return s
}

/// The fixed binary tree over a phase's leaves 0..<n (a meta-iteration's
/// chunks, in chunk order) that the meta-gradient is summed over. A node
/// [lo, hi) of more than one leaf has the children [lo, m) and [m, hi) with
/// m = lo + the largest power of two below hi − lo, so every aligned block of
/// 2^k leaves is a node, and its sum is (left sum) + (right sum) element by
/// element. Whoever holds every leaf of a node may hand in the node's sum
/// (computed by `treeSum` over that node) instead of its leaves: the total is
/// the same bits for every such partition, whoever computed or pre-reduced what.
public struct ReductionTree: Equatable, Sendable {
    public let leaves: Int
    public init(leaves: Int) { precondition(leaves >= 1); self.leaves = leaves }
    public var root: Range<Int> { 0..<leaves }

    /// Where node `r` (more than one leaf) splits.
    public static func split(_ r: Range<Int>) -> Int {
        precondition(r.count > 1, "a leaf has no children")
        var p = 1
        while p * 2 < r.count { p *= 2 }
        return r.lowerBound + p
    }

    public static func children(_ r: Range<Int>) -> (Range<Int>, Range<Int>) {
        let m = split(r)
        return (r.lowerBound..<m, m..<r.upperBound)
    }

    /// Whether `r` is a node of this tree.
    public func isNode(_ r: Range<Int>) -> Bool {
        var node = root
        while node != r {
            guard node.count > 1 else { return false }
            let (a, b) = ReductionTree.children(node)
            if a.lowerBound <= r.lowerBound && r.upperBound <= a.upperBound {
                node = a
            } else if b.lowerBound <= r.lowerBound && r.upperBound <= b.upperBound {
                node = b
            } else {
                return false
            }
        }
        return true
    }

    /// Whether `parts` (sorted by start) are nodes that cover the leaves exactly once.
    public func isPartition(_ parts: [Range<Int>]) -> Bool {
        var next = 0
        for p in parts {
            guard p.lowerBound == next, isNode(p) else { return false }
            next = p.upperBound
        }
        return next == leaves
    }

    /// Σ over a partition of the tree into nodes, in the tree's order (doubles: meta-losses).
    public func sum(_ parts: [(node: Range<Int>, value: Double)]) -> Double {
        precondition(isPartition(parts.map(\.node)), "not a partition of the tree into nodes")
        func eval(_ r: Range<Int>) -> Double {
            if let p = parts.first(where: { $0.node == r }) { return p.value }
            let (a, b) = ReductionTree.children(r)
            return eval(a) + eval(b)
        }
        return eval(root)
    }
}

/// out = the tree sum of `parts` (float32 runs, possibly unaligned, each the sum
/// of one node; together a partition of `tree` into nodes), over elements
/// `range` of every run, and returns Σ out[i]² over `range` accumulated as
/// `BLAS.sumSquares(out + range.lowerBound, range.count)` would. One pass in
/// cache-sized blocks: every part is read once and `out` written once; the
/// tree's inner sums of a block live in a few blocks of scratch.
public func treeSum(
    _ tree: ReductionTree, _ parts: [(node: Range<Int>, source: UnsafeRawPointer)],
    range: Range<Int>, into out: UnsafeMutablePointer<Float>
) -> Double {
    precondition(tree.isPartition(parts.map(\.node)), "not a partition of the tree into nodes")
    let block = 2048 // a multiple of 8 (and of sumSquares' 4 lanes)
    var depth = 0, r = tree.root
    while r.count > 1 { r = ReductionTree.children(r).0; depth += 1 } // the left spine is the deepest path
    let slots = 2 * depth + 1
    let scratch = UnsafeMutablePointer<Float>.allocate(capacity: slots * block)
    defer { scratch.deallocate() }
    var sourceOf: [Range<Int>: UnsafeRawPointer] = [:]
    for p in parts { sourceOf[p.node] = p.source }

    /// The node's sum over elements [start, start+len): a part's run, or written into scratch slot `slot`
    /// (left child in slot+1, right child in slot+2 and up, so neither overwrites the other).
    func eval(_ node: Range<Int>, _ start: Int, _ len: Int, slot: Int) -> UnsafeRawPointer {
        if let s = sourceOf[node] { return s + 4 * start }
        let (a, b) = ReductionTree.children(node)
        let x = eval(a, start, len, slot: slot + 1), y = eval(b, start, len, slot: slot + 2)
        let dst = scratch + slot * block
        add(x, y, into: dst, len)
        return UnsafeRawPointer(dst)
    }
    func add(_ x: UnsafeRawPointer, _ y: UnsafeRawPointer, into o: UnsafeMutablePointer<Float>, _ len: Int) {
        var i = 0
        while i + 8 <= len {
            let a = x.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
            let b = y.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
            UnsafeMutableRawPointer(o + i).storeBytes(of: a + b, as: SIMD8<Float>.self)
            i += 8
        }
        while i < len {
            o[i] =
                x.loadUnaligned(fromByteOffset: 4 * i, as: Float.self)
                + y.loadUnaligned(fromByteOffset: 4 * i, as: Float.self)
            i += 1
        }
    }

    var acc = SIMD4<Double>()
    var start = range.lowerBound
    while start < range.upperBound {
        let len = min(block, range.upperBound - start)
        let o = out + start
        if let s = sourceOf[tree.root] {
            UnsafeMutableRawPointer(o).copyMemory(from: s + 4 * start, byteCount: 4 * len)
        } else {
            let (a, b) = ReductionTree.children(tree.root)
            add(eval(a, start, len, slot: 1), eval(b, start, len, slot: 2), into: o, len)
        }
        blockSquares(o, len, into: &acc)
        start += len
    }
    return finishSquares(acc, tail: UnsafePointer(out + (range.upperBound - range.count % 4)), range.count % 4)
}
