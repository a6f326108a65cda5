import WALCore

/// Messages inside CopyBoth during physical streaming (PostgreSQL protocol, "Streaming Replication Protocol").
/// Integers are big-endian; offsets are unaligned, so fields are assembled byte by byte.
public enum ReplicationMessage: Hashable, Sendable {
    /// `'w'` XLogData: WAL from `dataStart`; `walEnd` is the server's end of WAL.
    case xLogData(XLogData)
    /// `'k'` primary keepalive (exactly 18 bytes).
    case keepalive(PrimaryKeepalive)

    public struct XLogData: Hashable, Sendable {
        public var dataStart: LSN
        public var walEnd: LSN
        public var sendTime: PostgresTimestamp
        /// Where the WAL bytes start in the message (always 25).
        public var dataOffset: Int
        public var dataLength: Int
    }

    public struct PrimaryKeepalive: Hashable, Sendable {
        public var walEnd: LSN
        public var sendTime: PostgresTimestamp
        public var replyRequested: Bool

        public init(walEnd: LSN, sendTime: PostgresTimestamp, replyRequested: Bool) {
            self.walEnd = walEnd
            self.sendTime = sendTime
            self.replyRequested = replyRequested
        }
    }

    public enum DecodeError: Error, Hashable, CustomStringConvertible {
        case empty
        case tooShort(type: UInt8, length: Int, minimum: Int)
        case wrongLength(type: UInt8, length: Int, expected: Int)
        case unknownType(UInt8)

        public var description: String {
            switch self {
            case .empty: "empty replication message"
            case .tooShort(let t, let l, let m):
                "replication message '\(Character(Unicode.Scalar(t)))' of \(l) bytes is shorter than \(m)"
            case .wrongLength(let t, let l, let e):
                "replication message '\(Character(Unicode.Scalar(t)))' has \(l) bytes, expected \(e)"
            case .unknownType(let t): "unknown replication message type 0x\(String(t, radix: 16))"
            }
        }
    }

    public static let xLogDataHeaderLength = 25
    public static let keepaliveLength = 18

    /// Decodes one CopyData payload received from a walsender.
    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(DecodeError) -> ReplicationMessage {
        guard let type = bytes.first else { throw .empty }
        switch type {
        case UInt8(ascii: "w"):
            guard bytes.count >= xLogDataHeaderLength else {
                throw .tooShort(type: type, length: bytes.count, minimum: xLogDataHeaderLength)
            }
            return .xLogData(
                XLogData(
                    dataStart: LSN(bytes.readBE(1)), walEnd: LSN(bytes.readBE(9)),
                    sendTime: PostgresTimestamp(rawValue: Int64(bitPattern: bytes.readBE(17))),
                    dataOffset: xLogDataHeaderLength, dataLength: bytes.count - xLogDataHeaderLength))
        case UInt8(ascii: "k"):
            guard bytes.count == keepaliveLength else {
                throw .wrongLength(type: type, length: bytes.count, expected: keepaliveLength)
            }
            return .keepalive(
                PrimaryKeepalive(
                    walEnd: LSN(bytes.readBE(1)),
                    sendTime: PostgresTimestamp(rawValue: Int64(bitPattern: bytes.readBE(9))),
                    replyRequested: bytes[17] != 0))
        default:
            throw .unknownType(type)
        }
    }

    /// Encodes a `'k'` keepalive, as a walsender sends it.
    public static func encodeKeepalive(_ k: PrimaryKeepalive) -> [UInt8] {
        var out: [UInt8] = [UInt8(ascii: "k")]
        out.appendBE(k.walEnd.rawValue)
        out.appendBE(UInt64(bitPattern: k.sendTime.rawValue))
        out.append(k.replyRequested ? 1 : 0)
        return out
    }

    /// Encodes the 25-byte header of a `'w'` message.
    public static func encodeXLogDataHeader(dataStart: LSN, walEnd: LSN, sendTime: PostgresTimestamp) -> [UInt8] {
        var out: [UInt8] = [UInt8(ascii: "w")]
        out.appendBE(dataStart.rawValue)
        out.appendBE(walEnd.rawValue)
        out.appendBE(UInt64(bitPattern: sendTime.rawValue))
        return out
    }
}

/// `'r'` standby status update, client → server (34 bytes).
public struct StandbyStatusUpdate: Hashable, Sendable {
    public var write: LSN
    public var flush: LSN
    public var apply: LSN
    public var sendTime: PostgresTimestamp
    public var replyRequested: Bool

    public init(write: LSN, flush: LSN, apply: LSN, sendTime: PostgresTimestamp, replyRequested: Bool) {
        self.write = write
        self.flush = flush
        self.apply = apply
        self.sendTime = sendTime
        self.replyRequested = replyRequested
    }

    public static let length = 34

    public func encoded() -> [UInt8] {
        var out: [UInt8] = [UInt8(ascii: "r")]
        out.appendBE(write.rawValue)
        out.appendBE(flush.rawValue)
        out.appendBE(apply.rawValue)
        out.appendBE(UInt64(bitPattern: sendTime.rawValue))
        out.append(replyRequested ? 1 : 0)
        return out
    }

    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(ReplicationMessage.DecodeError) -> StandbyStatusUpdate {
        guard bytes.first == UInt8(ascii: "r") else { throw bytes.isEmpty ? .empty : .unknownType(bytes[0]) }
        guard bytes.count == length else { throw .wrongLength(type: bytes[0], length: bytes.count, expected: length) }
        return StandbyStatusUpdate(
            write: LSN(bytes.readBE(1)), flush: LSN(bytes.readBE(9)), apply: LSN(bytes.readBE(17)),
            sendTime: PostgresTimestamp(rawValue: Int64(bitPattern: bytes.readBE(25))),
            replyRequested: bytes[33] != 0)
    }
}

extension UnsafeRawBufferPointer {
    func readBE(_ offset: Int) -> UInt64 {
        var v: UInt64 = 0
        for i in 0..<8 { v = v << 8 | UInt64(self[offset + i]) }
        return v
    }
}

extension Array where Element == UInt8 {
    mutating func appendBE(_ v: UInt64) {
        for i in (0..<8).reversed() { append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) }
    }
}
