import Foundation
import Hummingbird
import Logging
import StatusModel
import WALCore

/// Parses `HOST:PORT` (or `[v6]:PORT`); a bare `:PORT` or `PORT` means loopback.
public func parseHostPort(_ text: String, defaultHost: String = "127.0.0.1") -> (host: String, port: Int)? {
    var host = defaultHost
    var portText = Substring(text)
    if text.hasPrefix("[") {
        guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else { return nil }
        host = String(text[text.index(after: text.startIndex)..<close])
        portText = text[text.index(close, offsetBy: 2)...]
    } else if let colon = text.lastIndex(of: ":") {
        if colon != text.startIndex { host = String(text[..<colon]) }
        portText = text[text.index(after: colon)...]
    }
    guard let port = Int(portText), (1...65535).contains(port), !host.isEmpty else { return nil }
    return (host, port)
}

/// Read-only HTTP endpoint for `--status-listen`: `GET /` the dashboard, `GET /status` JSON,
/// `GET /metrics` Prometheus text. It never exposes secrets: the status is built from redacted values only.
public struct StatusServer: Sendable {
    public let host: String
    public let port: Int
    let logger: Logger
    let status: @Sendable () -> StatusDocument
    let metrics = MetricsPublisher()

    public init(host: String, port: Int, logger: Logger, status: @escaping @Sendable () -> StatusDocument) {
        self.host = host
        self.port = port
        self.logger = logger
        self.status = status
    }

    public func run() async throws {
        let router = Router()
        let status = self.status
        let metrics = self.metrics
        router.get("status") { _, _ -> Response in
            let data = try StatusDocument.encoder().encode(status())
            return Response(
                status: .ok, headers: [.contentType: "application/json", .cacheControl: "no-store"],
                body: .init(byteBuffer: ByteBuffer(bytes: data)))
        }
        router.get("metrics") { _, _ -> Response in
            Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(string: metrics.render(status()))))
        }
        router.get("/") { _, _ -> Response in
            Response(
                status: .ok, headers: [.contentType: "text/html; charset=utf-8", .cacheControl: "no-store"],
                body: .init(byteBuffer: ByteBuffer(string: DashboardPage.html)))
        }
        var quiet = logger
        quiet.logLevel = .warning
        let app = Application(router: router, configuration: .init(address: .hostname(host, port: port)), logger: quiet)
        do {
            try await app.runService()
        } catch {
            throw StatusServerError(
                "cannot serve status on \(host):\(port): \(error) (hint: is the port in use? choose another --status-listen)")
        }
    }
}

public struct StatusServerError: ClassifiedFailure, CustomStringConvertible {
    public let description: String
    public var failureKind: FailureKind { .setUp }
    init(_ description: String) { self.description = description }
}
