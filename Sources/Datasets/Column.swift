/// One of a dataset's arrays. Built in memory (by prepare, or a test), or a
/// read-only view of elements that lie elsewhere, e.g. a dataset file mapped
/// into memory (`DatasetFile.read`): then every process on a host reads the
/// same pages of the page cache instead of holding a copy of its own. A
/// mapped column is never written through; changing one copies it first.
public struct Column<Element: BitwiseCopyable & Equatable>: RandomAccessCollection, MutableCollection,
    RangeReplaceableCollection, ExpressibleByArrayLiteral, Equatable, @unchecked Sendable
{
    public typealias Index = Int
    public typealias Indices = Range<Int>
    public typealias SubSequence = Slice<Column<Element>>

    /// The elements, when in memory (empty when `view` is set).
    private var array: [Element]
    /// Where the elements lie when they are not in memory, and what keeps them there.
    private var view: UnsafeBufferPointer<Element>?
    private var owner: AnyObject?

    public init() { array = [] }
    public init(_ elements: [Element]) { array = elements }
    public init(arrayLiteral elements: Element...) { array = elements }
    public init<S: Sequence>(_ elements: S) where S.Element == Element { array = Array(elements) }

    /// A column of elements that lie elsewhere (read-only), valid while `owner` lives.
    public init(viewing elements: UnsafeBufferPointer<Element>, owner: AnyObject) {
        array = []; view = elements; self.owner = owner
    }

    /// Whether the elements lie elsewhere (a mapped file) rather than in this process's heap.
    public var isView: Bool { view != nil }

    public var startIndex: Int { 0 }
    public var endIndex: Int { view?.count ?? array.count }
    @inline(__always) public func index(after i: Int) -> Int { i + 1 }
    @inline(__always) public func index(before i: Int) -> Int { i - 1 }

    @inline(__always) public subscript(i: Int) -> Element {
        get {
            if let view {
                precondition(i >= 0 && i < view.count, "index \(i) out of range 0..<\(view.count)")
                return view[i]
            }
            return array[i]
        }
        set {
            own()
            array[i] = newValue
        }
    }

    public subscript(bounds: Range<Int>) -> Slice<Column<Element>> {
        get {
            precondition(bounds.lowerBound >= 0 && bounds.upperBound <= count, "range \(bounds) out of 0..<\(count)")
            return Slice(base: self, bounds: bounds)
        }
        set {
            replaceSubrange(bounds, with: Array(newValue))
        }
    }

    /// Makes the elements this column's own (a view is copied into memory once).
    private mutating func own() {
        if let v = view {
            array = Array(v)
            view = nil; owner = nil
        }
    }

    public mutating func replaceSubrange<C: Collection>(_ r: Range<Int>, with elements: C)
    where C.Element == Element {
        own()
        array.replaceSubrange(r, with: elements)
    }

    public mutating func reserveCapacity(_ n: Int) {
        own()
        array.reserveCapacity(n)
    }

    public mutating func append(_ x: Element) {
        own()
        array.append(x)
    }

    public mutating func append<S: Sequence>(contentsOf s: S) where S.Element == Element {
        own()
        array.append(contentsOf: s)
    }

    /// The elements as one contiguous buffer (no copy).
    public func withUnsafeBufferPointer<R>(_ body: (UnsafeBufferPointer<Element>) throws -> R) rethrows -> R {
        if let view { return try body(view) }
        return try array.withUnsafeBufferPointer(body)
    }

    public static func == (a: Column, b: Column) -> Bool {
        a.count == b.count
            && a.withUnsafeBufferPointer { x in b.withUnsafeBufferPointer { y in x.elementsEqual(y) } }
    }
}
