import NIOCore
import WALCore

/// Frame layout (all integers big-endian):
///
///     magic  UInt16  0x5753 ("WS")
///     kind   UInt8   ShipMessage.Kind
///     flags  UInt8   0 (reserved)
///     length UInt32  payload bytes
///     payload
///     crc    UInt32  CRC-32C over header and payload
public enum ShipFrame {
    public static let magic: UInt16 = 0x5753
    public static let headerLength = 8
    public static let trailerLength = 4
    /// Largest payload accepted. Senders put at most `maxWALChunkBytes` of WAL in one frame, and LZ4's
    /// worst case adds well under 1%; anything bigger is corrupt or hostile and is refused from the header alone.
    public static let maxPayloadLength = 4 << 20
    /// Largest amount of WAL a sender puts in one frame.
    public static let maxWALChunkBytes = 1 << 20
}

public struct ShipFrameEncoder: MessageToByteEncoder, Sendable {
    public typealias OutboundIn = ShipMessage

    public init() {}

    public func encode(data message: ShipMessage, out: inout ByteBuffer) throws {
        let start = out.writerIndex
        out.writeInteger(ShipFrame.magic)
        out.writeInteger(message.kind.rawValue)
        out.writeInteger(UInt8(0))
        let lengthIndex = out.writerIndex
        out.writeInteger(UInt32(0))
        let payloadStart = out.writerIndex
        Self.writePayload(message, into: &out)
        let payloadLength = out.writerIndex - payloadStart
        precondition(payloadLength <= ShipFrame.maxPayloadLength, "frame payload over the protocol limit")
        out.setInteger(UInt32(payloadLength), at: lengthIndex)
        let crc = out.withUnsafeReadableBytes { bytes in
            CRC32C.update(0, UnsafeRawBufferPointer(rebasing: bytes[(start - out.readerIndex)...]))
        }
        out.writeInteger(crc)
    }

    static func writePayload(_ message: ShipMessage, into out: inout ByteBuffer) {
        switch message {
        case .hello(let h):
            out.writeInteger(h.protocolVersion)
            out.writeInteger(h.role.rawValue)
            out.writeInteger(UInt8(h.synchronous ? 1 : 0))
            out.writeInteger(h.systemIdentifier)
            out.writeInteger(h.timeline)
            out.writeInteger(h.walSegmentSize)
            out.writeShortString(h.senderName)
            if h.protocolVersion >= 2 {
                switch h.receiverLoss {
                case nil:
                    out.writeInteger(UInt8(0xFF))
                    out.writeInteger(UInt32(0))
                case .asynchronous:
                    out.writeInteger(UInt8(0))
                    out.writeInteger(UInt32(0))
                case .block:
                    out.writeInteger(UInt8(1))
                    out.writeInteger(UInt32(0))
                case .degradeAfter(let seconds):
                    out.writeInteger(UInt8(2))
                    out.writeInteger(UInt32(clamping: Int64((seconds * 1000).rounded())))
                }
            }
        case .welcome(let w):
            out.writeInteger(w.protocolVersion)
            out.writeInteger(w.resumeLSN.rawValue)
            out.writeInteger(w.resumeTimeline)
            out.writeShortString(w.receiverName)
        case .refusal(let r):
            out.writeInteger(r.code.rawValue)
            out.writeShortString(r.message)
        case .walData(let d):
            out.writeInteger(d.timeline)
            out.writeInteger(d.startLSN.rawValue)
            out.writeInteger(d.primaryEndLSN.rawValue)
            out.writeInteger(d.primarySendTime.rawValue)
            out.writeInteger(d.compression.rawValue)
            out.writeInteger(d.uncompressedLength)
            var payload = d.payload
            out.writeBuffer(&payload)
        case .ack(let a):
            out.writeInteger(a.timeline)
            out.writeInteger(a.writtenLSN.rawValue)
            out.writeInteger(a.durableLSN.rawValue)
            out.writeInteger(a.replayedLSN.rawValue)
            out.writeInteger(a.replayTime.rawValue)
            out.writeInteger(a.receiverTime.rawValue)
        case .keepalive(let k):
            out.writeInteger(k.primaryEndLSN.rawValue)
            out.writeInteger(k.sendTime.rawValue)
            out.writeInteger(UInt8(k.replyRequested ? 1 : 0))
        case .history(let h):
            out.writeInteger(h.timeline)
            var content = h.content
            out.writeBuffer(&content)
        case .backupStart(let b):
            out.writeInteger(b.startLSN.rawValue)
            out.writeInteger(b.timeline)
            out.writeInteger(b.estimatedBytes)
            out.writeShortString(b.label)
        case .backupData(let d):
            out.writeInteger(d.part.rawValue)
            out.writeInteger(d.compression.rawValue)
            out.writeInteger(d.uncompressedLength)
            var payload = d.payload
            out.writeBuffer(&payload)
        case .backupEnd(let e):
            out.writeInteger(e.stopLSN.rawValue)
            out.writeInteger(e.timeline)
        case .backupStatus(let st):
            out.writeShortString(st.backupID)
            out.writeInteger(st.state.rawValue)
            out.writeInteger(st.durableLSN.rawValue)
        case .mode(let m):
            out.writeInteger(m.mode.code)
            out.writeInteger(m.lsn.rawValue)
            out.writeInteger(m.observedAt.rawValue)
            out.writeInteger(m.exposureBytes)
            out.writeShortString(m.syncState)
            out.writeShortString(m.synchronousCommit)
            out.writeShortString(m.detail)
        case .primaryVerdict(let v):
            out.writeInteger(v.state.rawValue)
            out.writeInteger(v.lastHeardAgeMillis ?? UInt64.max)
            out.writeInteger(v.droppedAgeMillis ?? UInt64.max)
            out.writeInteger(v.sentAt.rawValue)
        }
    }
}

/// Single-step decoder for ship frames. It rejects an oversized length as soon as the header is read,
/// verifies the CRC before looking at the payload, and requires every payload byte to be consumed.
public struct ShipFrameDecoder: NIOSingleStepByteToMessageDecoder, Sendable {
    public typealias InboundOut = ShipMessage

    public init() {}

    public mutating func decode(buffer: inout ByteBuffer) throws -> ShipMessage? {
        guard buffer.readableBytes >= ShipFrame.headerLength else { return nil }
        let start = buffer.readerIndex
        let magic = buffer.getInteger(at: start, as: UInt16.self)!
        guard magic == ShipFrame.magic else { throw ShipProtocolError.badMagic(magic) }
        let rawKind = buffer.getInteger(at: start + 2, as: UInt8.self)!
        guard let kind = ShipMessage.Kind(rawValue: rawKind) else { throw ShipProtocolError.unknownKind(rawKind) }
        let length = Int(buffer.getInteger(at: start + 4, as: UInt32.self)!)
        guard length <= ShipFrame.maxPayloadLength else {
            throw ShipProtocolError.frameTooLarge(length: length, max: ShipFrame.maxPayloadLength)
        }
        let total = ShipFrame.headerLength + length + ShipFrame.trailerLength
        guard buffer.readableBytes >= total else { return nil }
        let expected = buffer.getInteger(at: start + total - 4, as: UInt32.self)!
        let computed = buffer.withUnsafeReadableBytes { bytes in
            CRC32C.update(0, UnsafeRawBufferPointer(rebasing: bytes[0..<(total - 4)]))
        }
        guard expected == computed else {
            throw ShipProtocolError.checksumMismatch(kind: rawKind, expected: expected, computed: computed)
        }
        var payload = buffer.getSlice(at: start + ShipFrame.headerLength, length: length)!
        buffer.moveReaderIndex(forwardBy: total)
        let message = try Self.decodePayload(kind: kind, from: &payload)
        guard payload.readableBytes == 0 else {
            throw ShipProtocolError.trailingBytes(kind: kind, count: payload.readableBytes)
        }
        return message
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> ShipMessage? {
        if let message = try decode(buffer: &buffer) { return message }
        if seenEOF && buffer.readableBytes > 0 {
            // A TLS record (alert 0x15 or handshake 0x16, version 3.x): the peer speaks TLS and we do not.
            if let type = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self), type == 0x15 || type == 0x16,
                buffer.getInteger(at: buffer.readerIndex + 1, as: UInt8.self) == 0x03
            {
                throw ShipProtocolError.peerSpeaksTLS
            }
            throw ShipProtocolError.unexpectedEndOfStream(bufferedBytes: buffer.readableBytes)
        }
        return nil
    }

    static func decodePayload(kind: ShipMessage.Kind, from p: inout ByteBuffer) throws(ShipProtocolError) -> ShipMessage {
        func int<T: FixedWidthInteger>(_: T.Type = T.self) throws(ShipProtocolError) -> T {
            guard let v = p.readInteger(as: T.self) else { throw .truncated(kind: kind) }
            return v
        }
        func string() throws(ShipProtocolError) -> String {
            let length = Int(try int(UInt16.self))
            guard let bytes = p.readBytes(length: length) else { throw .truncated(kind: kind) }
            guard let text = String(validating: bytes, as: UTF8.self) else {
                throw .invalidField(kind: kind, reason: "string is not UTF-8")
            }
            return text
        }
        switch kind {
        case .hello:
            let version = try int(UInt16.self)
            let rawRole = try int(UInt8.self)
            guard let role = LinkRole(rawValue: rawRole) else {
                throw .invalidField(kind: kind, reason: "unknown link role \(rawRole)")
            }
            let flags = try int(UInt8.self)
            var hello = Hello(
                protocolVersion: version, role: role, synchronous: flags & 1 == 1,
                systemIdentifier: try int(), timeline: try int(), walSegmentSize: try int(),
                senderName: try string())
            // A version 1 hello ends here; a newer one may carry fields this receiver does not know yet, so only
            // version 2's are read and the version check refuses the rest.
            if version == 2 {
                let rule = try int(UInt8.self)
                let millis = try int(UInt32.self)
                switch rule {
                case 0: hello.receiverLoss = .asynchronous
                case 1: hello.receiverLoss = .block
                case 2: hello.receiverLoss = .degradeAfter(seconds: Double(millis) / 1000)
                case 0xFF: hello.receiverLoss = nil
                default: throw .invalidField(kind: kind, reason: "unknown receiver-loss rule \(rule)")
                }
            } else if version > 2 {
                _ = p.readSlice(length: p.readableBytes)
            }
            return .hello(hello)
        case .welcome:
            return .welcome(
                Welcome(
                    protocolVersion: try int(), resumeLSN: LSN(try int(UInt64.self)),
                    resumeTimeline: try int(), receiverName: try string()))
        case .refusal:
            return .refusal(Refusal(code: Refusal.Code(rawValue: try int()), message: try string()))
        case .walData:
            let timeline: UInt32 = try int()
            let start = LSN(try int(UInt64.self))
            let end = LSN(try int(UInt64.self))
            let sendTime = PostgresTimestamp(rawValue: try int())
            let rawCompression = try int(UInt8.self)
            guard let compression = WALCompression(rawValue: rawCompression) else {
                throw .invalidField(kind: kind, reason: "unknown compression \(rawCompression)")
            }
            let length: UInt32 = try int()
            guard length > 0, Int(length) <= ShipFrame.maxWALChunkBytes else {
                throw .invalidField(
                    kind: kind, reason: "WAL chunk of \(length) bytes is outside 1...\(ShipFrame.maxWALChunkBytes)")
            }
            guard start.rawValue <= UInt64.max - UInt64(length) else {
                throw .invalidField(kind: kind, reason: "WAL range overflows")
            }
            let payload = p.readSlice(length: p.readableBytes)!
            return .walData(
                WALData(
                    timeline: timeline, startLSN: start, primaryEndLSN: end, primarySendTime: sendTime,
                    compression: compression, uncompressedLength: length, payload: payload))
        case .ack:
            return .ack(
                Ack(
                    timeline: try int(), writtenLSN: LSN(try int(UInt64.self)),
                    durableLSN: LSN(try int(UInt64.self)), replayedLSN: LSN(try int(UInt64.self)),
                    replayTime: PostgresTimestamp(rawValue: try int()),
                    receiverTime: PostgresTimestamp(rawValue: try int())))
        case .keepalive:
            let end = LSN(try int(UInt64.self))
            let time = PostgresTimestamp(rawValue: try int())
            let flag = try int(UInt8.self)
            return .keepalive(Keepalive(primaryEndLSN: end, sendTime: time, replyRequested: flag == 1))
        case .history:
            let timeline: UInt32 = try int()
            let content = p.readSlice(length: p.readableBytes)!
            return .history(HistoryFile(timeline: timeline, content: content))
        case .backupStart:
            return .backupStart(
                BackupStart(
                    startLSN: LSN(try int(UInt64.self)), timeline: try int(),
                    estimatedBytes: try int(), label: try string()))
        case .backupData:
            let rawPart = try int(UInt8.self)
            guard let part = BackupData.Part(rawValue: rawPart) else {
                throw .invalidField(kind: kind, reason: "unknown backup part \(rawPart)")
            }
            let rawCompression = try int(UInt8.self)
            guard let compression = WALCompression(rawValue: rawCompression) else {
                throw .invalidField(kind: kind, reason: "unknown compression \(rawCompression)")
            }
            let length: UInt32 = try int()
            guard length > 0, Int(length) <= ShipFrame.maxWALChunkBytes else {
                throw .invalidField(
                    kind: kind, reason: "backup chunk of \(length) bytes is outside 1...\(ShipFrame.maxWALChunkBytes)")
            }
            return .backupData(
                BackupData(
                    part: part, compression: compression, uncompressedLength: length,
                    payload: p.readSlice(length: p.readableBytes)!))
        case .backupEnd:
            return .backupEnd(BackupEnd(stopLSN: LSN(try int(UInt64.self)), timeline: try int()))
        case .backupStatus:
            let id = try string()
            let rawState = try int(UInt8.self)
            guard let state = BackupStatus.State(rawValue: rawState) else {
                throw .invalidField(kind: kind, reason: "unknown backup state \(rawState)")
            }
            return .backupStatus(BackupStatus(backupID: id, state: state, durableLSN: LSN(try int(UInt64.self))))
        case .mode:
            let code = try int(UInt8.self)
            guard let mode = ReplicationMode.allCases.first(where: { $0.code == code }) else {
                throw .invalidField(kind: kind, reason: "unknown replication mode \(code)")
            }
            let lsn = LSN(try int(UInt64.self))
            let observedAt = PostgresTimestamp(rawValue: try int())
            let exposure: UInt64 = try int()
            let syncState = try string()
            let synchronousCommit = try string()
            return .mode(
                ModeChange(
                    mode: mode, lsn: lsn, observedAt: observedAt, syncState: syncState,
                    synchronousCommit: synchronousCommit, exposureBytes: exposure, detail: try string()))
        case .primaryVerdict:
            let rawState = try int(UInt8.self)
            guard let state = PrimaryVerdict.State(rawValue: rawState) else {
                throw .invalidField(kind: kind, reason: "unknown primary verdict \(rawState)")
            }
            let heard = try int(UInt64.self)
            let dropped = try int(UInt64.self)
            return .primaryVerdict(
                PrimaryVerdict(
                    state: state, lastHeardAgeMillis: heard == .max ? nil : heard,
                    droppedAgeMillis: dropped == .max ? nil : dropped, sentAt: PostgresTimestamp(rawValue: try int())))
        }
    }
}

extension ByteBuffer {
    mutating func writeShortString(_ text: String) {
        var utf8 = Array(text.utf8)
        if utf8.count > Int(UInt16.max) { utf8 = Array(utf8.prefix(Int(UInt16.max))) }
        writeInteger(UInt16(utf8.count))
        writeBytes(utf8)
    }
}
