/// The messages of the coordinator–worker protocol (docs/PROTOCOL.md). The
/// transport moves them as single ZeroMQ frames; nothing here knows sockets.

/// A store outside the frames where the sender's link may leave payloads (a
/// worker's in its hello, for results; the coordinator's in its welcome, for
/// weights), for the other end's link to open if it can. Today's links make it
/// a shared-memory file: a peer that can open `path` and finds `token` at its
/// start is on the same machine. The state machines never read it.
public struct PayloadStore: Equatable, Sendable {
    public var path: String
    /// The file's first 16 bytes, as 32 hex digits.
    public var token: String
    public init(path: String, token: String) { self.path = path; self.token = token }
}

/// What a worker computes on: bit-identity across hosts holds only where
/// every worker runs the same kernels (OpenBLAS picks them by CPU type).
public struct Hardware: Equatable, Sendable, CustomStringConvertible {
    /// The CPU's model name (/proc/cpuinfo).
    public var cpuModel: String
    /// OpenBLAS's kernel family, e.g. "Haswell".
    public var blasCore: String
    public init(cpuModel: String, blasCore: String) { self.cpuModel = cpuModel; self.blasCore = blasCore }
    public static let unknown = Hardware(cpuModel: "", blasCore: "")
    public var description: String {
        "OpenBLAS \(blasCore.isEmpty ? "?" : blasCore) on \(cpuModel.isEmpty ? "an unknown CPU" : cpuModel)"
    }
}

/// A worker introduces itself. It MUST send this first, on its DEALER socket.
public struct Hello: Equatable, Sendable {
    public var workerName: String
    /// SHA-256 fingerprint of the dataset file the worker opened itself.
    public var datasetFingerprint: String
    public var hardware: Hardware
    /// Compute processes behind this connection: 1 for a plain worker, N for a
    /// host agent (`worker --procs N`). The coordinator sizes blocks and the
    /// units a connection may hold by it.
    public var procs: Int
    /// Set by the worker's link, not its protocol logic.
    public var store: PayloadStore?
    /// The most processes a hello may claim.
    public static let maxProcs = 4096
    public init(
        workerName: String, datasetFingerprint: String, hardware: Hardware = .unknown, procs: Int = 1,
        store: PayloadStore? = nil
    ) {
        self.workerName = workerName; self.datasetFingerprint = datasetFingerprint; self.hardware = hardware
        self.procs = procs; self.store = store
    }
}

/// The coordinator accepts a worker and tells it what to run.
public struct Welcome: Equatable, Sendable {
    /// The resolved configuration as JSON: every worker computes with exactly it.
    public var configJSON: String
    /// The weights version currently published.
    public var version: Int
    /// Set when the coordinator opened the worker's store (train results may
    /// leave their payload there): the coordinator's own, where weight broadcasts
    /// may leave theirs. Set by the coordinator's link.
    public var store: PayloadStore?
    public init(configJSON: String, version: Int, store: PayloadStore? = nil) {
        self.configJSON = configJSON; self.version = version; self.store = store
    }
}

/// A payload that is not in the frame: where it lies in the sender's store
/// (`PayloadStore`), θ's (or Σ∇θ's) floats at `offset`, α's (or Σ∇α's) right
/// after them. The receiving link resolves it before anything else sees the message.
public struct PayloadRef: Equatable, Sendable {
    public var offset: Int
    public var thetaCount: Int
    public var alphaCount: Int
    public init(offset: Int, thetaCount: Int, alphaCount: Int) {
        self.offset = offset; self.thetaCount = thetaCount; self.alphaCount = alphaCount
    }
    public var byteCount: Int { 4 * (thetaCount + alphaCount) }
}

/// What a work unit asks for.
public enum UnitKind: UInt8, Sendable { case train = 0, eval = 1 }

/// Work computed on the weights of `version`. A train unit is a block: the
/// leaves (chunks) of one node of the reduction tree, or a piece of one chunk;
/// its result is the node's sum over the tree (docs/PROTOCOL.md). An eval unit
/// has one leaf of val episodes.
public struct WorkUnit: Equatable, Sendable {
    public var id: Int
    public var kind: UnitKind
    public var version: Int
    /// Episode indices of each leaf, in leaf order: train episodes for `train`, val episodes for `eval`.
    public var leaves: [[Int]]
    public init(id: Int, kind: UnitKind, version: Int, leaves: [[Int]]) {
        self.id = id; self.kind = kind; self.version = version; self.leaves = leaves
    }
    /// A unit of one leaf.
    public init(id: Int, kind: UnitKind, version: Int, episodes: [Int]) {
        self.init(id: id, kind: kind, version: version, leaves: [episodes])
    }
    /// Every episode of the unit, in leaf order.
    public var episodes: [Int] { leaves.count == 1 ? leaves[0] : leaves.flatMap { $0 } }
}

/// A train unit's result: the SUM over its tasks (in unit order) of the task gradients and meta-losses.
public struct TrainResult: Equatable, Sendable {
    public var unitId: Int
    public var version: Int
    public var gradTheta: Floats
    /// Meta-SGD only (empty otherwise).
    public var gradAlpha: Floats
    public var lossSum: Double
    public var tasks: Int
    /// Set when the gradients are not in the message but in the sender's store
    /// (`gradTheta` and `gradAlpha` are then empty until the receiving link fills them in).
    public var ref: PayloadRef?
    public init(
        unitId: Int, version: Int, gradTheta: Floats, gradAlpha: Floats, lossSum: Double, tasks: Int,
        ref: PayloadRef? = nil
    ) {
        self.unitId = unitId; self.version = version; self.gradTheta = gradTheta; self.gradAlpha = gradAlpha
        self.lossSum = lossSum; self.tasks = tasks; self.ref = ref
    }
}

/// An eval unit's result: per-episode metric sums after few-shot adaptation.
public struct EvalResult: Equatable, Sendable {
    public var unitId: Int
    public var version: Int
    /// Per episode, 6 metric sums (acc@1, hr@5, hr@10, ndcg@5, ndcg@10, mrr).
    public var sums: [Double]
    /// Query count per episode.
    public var queries: [Int]
    /// Adapted query loss per episode.
    public var losses: [Double]
    public init(unitId: Int, version: Int, sums: [Double], queries: [Int], losses: [Double]) {
        self.unitId = unitId; self.version = version; self.sums = sums; self.queries = queries; self.losses = losses
    }
}

/// Published weights. θ (and Meta-SGD's α) in the flat parameter layout.
public struct Weights: Equatable, Sendable {
    public var version: Int
    public var theta: Floats
    /// Meta-SGD's rates (empty otherwise).
    public var alpha: Floats
    /// Set when θ and α are not in the message but in the coordinator's store
    /// (they are empty until the receiving link fills them in).
    public var ref: PayloadRef?
    public init(version: Int, theta: Floats, alpha: Floats, ref: PayloadRef? = nil) {
        self.version = version; self.theta = theta; self.alpha = alpha; self.ref = ref
    }
}

/// Why a coordinator refused a worker, as a code on the wire, so the worker
/// acts on the reason without reading the text.
public enum RefusalReason: UInt8, Equatable, Sendable, CaseIterable {
    /// A message from a worker the coordinator has no record of (it never said
    /// hello, or was dropped): the worker says hello again.
    case unknownWorker = 1
    /// The worker speaks another protocol version: it MUST exit.
    case protocolVersion = 2
    /// The worker's dataset is not the coordinator's: it MUST exit.
    case datasetFingerprint = 3

    /// How logs say it.
    public var text: String {
        switch self {
        case .unknownWorker: return "unknown worker"
        case .protocolVersion: return "protocol version mismatch"
        case .datasetFingerprint: return "dataset fingerprint mismatch"
        }
    }
}

public enum Message: Equatable, Sendable {
    /// worker → coordinator, first message.
    case hello(Hello)
    /// coordinator → worker.
    case welcome(Welcome)
    /// coordinator → worker: not accepted. For `unknownWorker` the worker says hello again;
    /// for any other reason it MUST exit. `detail` is for people.
    case refuse(RefusalReason, detail: String)
    /// worker → coordinator: idle, send a unit.
    case ready
    /// coordinator → worker.
    case work(WorkUnit)
    /// worker → coordinator.
    case trainResult(TrainResult)
    /// worker → coordinator.
    case evalResult(EvalResult)
    /// worker → coordinator: send the current weights (missed a broadcast, or joined late).
    case fetchWeights
    /// coordinator → one worker (reply to fetch) or all (PUB).
    case weights(Weights)
    /// worker → coordinator: still alive.
    case heartbeat
    /// coordinator → workers: the run is over; exit.
    case shutdown(reason: String)
    /// worker → coordinator: this worker is going (an error, an interrupt); its units MUST be re-queued at once.
    case goodbye(reason: String)
    /// worker (a host agent) → coordinator: the unit crashed this worker's processes twice; it gives the
    /// unit back and MUST NOT be given it again. A unit that fails on two workers (or on every live one) stops the run.
    case unitFailed(unitId: Int, reason: String)

    /// The message's kind: its type code and name on the wire.
    public var kind: MessageKind {
        switch self {
        case .hello: return .hello
        case .welcome: return .welcome
        case .refuse: return .refuse
        case .ready: return .ready
        case .work: return .work
        case .trainResult: return .trainResult
        case .evalResult: return .evalResult
        case .fetchWeights: return .fetchWeights
        case .weights: return .weights
        case .heartbeat: return .heartbeat
        case .shutdown: return .shutdown
        case .goodbye: return .goodbye
        case .unitFailed: return .unitFailed
        }
    }

    public var typeName: String { kind.name }
}

/// Every message type, with its code in the frame header (docs/PROTOCOL.md); the one place the
/// codes are written. Code 6 is unused.
public enum MessageKind: UInt8, CaseIterable, Sendable {
    case hello = 1, welcome = 2, refuse = 3, ready = 4, work = 5, trainResult = 7, evalResult = 8
    case fetchWeights = 9, weights = 10, heartbeat = 11, shutdown = 12, goodbye = 13, unitFailed = 14

    /// The name logs and errors use.
    public var name: String {
        switch self {
        case .hello: return "hello"
        case .welcome: return "welcome"
        case .refuse: return "refuse"
        case .ready: return "ready"
        case .work: return "work"
        case .trainResult: return "train_result"
        case .evalResult: return "eval_result"
        case .fetchWeights: return "fetch_weights"
        case .weights: return "weights"
        case .heartbeat: return "heartbeat"
        case .shutdown: return "shutdown"
        case .goodbye: return "goodbye"
        case .unitFailed: return "unit_failed"
        }
    }
}
