import Datasets
import ExperimentConfig

#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// Inner-loss weights of a support set: uniform, recency (over support
/// positions oldest → newest), the pair's session reliability, or recency ×
/// reliability. Losses always combine as Σwℓ/Σw, so only ratios matter.
public struct SupportWeighting: Sendable, Equatable {
    public var scheme: Config.Scheme
    public var recencyKind: Config.RecencyKind
    public var lambda: Double
    public var temperature: Double

    public init(
        scheme: Config.Scheme = .uniform, recencyKind: Config.RecencyKind = .exponential,
        lambda: Double = 0.5, temperature: Double = 1
    ) {
        self.scheme = scheme; self.recencyKind = recencyKind; self.lambda = lambda; self.temperature = temperature
    }

    public init(_ w: Config.Weighting) {
        self.init(scheme: w.scheme, recencyKind: w.recencyKind, lambda: w.recencyLambda, temperature: w.temperature)
    }

    /// Recency weight of position i of n (0 = oldest):
    /// exponential e^(−λ·(n−1−i)); linear (i+1)/n; softmax e^(i/τ) / Σ_j e^(j/τ).
    public func recency(_ i: Int, of n: Int) -> Double {
        switch recencyKind {
        case .exponential: return exp(-lambda * Double(n - 1 - i))
        case .linear: return Double(i + 1) / Double(n)
        case .softmax:
            let z = (0..<n).reduce(0.0) { $0 + exp((Double($1) - Double(n - 1)) / temperature) }
            return exp((Double(i) - Double(n - 1)) / temperature) / z
        }
    }

    /// Weights of the given support pairs (chronological).
    public func weights(_ pairs: some Collection<Int64>, in d: Dataset) -> [Float] {
        let n = pairs.count
        return pairs.enumerated().map { i, p in
            let rel = Double(d.reliability[Int(p)])
            switch scheme {
            case .uniform: return 1
            case .recency: return Float(recency(i, of: n))
            case .reliability: return Float(rel)
            case .recencyReliability: return Float(recency(i, of: n) * rel)
            }
        }
    }
}
