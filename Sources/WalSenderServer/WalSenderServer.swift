import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import ServiceLifecycle
import Spool
import Synchronization
import WALCore

/// How standbys prove who they are.
public enum StandbyAuthentication: Sendable {
    /// Anyone who can reach the (loopback-only) endpoint.
    case trust
    /// SCRAM-SHA-256 against a verifier (from a stored pg_authid-style verifier, or derived from a password).
    case scram(SCRAMVerifier)
}

/// The replay position a standby last reported, per system.
public struct StandbyProgress: Sendable {
    public var applicationName: String
    public var written: LSN
    public var flushed: LSN
    public var applied: LSN
    public var reportedAt: PostgresTimestamp
    /// False once the standby's connection ended (its last position stays known).
    public var connected = true
    /// The name its record in the spool is kept under (`StandbyRecord`): its slot, else its application_name.
    public var recordName: String?
}

/// Speaks enough of PostgreSQL's replication protocol that a stock PostgreSQL 15 standby streams from the
/// spool (`primary_conninfo = 'host=... port=...'`): startup and authentication, IDENTIFY_SYSTEM,
/// TIMELINE_HISTORY, SHOW, START_REPLICATION with XLogData and keepalives, and standby status updates.
public final class WalSenderServer: Service {
    let host: String
    let port: Int
    let spool: Spool
    let authentication: StandbyAuthentication
    let logger: Logger
    let keepaliveInterval: Duration
    /// When set, standbys must use TLS (`sslmode=require` or stricter in their primary_conninfo).
    let tls: NIOSSLContext?
    private let progress = Mutex<[UInt64: [String: StandbyProgress]]>([:])

    public init(
        host: String, port: Int, spool: Spool, authentication: StandbyAuthentication, tls: NIOSSLContext? = nil,
        logger: Logger, keepaliveInterval: Duration = .seconds(10)
    ) {
        self.tls = tls
        self.host = host
        self.port = port
        self.spool = spool
        self.authentication = authentication
        self.logger = logger
        self.keepaliveInterval = keepaliveInterval
    }

    /// Every standby of `system` that reported since this process started, connected or not.
    public func standbys(system: UInt64) -> [StandbyProgress] {
        progress.withLock { $0[system].map { Array($0.values) } ?? [] }.sorted { $0.applicationName < $1.applicationName }
    }

    /// Event loops of the standby endpoint alone: streaming reads WAL and history files on them, which may wait
    /// on the disk; `/status` (on NIO's shared loops) never waits behind those reads.
    enum StandbyEndpointLoops {
        static let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
    }

    public func run() async throws {
        let server: NIOAsyncChannel<NIOAsyncChannel<FrontendMessage, ByteBuffer>, Never>
        do {
            server = try await ServerBootstrap(group: StandbyEndpointLoops.group)
                .serverChannelOption(.backlog, value: 16)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
                .bind(host: host, port: port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrontendMessageDecoder()))
                        try channel.pipeline.syncOperations.addHandler(StandbyInboundTap())
                        return try NIOAsyncChannel<FrontendMessage, ByteBuffer>(wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            throw StandbyEndpointError(
                "cannot listen for standbys on \(host):\(port): \(error) (hint: choose another --standby-listen)", kind: .setUp)
        }
        logger.notice("standby endpoint listening", metadata: ["walship.standby_listen": "\(host):\(port)"])
        try await withThrowingDiscardingTaskGroup { group in
            // A graceful shutdown closes the listening socket, which ends the loop; then the standbys' connections
            // close (they reconnect to the next receiver and resume from what they replayed).
            do {
                try await withGracefulShutdownHandler {
                    try await server.executeThenClose { connections in
                        for try await connection in connections {
                            group.addTask { await self.serve(connection) }
                        }
                    }
                } onGracefulShutdown: {
                    server.channel.close(promise: nil)
                }
            } catch let error where Task.isShuttingDownGracefully {
                logger.debug(
                    "the standby endpoint's socket closed with an error while stopping", metadata: ["walship.error": "\(error)"])
            }
            if Task.isShuttingDownGracefully {
                group.cancelAll()
                logger.notice("standby endpoint stopped", metadata: ["walship.standby_listen": "\(host):\(port)"])
            }
        }
    }

    // MARK: - One standby

    private func serve(_ connection: NIOAsyncChannel<FrontendMessage, ByteBuffer>) async {
        var log = logger
        log[metadataKey: "walship.standby"] = "\(connection.channel.remoteAddress.map { "\($0)" } ?? "?")"
        do {
            try await connection.executeThenClose { inbound, outbound in
                var session = StandbySession(server: self, channel: connection.channel, outbound: outbound, logger: log)
                var iterator = inbound.makeAsyncIterator()
                try await session.run(&iterator)
            }
        } catch let error as StandbyEndpointError {
            log.warning("standby connection ended", metadata: ["walship.error": "\(error)"])
        } catch {
            log.info("standby disconnected", metadata: ["walship.reason": "\(error)"])
        }
    }

    func record(system: UInt64, _ update: StandbyProgress) {
        progress.withLock { $0[system, default: [:]][update.applicationName] = update }
    }

    func markDisconnected(system: UInt64, name: String) {
        progress.withLock { $0[system]?[name]?.connected = false }
    }
}

public struct StandbyEndpointError: ClassifiedFailure, CustomStringConvertible {
    public let description: String
    public let failureKind: FailureKind
    public init(_ description: String, kind: FailureKind = .runtime) {
        self.description = description
        self.failureKind = kind
    }
}

/// The conversation with one standby: performs what `WalSenderStateMachine` decides and streams the WAL.
struct StandbySession {
    let server: WalSenderServer
    let channel: Channel
    let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    let logger: Logger
    var machine: WalSenderStateMachine

    init(server: WalSenderServer, channel: Channel, outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>, logger: Logger) {
        self.server = server
        self.channel = channel
        self.outbound = outbound
        self.logger = logger
        self.machine = WalSenderStateMachine(authentication: server.authentication, requireTLS: server.tls != nil)
    }

    mutating func run(_ inbound: inout NIOAsyncChannelInboundStream<FrontendMessage>.AsyncIterator) async throws {
        try await startup(&inbound)
        let system = try openSystem()
        while let message = try await inbound.next() {
            switch message {
            case .query(let text):
                try await perform(machine.query(text, spool: snapshot(system)), system: system, inbound: &inbound)
            case .terminate:
                return
            case .copyData, .copyDone, .copyFail, .password, .startup, .sslRequest, .gssEncryptionRequest, .cancelRequest:
                try await send(.error(code: "08P01", message: "unexpected message outside of a command", fatal: true))
                return
            }
        }
    }

    private mutating func startup(_ inbound: inout NIOAsyncChannelInboundStream<FrontendMessage>.AsyncIterator) async throws {
        while let message = try await inbound.next() {
            let action = machine.startupMessage(message)
            try await send(action)
            switch action {
            case .accept:
                logger.info("standby connected", metadata: ["walship.application_name": "\(machine.applicationName)"])
                return
            case .error(_, let text, _):
                throw StandbyEndpointError(text)
            case .close(let reason):
                throw StandbyEndpointError(reason)
            case .refuseEncryption, .acceptEncryption, .requestSASL, .saslContinue, .result, .startStreaming, .endOfTimeline:
                continue
            }
        }
        throw StandbyEndpointError("connection closed before startup")
    }

    private func openSystem() throws -> SystemSpool {
        guard let system = server.spool.openSystems.first, server.spool.openSystems.count == 1 else {
            throw StandbyEndpointError(
                server.spool.openSystems.isEmpty
                    ? "the spool holds no WAL yet; a standby can connect once a sender has shipped some"
                    : "the spool holds several systems; serving standbys needs one system per receiver in this release")
        }
        return system
    }

    private func snapshot(_ system: SystemSpool) -> SpoolSnapshot {
        let position = system.position
        var histories: [TimeLineID: [UInt8]] = [:]
        if position.timeline >= 2, let reader = try? SpoolReader(root: server.spool.root, system: system.systemIdentifier) {
            for tli in 2...position.timeline {
                if let file = try? reader.contents(of: historyFileName(timeline: tli)) { histories[tli] = file.bytes }
            }
        }
        let slots = ((try? StandbyRegistry.list(systemDirectory: system.directory)) ?? [])
            .filter(\.viaSlot).reduce(into: [String: LSN]()) { $0[$1.name] = $1.replayed }
        return SpoolSnapshot(
            systemIdentifier: system.systemIdentifier, timeline: position.timeline, durable: position.durable,
            segmentSize: system.segmentSize, historyFiles: histories, slots: slots)
    }

    /// Writes what an action says to send (streaming is started by `perform`).
    private func send(_ action: WalSenderStateMachine.Action) async throws {
        var out = ByteBuffer()
        switch action {
        case .refuseEncryption:
            out.writeString("N")
        case .acceptEncryption:
            // `S` goes out in plaintext; the TLS handler joins the pipeline in the same event-loop turn, before
            // the standby (which waits for the `S`) can send its ClientHello.
            guard let context = server.tls else { throw StandbyEndpointError("TLS accepted without a TLS context") }
            let channel = channel
            try await channel.eventLoop.flatSubmit {
                channel.writeAndFlush(ByteBuffer(string: "S")).flatMapThrowing {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context), position: .first)
                }
            }.get()
            return
        case .requestSASL:
            Backend.authenticationSASL(mechanisms: ["SCRAM-SHA-256"], &out)
        case .saslContinue(let data):
            Backend.authentication(code: 11, data: Array(data.utf8), &out)
        case .accept(let applicationName, let saslFinal):
            if let saslFinal { Backend.authentication(code: 12, data: Array(saslFinal.utf8), &out) }
            Backend.authenticationOk(&out)
            for (name, value) in [
                ("server_version", "15.0 (walship)"), ("server_encoding", "UTF8"), ("client_encoding", "UTF8"),
                ("DateStyle", "ISO, MDY"), ("integer_datetimes", "on"), ("standard_conforming_strings", "on"),
                ("TimeZone", "UTC"), ("in_hot_standby", "off"), ("default_transaction_read_only", "off"),
                ("application_name", applicationName), ("is_superuser", "off"),
            ] { Backend.parameterStatus(name, value, &out) }
            Backend.backendKeyData(pid: UInt32(getpid()), key: UInt32.random(in: 1...UInt32.max), &out)
            Backend.readyForQuery(&out)
        case .result(let columns, let rows, let tag):
            Backend.result(columns: columns.map { ($0.name, $0.typeOID) }, rows: rows, tag: tag, &out)
            Backend.readyForQuery(&out)
        case .error(let code, let message, let fatal):
            Backend.error(code: code, message: message, severity: fatal ? "FATAL" : "ERROR", &out)
            if !fatal { Backend.readyForQuery(&out) }
        case .endOfTimeline(let end):
            Backend.result(
                columns: [("next_tli", 20), ("next_tli_startpos", 25)],
                rows: [[Array(String(end.next).utf8), Array(end.switchPoint.description.utf8)]], tag: "START_STREAMING", &out)
            Backend.commandComplete("START_REPLICATION", &out)
            Backend.readyForQuery(&out)
        case .startStreaming, .close:
            return
        }
        try await outbound.write(out)
    }

    private mutating func perform(
        _ action: WalSenderStateMachine.Action, system: SystemSpool,
        inbound: inout NIOAsyncChannelInboundStream<FrontendMessage>.AsyncIterator
    ) async throws {
        switch action {
        case .startStreaming(let slot, let start, let timeline, let end):
            try await startReplication(system: system, slot: slot, start: start, timeline: timeline, end: end, inbound: &inbound)
        case .close(let reason):
            throw StandbyEndpointError(reason)
        case .error(_, let text, true):
            try await send(action)
            throw StandbyEndpointError(text)
        case .error(let code, let text, false):
            logger.warning("refused a standby's request", metadata: ["walship.sqlstate": "\(code)", "walship.error": "\(text)"])
            try await send(action)
        case .refuseEncryption, .acceptEncryption, .requestSASL, .saslContinue, .accept, .result, .endOfTimeline:
            try await send(action)
        }
    }

    private mutating func startReplication(
        system: SystemSpool, slot: String?, start: LSN, timeline: TimeLineID,
        end: WalSenderStateMachine.TimelineEnd?,
        inbound: inout NIOAsyncChannelInboundStream<FrontendMessage>.AsyncIterator
    ) async throws {
        let available = end?.switchPoint ?? system.position.durable
        // The start must be in the spool before COPY starts, so the standby gets a plain error. A start at the
        // spool's end (whose segment may not exist yet) just waits for WAL.
        if start < available {
            do {
                _ = try WALRangeReader(spool: system).read(timeline: timeline, from: start, durableEnd: available, maxBytes: 0)
            } catch {
                logger.warning(
                    "standby asked for WAL the spool does not have",
                    metadata: ["walship.start_lsn": "\(start)", "walship.error": "\(error)"])
                machine.streamingRefused()
                try await send(.error(code: "58P01", message: "\(error)", fatal: false))
                return
            }
        }
        let name = machine.applicationName
        logger.notice(
            "standby streaming",
            metadata: [
                "walship.application_name": "\(name)",
                "walship.start_lsn": "\(start)", "walship.timeline": "\(timeline)",
            ])
        // The standby is remembered (by slot, else by application_name) so retention keeps what it still needs,
        // also while it is down. Saved at most every few seconds, and when streaming ends.
        let initial = StandbyRecord(name: slot ?? name, viaSlot: slot != nil, replayedLSN: start, updatedAt: Date())
        await Self.remember(initial, in: system)
        let server = self.server
        let streamer = StandbyStreamer(
            channel: channel, system: system, server: server, applicationName: name, record: initial,
            timeline: timeline, start: start, end: end,
            keepaliveInterval: server.keepaliveInterval)
        defer { server.markDisconnected(system: system.systemIdentifier, name: name) }
        let outcome: Result<Void, any Error>
        do {
            try await stream(streamer, system: system, initial: initial, timeline: timeline, inbound: &inbound)
            outcome = .success(())
        } catch {
            outcome = .failure(error)
        }
        await Self.remember(streamer.replay.withLock { $0 }, in: system)
        try outcome.get()
    }

    /// Saves a standby's record on NIO's blocking pool: the save fsyncs, and on the concurrency pool a slow
    /// disk would hold up every task of the receiver. A failed save is retried with the next one.
    private static func remember(_ record: StandbyRecord, in system: SystemSpool) async {
        try? await NIOThreadPool.singleton.runIfActive {
            try StandbyRegistry.save(record, systemDirectory: system.directory)
        }
    }

    /// Streams until the standby ends the timeline with CopyDone (returns) or anything else ends streaming (throws).
    private mutating func stream(
        _ streamer: StandbyStreamer, system: SystemSpool, initial: StandbyRecord, timeline: TimeLineID,
        inbound: inout NIOAsyncChannelInboundStream<FrontendMessage>.AsyncIterator
    ) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await streamer.run() }
            group.addTask {
                var saved = initial
                while true {
                    try await Task.sleep(for: .seconds(5))
                    let record = streamer.replay.withLock { $0 }
                    if record != saved {
                        await Self.remember(record, in: system)
                        saved = record
                    }
                }
            }
            defer { group.cancelAll() }
            // Status updates are taken by the streamer on the event loop; what reaches this task ends streaming.
            while let message = try await inbound.next() {
                switch message {
                case .copyData:
                    continue  // one the tap let through while it was being set up or taken away
                case .copyDone:
                    await StandbyStreamer.detach(from: channel)
                    if let sent = streamer.sentEnd.withLock({ $0 }) { machine.historicTimelineSent(sent) }
                    let action = machine.copyDoneReceived()
                    guard case .endOfTimeline(let ended) = action else { throw StandbyEndpointError("standby ended streaming") }
                    // End of timeline: tell the standby where its next timeline starts, then take commands again.
                    try await send(action)
                    logger.notice(
                        "standby reached the end of its timeline",
                        metadata: [
                            "walship.timeline": "\(timeline)", "walship.next_timeline": "\(ended.next)",
                            "walship.switch_lsn": "\(ended.switchPoint)",
                        ])
                    return
                case .terminate:
                    throw StandbyEndpointError("standby ended streaming")
                default:
                    throw StandbyEndpointError("unexpected message while streaming")
                }
            }
            if let failure = streamer.failure.withLock({ $0 }) { throw StandbyEndpointError("streaming stopped: \(failure)") }
            throw StandbyEndpointError("standby closed the connection")
        }
    }
}

func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    var difference = UInt8(a.count == b.count ? 0 : 1)
    for i in 0..<max(a.count, b.count) {
        difference |= (i < a.count ? a[i] : 0) ^ (i < b.count ? b[i] : 0)
    }
    return difference == 0
}
