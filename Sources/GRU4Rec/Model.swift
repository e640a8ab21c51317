import Core
import Kernels

/// GRU4Rec: embedding → one-layer GRU → linear over items. The representation
/// of a prefix is the hidden state after its last item; logits = fc(h). Item 0
/// is padding and never predicted.
///
/// A model instance owns its workspace (sized on first use, grown only when a
/// bigger batch arrives), so it is not shared between threads: each worker
/// process has its own.
public final class GRU4Rec: @unchecked Sendable {
    public let dims: ModelDims
    public let layout: ParameterLayout

    // Workspace (grown on demand, never per step).
    private var x = FloatBuffer(count: 0) // [N,E] embedded inputs
    private var gates = FloatBuffer(count: 0) // [N,3H]
    private var hn = FloatBuffer(count: 0) // [N,H]
    private var hprev = FloatBuffer(count: 0) // [N,H]
    private var hout = FloatBuffer(count: 0) // [N,H]
    private var ghStep = FloatBuffer(count: 0) // [B,3H]
    private var hlast = FloatBuffer(count: 0) // [B,H] final hidden (after dropout)
    private var mask = FloatBuffer(count: 0) // [B,H] dropout mask
    private var logitsBuf = FloatBuffer(count: 0) // [B,V], becomes probs then dlogits
    private var dlast = FloatBuffer(count: 0) // [B,H]
    private var dh = FloatBuffer(count: 0) // [B,H]
    private var dGi = FloatBuffer(count: 0) // [N,3H]
    private var dGh = FloatBuffer(count: 0) // [N,3H]
    private var dx = FloatBuffer(count: 0) // [N,E]
    private var usesDropout = false

    public init(dims: ModelDims) {
        self.dims = dims
        layout = ParameterLayout(dims)
    }

    public var parameterCount: Int { layout.count }

    /// PyTorch's default initialisation, drawn from `rng`: embedding N(0,1) with
    /// the padding row zeroed; GRU and fc uniform(−1/√fan, 1/√fan) with fan = H.
    public func initialParameters(rng: inout SeededGenerator) -> FloatBuffer {
        let p = FloatBuffer(count: layout.count)
        for e in layout.entries {
            let base = p.ptr + e.offset
            switch e.name {
            case "embedding.weight":
                for i in 0..<e.count { base[i] = Float(rng.normal()) }
                for j in 0..<dims.E { base[j] = 0 }
            default:
                let bound = 1 / Float(dims.H).squareRoot()
                for i in 0..<e.count { base[i] = (rng.uniformFloat() * 2 - 1) * bound }
            }
        }
        return p
    }

    private func reserve(N: Int, B: Int) {
        let E = dims.E, H = dims.H, V = dims.V
        FloatBuffer.ensure(&x, N * E)
        FloatBuffer.ensure(&gates, N * 3 * H)
        FloatBuffer.ensure(&hn, N * H)
        FloatBuffer.ensure(&hprev, N * H)
        FloatBuffer.ensure(&hout, N * H)
        FloatBuffer.ensure(&ghStep, B * 3 * H)
        FloatBuffer.ensure(&hlast, B * H)
        FloatBuffer.ensure(&mask, B * H)
        FloatBuffer.ensure(&logitsBuf, B * V)
        FloatBuffer.ensure(&dlast, B * H)
        FloatBuffer.ensure(&dh, B * H)
        FloatBuffer.ensure(&dGi, N * 3 * H)
        FloatBuffer.ensure(&dGh, N * 3 * H)
        FloatBuffer.ensure(&dx, N * E)
    }

    private var cache: GRUCache { GRUCache(gates: gates.ptr, hn: hn.ptr, hprev: hprev.ptr, hout: hout.ptr) }

    /// Forward to logits. Returns a pointer to logits [B,V] in the batch's sorted order,
    /// valid until the next call on this model.
    @discardableResult
    public func forward(
        _ params: FloatBuffer, _ batch: PackedBatch, dropout: Float = 0,
        rng: UnsafeMutablePointer<SeededGenerator>? = nil
    ) -> UnsafeMutablePointer<Float> {
        let L = batch.layout, N = L.N, B = L.examples, E = dims.E, H = dims.H, V = dims.V
        reserve(N: N, B: max(B, L.B))
        let w = layout.views(params)
        batch.tokens.withUnsafeBufferPointer { embeddingForward(x.ptr, $0.baseAddress!, w.embedding, N: N, E: E) }
        gruForward(cache, x.ptr, w.Wih, w.Whh, w.bih, w.bhh, ghStep.ptr, layout: L, E: E, H: H)
        for b in 0..<B { (hlast.ptr + b * H).update(from: hout.ptr + L.readoutRow[b] * H, count: H) }
        usesDropout = dropout > 0 && rng != nil
        if usesDropout, let rng {
            let keep = 1 / (1 - dropout)
            for i in 0..<(B * H) { mask.ptr[i] = rng.pointee.uniformFloat() < dropout ? 0 : keep }
            dropoutForward(hlast.ptr, mask.ptr, count: B * H)
        }
        linearForward(logitsBuf.ptr, hlast.ptr, w.Wfc, w.bfc, N: B, I: H, O: V)
        return logitsBuf.ptr
    }

    /// Weighted cross-entropy Σwℓ/Σw of the batch and its gradient, ACCUMULATED
    /// into `grads` (same layout as params). Returns the loss.
    @discardableResult
    public func lossAndGradient(
        _ params: FloatBuffer, _ grads: FloatBuffer, _ batch: PackedBatch,
        dropout: Float = 0, rng: UnsafeMutablePointer<SeededGenerator>? = nil
    ) -> Float {
        let L = batch.layout, N = L.N, B = L.examples, E = dims.E, H = dims.H, V = dims.V
        forward(params, batch, dropout: dropout, rng: rng)
        let loss = batch.labels.withUnsafeBufferPointer { lab in
            batch.weights.withUnsafeBufferPointer { wt in
                crossEntropyForward(logitsBuf.ptr, nil, logitsBuf.ptr, lab.baseAddress!, wt.baseAddress!, B: B, V: V)
            }
        }
        // Backward: the logits buffer now holds probabilities; turn it into dlogits in place.
        batch.labels.withUnsafeBufferPointer { lab in
            batch.weights.withUnsafeBufferPointer { wt in
                crossEntropyBackward(logitsBuf.ptr, lab.baseAddress!, wt.baseAddress!, B: B, V: V)
            }
        }
        let w = layout.views(params), g = layout.views(grads)
        dlast.ptr.update(repeating: 0, count: B * H)
        linearBackward(dlast.ptr, g.Wfc, g.bfc, logitsBuf.ptr, hlast.ptr, w.Wfc, N: B, I: H, O: V)
        if usesDropout { dropoutBackward(dlast.ptr, mask.ptr, count: B * H) }
        dx.ptr.update(repeating: 0, count: N * E)
        gruBackward(
            dx.ptr, g.Wih, g.Whh, g.bih, g.bhh, dlast.ptr, cache, x.ptr, w.Wih, w.Whh,
            dh.ptr, dGi.ptr, dGh.ptr, layout: L, E: E, H: H)
        batch.tokens.withUnsafeBufferPointer { embeddingBackward(g.embedding, dx.ptr, $0.baseAddress!, N: N, E: E) }
        return loss
    }

    /// Weighted loss only (no gradient), e.g. for validation and finite differences.
    public func loss(_ params: FloatBuffer, _ batch: PackedBatch) -> Float {
        let B = batch.layout.examples, V = dims.V
        forward(params, batch)
        return batch.labels.withUnsafeBufferPointer { lab in
            batch.weights.withUnsafeBufferPointer { wt in
                crossEntropyForward(logitsBuf.ptr, nil, logitsBuf.ptr, lab.baseAddress!, wt.baseAddress!, B: B, V: V)
            }
        }
    }

    /// FLOPs of one forward+backward over a layout (multiply-adds count 2), for benchmarks.
    public func flops(_ L: PackedLayout) -> Double {
        let N = Double(L.N), B = Double(L.examples), E = Double(dims.E), H = Double(dims.H), V = Double(dims.V)
        let nRec = Double(L.N - (L.T > 0 ? L.batchSizes[0] : 0))
        let fwd = 2 * N * E * 3 * H + 2 * nRec * H * 3 * H + 2 * B * H * V
        let bwd = 2 * (2 * N * E * 3 * H) + 2 * (2 * nRec * H * 3 * H) + 2 * (2 * B * H * V)
        return fwd + bwd
    }
}
