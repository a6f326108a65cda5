import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import ServiceLifecycle
import ShipTLS
import Spool
import Synchronization
import WALCore

/// What `walship switchover --peer-control` asks the peer's `walship receive --control-listen` for: to say which
/// half its server would take (`check`), or to perform that half; or what `walship restore-wal --peer-control`
/// asks for: a WAL segment or history file from the peer's spool (`wal`, read-only).
public struct SwitchoverControlRequest: Codable, Sendable, Equatable {
    public enum Action: String, Codable, Sendable {
        case check, demote, promote, wal
    }

    public var version = 1
    public var action: Action
    /// `promote`: the demoted primary's shutdown checkpoint, which the peer's spool must end with.
    public var shutdownCheckpoint: String?
    public var dryRun: Bool
    /// The requesting host's name, for the audit log; its certificate name is what authorises the request.
    public var requestedBy: String
    /// `wal`: the file (`%f`), and the system when the spool holds several.
    public var name: String?
    public var system: String?

    public init(
        action: Action, shutdownCheckpoint: String? = nil, dryRun: Bool = false, requestedBy: String, name: String? = nil,
        system: String? = nil
    ) {
        self.action = action
        self.shutdownCheckpoint = shutdownCheckpoint
        self.dryRun = dryRun
        self.requestedBy = requestedBy
        self.name = name
        self.system = system
    }
}

/// One line of the control endpoint's answer: progress lines while the peer's half runs, then one final line.
public struct SwitchoverControlAnswer: Codable, Sendable, Equatable {
    public var progress: String?
    /// Not performed: not allowed, another request running, or not understood.
    public var refused: String?
    /// `check`: the half the peer's server would take, and its system.
    public var role: SwitchoverRole?
    public var systemIdentifier: String?
    /// `demote`/`promote`: the peer's report, and where it wrote it.
    public var report: SwitchoverReport?
    public var reportPath: String?
    /// `wal`: the file's bytes, base64, in lines of up to 1 MiB; then, on the final line, its size and CRC-32C, or
    /// that the spool does not have it.
    public var data: String?
    public var walSize: Int?
    public var walCRC32C: UInt32?
    public var missing: Bool?

    public init(
        progress: String? = nil, refused: String? = nil, role: SwitchoverRole? = nil, systemIdentifier: String? = nil,
        report: SwitchoverReport? = nil, reportPath: String? = nil, data: String? = nil, walSize: Int? = nil,
        walCRC32C: UInt32? = nil, missing: Bool? = nil
    ) {
        self.progress = progress
        self.refused = refused
        self.role = role
        self.systemIdentifier = systemIdentifier
        self.report = report
        self.reportPath = reportPath
        self.data = data
        self.walSize = walSize
        self.walCRC32C = walCRC32C
        self.missing = missing
    }

    /// The last line of an answer: neither progress nor a piece of a file.
    var isFinal: Bool { progress == nil && data == nil }
}

/// JSON lines, one value per line, on the control connection.
enum ControlLines {
    /// A request and its report fit easily; a peer sending more is not a walship.
    static let maxLineBytes = 4 << 20

    static func encode<Value: Encodable>(_ value: Value) throws -> ByteBuffer {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var buffer = ByteBuffer(bytes: try encoder.encode(value))
        buffer.writeString("\n")
        return buffer
    }

    static func decode<Value: Decodable>(_ type: Value.Type, _ line: ByteBuffer) throws -> Value {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try decoder.decode(type, from: Data(line.readableBytesView))
    }

    /// Splits what arrived into complete lines, keeping an unfinished one in `pending`.
    static func lines(_ chunk: ByteBuffer, pending: inout ByteBuffer) throws -> [ByteBuffer] {
        var chunk = chunk
        pending.writeBuffer(&chunk)
        var lines: [ByteBuffer] = []
        while let newline = pending.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
            let length = newline - pending.readerIndex
            lines.append(pending.readSlice(length: length)!)
            pending.moveReaderIndex(forwardBy: 1)
        }
        pending.discardReadBytes()
        guard pending.readableBytes <= maxLineBytes else { throw SwitchoverControlError("a control line longer than 4 MiB") }
        return lines
    }
}

public struct SwitchoverControlError: Error, CustomStringConvertible, Sendable {
    public let description: String
    /// A WAL file arrived, but not as the peer sent it (size or CRC-32C differ): not a file to hand PostgreSQL, nor one
    /// that is merely missing.
    public let damaged: Bool
    public init(_ description: String, damaged: Bool = false) {
        self.description = description
        self.damaged = damaged
    }
}

/// The decisions of the control endpoint, from facts alone: who may ask, and whether now.
public enum SwitchoverControlPolicy {
    /// Nil when the request may run; else why not.
    public static func refusal(
        certificateName: String?, allowed: String, busy: Bool, request: SwitchoverControlRequest
    ) -> String? {
        guard let certificateName, certificateName == allowed else {
            return
                "the certificate \"\(certificateName ?? "without a name")\" may not request a switchover here (hint: walship receive --control-allow names the one peer certificate that may, now \"\(allowed)\")"
        }
        guard request.version == 1 else {
            return
                "control request version \(request.version) is not understood here (hint: run the same walship release at both sites)"
        }
        if busy { return "another switchover request is running at this site; nothing was started" }
        return nil
    }
}

/// `walship receive --control-listen`: performs this site's half of a switchover when the peer's `walship switchover`
/// asks for it over mutual TLS, for the one certificate name `--control-allow` names. Every request and its outcome
/// go into the system's audit log.
public final class SwitchoverControlServer: Service, Sendable {
    /// Runs a request; `emit` sends the lines before the final one (progress, pieces of a file) as they come.
    public typealias Perform =
        @Sendable (SwitchoverControlRequest, _ emit: @escaping @Sendable (SwitchoverControlAnswer) -> Void) async ->
        SwitchoverControlAnswer

    let host: String
    let port: Int
    let tls: NIOSSLContext
    let allowedName: String
    let logger: Logger
    let identify: @Sendable () async -> String?
    let audit: @Sendable (_ system: String?, _ fields: [String: String]) -> Void
    let perform: Perform
    private let running = Mutex(false)

    /// `identify` names this site's system (for the audit log) when its server can be asked; `audit` writes a line
    /// to that system's audit log (or the spool's, when the system is not known).
    public init(
        host: String, port: Int, tls: NIOSSLContext, allowedName: String, logger: Logger,
        identify: @escaping @Sendable () async -> String?,
        audit: @escaping @Sendable (_ system: String?, _ fields: [String: String]) -> Void, perform: @escaping Perform
    ) {
        self.host = host
        self.port = port
        self.tls = tls
        self.allowedName = allowedName
        self.logger = logger
        self.identify = identify
        self.audit = audit
        self.perform = perform
    }

    public func run() async throws {
        let server: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>
        do {
            server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .bind(host: host, port: port) { [tls] channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls))
                        return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            throw SwitchoverControlError(
                "cannot listen for switchover requests on \(host):\(port): \(error) (hint: choose another --control-listen)")
        }
        logger.notice(
            "switchover control endpoint listening",
            metadata: ["walship.control_listen": "\(host):\(port)", "walship.control_allow": "\(allowedName)"])
        try await withThrowingDiscardingTaskGroup { group in
            do {
                try await withGracefulShutdownHandler {
                    try await server.executeThenClose { connections in
                        for try await connection in connections { group.addTask { await self.serve(connection) } }
                    }
                } onGracefulShutdown: {
                    server.channel.close(promise: nil)
                }
            } catch let error where Task.isShuttingDownGracefully {
                logger.debug("the control endpoint's socket closed while stopping", metadata: ["walship.error": "\(error)"])
            }
        }
    }

    private func serve(_ connection: NIOAsyncChannel<ByteBuffer, ByteBuffer>) async {
        let address = connection.channel.remoteAddress.map { "\($0)" } ?? "?"
        do {
            try await connection.executeThenClose { inbound, outbound in
                var pending = ByteBuffer()
                var requestLine: ByteBuffer?
                for try await chunk in inbound {
                    requestLine = try ControlLines.lines(chunk, pending: &pending).first
                    if requestLine != nil { break }
                }
                guard let requestLine else { return }
                let name = try await connection.channel.nioSSL_peerCertificate().get().flatMap(certificateName)
                let request: SwitchoverControlRequest
                do { request = try ControlLines.decode(SwitchoverControlRequest.self, requestLine) } catch {
                    try await outbound.write(
                        ControlLines.encode(SwitchoverControlAnswer(refused: "the request is not a walship control request")))
                    return
                }
                // Reading WAL or the role changes nothing: only the halves of a switchover run one at a time.
                let exclusive = request.action == .demote || request.action == .promote
                let claimed = running.withLock { busy -> Bool in
                    if !exclusive { return true }
                    if busy { return false }
                    busy = true
                    return true
                }
                if let refusal = SwitchoverControlPolicy.refusal(
                    certificateName: name, allowed: allowedName, busy: !claimed, request: request)
                {
                    if claimed && exclusive { running.withLock { $0 = false } }
                    logger.warning(
                        "refused a switchover request", metadata: ["walship.peer": "\(address)", "walship.reason": "\(refusal)"])
                    audit(
                        nil,
                        [
                            "event": "switchover-request", "action": request.action.rawValue, "certificate": name ?? "",
                            "from": address, "requestedBy": request.requestedBy, "outcome": "refused", "detail": refusal,
                        ])
                    try await outbound.write(ControlLines.encode(SwitchoverControlAnswer(refused: refusal)))
                    return
                }
                defer { if exclusive { running.withLock { $0 = false } } }
                logger.log(
                    level: exclusive ? .notice : .info, "request from the peer's walship",
                    metadata: [
                        "walship.action": "\(request.action.rawValue)", "walship.certificate": "\(name ?? "")",
                        "walship.peer": "\(address)",
                    ])
                let system = exclusive ? await identify() : nil
                if exclusive {
                    audit(
                        system,
                        [
                            "event": "switchover-request", "action": request.action.rawValue, "certificate": name ?? "",
                            "from": address, "requestedBy": request.requestedBy, "dryRun": String(request.dryRun),
                            "shutdownCheckpoint": request.shutdownCheckpoint ?? "",
                        ])
                }
                // Progress goes out as it happens; the connection stays open until the half is done.
                let (lines, continuation) = AsyncStream.makeStream(
                    of: SwitchoverControlAnswer.self, bufferingPolicy: .unbounded)
                async let answer = perform(request) { continuation.yield($0) }
                let forwarder = Task {
                    for await line in lines { try await outbound.write(ControlLines.encode(line)) }
                }
                let final = await answer
                continuation.finish()
                try? await forwarder.value
                if exclusive {
                    audit(
                        final.report?.systemIdentifier ?? system,
                        [
                            "event": "switchover-result", "action": request.action.rawValue, "certificate": name ?? "",
                            "outcome": final.refused.map { _ in "refused" } ?? final.report?.outcome ?? "?",
                            "detail": final.refused ?? final.report?.failure ?? "", "report": final.reportPath ?? "",
                        ])
                }
                try await outbound.write(ControlLines.encode(final))
            }
        } catch {
            logger.warning(
                "a switchover control connection failed", metadata: ["walship.peer": "\(address)", "walship.error": "\(error)"])
        }
    }
}

/// The requesting side: one request to the peer's control endpoint, its progress handed to `progress`, and the final
/// answer returned.
public enum SwitchoverControlClient {
    public static func ask(
        host: String, port: Int, tls: TLSFiles, request: SwitchoverControlRequest, timeout: Duration,
        progress: @escaping @Sendable (String) -> Void
    ) async throws -> SwitchoverControlAnswer {
        try await exchange(host: host, port: port, tls: tls, request: request, timeout: timeout) { line in
            if let text = line.progress { progress(text) }
        }
    }

    /// Fetches WAL file `name` of `system` from the peer's spool into `path` (written beside it and renamed);
    /// false when the peer's spool does not have it.
    public static func fetchWAL(
        host: String, port: Int, tls: TLSFiles, name: String, system: String?, to path: String, timeout: Duration
    ) async throws -> Bool {
        let temporary = path + ".walship-partial"
        // Always a new, empty file: one left by an interrupted fetch would keep its tail past a shorter file.
        guard FileManager.default.createFile(atPath: temporary, contents: nil),
            let handle = FileHandle(forWritingAtPath: temporary)
        else {
            throw SwitchoverControlError("cannot write \(temporary)")
        }
        let crc = Mutex<(crc: UInt32, size: Int, failure: String?)>((0, 0, nil))
        let answer: SwitchoverControlAnswer
        do {
            defer { try? handle.close() }
            answer = try await exchange(
                host: host, port: port, tls: tls,
                request: SwitchoverControlRequest(
                    action: .wal, requestedBy: ProcessInfo.processInfo.hostName, name: name, system: system),
                timeout: timeout
            ) { line in
                guard let text = line.data else { return }
                guard let bytes = Data(base64Encoded: text) else {
                    crc.withLock { $0.failure = "a piece of \(name) that is not base64" }
                    return
                }
                handle.write(bytes)
                crc.withLock { state in
                    state.crc = bytes.withUnsafeBytes { CRC32C.update(state.crc, $0) }
                    state.size += bytes.count
                }
            }
        } catch {
            unlink(temporary)
            throw error
        }
        let received = crc.withLock { $0 }
        if let refused = answer.refused {
            unlink(temporary)
            throw SwitchoverControlError("the peer refused: \(refused)")
        }
        if answer.missing == true {
            unlink(temporary)
            return false
        }
        guard received.failure == nil, answer.walSize == received.size, answer.walCRC32C == received.crc else {
            unlink(temporary)
            throw SwitchoverControlError(
                "\(name) from the peer arrived damaged: \(received.failure ?? "\(received.size) bytes with CRC-32C \(received.crc), the peer sent \(answer.walSize.map(String.init) ?? "?") with \(answer.walCRC32C.map(String.init) ?? "?")")",
                damaged: true)
        }
        guard rename(temporary, path) == 0 else {
            unlink(temporary)
            throw SwitchoverControlError("cannot rename \(temporary) to \(path): \(String(cString: strerror(errno)))")
        }
        return true
    }

    /// One request; every line before the final one goes to `received`.
    static func exchange(
        host: String, port: Int, tls: TLSFiles, request: SwitchoverControlRequest, timeout: Duration,
        received: @escaping @Sendable (SwitchoverControlAnswer) -> Void
    ) async throws -> SwitchoverControlAnswer {
        let context: NIOSSLContext
        do { context = try tls.clientContext() } catch { throw SwitchoverControlError("\(error)") }
        let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>
        do {
            channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(.seconds(10))
                .connect(host: host, port: port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let serverName = host.first?.isNumber == true || host.contains(":") ? nil : host
                        try channel.pipeline.syncOperations.addHandler(
                            try NIOSSLClientHandler(context: context, serverHostname: serverName))
                        return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            throw SwitchoverControlError(
                "cannot reach the peer's control endpoint \(host):\(port): \(error) (hint: is walship receive running there with --control-listen?)"
            )
        }
        return try await withThrowingTaskGroup(of: SwitchoverControlAnswer?.self) { group in
            group.addTask {
                try await channel.executeThenClose { inbound, outbound in
                    try await outbound.write(ControlLines.encode(request))
                    var pending = ByteBuffer()
                    for try await chunk in inbound {
                        for line in try ControlLines.lines(chunk, pending: &pending) {
                            let answer = try ControlLines.decode(SwitchoverControlAnswer.self, line)
                            if answer.isFinal { return answer }
                            received(answer)
                        }
                    }
                    return nil
                }
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            let first = try await group.next()!
            group.cancelAll()
            channel.channel.close(promise: nil)
            guard let answer = first else {
                throw SwitchoverControlError(
                    "the peer's control endpoint \(host):\(port) gave no answer (connection closed, TLS refused or no answer within \(timeout)) (hint: its log says why; with TLS, both sites need certificates from the same CA)"
                )
            }
            return answer
        }
    }
}
