import Foundation
import Kernels
import XCTest

@testable import GRU4Rec

/// Compares against values produced by an independent implementation
/// (tools/make_gru_fixture.py: numpy forward pass, autograd derivatives).
final class ReferenceTests: XCTestCase {
    struct Fixture: Decodable {
        struct Dims: Decodable { let V: Int, E: Int, H: Int }
        let dims: Dims
        let prefixes: [[Int32]], labels: [Int32], weights: [Float]
        let params: [String: [Double]]
        let loss: Double
        let grads: [String: [Double]]
    }

    func testLossAndGradientsMatchIndependentImplementation() throws {
        let url = Bundle.module.url(forResource: "gru4rec_reference", withExtension: "json", subdirectory: "Fixtures")!
        let f = try JSONDecoder().decode(Fixture.self, from: Data(contentsOf: url))
        let model = GRU4Rec(dims: ModelDims(V: f.dims.V, E: f.dims.E, H: f.dims.H))
        let params = FloatBuffer(count: model.parameterCount)
        for e in model.layout.entries {
            let v = try XCTUnwrap(f.params[e.name], e.name)
            XCTAssertEqual(v.count, e.count, e.name)
            for (i, x) in v.enumerated() { params[e.offset + i] = Float(x) }
        }
        let batch = PackedBatch(prefixes: f.prefixes, labels: f.labels, weights: f.weights)
        let grads = FloatBuffer(count: model.parameterCount)
        let loss = model.lossAndGradient(params, grads, batch)
        XCTAssertEqual(Double(loss), f.loss, accuracy: 1e-5)
        for e in model.layout.entries {
            let ref = try XCTUnwrap(f.grads[e.name])
            for (i, g) in ref.enumerated() {
                XCTAssertEqual(Double(grads[e.offset + i]), g, accuracy: 1e-5 + 1e-4 * abs(g), "\(e.name)[\(i)]")
            }
        }
    }
}
