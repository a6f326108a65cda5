import LZ4Codec
import NIOCore
import WALCore

/// Version of the framed protocol between `walship send` and `walship receive` (docs/ship-protocol.md). Version 2
/// adds the sender's receiver-loss rule to the hello, the mode frame, and the verdict link and frame (whether the
/// sender can still reach the primary).
public let shipProtocolVersion: UInt16 = 2

/// The oldest version a receiver still accepts, so that the receiver can be upgraded before its senders.
public let oldestShipProtocolVersion: UInt16 = 1

/// Every message of the ship link. One case per frame kind; see docs/ship-protocol.md for the layout.
public enum ShipMessage: Hashable, Sendable {
    case hello(Hello)
    case welcome(Welcome)
    case refusal(Refusal)
    case walData(WALData)
    case ack(Ack)
    case keepalive(Keepalive)
    case history(HistoryFile)
    case backupStart(BackupStart)
    case backupData(BackupData)
    case backupEnd(BackupEnd)
    case backupStatus(BackupStatus)
    case mode(ModeChange)
    case primaryVerdict(PrimaryVerdict)

    public enum Kind: UInt8, Sendable {
        case hello = 0x01
        case welcome = 0x02
        case refusal = 0x03
        case walData = 0x10
        case ack = 0x11
        case keepalive = 0x12
        case history = 0x13
        case mode = 0x14
        case primaryVerdict = 0x15
        case backupStart = 0x20
        case backupData = 0x21
        case backupEnd = 0x22
        case backupStatus = 0x23
    }

    public var kind: Kind {
        switch self {
        case .hello: .hello
        case .welcome: .welcome
        case .refusal: .refusal
        case .walData: .walData
        case .ack: .ack
        case .keepalive: .keepalive
        case .history: .history
        case .backupStart: .backupStart
        case .backupData: .backupData
        case .backupEnd: .backupEnd
        case .backupStatus: .backupStatus
        case .mode: .mode
        case .primaryVerdict: .primaryVerdict
        }
    }
}

/// What a link is for. A receiver allows one streaming link per system; other roles run alongside it.
public enum LinkRole: UInt8, Sendable {
    case stream = 1
    case backup = 2
    /// Version 2: a short link that carries the sender's verdict on the primary (`PrimaryVerdict`), answered with an
    /// ack. Sent while the stream link is down, which is exactly when the DR site needs to know why.
    case verdict = 3
}

/// Sender → receiver, first frame: who is shipping what.
public struct Hello: Hashable, Sendable {
    public var protocolVersion: UInt16
    public var role: LinkRole
    /// The sender runs in synchronous mode: the primary's commits wait for our acks.
    public var synchronous: Bool
    public var systemIdentifier: UInt64
    public var timeline: TimeLineID
    public var walSegmentSize: UInt32
    public var senderName: String
    /// What the sender does when the DR site is away (version 2; nil from a version 1 sender, which does not say).
    public var receiverLoss: ReceiverLossRule?

    public init(
        protocolVersion: UInt16 = shipProtocolVersion, role: LinkRole, synchronous: Bool, systemIdentifier: UInt64,
        timeline: TimeLineID, walSegmentSize: UInt32, senderName: String, receiverLoss: ReceiverLossRule? = nil
    ) {
        self.protocolVersion = protocolVersion
        self.role = role
        self.synchronous = synchronous
        self.systemIdentifier = systemIdentifier
        self.timeline = timeline
        self.walSegmentSize = walSegmentSize
        self.senderName = senderName
        self.receiverLoss = receiverLoss
    }
}

/// Receiver → sender: accepted; stream from `resumeLSN` on `resumeTimeline` (both 0 when the spool is empty).
public struct Welcome: Hashable, Sendable {
    /// The version the link speaks: the sender's, when the receiver knows it.
    public var protocolVersion: UInt16
    public var resumeLSN: LSN
    public var resumeTimeline: TimeLineID
    public var receiverName: String

    public init(
        protocolVersion: UInt16 = shipProtocolVersion, resumeLSN: LSN, resumeTimeline: TimeLineID,
        receiverName: String
    ) {
        self.protocolVersion = protocolVersion
        self.resumeLSN = resumeLSN
        self.resumeTimeline = resumeTimeline
        self.receiverName = receiverName
    }
}

/// Either side: the link is refused or ended, with a stable code and a readable reason.
public struct Refusal: Hashable, Sendable, Error, CustomStringConvertible {
    public struct Code: RawRepresentable, Hashable, Sendable {
        public var rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        public static let unsupportedVersion = Code(rawValue: 1)
        public static let wrongSegmentSize = Code(rawValue: 2)
        public static let streamAlreadyActive = Code(rawValue: 3)
        public static let invalidWAL = Code(rawValue: 4)
        public static let notContiguous = Code(rawValue: 5)
        public static let spoolFailure = Code(rawValue: 6)
        public static let protocolViolation = Code(rawValue: 7)
        public static let timelineMismatch = Code(rawValue: 8)
        public static let shuttingDown = Code(rawValue: 9)
        /// The DR replica of this system was promoted; the old primary's WAL is refused.
        public static let fenced = Code(rawValue: 10)
        /// The client certificate may not ship this system (`--allow-source`).
        public static let sourceNotAllowed = Code(rawValue: 11)
    }

    public var code: Code
    public var message: String

    public init(code: Code, message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}

public enum WALCompression: UInt8, Sendable {
    case none = 0
    /// One independent LZ4 block per frame (fast LZ4 or LZ4HC; `LZ4_decompress_safe` reads either).
    case lz4Block = 1
}

/// Sender → receiver: contiguous WAL bytes from `startLSN`, compressed as `compression` says.
public struct WALData: Hashable, Sendable {
    public var timeline: TimeLineID
    public var startLSN: LSN
    /// The primary's WAL end (`walEnd` of the last XLogData) when these bytes were read.
    public var primaryEndLSN: LSN
    /// The primary's send time of the last XLogData these bytes came from.
    public var primarySendTime: PostgresTimestamp
    public var compression: WALCompression
    public var uncompressedLength: UInt32
    public var payload: ByteBuffer

    public init(
        timeline: TimeLineID, startLSN: LSN, primaryEndLSN: LSN, primarySendTime: PostgresTimestamp,
        compression: WALCompression, uncompressedLength: UInt32, payload: ByteBuffer
    ) {
        self.timeline = timeline
        self.startLSN = startLSN
        self.primaryEndLSN = primaryEndLSN
        self.primarySendTime = primarySendTime
        self.compression = compression
        self.uncompressedLength = uncompressedLength
        self.payload = payload
    }

    public var endLSN: LSN { startLSN.advanced(by: UInt64(uncompressedLength)) }

    /// Bytes a WAL frame adds around its payload: frame header, fixed fields, CRC.
    public static let frameOverheadBytes = ShipFrame.headerLength + 33 + ShipFrame.trailerLength

    /// Compresses `wal` into a frame when that saves bytes; stores it raw otherwise.
    /// With a `pool`, the compressed payload goes into one of its buffers.
    public static func make(
        timeline: TimeLineID, startLSN: LSN, primaryEndLSN: LSN,
        primarySendTime: PostgresTimestamp, wal: ByteBuffer,
        allocator: ByteBufferAllocator = ByteBufferAllocator(), pool: BufferPool? = nil,
        effort: CompressionEffort = .fast
    ) -> WALData {
        let packed = FramePayload.pack(wal, allocator: allocator, pool: pool, effort: effort)
        return WALData(
            timeline: timeline, startLSN: startLSN, primaryEndLSN: primaryEndLSN,
            primarySendTime: primarySendTime, compression: packed.compression,
            uncompressedLength: UInt32(wal.readableBytes), payload: packed.payload)
    }

    /// The WAL bytes, decompressed and checked against the declared length.
    /// With a `pool`, a compressed payload is decompressed into one of its buffers.
    public func walBytes(
        allocator: ByteBufferAllocator = ByteBufferAllocator(), pool: BufferPool? = nil
    ) throws(ShipProtocolError) -> ByteBuffer {
        try FramePayload.unpack(
            payload, compression: compression, length: uncompressedLength, kind: .walData,
            allocator: allocator, pool: pool)
    }
}

/// A frame's data as it travels: one LZ4 block when that saves bytes, raw otherwise; unpacked with the
/// bounds-checked decoder to exactly the declared length.
enum FramePayload {
    static func pack(
        _ bytes: ByteBuffer, allocator: ByteBufferAllocator, pool: BufferPool? = nil,
        effort: CompressionEffort = .fast
    ) -> (compression: WALCompression, payload: ByteBuffer) {
        let bound = LZ4.compressBound(bytes.readableBytes)
        var compressed = pool?.take(capacity: bound) ?? allocator.buffer(capacity: bound)
        LZ4.compressBlock(bytes, into: &compressed, effort: effort)
        guard compressed.readableBytes < bytes.readableBytes else {
            pool?.recycle(compressed)
            return (.none, bytes)
        }
        return (.lz4Block, compressed)
    }

    static func unpack(
        _ payload: ByteBuffer, compression: WALCompression, length: UInt32, kind: ShipMessage.Kind,
        allocator: ByteBufferAllocator, pool: BufferPool? = nil
    ) throws(ShipProtocolError) -> ByteBuffer {
        switch compression {
        case .none:
            guard payload.readableBytes == Int(length) else {
                throw .invalidField(kind: kind, reason: "raw payload length differs from declared length")
            }
            return payload
        case .lz4Block:
            var bytes = pool?.take(capacity: Int(length)) ?? allocator.buffer(capacity: Int(length))
            guard LZ4.decompressBlock(payload, uncompressedLength: Int(length), into: &bytes) else {
                pool?.recycle(bytes)
                throw .invalidField(kind: kind, reason: "LZ4 block does not decompress to declared length")
            }
            return bytes
        }
    }
}

/// Receiver → sender: how far WAL is written and how far it is durable (fsynced) in the spool.
public struct Ack: Hashable, Sendable {
    public var timeline: TimeLineID
    public var writtenLSN: LSN
    public var durableLSN: LSN
    /// What the DR standby has replayed, when known (0 otherwise); reported to the primary as `apply`.
    public var replayedLSN: LSN
    public var replayTime: PostgresTimestamp
    public var receiverTime: PostgresTimestamp

    public init(
        timeline: TimeLineID, writtenLSN: LSN, durableLSN: LSN, replayedLSN: LSN = .invalid,
        replayTime: PostgresTimestamp = PostgresTimestamp(rawValue: 0), receiverTime: PostgresTimestamp
    ) {
        self.timeline = timeline
        self.writtenLSN = writtenLSN
        self.durableLSN = durableLSN
        self.replayedLSN = replayedLSN
        self.replayTime = replayTime
        self.receiverTime = receiverTime
    }
}

/// Sender → receiver (version 2): how the primary treats the DR link changed, or the link is new and this is how
/// it treats it now. The receiver keeps every one in the system's audit log: the evidence a promotion report
/// reads. Observations made while the link was down arrive, in order, once it is back.
public struct ModeChange: Hashable, Sendable {
    public var mode: ReplicationMode
    /// The primary's WAL position when the sender observed the change: commits up to here were made before it.
    public var lsn: LSN
    /// The primary's clock at that moment.
    public var observedAt: PostgresTimestamp
    /// `pg_stat_replication.sync_state` as read ("" when NULL or absent).
    public var syncState: String
    /// The primary's default `synchronous_commit` ("" when unknown).
    public var synchronousCommit: String
    /// While degraded: bytes of WAL the primary acknowledged that the DR site does not have.
    public var exposureBytes: UInt64
    /// In words, for the audit log: why the mode is what it is.
    public var detail: String

    public init(
        mode: ReplicationMode, lsn: LSN, observedAt: PostgresTimestamp, syncState: String = "",
        synchronousCommit: String = "", exposureBytes: UInt64 = 0, detail: String = ""
    ) {
        self.mode = mode
        self.lsn = lsn
        self.observedAt = observedAt
        self.syncState = syncState
        self.synchronousCommit = synchronousCommit
        self.exposureBytes = exposureBytes
        self.detail = detail
    }
}

/// Sender → receiver on a verdict link (version 2): whether the sender can still reach the primary. Ages rather than
/// times, so that the receiver places them on its own clock (`receivedAt - age`) whatever the two clocks say.
public struct PrimaryVerdict: Hashable, Sendable {
    public enum State: UInt8, Sendable, CaseIterable {
        /// The replication connection is up, or the primary answered the last attempt.
        case alive = 1
        /// The replication connection dropped and no attempt since was answered, for less than the confirmation time.
        case unanswered = 2
        /// The connection dropped and every attempt for the confirmation time (2 s) was refused or unanswered.
        case lost = 3
        /// The sender is stopping (SIGTERM, SIGINT) while the primary was not lost: nobody watches it from now on.
        case senderStopped = 4
    }

    public var state: State
    /// Milliseconds since the primary last answered anything, at the time of sending; nil when never heard.
    public var lastHeardAgeMillis: UInt64?
    /// Milliseconds since the replication connection dropped, while `unanswered` or `lost`.
    public var droppedAgeMillis: UInt64?
    /// The sender's clock when it sent this (for the log; the receiver's arithmetic uses the ages).
    public var sentAt: PostgresTimestamp

    public init(state: State, lastHeardAgeMillis: UInt64?, droppedAgeMillis: UInt64?, sentAt: PostgresTimestamp) {
        self.state = state
        self.lastHeardAgeMillis = lastHeardAgeMillis
        self.droppedAgeMillis = droppedAgeMillis
        self.sentAt = sentAt
    }
}

/// Sender → receiver when no WAL flows: proof of life, and the primary's position for the lag monitor.
public struct Keepalive: Hashable, Sendable {
    public var primaryEndLSN: LSN
    public var sendTime: PostgresTimestamp
    public var replyRequested: Bool

    public init(primaryEndLSN: LSN, sendTime: PostgresTimestamp, replyRequested: Bool) {
        self.primaryEndLSN = primaryEndLSN
        self.sendTime = sendTime
        self.replyRequested = replyRequested
    }
}

/// Sender → receiver: a timeline history file, byte for byte as the primary has it.
public struct HistoryFile: Hashable, Sendable {
    public var timeline: TimeLineID
    public var content: ByteBuffer

    public init(timeline: TimeLineID, content: ByteBuffer) {
        self.timeline = timeline
        self.content = content
    }
}

/// Sender → receiver on a backup link: BASE_BACKUP started at `startLSN`.
public struct BackupStart: Hashable, Sendable {
    public var startLSN: LSN
    public var timeline: TimeLineID
    /// Size the server estimated (PROGRESS), in bytes; 0 when unknown.
    public var estimatedBytes: UInt64
    public var label: String

    public init(startLSN: LSN, timeline: TimeLineID, estimatedBytes: UInt64, label: String) {
        self.startLSN = startLSN
        self.timeline = timeline
        self.estimatedBytes = estimatedBytes
        self.label = label
    }
}

/// A piece of the backup: the data directory's tar archive, or the backup manifest.
public struct BackupData: Hashable, Sendable {
    public enum Part: UInt8, Sendable {
        case archive = 1
        case manifest = 2
    }

    public var part: Part
    public var compression: WALCompression
    public var uncompressedLength: UInt32
    public var payload: ByteBuffer

    public init(part: Part, compression: WALCompression, uncompressedLength: UInt32, payload: ByteBuffer) {
        self.part = part
        self.compression = compression
        self.uncompressedLength = uncompressedLength
        self.payload = payload
    }

    public static func make(
        part: Part, bytes: ByteBuffer, allocator: ByteBufferAllocator = ByteBufferAllocator(),
        effort: CompressionEffort = .fast
    ) -> BackupData {
        let packed = FramePayload.pack(bytes, allocator: allocator, effort: effort)
        return BackupData(
            part: part, compression: packed.compression, uncompressedLength: UInt32(bytes.readableBytes),
            payload: packed.payload)
    }

    /// With a `pool`, a compressed payload is decompressed into one of its buffers.
    public func bytes(
        allocator: ByteBufferAllocator = ByteBufferAllocator(), pool: BufferPool? = nil
    ) throws(ShipProtocolError) -> ByteBuffer {
        try FramePayload.unpack(
            payload, compression: compression, length: uncompressedLength, kind: .backupData,
            allocator: allocator, pool: pool)
    }
}

/// Sender → receiver: BASE_BACKUP finished; WAL up to `stopLSN` makes it consistent.
public struct BackupEnd: Hashable, Sendable {
    public var stopLSN: LSN
    public var timeline: TimeLineID

    public init(stopLSN: LSN, timeline: TimeLineID) {
        self.stopLSN = stopLSN
        self.timeline = timeline
    }
}

/// Receiver → sender: where the stored backup stands.
public struct BackupStatus: Hashable, Sendable {
    public enum State: UInt8, Sendable {
        /// Stored durably; waiting for the stream to bring WAL up to the stop LSN.
        case waitingForWAL = 1
        /// Restorable: the spool durably holds all WAL from start to stop.
        case complete = 2
    }

    public var backupID: String
    public var state: State
    public var durableLSN: LSN

    public init(backupID: String, state: State, durableLSN: LSN) {
        self.backupID = backupID
        self.state = state
        self.durableLSN = durableLSN
    }
}
