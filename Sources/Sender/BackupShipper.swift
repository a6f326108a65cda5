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
            throw BackupError("the primary runs PostgreSQL \(identity.serverVersion / 10000); this walship supports PostgreSQL 15")
        }
        let channel = try await connectToReceiver(host: receiverHost, port: receiverPort, linkTimeout: linkTimeout, tls: tls)
        return try await channel.executeThenClose { inbound, outbound in
            var iterator = inbound.makeAsyncIterator()
            let hello = Hello(role: .backup, synchronous: false, systemIdentifier: identity.systemIdentifier,
                              timeline: identity.timeline, walSegmentSize: UInt32(identity.segmentSize.bytes),
                              senderName: "walship backup")
            switch try await exchangeHello(hello, outbound: outbound, inbound: &iterator) {
            case .welcome: break
            case .refusal(let r): throw BackupError("the receiver refused the backup: \(r.message)")
            case let other?: throw BackupError("the receiver answered the backup handshake with \(other.kind)")
            case nil: throw BackupError("the receiver closed the link during the handshake")
            }
            let gate = StreamGate()
            let producer = BackupEvents.makeSequence(backPressureStrategy: .init(lowWatermark: 2, highWatermark: 8),
                                                     finishOnDeinit: false, delegate: gate)
            let source = producer.source
            let events = producer.sequence
            let state = Mutex<(start: LSN, stop: LSN, bytes: UInt64, outcome: Outcome?)>((.invalid, .invalid, 0, nil))
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
                            let allocator = ByteBufferAllocator()
                            var estimated: UInt64 = 0
                            for try await event in events {
                                switch event {
                                case .started(let start, let timeline, let size):
                                    estimated = size
                                    state.withLock { $0.start = start }
                                    progress(.started(start: start, estimatedBytes: size))
                                    try await outbound.write(.backupStart(BackupStart(startLSN: start, timeline: timeline,
                                                                                      estimatedBytes: size, label: label)))
                                case .archiveData(let bytes):
                                    state.withLock { $0.bytes += UInt64(bytes.readableBytes) }
                                    try await outbound.write(.backupData(.make(part: .archive, bytes: bytes, allocator: allocator)))
                                case .manifestData(let bytes):
                                    try await outbound.write(.backupData(.make(part: .manifest, bytes: bytes, allocator: allocator)))
                                case .progress(let done):
                                    progress(.sent(bytes: done, estimatedBytes: estimated))
                                case .finished(let stop, let timeline):
                                    state.withLock { $0.stop = stop }
                                    try await outbound.write(.backupEnd(BackupEnd(stopLSN: stop, timeline: timeline)))
                                }
                            }
                            try await produced
                            // The receiver now waits for the stream to bring the WAL; the keepalives go on.
                            try await keepalives
                        },
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
                                    progress(.stored(id: status.backupID, stop: stop))
                                    state.withLock { $0.outcome = Outcome(id: status.backupID, start: s.start, stop: stop, archiveBytes: s.bytes) }
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

extension BackupShipper {
    /// A keepalive every sixth of the link timeout until cancelled.
    func keepAlive(_ outbound: NIOAsyncChannelOutboundWriter<ShipMessage>) async throws {
        while true {
            try await Task.sleep(for: .seconds(max(1, linkTimeout.components.seconds / 6)))
            try await outbound.write(.keepalive(Keepalive(primaryEndLSN: .invalid, sendTime: .now(), replyRequested: false)))
        }
    }
}
