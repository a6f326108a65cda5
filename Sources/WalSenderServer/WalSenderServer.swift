import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PGReplication
import Spool
import Synchronization
import WALCore

/// How standbys prove who they are. SCRAM arrives with the security work; these keep their meaning.
public enum StandbyAuthentication: Sendable {
    /// Anyone who can reach the (loopback-only) endpoint.
    case trust
    /// A password checked in the clear over the connection (cleartext password message).
    case password(String)
}

/// The replay position a standby last reported, per system.
public struct StandbyProgress: Sendable {
    public var applicationName: String
    public var written: LSN
    public var flushed: LSN
    public var applied: LSN
    public var reportedAt: PostgresTimestamp
}

/// Speaks enough of PostgreSQL's replication protocol that a stock PostgreSQL 15 standby streams from the
/// spool (`primary_conninfo = 'host=... port=...'`): startup and authentication, IDENTIFY_SYSTEM,
/// TIMELINE_HISTORY, SHOW, START_REPLICATION with XLogData and keepalives, and standby status updates.
public final class WalSenderServer: Sendable {
    let host: String
    let port: Int
    let spool: Spool
    let authentication: StandbyAuthentication
    let logger: Logger
    let keepaliveInterval: Duration
    private let progress = Mutex<[UInt64: [String: StandbyProgress]]>([:])

    public init(host: String, port: Int, spool: Spool, authentication: StandbyAuthentication, logger: Logger,
                keepaliveInterval: Duration = .seconds(10)) {
        self.host = host
        self.port = port
        self.spool = spool
        self.authentication = authentication
        self.logger = logger
        self.keepaliveInterval = keepaliveInterval
    }

    /// The furthest replay position any standby of `system` reported, to carry back to the primary.
    public func replayed(system: UInt64) -> (LSN, PostgresTimestamp)? {
        progress.withLock { $0[system]?.values.max { $0.applied < $1.applied } }.map { ($0.applied, $0.reportedAt) }
    }

    public var standbys: [UInt64: [StandbyProgress]] { progress.withLock { $0.mapValues { Array($0.values) } } }

    public func run() async throws {
        let server: NIOAsyncChannel<NIOAsyncChannel<FrontendMessage, ByteBuffer>, Never>
        do {
            server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.backlog, value: 16)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
                .bind(host: host, port: port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrontendMessageDecoder()))
                        return try NIOAsyncChannel<FrontendMessage, ByteBuffer>(wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            throw StandbyEndpointError("cannot listen for standbys on \(host):\(port): \(error) (hint: choose another --standby-listen)")
        }
        logger.notice("standby endpoint listening", metadata: ["walship.standby_listen": "\(host):\(port)"])
        try await withThrowingDiscardingTaskGroup { group in
            try await server.executeThenClose { connections in
                for try await connection in connections {
                    group.addTask { await self.serve(connection) }
                }
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
}

public struct StandbyEndpointError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The conversation with one standby, from startup to the end of streaming.
struct StandbySession {
    let server: WalSenderServer
    let channel: Channel
    let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    let logger: Logger
    var applicationName = "walreceiver"

    init(server: WalSenderServer, channel: Channel, outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>, logger: Logger) {
        self.server = server
        self.channel = channel
        self.outbound = outbound
        self.logger = logger
    }

    mutating func run(_ inbound: inout NIOAsyncChannelInboundStream<FrontendMessage>.AsyncIterator) async throws {
        try await startup(&inbound)
        let system = try openSystem()
        while let message = try await inbound.next() {
            switch message {
            case .query(let text):
                try await command(text, system: system, inbound: &inbound)
            case .terminate:
                return
            case .copyData, .copyDone, .copyFail, .password, .startup, .sslRequest, .gssEncryptionRequest, .cancelRequest:
                try await sendError(code: "08P01", "unexpected message outside of a command")
                return
            }
        }
    }

    // MARK: Startup and authentication

    private mutating func startup(_ inbound: inout NIOAsyncChannelInboundStream<FrontendMessage>.AsyncIterator) async throws {
        while let message = try await inbound.next() {
            switch message {
            case .sslRequest, .gssEncryptionRequest:
                try await outbound.write(ByteBuffer(string: "N"))
            case .cancelRequest:
                throw StandbyEndpointError("cancel request (not supported)")
            case .startup(let parameters):
                guard parameters["replication"].map({ ["true", "on", "yes", "1"].contains($0.lowercased()) }) == true else {
                    try await sendError(code: "08P01", "walship serves physical replication connections only (replication=true)", fatal: true)
                    throw StandbyEndpointError("refused a non-replication connection")
                }
                applicationName = parameters["application_name"] ?? "walreceiver"
                try await authenticate(user: parameters["user"] ?? "", &inbound)
                var out = ByteBuffer()
                Backend.authenticationOk(&out)
                for (name, value) in [
                    ("server_version", "15.0 (walship)"), ("server_encoding", "UTF8"), ("client_encoding", "UTF8"),
                    ("DateStyle", "ISO, MDY"), ("integer_datetimes", "on"), ("standard_conforming_strings", "on"),
                    ("TimeZone", "UTC"), ("in_hot_standby", "off"), ("default_transaction_read_only", "off"),
                    ("application_name", applicationName), ("is_superuser", "off"),
                ] { Backend.parameterStatus(name, value, &out) }
                Backend.backendKeyData(pid: UInt32(getpid()), key: UInt32.random(in: 1...UInt32.max), &out)
                Backend.readyForQuery(&out)
                try await outbound.write(out)
                logger.info("standby connected", metadata: ["walship.application_name": "\(applicationName)"])
                return
            default:
                throw StandbyEndpointError("unexpected message before startup")
            }
        }
        throw StandbyEndpointError("connection closed before startup")
    }

    private func authenticate(user: String, _ inbound: inout NIOAsyncChannelInboundStream<FrontendMessage>.AsyncIterator) async throws {
        switch server.authentication {
        case .trust:
            return
        case .password(let expected):
            var out = ByteBuffer()
            Backend.authenticationCleartextPassword(&out)
            try await outbound.write(out)
            guard case .password(var bytes) = try await inbound.next() else {
                throw StandbyEndpointError("no password from the standby")
            }
            if bytes.last == 0 { bytes.removeLast() }
            guard constantTimeEqual(bytes, Array(expected.utf8)) else {
                try await sendError(code: "28P01", "password authentication failed for user \"\(user)\"", fatal: true)
                throw StandbyEndpointError("wrong password from a standby (user \"\(user)\")")
            }
        }
    }

    private func openSystem() throws -> SystemSpool {
        guard let system = server.spool.openSystems.sorted(by: { $0.systemIdentifier < $1.systemIdentifier }).first,
            server.spool.openSystems.count == 1
        else {
            throw StandbyEndpointError(server.spool.openSystems.isEmpty
                ? "the spool holds no WAL yet; a standby can connect once a sender has shipped some"
                : "the spool holds several systems; serving standbys needs one system per receiver in this release")
        }
        return system
    }

    // MARK: Commands

    private mutating func command(_ text: String, system: SystemSpool,
                                  inbound: inout NIOAsyncChannelInboundStream<FrontendMessage>.AsyncIterator) async throws {
        let command: ReplicationCommand
        do { command = try ReplicationCommand.parse(text) } catch {
            try await sendError(code: "42601", error.description)
            return
        }
        var out = ByteBuffer()
        let position = system.position
        switch command {
        case .identifySystem:
            Backend.result(columns: [("systemid", 25), ("timeline", 23), ("xlogpos", 25), ("dbname", 25)],
                           rows: [[Array(String(system.systemIdentifier).utf8), Array(String(position.timeline).utf8),
                                   Array(position.durable.description.utf8), nil]],
                           tag: "IDENTIFY_SYSTEM", &out)
        case .timelineHistory(let tli):
            let name = historyFileName(timeline: tli)
            guard let content = try? SpoolReader(root: server.spool.root, system: system.systemIdentifier).contents(of: name) else {
                try await sendError(code: "58P01", "could not open file \"pg_wal/\(name)\": No such file or directory")
                return
            }
            // Raw bytes as text (OID 25), exactly as PostgreSQL sends them: never bytea-escaped.
            Backend.result(columns: [("filename", 25), ("content", 25)], rows: [[Array(name.utf8), content]],
                           tag: "TIMELINE_HISTORY", &out)
        case .show(let name):
            guard name == "wal_segment_size" else {
                try await sendError(code: "42704", "unrecognized configuration parameter \"\(name)\"")
                return
            }
            Backend.result(columns: [(name, 25)], rows: [[Array(system.segmentSize.description.utf8)]], tag: "SHOW", &out)
        case .readReplicationSlot(let slot):
            let record = (try? StandbyRegistry.list(systemDirectory: system.directory))?.first { $0.viaSlot && $0.name == slot }
            let row: [[UInt8]?] = record.map { [Array("physical".utf8), Array($0.replayedLSN.utf8), Array(String(position.timeline).utf8)] }
                ?? [nil, nil, nil]
            Backend.result(columns: [("slot_type", 25), ("restart_lsn", 25), ("restart_tli", 20)], rows: [row],
                           tag: "READ_REPLICATION_SLOT", &out)
        case .startReplication(let slot, let start, let timeline):
            try await startReplication(system: system, slot: slot, start: start, timeline: timeline ?? position.timeline,
                                       inbound: &inbound)
            return
        }
        Backend.readyForQuery(&out)
        try await outbound.write(out)
    }

    private mutating func startReplication(system: SystemSpool, slot: String?, start: LSN, timeline: TimeLineID,
                                           inbound: inout NIOAsyncChannelInboundStream<FrontendMessage>.AsyncIterator) async throws {
        let position = system.position
        var end: TimelineEnd?
        if timeline != position.timeline {
            guard let found = historicEnd(of: timeline, system: system, current: position.timeline) else {
                try await sendError(code: "58P01", "requested timeline \(timeline) is not in this server's history")
                return
            }
            guard start <= found.switchPoint else {
                try await sendError(code: "58P01", "requested starting point \(start) on timeline \(timeline) is not in this server's history")
                return
            }
            end = found
        }
        guard start <= position.durable || end != nil else {
            try await sendError(code: "58P01", "requested starting point \(start) is ahead of the WAL flush position of this server \(position.durable)")
            return
        }
        // Check the start is in the spool before COPY starts, so the standby gets a plain error. A start at the
        // spool's end (whose segment may not exist yet) just waits for WAL.
        if start < (end?.switchPoint ?? position.durable) {
          do {
            _ = try WALRangeReader(spool: system).read(timeline: timeline, from: start, durableEnd: end?.switchPoint ?? position.durable, maxBytes: 0)
        } catch {
            logger.warning("standby asked for WAL the spool does not have", metadata: ["walship.start_lsn": "\(start)", "walship.error": "\(error)"])
            try await sendError(code: "58P01", "\(error)")
            return
          }
        }
        var out = ByteBuffer()
        Backend.copyBothResponse(&out)
        try await outbound.write(out)
        logger.notice("standby streaming", metadata: ["walship.application_name": "\(applicationName)",
                                                      "walship.start_lsn": "\(start)", "walship.timeline": "\(timeline)"])
        let name = applicationName
        let server = self.server
        let outbound = self.outbound
        // The standby is remembered (by slot, else by application_name) so retention keeps what it still needs,
        // also while it is down. Saved at most every few seconds, and when streaming ends.
        var record = StandbyRecord(name: slot ?? name, viaSlot: slot != nil, replayedLSN: start, updatedAt: Date())
        var lastSaved = ContinuousClock.now
        try? StandbyRegistry.save(record, systemDirectory: system.directory)
        defer { try? StandbyRegistry.save(record, systemDirectory: system.directory) }
        let streamEnded = NIOLockedValueBox(false)
        let channel = self.channel
        let historicEnd = end
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                do {
                    try await Self.stream(system: system, reader: WALRangeReader(spool: system), timeline: timeline, from: start,
                                          until: historicEnd?.switchPoint, keepaliveInterval: server.keepaliveInterval, outbound: outbound)
                    // A historic timeline is fully sent: end COPY as a PostgreSQL walsender does. Marked first:
                    // the standby's CopyDone may arrive before this write returns.
                    streamEnded.withLockedValue { $0 = true }
                    var done = ByteBuffer()
                    Backend.copyDone(&done)
                    try await outbound.write(done)
                } catch is CancellationError {
                } catch {
                    // Nothing more can be sent: close, so the standby reconnects instead of waiting.
                    channel.close(promise: nil)
                    throw error
                }
            }
            // Standby messages: status updates carry its replay position back towards the primary.
            defer { group.cancelAll() }
            while let message = try await inbound.next() {
                switch message {
                case .copyData(var data):
                    guard let type = data.getInteger(at: data.readerIndex, as: UInt8.self) else { continue }
                    if type == UInt8(ascii: "r"), let bytes = data.readBytes(length: data.readableBytes) {
                        if let update = try? bytes.withUnsafeBytes({ try StandbyStatusUpdate.decode($0) }) {
                            server.record(system: system.systemIdentifier, StandbyProgress(
                                applicationName: name, written: update.write, flushed: update.flush, applied: update.apply,
                                reportedAt: update.sendTime))
                            if update.apply.isValid {
                                record.replayedLSN = update.apply.description
                                record.updatedAt = Date()
                                if ContinuousClock.now - lastSaved >= .seconds(5) {
                                    try? StandbyRegistry.save(record, systemDirectory: system.directory)
                                    lastSaved = .now
                                }
                            }
                            if update.replyRequested { try await outbound.write(Self.keepalive(system, replyRequested: false)) }
                        }
                    }
                case .copyDone:
                    guard let historicEnd, streamEnded.withLockedValue({ $0 }) else {
                        throw StandbyEndpointError("standby ended streaming")
                    }
                    // End of timeline: tell the standby where its next timeline starts, then take commands again.
                    var out = ByteBuffer()
                    Backend.result(columns: [("next_tli", 20), ("next_tli_startpos", 25)],
                                   rows: [[Array(String(historicEnd.next).utf8), Array(historicEnd.switchPoint.description.utf8)]],
                                   tag: "START_STREAMING", &out)
                    Backend.commandComplete("START_REPLICATION", &out)
                    Backend.readyForQuery(&out)
                    try await outbound.write(out)
                    logger.notice("standby reached the end of its timeline", metadata: [
                        "walship.timeline": "\(timeline)", "walship.next_timeline": "\(historicEnd.next)",
                        "walship.switch_lsn": "\(historicEnd.switchPoint)",
                    ])
                    return
                case .terminate:
                    throw StandbyEndpointError("standby ended streaming")
                default:
                    throw StandbyEndpointError("unexpected message while streaming")
                }
            }
            throw StandbyEndpointError("standby closed the connection")
        }
    }

    struct TimelineEnd {
        var switchPoint: LSN
        var next: TimeLineID
    }

    /// Where `timeline` ended and which timeline followed it, from the history file of `current`.
    private func historicEnd(of timeline: TimeLineID, system: SystemSpool, current: TimeLineID) -> TimelineEnd? {
        guard timeline < current,
            let bytes = try? SpoolReader(root: server.spool.root, system: system.systemIdentifier).contents(of: historyFileName(timeline: current)),
            let entries = try? parseTimelineHistory(String(decoding: bytes, as: UTF8.self)),
            let index = entries.firstIndex(where: { $0.parent == timeline })
        else { return nil }
        return TimelineEnd(switchPoint: entries[index].switchPoint,
                           next: index + 1 < entries.count ? entries[index + 1].parent : current)
    }

    /// Sends WAL as soon as it is durable in the spool; keepalives while there is none.
    private static func stream(system: SystemSpool, reader: WALRangeReader, timeline: TimeLineID, from start: LSN, until end: LSN?,
                               keepaliveInterval: Duration, outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>) async throws {
        var position = start
        var lastSent = ContinuousClock.now
        var end = end
        while true {
            let current = system.position
            if end == nil && current.timeline != timeline {
                // The spool moved to a newer timeline while we streamed this one: finish at its switch point.
                end = Self.switchPoint(of: timeline, system: system, current: current.timeline)
                guard end != nil else { throw StandbyEndpointError("timeline \(timeline) is no longer in the spool's history") }
            }
            if let end, position >= end { return }
            let available = end ?? current.durable
            if position < available {
                let bytes = try reader.read(timeline: timeline, from: position, durableEnd: available, maxBytes: 128 * 1024)
                guard !bytes.isEmpty else { throw StandbyEndpointError("no WAL readable at \(position) on timeline \(timeline)") }
                var out = ByteBuffer()
                Backend.copyData(&out) {
                    $0.writeBytes(ReplicationMessage.encodeXLogDataHeader(dataStart: position, walEnd: available, sendTime: .now()))
                    $0.writeBytes(bytes)
                }
                try await outbound.write(out)
                position = position.advanced(by: UInt64(bytes.count))
                lastSent = .now
                continue
            }
            _ = await system.waitForDurable(beyond: position, timeout: keepaliveInterval)
            try Task.checkCancellation()
            if ContinuousClock.now - lastSent >= keepaliveInterval {
                try await outbound.write(keepalive(system, replyRequested: true))
                lastSent = .now
            }
        }
    }

    private static func switchPoint(of timeline: TimeLineID, system: SystemSpool, current: TimeLineID) -> LSN? {
        let path = system.walDirectory + "/" + historyFileName(timeline: current)
        guard let text = try? String(contentsOfFile: path, encoding: .utf8), let entries = try? parseTimelineHistory(text) else { return nil }
        return entries.first { $0.parent == timeline }?.switchPoint
    }

    private static func keepalive(_ system: SystemSpool, replyRequested: Bool) -> ByteBuffer {
        var out = ByteBuffer()
        Backend.copyData(&out) {
            $0.writeBytes(ReplicationMessage.encodeKeepalive(.init(walEnd: system.position.durable, sendTime: .now(),
                                                                   replyRequested: replyRequested)))
        }
        return out
    }

    private func sendError(code: String, _ message: String, fatal: Bool = false) async throws {
        var out = ByteBuffer()
        Backend.error(code: code, message: message, severity: fatal ? "FATAL" : "ERROR", &out)
        if !fatal { Backend.readyForQuery(&out) }
        try await outbound.write(out)
    }
}

func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    var difference = UInt8(a.count == b.count ? 0 : 1)
    for i in 0..<max(a.count, b.count) {
        difference |= (i < a.count ? a[i] : 0) ^ (i < b.count ? b[i] : 0)
    }
    return difference == 0
}
