// swift-tools-version:6.1
import PackageDescription

// Layout: C system libraries at the bottom, then math (Kernels, GRU4Rec),
// data and formats (Datasets, Storage), training and evaluation, using a trained
// model (Recommendation, Serving), messages (Wire), state machines (Coordination),
// bytes (Transport) and the links that join them (Link), the shells that run the
// machines (Runtime), studies, and the CLI on top. Imports point one way:
// metatrain -> the rest.
let package = Package(
    name: "metatrain",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "metatrain", targets: ["metatrain"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        // Hummingbird without its swift-configuration trait: that package's module is also
        // named Configuration.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.20.0", traits: []),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.9.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.1.0")
    ],
    targets: [
        // System libraries (module.modulemap + shim.h).
        // zmq.h lies in /usr/include and the module map links libzmq; libzmq's pkg-config
        // flags (-isystem for Kerberos, pgm and libxml2 headers zmq.h never includes) are
        // ones SwiftPM refuses with a warning on every build.
        .systemLibrary(name: "CZeroMQ", providers: [.apt(["libzmq3-dev"])]),
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CHDF5", pkgConfig: "hdf5", providers: [.apt(["libhdf5-dev"])]),
        // glibc calls the Glibc module leaves out: mallopt, memfd_create (header only).
        .systemLibrary(name: "CLinux"),

        // SHA-256 blocks with the x86 SHA instructions (C: Swift has no intrinsics for them).
        .target(name: "CSHA256"),
        // Deterministic generators, hashing, atomic files: no I/O policy.
        .target(name: "Core", dependencies: ["CSHA256"]),
        // Flat buffers, sgemm wrapper, layer forward/backward pairs, optimisers.
        .target(name: "Kernels", dependencies: ["COpenBLAS"]),
        // Parameter layout table, GRU4Rec forward/backward over packed batches.
        .target(name: "GRU4Rec", dependencies: ["Kernels", "Core"]),
        // YAML experiment configuration with defaults and overrides.
        .target(name: "ExperimentConfig", dependencies: ["Yams", "Core"]),
        // CSV ingest, sessions, pairs, episodes, synthetic generator.
        .target(name: "Datasets", dependencies: ["Core", "ExperimentConfig"]),
        // HDF5 dataset and checkpoint files, safetensors exports.
        .target(name: "Storage", dependencies: ["CHDF5", "CLinux", "Core", "Kernels", "Datasets", "GRU4Rec"]),
        // Support weighting and inner loops (adaptation); meta-gradients build on it.
        .target(name: "MetaLearning", dependencies: ["Core", "Kernels", "GRU4Rec", "Datasets", "ExperimentConfig"]),
        // Metrics, baselines, few-shot adaptation, bootstrap, reports.
        .target(
            name: "Evaluation",
            dependencies: ["Core", "Kernels", "GRU4Rec", "Datasets", "Storage", "ExperimentConfig", "MetaLearning"]),
        // Run directories, GRU4Rec pretraining, the meta-trainer (the coordinator's math: plans,
        // the fixed-tree reduce, Adam, checkpoints) and a worker's unit computation.
        .target(
            name: "Training",
            dependencies: [
                "Core", "Kernels", "GRU4Rec", "Datasets", "Storage", "ExperimentConfig", "MetaLearning", "Evaluation",
                "Coordination", "Wire"
            ]),

        // One learner's events to next courses: prepare's pairs, evaluation's few-shot path.
        .target(
            name: "Recommendation",
            dependencies: [
                "Core", "Kernels", "GRU4Rec", "ExperimentConfig", "Datasets", "Storage", "Evaluation"
            ]),
        // The HTTP service (Hummingbird 2): recommend, health, metrics, hot reload.
        .target(
            name: "Serving",
            dependencies: [
                "Core", "Kernels", "Datasets", "Recommendation",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus")
            ]),
        // ZeroMQ sockets: moves frames, knows nothing of training.
        .target(name: "Transport", dependencies: ["CZeroMQ", "CLinux"]),
        // Typed, versioned messages and their byte encoding (imports no C).
        .target(name: "Wire"),
        // Coordinator, worker and host-agent state machines and work plans: no sockets, clocks or files.
        .target(name: "Coordination", dependencies: ["Wire"]),
        // The coordinator's and the worker's ends of a connection (the van): frames to envelopes,
        // payloads in frames or shared memory, CURVE keys, connection advice.
        .target(name: "Link", dependencies: ["Core", "Wire", "Transport"]),
        // The shells that run the state machines over the links (coordinator, worker, host
        // agent), the local processes they start, traces.
        .target(
            name: "Runtime",
            dependencies: [
                "CLinux", "Wire", "Coordination", "Transport", "Link", "Core", "Kernels", "GRU4Rec",
                "ExperimentConfig", "Datasets", "Storage", "Evaluation", "Training"
            ]),
        // Multi-seed studies: plans, their tasks and the runner that carries one out (through
        // Training and Runtime), ranking every query of a run, the paired statistics of the results.
        .target(
            name: "Studies",
            dependencies: [
                "Core", "ExperimentConfig", "Datasets", "Storage", "Evaluation", "Training", "Runtime", "Yams"
            ]),
        // Network namespaces as hosts on this machine, for `bench --hosts` and the multi-host tests.
        .target(name: "NetworkLab", dependencies: ["Core"]),
        // The CLI, one file per subcommand.
        .executableTarget(
            name: "metatrain",
            dependencies: [
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                "Core", "Kernels", "GRU4Rec", "ExperimentConfig", "Datasets", "Storage", "Evaluation", "Training",
                "Wire", "Link", "Runtime", "NetworkLab", "Studies", "Recommendation", "Serving"
            ]),

        .testTarget(name: "CoreTests", dependencies: ["Core"]),
        .testTarget(name: "KernelsTests", dependencies: ["Kernels"]),
        .testTarget(name: "GRU4RecTests", dependencies: ["GRU4Rec", "Kernels", "Core"], resources: [.copy("Fixtures")]),
        .testTarget(name: "ExperimentConfigTests", dependencies: ["ExperimentConfig"]),
        .testTarget(name: "DatasetsTests", dependencies: ["Datasets", "Core", "ExperimentConfig"]),
        .testTarget(
            name: "StudiesTests", dependencies: ["Studies", "Evaluation", "Core"], resources: [.copy("Fixtures")]),
        .testTarget(
            name: "StorageTests",
            dependencies: ["Storage", "Datasets", "GRU4Rec", "Kernels", "Core", "ExperimentConfig"]),
        .testTarget(
            name: "MetaLearningTests",
            dependencies: ["MetaLearning", "GRU4Rec", "Kernels", "Datasets", "Core", "ExperimentConfig"]),
        .testTarget(
            name: "EvaluationTests",
            dependencies: ["Evaluation", "MetaLearning", "GRU4Rec", "Kernels", "Datasets", "Core", "ExperimentConfig"]),
        .testTarget(
            name: "TrainingTests",
            dependencies: [
                "Training", "Coordination", "Wire", "Evaluation", "Storage", "Datasets", "Kernels", "ExperimentConfig",
                "Core"
            ]),
        .testTarget(name: "TransportTests", dependencies: ["Transport", "CLinux"]),
        .testTarget(name: "WireTests", dependencies: ["Wire"]),
        .testTarget(name: "CoordinationTests", dependencies: ["Coordination", "Wire"]),
        .testTarget(name: "LinkTests", dependencies: ["Link", "Transport", "Wire"]),
        .testTarget(name: "RuntimeTests", dependencies: ["Runtime"]),
        .testTarget(
            name: "CLITests",
            dependencies: [
                "metatrain", "Storage", "Datasets", "Transport", "Wire", "Link", "Runtime", "NetworkLab",
                "MetaLearning", "Kernels",
                "ExperimentConfig", "Yams", "Recommendation", "Evaluation"
            ])
    ]
)
