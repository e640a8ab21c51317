/// A fixed-size, heap-allocated, zero-initialised Float buffer with a stable
/// address, so layers can take raw pointers without exclusivity gymnastics.
/// Parameters, gradients, Adam moments and Meta-SGD rates are all FloatBuffers
/// of the same layout.
public final class FloatBuffer: @unchecked Sendable {
    public let count: Int
    public let ptr: UnsafeMutablePointer<Float>

    public init(count: Int) {
        self.count = count
        ptr = .allocate(capacity: max(count, 1))
        ptr.initialize(repeating: 0, count: max(count, 1))
    }

    public convenience init(_ values: [Float]) {
        self.init(count: values.count)
        values.withUnsafeBufferPointer { ptr.update(from: $0.baseAddress!, count: values.count) }
    }

    deinit { ptr.deallocate() }

    public subscript(i: Int) -> Float {
        get { ptr[i] }
        set { ptr[i] = newValue }
    }

    public func zero() { ptr.update(repeating: 0, count: count) }
    public func copy() -> FloatBuffer {
        let b = FloatBuffer(count: count)
        b.ptr.update(from: ptr, count: count)
        return b
    }
    public func assign(from other: FloatBuffer) {
        precondition(other.count == count)
        ptr.update(from: other.ptr, count: count)
    }
    public var array: [Float] { Array(UnsafeBufferPointer(start: ptr, count: count)) }
    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: ptr, count: count) }

    /// Grows (never shrinks) a workspace buffer; contents are not preserved.
    public static func ensure(_ b: inout FloatBuffer, _ n: Int) {
        if b.count < n { b = FloatBuffer(count: n) }
    }
}
