import Core
import Foundation
import Hummingbird
import Kernels
import Logging
import Metrics
import NIOCore
import NIOPosix
import Prometheus
import Recommendation

/// How `metatrain serve` runs (docs/SERVING.md).
public struct ServeSettings: Sendable {
    public var source: ModelSource
    public var dataPath: String?
    public var host = "127.0.0.1"
    public var port = 8080
    /// Threads that adapt and score (each request on one, OpenBLAS single-threaded).
    public var threads = 2
    /// A bearer token every route but /healthz and /readyz requires (nil: none, loopback only).
    public var token: String?
    /// How often the model's file is checked for a newer one.
    public var reloadEvery: Double = 1
    /// A connection with nothing to read for this long is closed.
    public var idleTimeoutS: Int64 = 30
    public static let maxBody = 1 << 20

    public init(source: ModelSource) { self.source = source }
}

/// The service's metrics, through swift-metrics into one Prometheus registry.
final class ServiceMetrics: Sendable {
    let registry: PrometheusCollectorRegistry
    let adaptationSteps: Metrics.Counter
    let iteration: Metrics.Gauge
    let loadedAt: Metrics.Gauge
    let reloads: Metrics.Counter

    init() {
        registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = [
            .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10),
            .milliseconds(20), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
            .seconds(1), .seconds(5)
        ]
        MetricsSystem.bootstrap(factory)
        adaptationSteps = Metrics.Counter(label: "metatrain_adaptation_steps_total")
        iteration = Metrics.Gauge(label: "metatrain_model_iteration")
        loadedAt = Metrics.Gauge(label: "metatrain_model_loaded_timestamp_seconds")
        reloads = Metrics.Counter(label: "metatrain_model_loads_total")
    }

    func request(route: String, status: Int, seconds: Double) {
        Metrics.Counter(
            label: "metatrain_http_requests_total", dimensions: [("route", route), ("status", String(status))]
        )
        .increment()
        Metrics.Timer(label: "metatrain_http_request_duration_seconds", dimensions: [("route", route)])
            .recordNanoseconds(Int64(seconds * 1e9))
    }

    func loaded(_ m: Recommender) {
        iteration.record(Double(m.checkpoint.iteration))
        loadedAt.record(m.loadedAt.timeIntervalSince1970)
        reloads.increment()
    }
}

/// Compares a presented token with the expected one in time that depends only on their lengths.
func tokensMatch(_ given: String, _ expected: String) -> Bool {
    let a = Array(given.utf8), b = Array(expected.utf8)
    var diff = UInt8(a.count == b.count ? 0 : 1)
    for i in 0..<b.count { diff |= (i < a.count ? a[i] : 0) ^ b[i] }
    return diff == 0
}

func jsonResponse(_ status: Int, _ body: String, headers extra: HTTPFields = [:]) -> Response {
    var headers: HTTPFields = [.contentType: "application/json"]
    headers.append(contentsOf: extra)
    return Response(
        status: .init(code: status), headers: headers, body: .init(byteBuffer: ByteBuffer(string: body + "\n")))
}

/// Every request: the token check, errors as JSON with the field at fault, and the
/// request count and latency by route and status.
struct ServiceMiddleware<Context: RequestContext>: RouterMiddleware {
    let token: String?
    let metrics: ServiceMetrics
    static var routes: Set<String> { ["/v1/recommend", "/healthz", "/readyz", "/metrics"] }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        let started = ContinuousClock.now
        let path = request.uri.path
        let route = Self.routes.contains(path) ? path : "other"
        var response: Response
        if let token, path != "/healthz", path != "/readyz",
            !tokensMatch(request.headers[.authorization] ?? "", "Bearer " + token)
        {
            response = jsonResponse(
                401, RequestError(401, "authorization", "a valid bearer token is required").json,
                headers: [.wwwAuthenticate: "Bearer"])
        } else {
            do { response = try await next(request, context) } catch let e as RequestError {
                response = jsonResponse(e.status, e.json)
            } catch let e as HTTPError {
                let code = Int(e.status.code)
                response = jsonResponse(code, RequestError(code, "", e.body ?? e.status.reasonPhrase).json)
            } catch {
                response = jsonResponse(500, RequestError(500, "", "internal error").json)
            }
        }
        let elapsed = ContinuousClock.now - started
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
        metrics.request(route: route, status: Int(response.status.code), seconds: seconds)
        return response
    }
}

/// The HTTP service: routes over a shared model that a background loop reloads.
public enum Server {
    /// Runs until SIGTERM or SIGINT, then lets requests in flight finish and returns.
    /// `ready` is called once the socket listens, with the port.
    public static func run(_ s: ServeSettings, ready: @escaping @Sendable (Int) -> Void) async throws {
        BLAS.useSingleThread()
        let metrics = ServiceMetrics()
        let log: @Sendable (String) -> Void = { line in
            FileHandle.standardError.write(Data("serve: \(line)\n".utf8))
        }
        let slot = ModelSlot(source: s.source, dataPath: s.dataPath, onSwap: { metrics.loaded($0) }, log: log)
        slot.refresh()
        let pool = NIOThreadPool(numberOfThreads: max(1, s.threads))
        pool.start()

        let router = Router()
        router.add(middleware: ServiceMiddleware(token: s.token, metrics: metrics))
        router.get("/healthz") { _, _ in jsonResponse(200, #"{"status":"alive"}"#) }
        router.get("/readyz") { _, _ in
            if let m = slot.current {
                var body: [(String, JSON)] = [("ready", .bool(true)), ("model", m.identity)]
                if let p = slot.lastProblem { body.append(("problem", .string(p))) }
                return jsonResponse(200, JSON.object(body).compact)
            }
            return jsonResponse(
                503,
                JSON.object([("ready", .bool(false)), ("problem", .string(slot.lastProblem ?? "no model yet"))]).compact
            )
        }
        router.get("/metrics") { _, _ in
            var buffer: [UInt8] = []
            metrics.registry.emit(into: &buffer)
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                body: .init(byteBuffer: ByteBuffer(bytes: buffer)))
        }
        router.post("/v1/recommend") { request, _ -> Response in
            if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > ServeSettings.maxBody {
                throw RequestError(413, "body", "\(length) bytes; at most 1 MiB")
            }
            var request = request
            let body: ByteBuffer
            do { body = try await request.collectBody(upTo: ServeSettings.maxBody) } catch {
                throw RequestError(413, "body", "over 1 MiB")
            }
            guard let model = slot.current else {
                throw RequestError(503, "", slot.lastProblem ?? "no model loaded yet")
            }
            let parsed = try RecommendRequest.parse(Array(buffer: body), catalogue: model.catalogueSize)
            let answer = try await pool.runIfActive {
                model.recommend(parsed.events, k: parsed.k, includeSeen: parsed.includeSeen)
            }
            if answer.adapted { metrics.adaptationSteps.increment(by: Int64(model.policy.steps)) }
            return jsonResponse(200, answer.json(model: model).compact)
        }

        var logger = Logger(label: "metatrain-serve")
        logger.logLevel = .warning
        let app = Application(
            router: router,
            server: .http1(configuration: .init(idleTimeout: .seconds(s.idleTimeoutS))),
            configuration: .init(address: .hostname(s.host, port: s.port), serverName: "metatrain"),
            onServerRunning: { channel in ready(channel.localAddress?.port ?? s.port) },
            logger: logger)
        let watcher = Task.detached {
            while !Task.isCancelled {
                try? await Task.sleep(nanoseconds: UInt64(s.reloadEvery * 1e9))
                if Task.isCancelled { break }
                // Loading reads and checks a whole file: off the event loops, on the pool.
                _ = try? await pool.runIfActive { slot.refresh() }
            }
        }
        defer { watcher.cancel() }
        try await app.runService()
        watcher.cancel()
        try await pool.shutdownGracefully()
    }
}
