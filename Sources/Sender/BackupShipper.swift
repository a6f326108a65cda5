import Foundation
import Logging
import NIOCore
import PGReplication
import ShipProtocol
import ShipTLS
import Synchronization
import WALCore

/// Runs BASE_BACKUP on the primary and ships it through its own link (role "backup") to the receiver,
/// alongside the running stream; finishes when the receiver says the backup is complete, that is when the
/// spool durably holds the WAL from its start to its stop LSN.
public struct BackupShipper: Sendable {
    public var source: Conninfo
    public var receiverHost: String
    public var receiverPort: Int
    public var label: String
    public var linkTimeout: Duration = .seconds(30)
    public var tls: ClientTLS?
    /// How hard the data directory is compressed; `auto` follows the link as the WAL stream does.
    public var compression: CompressionPolicy.Mode = .auto
    /// Asked once the primary's system identifier is known, before the receiver is contacted: a reason not to
    /// take the backup (`--if-older-than`), which `run` throws as `BackupSkipped`, or nil to go on.
    public var reasonToSkip: (@Sendable (_ systemIdentifier: UInt64) async -> String?)?
    let logger: Logger

    public init(source: Conninfo, receiverHost: String, receiverPort: Int, label: String, logger: Logger) {
        self.source = source
        self.receiverHost = receiverHost
        self.receiverPort = receiverPort
        self.label = label
        self.logger = logger
    }

    public enum Progress: Sendable {
        case started(start: LSN, estimatedBytes: UInt64)
        case sent(bytes: UInt64, estimatedBytes: UInt64)
        case stored(id: String, stop: LSN)
        case waitingForWAL(durable: LSN, stop: LSN)
    }

    public struct Outcome: Sendable {
        public var id: String
        public var start: LSN
        public var stop: LSN
        public var archiveBytes: UInt64
        /// What the pieces of the backup (archive and manifest) came to once compressed: their frames' payloads.
        public var compressedBytes: UInt64
        public var pieces: Int
        /// Pieces compressed with LZ4HC (`compression` auto or high).
        public var highCompressionPieces: Int
    }

    public func run(progress: @escaping @Sendable (Progress) -> Void) async throws -> Outcome {
        let session = ReplicationSession(conninfo: source, logger: logger)
        do {
            let outcome = try await ship(session, progress: progress)
            await session.close()
            return outcome
        } catch {
            await session.close()
            throw error
        }
    }

    private func ship(_ session: ReplicationSession, progress: @escaping @Sendable (Progress) -> Void) async throws -> Outcome {
        let identity = try await session.connect(applicationName: "walship_backup")
        guard identity.serverVersion / 10000 == 15 else {
            throw BackupError(
                "the primary runs PostgreSQL \(identity.serverVersion / 10000); this walship supports PostgreSQL 15")
        }
        if let reason = await reasonToSkip?(identity.systemIdentifier) { throw BackupSkipped(reason: reason) }
        let channel = try await connectToReceiver(host: receiverHost, port: receiverPort, linkTimeout: linkTimeout, tls: tls)
        return try await channel.executeThenClose { inbound, outbound in
            var iterator = inbound.makeAsyncIterator()
            let hello = Hello(
                role: .backup, synchronous: false, systemIdentifier: identity.systemIdentifier,
                timeline: identity.timeline, walSegmentSize: UInt32(identity.segmentSize.bytes),
                senderName: "walship backup")
            switch try await exchangeHello(hello, outbound: outbound, inbound: &iterator) {
            case .welcome: break
            case .refusal(let r): throw BackupError("the receiver refused the backup: \(r.message)")
            case let other?: throw BackupError("the receiver answered the backup handshake with \(other.kind)")
            case nil: throw BackupError("the receiver closed the link during the handshake")
            }
            // A fenced DR site takes a backup of a later timeline only from the promoted lineage: the history file
            // proves the descent, as on the stream link.
            if identity.timeline > 1 {
                let file = try await session.timelineHistory(identity.timeline)
                try await outbound.write(
                    .history(HistoryFile(timeline: identity.timeline, content: ByteBuffer(bytes: file.content))))
            }
            let gate = StreamGate()
            let producer = BackupEvents.makeSequence(
                backPressureStrategy: .init(lowWatermark: 2, highWatermark: 8),
                finishOnDeinit: false, delegate: gate)
            let source = producer.source
            let events = producer.sequence
            let state = Mutex<(start: LSN, stop: LSN, bytes: UInt64, outcome: Outcome?)>((.invalid, .invalid, 0, nil))
            let written = Mutex(BackupPieceWriter.Counts())
            do {
                try await ShipChannel.runLink(
                    channel: channel.channel,
                    workers: [
                        {
                            // Keepalives for the whole link, not only once the data is sent: BASE_BACKUP's checkpoint
                            // may keep the data from starting for longer than the receiver's link timeout.
                            async let keepalives: Void = keepAlive(outbound)
                            // BASE_BACKUP runs on the connection's thread while this task ships what it produces.
                            async let produced: Void = session.baseBackup(label: label, gate: gate, source: source)
                            var pieces = BackupPieceWriter(channel: channel.channel, compression: compression)
                            var estimated: UInt64 = 0
                            for try await event in events {
                                switch event {
                                case .started(let start, let timeline, let size):
                                    estimated = size
                                    state.withLock { $0.start = start }
                                    progress(.started(start: start, estimatedBytes: size))
                                    try await outbound.write(
                                        .backupStart(
                                            BackupStart(
                                                startLSN: start, timeline: timeline,
                                                estimatedBytes: size, label: label)))
                                case .archiveData(let bytes):
                                    state.withLock { $0.bytes += UInt64(bytes.readableBytes) }
                                    try await pieces.send(.archive, bytes)
                                case .manifestData(let bytes):
                                    try await pieces.send(.manifest, bytes)
                                case .progress(let done):
                                    progress(.sent(bytes: done, estimatedBytes: estimated))
                                case .finished(let stop, let timeline):
                                    state.withLock { $0.stop = stop }
                                    try await pieces.drain()
                                    written.withLock { [counts = pieces.counts] in $0 = counts }
                                    try await outbound.write(.backupEnd(BackupEnd(stopLSN: stop, timeline: timeline)))
                                }
                            }
                            try await produced
                            // The receiver now waits for the stream to bring the WAL; the keepalives go on.
                            try await keepalives
                        }
                    ],
                    reader: {
                        while let message = try await iterator.next() {
                            switch message {
                            case .backupStatus(let status):
                                let stop = state.withLock { $0.stop }
                                switch status.state {
                                case .waitingForWAL:
                                    progress(.waitingForWAL(durable: status.durableLSN, stop: stop))
                                case .complete:
                                    let s = state.withLock { $0 }
                                    let counts = written.withLock { $0 }
                                    progress(.stored(id: status.backupID, stop: stop))
                                    state.withLock {
                                        $0.outcome = Outcome(
                                            id: status.backupID, start: s.start, stop: stop, archiveBytes: s.bytes,
                                            compressedBytes: counts.compressedBytes, pieces: counts.pieces,
                                            highCompressionPieces: counts.highCompressionPieces)
                                    }
                                    return
                                }
                            case .ack: continue
                            case .refusal(let r): throw BackupError("the receiver ended the backup: \(r.message)")
                            default: throw BackupError("unexpected \(message.kind) frame from the receiver")
                            }
                        }
                        throw BackupError("the receiver closed the link before the backup was complete")
                    })
            } catch {
                if let outcome = state.withLock({ $0.outcome }) { return outcome }
                throw error
            }
        }
    }
}

/// No backup was taken, on purpose: `reasonToSkip` gave this reason.
public struct BackupSkipped: Error, CustomStringConvertible {
    public let reason: String
    public var description: String { reason }
}

extension BackupShipper {
    /// A keepalive every sixth of the link timeout until cancelled.
    func keepAlive(_ outbound: NIOAsyncChannelOutboundWriter<ShipMessage>) async throws {
        while true {
            try await Task.sleep(for: .seconds(max(1, linkTimeout.components.seconds / 6)))
            try await outbound.write(.keepalive(Keepalive(primaryEndLSN: .invalid, sendTime: .now(), replyRequested: false)))
        }
    }
}

/// Writes backup pieces into the channel directly rather than through the async writer, so that the moment the
/// socket takes each one is known: that is how the compression policy measures the link, as for the WAL
/// stream's frames (over a slow link, LZ4HC takes about a tenth off a data directory's bytes). Up to
/// `maxPendingBytes` of compressed pieces wait unsent, as many as the WAL stream lets wait (the link's
/// write-buffer high-water mark): the socket takes queued data in bursts, and only pieces that were already
/// waiting when the one before them went show the policy how fast the link is. Used by one task; the policy is
/// shared with the event loop, which reports each piece taken.
struct BackupPieceWriter {
    struct Counts: Sendable {
        var pieces = 0
        var highCompressionPieces = 0
        var compressedBytes: UInt64 = 0
    }

    static let maxPendingBytes = 2 << 20
    let channel: Channel
    private let policy: SharedCompressionPolicy
    private let allocator = ByteBufferAllocator()
    private var pending: [(taken: EventLoopFuture<Void>, bytes: Int)] = []
    private var pendingBytes = 0
    private(set) var counts = Counts()

    init(channel: Channel, compression: CompressionPolicy.Mode) {
        self.channel = channel
        policy = SharedCompressionPolicy(mode: compression)
    }

    mutating func send(_ part: BackupData.Part, _ bytes: ByteBuffer) async throws {
        let length = bytes.readableBytes
        let (data, effort, written) = policy.compress(walBytes: length) { [allocator] in
            BackupData.make(part: part, bytes: bytes, allocator: allocator, effort: $0)
        }
        counts.pieces += 1
        if effort == .high && data.compression == .lz4Block { counts.highCompressionPieces += 1 }
        counts.compressedBytes += UInt64(data.payload.readableBytes)
        let taken = channel.eventLoop.makePromise(of: Void.self)
        channel.writeAndFlush(ShipMessage.backupData(data), promise: taken)
        taken.futureResult.whenComplete { [policy] _ in policy.taken(walBytes: length, writtenAt: written) }
        pending.append((taken.futureResult, data.payload.readableBytes))
        pendingBytes += data.payload.readableBytes
        while pendingBytes > Self.maxPendingBytes { try await takeOldest() }
    }

    /// Waits until the socket has taken every piece.
    mutating func drain() async throws {
        while !pending.isEmpty { try await takeOldest() }
    }

    private mutating func takeOldest() async throws {
        let oldest = pending.removeFirst()
        pendingBytes -= oldest.bytes
        try await oldest.taken.get()
    }
}
