import NIOCore
import ShipProtocol
import WALCore
import WalSenderServer

/// The decoders that take bytes from the network, driven with arbitrary input. Used by the coverage-guided
/// fuzzer (`make fuzz`) and, on the normal build, by the unit tests that replay the seed and crash corpus.
/// A run may throw typed errors (that is the point); it must never trap, hang or grow without bound.
public enum FuzzTarget: String, CaseIterable, Sendable {
    /// Our frames, including LZ4 decompression of WAL and backup payloads.
    case frames
    /// What standbys send to the standby endpoint, and the SCRAM and replication-command parsers behind it.
    case frontend
    /// WAL page and segment validation.
    case walpage

    public func run(_ bytes: UnsafeRawBufferPointer) {
        switch self {
        case .frames: Self.frames(bytes)
        case .frontend: Self.frontend(bytes)
        case .walpage: Self.walPages(bytes)
        }
    }

    static func frames(_ bytes: UnsafeRawBufferPointer) {
        var buffer = ByteBuffer(bytes: bytes)
        var decoder = ShipFrameDecoder()
        let allocator = ByteBufferAllocator()
        do {
            while let message = try decoder.decode(buffer: &buffer) {
                switch message {
                case .walData(let data): _ = try? data.walBytes(allocator: allocator)
                case .backupData(let data): _ = try? data.bytes(allocator: allocator)
                default: break
                }
            }
            _ = try decoder.decodeLast(buffer: &buffer, seenEOF: true)
        } catch {}
    }

    static func frontend(_ bytes: UnsafeRawBufferPointer) {
        var buffer = ByteBuffer(bytes: bytes)
        var decoder = FrontendMessageDecoder()
        // A fixed verifier and nonce: the exchange is deterministic, as a fuzzer needs.
        var machine = WalSenderStateMachine(
            authentication: .scram(SCRAMVerifier(password: "fuzz", salt: [1, 2, 3, 4], iterations: 1)),
            serverNonce: "fuzz")
        do {
            while let message = try decoder.decode(buffer: &buffer) {
                switch message {
                case .query(let text): _ = try? ReplicationCommand.parse(text)
                default: _ = machine.startupMessage(message)
                }
            }
            _ = try decoder.decodeLast(buffer: &buffer, seenEOF: true)
        } catch {}
    }

    static func walPages(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count >= 16 else { return }
        // The first bytes choose the expectations, the rest is the segment as received.
        let timeline = TimeLineID(bytes[0] % 4 + 1)
        let segment = UInt64(bytes[1] % 8)
        let size = WALSegmentSize.default
        let body = UnsafeRawBufferPointer(rebasing: bytes[16...])
        var pages = WALPageValidator(systemIdentifier: 7_000_000_000_000_000_001, segmentSize: size, timeline: timeline)
        // The page validator's contract: the whole header is there (40 bytes covers the long header).
        if body.count >= 40 {
            _ = try? pages.validate(
                header: UnsafeRawBufferPointer(rebasing: body[0..<40]), pageAddress: size.startLSN(ofSegment: segment))
        }
        var validator = WALSegmentValidator(
            systemIdentifier: 7_000_000_000_000_000_001, segmentSize: size, timeline: timeline,
            segmentStart: size.startLSN(ofSegment: segment))
        _ = try? validator.validate(segment: body, previousLength: Int(bytes[2]) * 8192 % max(1, body.count + 1))
    }
}
