import Foundation
import Hummingbird
import Logging

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

/// Read-only HTTP endpoint for `--status-listen`: `GET /status` returns the process's status as JSON.
/// It never exposes secrets: callers build the status from redacted values only.
public struct StatusServer: Sendable {
    public let host: String
    public let port: Int
    let logger: Logger
    let status: @Sendable () -> any Encodable & Sendable

    public init(host: String, port: Int, logger: Logger, status: @escaping @Sendable () -> any Encodable & Sendable) {
        self.host = host
        self.port = port
        self.logger = logger
        self.status = status
    }

    public func run() async throws {
        let router = Router()
        let status = self.status
        router.get("status") { _, _ -> Response in
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            encoder.dateEncodingStrategy = .iso8601
            let data = try encoder.encode(status())
            return Response(status: .ok, headers: [.contentType: "application/json"],
                            body: .init(byteBuffer: ByteBuffer(bytes: data)))
        }
        let app = Application(router: router, configuration: .init(address: .hostname(host, port: port)),
                              logger: logger)
        try await app.runService()
    }
}
