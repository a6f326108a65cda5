/// Why bytes from the link were rejected. Every decoder failure is one of these; none traps.
public enum ShipProtocolError: Error, Hashable, CustomStringConvertible {
    case badMagic(UInt16)
    case unknownKind(UInt8)
    case frameTooLarge(length: Int, max: Int)
    case checksumMismatch(kind: UInt8, expected: UInt32, computed: UInt32)
    case truncated(kind: ShipMessage.Kind)
    case trailingBytes(kind: ShipMessage.Kind, count: Int)
    case invalidField(kind: ShipMessage.Kind, reason: String)
    case unexpectedEndOfStream(bufferedBytes: Int)
    /// The peer answered with a TLS record on a plaintext link.
    case peerSpeaksTLS

    public var description: String {
        switch self {
        case .badMagic(let magic):
            "not a walship frame (magic 0x\(String(magic, radix: 16))); is the peer a walship sender/receiver of the same TLS setting?"
        case .unknownKind(let kind): "unknown frame kind 0x\(String(kind, radix: 16))"
        case .frameTooLarge(let length, let max): "frame of \(length) bytes exceeds the limit of \(max)"
        case .checksumMismatch(let kind, let expected, let computed):
            "frame kind 0x\(String(kind, radix: 16)) failed its CRC-32C check (sent \(expected), computed \(computed))"
        case .truncated(let kind): "frame \(kind) is shorter than its fields"
        case .trailingBytes(let kind, let count): "frame \(kind) has \(count) unexpected trailing bytes"
        case .invalidField(let kind, let reason): "frame \(kind): \(reason)"
        case .unexpectedEndOfStream(let n): "link closed in the middle of a frame (\(n) bytes buffered)"
        case .peerSpeaksTLS: "the peer answered with TLS, but this end runs without it (--insecure)"
        }
    }
}
