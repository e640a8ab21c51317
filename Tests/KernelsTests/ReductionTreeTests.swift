import XCTest

@testable import Kernels

/// The fixed reduction tree: its shape, and that a sum over it is the same bits
/// for every way of handing it in (leaves, or any nodes pre-reduced by whoever
/// held all their leaves), over any split of the vector into ranges.
final class ReductionTreeTests: XCTestCase {
    func testShape() {
        XCTAssertTrue(ReductionTree.children(0..<8) == (0..<4, 4..<8))
        XCTAssertTrue(ReductionTree.children(0..<6) == (0..<4, 4..<6))
        XCTAssertTrue(ReductionTree.children(0..<5) == (0..<4, 4..<5))
        XCTAssertTrue(ReductionTree.children(4..<7) == (4..<6, 6..<7))
        let t = ReductionTree(leaves: 6)
        for r in [0..<6, 0..<4, 4..<6, 0..<2, 2..<4, 3..<4, 5..<6] { XCTAssertTrue(t.isNode(r), "\(r)") }
        for r in [1..<3, 3..<5, 0..<3, 2..<6, 0..<5, 4..<4, 0..<7] { XCTAssertFalse(t.isNode(r), "\(r)") }
        XCTAssertTrue(t.isPartition([0..<4, 4..<5, 5..<6]))
        XCTAssertFalse(t.isPartition([0..<4, 5..<6]), "a gap")
        XCTAssertFalse(t.isPartition([0..<2, 2..<3, 3..<6]), "3..<6 is no node")
        // Aligned power-of-two blocks are nodes, whatever the number of leaves.
        for n in 1...40 {
            let tree = ReductionTree(leaves: n)
            for size in [1, 2, 4, 8, 16] {
                for lo in stride(from: 0, to: n, by: size) where lo + size <= n {
                    XCTAssertTrue(tree.isNode(lo..<(lo + size)), "\(lo)..<\(lo + size) of \(n)")
                }
            }
        }
    }

    /// Every partition of `node` into nodes of the tree.
    func partitions(_ node: Range<Int>) -> [[Range<Int>]] {
        guard node.count > 1 else { return [[node]] }
        let (a, b) = ReductionTree.children(node)
        var out: [[Range<Int>]] = [[node]]
        for x in partitions(a) { for y in partitions(b) { out.append(x + y) } }
        return out
    }

    /// The tree sum element by element, as plainly as it can be written.
    func reference(_ leaves: [[Float]], _ node: Range<Int>, _ i: Int) -> Float {
        if node.count == 1 { return leaves[node.lowerBound][i] }
        let (a, b) = ReductionTree.children(node)
        return reference(leaves, a, i) + reference(leaves, b, i)
    }

    func testSumsAreTheSameBitsForEveryPartitionAndMatchTheReference() {
        var rng = SystemRandomNumberGenerator()
        let count = 5_003 // not a multiple of the block size or of 8
        for n in [1, 2, 3, 5, 6, 8, 13] {
            let tree = ReductionTree(leaves: n)
            // Magnitudes spread widely, so that a different order of additions changes bits.
            let leaves = (0..<n).map { _ in
                (0..<count).map { _ in
                    Float.random(in: -1...1, using: &rng) * Float(1 << Int.random(in: 0...20, using: &rng))
                }
            }
            let expected = (0..<count).map { reference(leaves, tree.root, $0) }
            var all = partitions(tree.root)
            if all.count > 40 { all = Array(all.prefix(20)) + Array(all.suffix(20)) }
            for parts in all {
                // Each part as whoever held its leaves would hand it in: the tree sum over that node.
                let sums: [[Float]] = parts.map { node in
                    var s = [Float](repeating: 0, count: count)
                    let sub = ReductionTree(leaves: node.count)
                    let srcs = (0..<node.count).map { k in leaves[node.lowerBound + k] }
                    withPointers(srcs) { ptrs in
                        s.withUnsafeMutableBufferPointer { o in
                            _ = treeSum(
                                sub, ptrs.enumerated().map { ($0..<($0 + 1), $1) }, range: 0..<count,
                                into: o.baseAddress!)
                        }
                    }
                    return s
                }
                var out = [Float](repeating: .nan, count: count)
                var squares = 0.0
                withPointers(sums) { ptrs in
                    out.withUnsafeMutableBufferPointer { o in
                        // Two threads' halves, as the coordinator does, summed apart.
                        let mid = count / 2 / 8 * 8
                        squares =
                            treeSum(
                                tree, Array(zip(parts, ptrs)).map { ($0.0, $0.1) }, range: 0..<mid, into: o.baseAddress!
                            )
                            + treeSum(
                                tree, Array(zip(parts, ptrs)).map { ($0.0, $0.1) }, range: mid..<count,
                                into: o.baseAddress!)
                    }
                }
                XCTAssertEqual(out.map(\.bitPattern), expected.map(\.bitPattern), "\(n) leaves as \(parts)")
                let mid = count / 2 / 8 * 8
                let want = out.withUnsafeBufferPointer {
                    BLAS.sumSquares($0.baseAddress!, mid) + BLAS.sumSquares($0.baseAddress! + mid, count - mid)
                }
                XCTAssertEqual(squares.bitPattern, want.bitPattern)
            }
        }
    }

    /// Not a left fold: with three leaves or more the tree is a different order of additions.
    func testTheTreeIsNotTheChunkOrderFold() {
        let leaves: [[Float]] = [[1e8], [1], [-1e8], [1]]
        XCTAssertEqual(reference(leaves, 0..<4, 0), 0) // (1e8 + 1) + (-1e8 + 1) = 1e8 + -1e8
        XCTAssertEqual(((leaves[0][0] + leaves[1][0]) + leaves[2][0]) + leaves[3][0], 1)
    }

    func testDoublesFollowTheSameTree() {
        let tree = ReductionTree(leaves: 3)
        XCTAssertEqual(tree.sum([(0..<1, 1e17), (1..<2, 1), (2..<3, -1e17)]), (1e17 + 1) + -1e17)
        XCTAssertEqual(tree.sum([(0..<2, 1e17 + 1), (2..<3, -1e17)]), (1e17 + 1) + -1e17)
    }

    func withPointers(_ arrays: [[Float]], _ body: ([UnsafeRawPointer]) -> Void) {
        func go(_ i: Int, _ acc: [UnsafeRawPointer]) {
            if i == arrays.count { body(acc); return }
            arrays[i].withUnsafeBytes { go(i + 1, acc + [$0.baseAddress!]) }
        }
        go(0, [])
    }
}
