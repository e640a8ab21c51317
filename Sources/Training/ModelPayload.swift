import Datasets
import ExperimentConfig
import GRU4Rec

/// How many floats a run's weights and gradients carry: θ (the model's parameters) and, for
/// Meta-SGD, α (one learned inner rate per parameter; none otherwise). The one place these
/// sizes are derived: the trainer and a worker's computer allocate from it, the coordinator
/// checks results against it, and links size their frames from it.
public struct ModelPayload: Equatable, Sendable {
    public let theta: Int, alpha: Int
    /// θ and α together: what one weights message or one result carries.
    public var floats: Int { theta + alpha }

    public init(config: Config, items: Int) {
        let dims = ModelDims(V: items, E: config.model.embeddingDim, H: config.model.hiddenDim)
        theta = ParameterLayout(dims).count
        alpha = config.maml.algorithm == .metasgd ? theta : 0
    }
}
