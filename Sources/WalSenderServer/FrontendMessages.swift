import NIOCore

/// What a standby (libpq) sends to a walsender. Startup-phase packets have no type byte.
public enum FrontendMessage: Hashable, Sendable {
    case sslRequest
    case gssEncryptionRequest
    case cancelRequest
    case startup(parameters: [String: String])
    case password([UInt8])
    case query(String)
    case copyData(ByteBuffer)
    case copyDone
    case copyFail(String)
    case terminate
}

public enum FrontendDecodeError: Error, Hashable, CustomStringConvertible {
    case badStartupLength(Int)
    case unsupportedProtocol(UInt32)
    case badMessageLength(type: UInt8, length: Int)
    case unknownMessage(UInt8)
    case malformed(String)

    public var description: String {
        switch self {
        case .badStartupLength(let n): "invalid startup packet length \(n)"
        case .unsupportedProtocol(let v): "unsupported frontend protocol \(v >> 16).\(v & 0xFFFF)"
        case .badMessageLength(let t, let n): "invalid length \(n) for message '\(Character(Unicode.Scalar(t)))'"
        case .unknownMessage(let t): "unexpected message type 0x\(String(t, radix: 16))"
        case .malformed(let what): "malformed \(what)"
        }
    }
}

/// Single-step decoder for the frontend side of the PostgreSQL protocol, with explicit size limits:
/// startup packets up to 10 000 bytes (as PostgreSQL), other messages up to 1 MiB.
public struct FrontendMessageDecoder: NIOSingleStepByteToMessageDecoder, Sendable {
    public typealias InboundOut = FrontendMessage
    static let maxStartupLength = 10_000
    static let maxMessageLength = 1 << 20
    private var startupDone = false

    public init() {}

    public mutating func decode(buffer: inout ByteBuffer) throws -> FrontendMessage? {
        if !startupDone {
            guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self).map(Int.init) else { return nil }
            guard length >= 8, length <= Self.maxStartupLength else { throw FrontendDecodeError.badStartupLength(length) }
            guard buffer.readableBytes >= length else { return nil }
            var packet = buffer.readSlice(length: length)!
            packet.moveReaderIndex(forwardBy: 4)
            let code = packet.readInteger(as: UInt32.self)!
            switch code {
            case 80_877_103: return .sslRequest
            case 80_877_104: return .gssEncryptionRequest
            case 80_877_102: return .cancelRequest
            case 0x0003_0000:
                var parameters: [String: String] = [:]
                while let name = packet.readNullTerminatedString(), !name.isEmpty {
                    guard let value = packet.readNullTerminatedString() else {
                        throw FrontendDecodeError.malformed("startup parameters")
                    }
                    parameters[name] = value
                }
                startupDone = true
                return .startup(parameters: parameters)
            default:
                throw FrontendDecodeError.unsupportedProtocol(code)
            }
        }
        guard buffer.readableBytes >= 5 else { return nil }
        let type = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self)!
        let length = Int(buffer.getInteger(at: buffer.readerIndex + 1, as: UInt32.self)!)
        guard length >= 4, length <= Self.maxMessageLength else {
            throw FrontendDecodeError.badMessageLength(type: type, length: length)
        }
        guard buffer.readableBytes >= 1 + length else { return nil }
        buffer.moveReaderIndex(forwardBy: 5)
        var body = buffer.readSlice(length: length - 4)!
        switch type {
        case UInt8(ascii: "Q"):
            guard let text = body.readNullTerminatedString(), body.readableBytes == 0 else {
                throw FrontendDecodeError.malformed("query")
            }
            return .query(text)
        case UInt8(ascii: "d"): return .copyData(body)
        case UInt8(ascii: "c"): return .copyDone
        case UInt8(ascii: "f"): return .copyFail(body.readNullTerminatedString() ?? "")
        case UInt8(ascii: "X"): return .terminate
        case UInt8(ascii: "p"): return .password(body.readBytes(length: body.readableBytes) ?? [])
        default: throw FrontendDecodeError.unknownMessage(type)
        }
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> FrontendMessage? {
        try decode(buffer: &buffer)
    }
}

/// Writers for the backend messages a walsender sends.
public enum Backend {
    public static func message(_ type: Character, into out: inout ByteBuffer, _ body: (inout ByteBuffer) -> Void) {
        out.writeInteger(type.asciiValue!)
        let lengthIndex = out.writerIndex
        out.writeInteger(UInt32(0))
        body(&out)
        out.setInteger(UInt32(out.writerIndex - lengthIndex), at: lengthIndex)
    }

    public static func authenticationOk(_ out: inout ByteBuffer) { message("R", into: &out) { $0.writeInteger(UInt32(0)) } }
    /// AuthenticationSASL: the mechanisms offered, each a C string, then an empty one.
    public static func authenticationSASL(mechanisms: [String], _ out: inout ByteBuffer) {
        message("R", into: &out) {
            $0.writeInteger(UInt32(10))
            for mechanism in mechanisms { $0.writeNullTerminatedString(mechanism) }
            $0.writeInteger(UInt8(0))
        }
    }

    /// AuthenticationSASLContinue (11) or AuthenticationSASLFinal (12) with their data.
    public static func authentication(code: UInt32, data: [UInt8], _ out: inout ByteBuffer) {
        message("R", into: &out) {
            $0.writeInteger(code)
            $0.writeBytes(data)
        }
    }

    public static func parameterStatus(_ name: String, _ value: String, _ out: inout ByteBuffer) {
        message("S", into: &out) {
            $0.writeNullTerminatedString(name)
            $0.writeNullTerminatedString(value)
        }
    }

    public static func backendKeyData(pid: UInt32, key: UInt32, _ out: inout ByteBuffer) {
        message("K", into: &out) {
            $0.writeInteger(pid)
            $0.writeInteger(key)
        }
    }

    public static func readyForQuery(_ out: inout ByteBuffer) { message("Z", into: &out) { $0.writeInteger(UInt8(ascii: "I")) } }

    /// A whole text-format result: RowDescription, DataRows, CommandComplete.
    public static func result(
        columns: [(name: String, typeOID: UInt32)], rows: [[[UInt8]?]], tag: String, _ out: inout ByteBuffer
    ) {
        message("T", into: &out) {
            $0.writeInteger(UInt16(columns.count))
            for column in columns {
                $0.writeNullTerminatedString(column.name)
                $0.writeInteger(UInt32(0))  // table OID
                $0.writeInteger(UInt16(0))  // column number
                $0.writeInteger(column.typeOID)
                $0.writeInteger(Int16(-1))  // type size
                $0.writeInteger(Int32(-1))  // type modifier
                $0.writeInteger(UInt16(0))  // text format
            }
        }
        for row in rows {
            message("D", into: &out) {
                $0.writeInteger(UInt16(row.count))
                for value in row {
                    if let value {
                        $0.writeInteger(Int32(value.count))
                        $0.writeBytes(value)
                    } else {
                        $0.writeInteger(Int32(-1))
                    }
                }
            }
        }
        commandComplete(tag, &out)
    }

    public static func commandComplete(_ tag: String, _ out: inout ByteBuffer) {
        message("C", into: &out) { $0.writeNullTerminatedString(tag) }
    }

    public static func error(code: String, message text: String, severity: String = "ERROR", _ out: inout ByteBuffer) {
        message("E", into: &out) {
            for (field, value) in [("S", severity), ("V", severity), ("C", code), ("M", text)] {
                $0.writeInteger(Character(field).asciiValue!)
                $0.writeNullTerminatedString(value)
            }
            $0.writeInteger(UInt8(0))
        }
    }

    public static func copyBothResponse(_ out: inout ByteBuffer) {
        message("W", into: &out) {
            $0.writeInteger(UInt8(0))
            $0.writeInteger(UInt16(0))
        }
    }

    public static func copyData(_ out: inout ByteBuffer, _ body: (inout ByteBuffer) -> Void) { message("d", into: &out, body) }
    public static func copyDone(_ out: inout ByteBuffer) { message("c", into: &out) { _ in } }
}
