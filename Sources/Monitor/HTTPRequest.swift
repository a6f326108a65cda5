import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// One HTTP/1.1 exchange over NIO: what `walship status` and `--alert-webhook` need (a GET of a status
/// document, a POST of an alert), over `http` or `https` with the system's trust roots.
///
/// Not URLSession: on Linux it comes with libcurl and a dozen libraries under it that the receiver and
/// sender would keep mapped for the whole run (about 4 MiB of resident memory) for a request a day.
public enum HTTPRequest {
    public struct Response: Sendable {
        public var status: Int
        public var body: [UInt8]
    }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// Sends one request with `Connection: close` and collects the whole response, all within `timeout`.
    public static func send(
        _ method: HTTPMethod, _ url: URL, body: [UInt8] = [], contentType: String? = nil,
        timeout: Duration, maxResponseBytes: Int = 16 << 20
    ) async throws -> Response {
        guard let scheme = url.scheme?.lowercased(), scheme == "http" || scheme == "https" else {
            throw Failure(description: "\(url) is not an http:// or https:// URL")
        }
        guard let host = url.host, !host.isEmpty else { throw Failure(description: "\(url) has no host") }
        let port = url.port ?? (scheme == "https" ? 443 : 80)
        let path = url.path.isEmpty ? "/" : url.path
        let target = url.query.map { "\(path)?\($0)" } ?? path
        let tls: NIOSSLContext? =
            scheme == "https"
            ? try NIOSSLContext(configuration: .makeClientConfiguration()) : nil

        return try await withThrowingTaskGroup(of: Response.self) { group in
            group.addTask {
                try await exchange(
                    host: host, port: port, tls: tls, method: method, target: target, body: body,
                    contentType: contentType, timeout: timeout, maxResponseBytes: maxResponseBytes)
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                throw Failure(description: "no answer from \(host):\(port) within \(timeout)")
            }
            defer { group.cancelAll() }
            return try await group.next()!
        }
    }

    private static func exchange(
        host: String, port: Int, tls: NIOSSLContext?, method: HTTPMethod, target: String,
        body: [UInt8], contentType: String?, timeout: Duration,
        maxResponseBytes: Int
    ) async throws -> Response {
        let connectTimeout = TimeAmount.nanoseconds(
            Int64(timeout.components.seconds) * 1_000_000_000
                + timeout.components.attoseconds / 1_000_000_000)
        let channel: NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>
        do {
            channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(connectTimeout)
                .connect(host: host, port: port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        if let tls {
                            try channel.pipeline.syncOperations.addHandler(
                                try NIOSSLClientHandler(context: tls, serverHostname: isIPAddress(host) ? nil : host))
                        }
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(
                            wrappingChannelSynchronously: channel)
                    }
                }
        } catch let error as NIOConnectionError {
            let reason = error.connectionErrors.first.map { "\($0.error)" } ?? "\(error)"
            throw Failure(description: "cannot connect to \(host):\(port): \(reason)")
        }
        do {
            return try await talk(
                over: channel, host: host, port: port, method: method, target: target, body: body,
                contentType: contentType, maxResponseBytes: maxResponseBytes)
        } catch NIOSSLError.handshakeFailed(let reason) {
            throw Failure(
                description:
                    "TLS with \(host):\(port) failed: \(reason) (hint: is its certificate trusted by this host's CA store?)")
        }
    }

    private static func talk(
        over channel: NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>, host: String,
        port: Int, method: HTTPMethod, target: String, body: [UInt8], contentType: String?,
        maxResponseBytes: Int
    ) async throws -> Response {
        try await channel.executeThenClose { inbound, outbound in
            var head = HTTPRequestHead(version: .http1_1, method: method, uri: target)
            head.headers.add(name: "Host", value: port == 80 || port == 443 ? host : "\(host):\(port)")
            head.headers.add(name: "User-Agent", value: "walship")
            head.headers.add(name: "Connection", value: "close")
            if let contentType { head.headers.add(name: "Content-Type", value: contentType) }
            if method == .POST || method == .PUT || !body.isEmpty {
                head.headers.add(name: "Content-Length", value: "\(body.count)")
            }
            try await outbound.write(.head(head))
            if !body.isEmpty { try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: body)))) }
            try await outbound.write(.end(nil))

            var status: Int?
            var collected: [UInt8] = []
            for try await part in inbound {
                switch part {
                case .head(let responseHead):
                    status = Int(responseHead.status.code)
                case .body(var chunk):
                    guard collected.count + chunk.readableBytes <= maxResponseBytes else {
                        throw Failure(description: "the response from \(host):\(port) is larger than \(maxResponseBytes) bytes")
                    }
                    collected += chunk.readBytes(length: chunk.readableBytes) ?? []
                case .end:
                    guard let status else { break }
                    return Response(status: status, body: collected)
                }
            }
            throw Failure(description: "\(host):\(port) closed the connection before a complete HTTP response")
        }
    }

    private static func isIPAddress(_ host: String) -> Bool {
        (try? SocketAddress(ipAddress: host, port: 0)) != nil
    }
}

/// The body of a status endpoint's `GET /status` (HTTP 200 only): what `walship status` and `walship check`
/// read a running process's status with.
public func fetchStatusData(_ url: URL, timeout: Double) async throws -> Data {
    let response = try await HTTPRequest.send(.GET, url, timeout: .milliseconds(Int64(timeout * 1000)))
    guard response.status == 200 else { throw StatusFetchError(description: "HTTP \(response.status)") }
    return Data(response.body)
}

public struct StatusFetchError: Error, CustomStringConvertible {
    public let description: String
}
