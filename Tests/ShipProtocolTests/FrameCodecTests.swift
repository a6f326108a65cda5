import Foundation
import LZ4Codec
import NIOCore
import NIOTestUtils
import Testing
import WALCore

@testable import ShipProtocol

@Suite struct FrameCodecTests {
    static let samples: [ShipMessage] = [
        .hello(
            Hello(
                role: .stream, synchronous: true, systemIdentifier: 7_711_355_351_252_201_643, timeline: 3,
                walSegmentSize: 16 << 20, senderName: "walship-é")),
        .welcome(Welcome(resumeLSN: LSN("1/A0000000")!, resumeTimeline: 3, receiverName: "dr-site")),
        .refusal(Refusal(code: .streamAlreadyActive, message: "busy")),
        .walData(
            WALData.make(
                timeline: 1, startLSN: LSN("0/3000000")!, primaryEndLSN: LSN("0/3002000")!,
                primarySendTime: PostgresTimestamp(rawValue: 123_456), wal: ByteBuffer(repeating: 7, count: 8192))),
        .walData(
            WALData(
                timeline: 1, startLSN: LSN("0/3000000")!, primaryEndLSN: LSN("0/3000005")!,
                primarySendTime: PostgresTimestamp(rawValue: 1), compression: .none, uncompressedLength: 5,
                payload: ByteBuffer(bytes: [1, 2, 3, 4, 5]))),
        .ack(
            Ack(
                timeline: 1, writtenLSN: LSN(200), durableLSN: LSN(100), replayedLSN: LSN(50),
                replayTime: PostgresTimestamp(rawValue: 9), receiverTime: PostgresTimestamp(rawValue: 10))),
        .keepalive(Keepalive(primaryEndLSN: LSN(77), sendTime: PostgresTimestamp(rawValue: -5), replyRequested: true)),
        .history(HistoryFile(timeline: 2, content: ByteBuffer(string: "1\t0/5000060\tno recovery target specified\n"))),
        .backupStart(BackupStart(startLSN: LSN("0/2000028")!, timeline: 1, estimatedBytes: 123_456_789, label: "walship")),
        .backupData(BackupData.make(part: .archive, bytes: ByteBuffer(repeating: 0, count: 10_000))),
        .backupData(BackupData.make(part: .manifest, bytes: ByteBuffer(string: "{\"PostgreSQL-Backup-Manifest-Version\": 1}"))),
        .backupEnd(BackupEnd(stopLSN: LSN("0/2000100")!, timeline: 1)),
        .backupStatus(BackupStatus(backupID: "20261123T190000Z", state: .complete, durableLSN: LSN("0/3000000")!)),
        .hello(
            Hello(
                protocolVersion: 1, role: .stream, synchronous: true, systemIdentifier: 9, timeline: 1,
                walSegmentSize: 16 << 20, senderName: "old")),
        .hello(
            Hello(
                role: .stream, synchronous: true, systemIdentifier: 9, timeline: 1, walSegmentSize: 16 << 20,
                senderName: "s", receiverLoss: .degradeAfter(seconds: 2.5))),
        .hello(
            Hello(
                role: .stream, synchronous: false, systemIdentifier: 9, timeline: 1, walSegmentSize: 16 << 20,
                senderName: "s", receiverLoss: .asynchronous)),
        .mode(
            ModeChange(
                mode: .degraded, lsn: LSN("0/5000000")!, observedAt: PostgresTimestamp(rawValue: 42), syncState: "sync",
                synchronousCommit: "on", exposureBytes: 8192, detail: "acknowledged from the buffer")),
        .mode(ModeChange(mode: .unknown, lsn: .invalid, observedAt: PostgresTimestamp(rawValue: 0))),
        .hello(
            Hello(
                role: .verdict, synchronous: true, systemIdentifier: 9, timeline: 3, walSegmentSize: 16 << 20,
                senderName: "s", receiverLoss: .block)),
        .primaryVerdict(
            PrimaryVerdict(
                state: .lost, lastHeardAgeMillis: 2_500, droppedAgeMillis: 2_100, sentAt: PostgresTimestamp(rawValue: 7))),
        .primaryVerdict(
            PrimaryVerdict(state: .alive, lastHeardAgeMillis: nil, droppedAgeMillis: nil, sentAt: PostgresTimestamp(rawValue: 0))),
        .primaryVerdict(
            PrimaryVerdict(
                state: .senderStopped, lastHeardAgeMillis: 0, droppedAgeMillis: nil, sentAt: PostgresTimestamp(rawValue: -1))),
    ]

    func encode(_ message: ShipMessage) throws -> ByteBuffer {
        var buffer = ByteBuffer()
        try ShipFrameEncoder().encode(data: message, out: &buffer)
        return buffer
    }

    func decodeAll(_ buffer: ByteBuffer) throws -> [ShipMessage] {
        var buffer = buffer
        var decoder = ShipFrameDecoder()
        var out: [ShipMessage] = []
        while let message = try decoder.decode(buffer: &buffer) { out.append(message) }
        return out
    }

    @Test func everyFrameRoundTripsByteByByteAndInBulk() throws {
        let pairs = try Self.samples.map { (try encode($0), [$0]) }
        try ByteToMessageDecoderVerifier.verifyDecoder(
            inputOutputPairs: pairs, decoderFactory: { ShipFrameDecoder() })
    }

    /// A version 1 sender's hello, as it went on the wire before version 2: the receiver still reads it, and it
    /// states no receiver-loss rule.
    @Test func aVersionOneHelloIsStillRead() throws {
        var payload = ByteBuffer()
        payload.writeInteger(UInt16(1))
        payload.writeInteger(LinkRole.stream.rawValue)
        payload.writeInteger(UInt8(1))
        payload.writeInteger(UInt64(77))
        payload.writeInteger(UInt32(2))
        payload.writeInteger(UInt32(16 << 20))
        payload.writeShortString("v1-sender")
        let decoded = try decodeAll(forged(.hello, payload: Array(payload.readableBytesView)))
        #expect(
            decoded == [
                .hello(
                    Hello(
                        protocolVersion: 1, role: .stream, synchronous: true, systemIdentifier: 77, timeline: 2,
                        walSegmentSize: 16 << 20, senderName: "v1-sender"))
            ])
    }

    @Test func anUnknownModeOrLossRuleIsRefused() throws {
        var mode = ByteBuffer()
        ShipFrameEncoder.writePayload(
            .mode(ModeChange(mode: .sync, lsn: LSN(1), observedAt: PostgresTimestamp(rawValue: 1))), into: &mode)
        var modeBytes = Array(mode.readableBytesView)
        modeBytes[0] = 99
        #expect(throws: ShipProtocolError.self) { try decodeAll(forged(.mode, payload: modeBytes)) }
        #expect(throws: ShipProtocolError.truncated(kind: .mode)) { try decodeAll(forged(.mode, payload: [1])) }

        var verdict = ByteBuffer()
        ShipFrameEncoder.writePayload(
            .primaryVerdict(
                PrimaryVerdict(state: .lost, lastHeardAgeMillis: 1, droppedAgeMillis: 1, sentAt: PostgresTimestamp(rawValue: 1))),
            into: &verdict)
        let verdictBytes = Array(verdict.readableBytesView)
        #expect(throws: ShipProtocolError.truncated(kind: .primaryVerdict)) {
            try decodeAll(forged(.primaryVerdict, payload: Array(verdictBytes.prefix(9))))
        }
        #expect(throws: ShipProtocolError.self) {
            try decodeAll(forged(.primaryVerdict, payload: [0] + verdictBytes.dropFirst()))
        }

        var hello = ByteBuffer()
        ShipFrameEncoder.writePayload(Self.samples[14], into: &hello)
        var helloBytes = Array(hello.readableBytesView)
        helloBytes[helloBytes.count - 5] = 7
        #expect(throws: ShipProtocolError.self) { try decodeAll(forged(.hello, payload: helloBytes)) }
    }

    @Test func walDataDecompressesToItsBytes() throws {
        let wal = ByteBuffer(bytes: (0..<100_000).map { UInt8(truncatingIfNeeded: $0 % 251) })
        let frame = WALData.make(timeline: 1, startLSN: LSN(0), primaryEndLSN: LSN(0), primarySendTime: .now(), wal: wal)
        #expect(frame.compression == .lz4Block)
        #expect(frame.payload.readableBytes < wal.readableBytes)
        #expect(try frame.walBytes() == wal)
        #expect(frame.endLSN == LSN(100_000))
    }

    /// Each thread reuses one compression state for block after block; every block must still decode on its
    /// own, with no reference into the bytes of the one before (which the sender has recycled by then).
    @Test func blocksFromAReusedStateEachDecodeAlone() throws {
        let base = (0..<40_000).map { UInt8(truncatingIfNeeded: $0 % 253) }
        // The same content again and again: a block that reached back into its predecessor would be tiny.
        let inputs = [base, base, Array(base.reversed()), [UInt8](repeating: 9, count: 3000), base + base, base]
        var sizes: [Int] = []
        for input in inputs {
            let block = LZ4.compressBlock(ByteBuffer(bytes: input))
            sizes.append(block.readableBytes)
            var out = ByteBuffer()
            #expect(LZ4.decompressBlock(block, uncompressedLength: input.count, into: &out))
            #expect(Array(out.readableBytesView) == input)
        }
        #expect(sizes[1] == sizes[0] && sizes[5] == sizes[0], "a repeated input compressed differently: \(sizes)")
    }

    @Test func threadsCompressAtOnceWithStatesOfTheirOwn() async throws {
        try await withThrowingTaskGroup(of: Bool.self) { group in
            for t in 0..<4 {
                group.addTask {
                    // On threads of their own, so the four compress at the same time.
                    let input = (0..<200_000).map { UInt8(truncatingIfNeeded: ($0 / (t + 1)) % 241) }
                    return try await withCheckedThrowingContinuation { done in
                        Thread {
                            var ok = true
                            for _ in 0..<20 {
                                let block = LZ4.compressBlock(ByteBuffer(bytes: input))
                                var out = ByteBuffer()
                                ok =
                                    ok && LZ4.decompressBlock(block, uncompressedLength: input.count, into: &out)
                                    && Array(out.readableBytesView) == input
                            }
                            done.resume(returning: ok)
                        }.start()
                    }
                }
            }
            for try await ok in group { #expect(ok) }
        }
    }

    @Test func highEffortMakesAnOrdinaryBlockWithFewerBytes() throws {
        // Table rows as in pgbench's full-page images: numbers that differ, padding that repeats.
        var seed: UInt64 = 7
        var rows: [UInt8] = []
        while rows.count < 1 << 20 {
            seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            rows +=
                Array("\(rows.count / 97)|\(seed >> 50)|\(Int64(bitPattern: seed) % 5000)|".utf8)
                + Array(repeating: 0x20, count: 84)
        }
        let wal = ByteBuffer(bytes: rows)
        let fast = WALData.make(timeline: 1, startLSN: LSN(0), primaryEndLSN: LSN(0), primarySendTime: .now(), wal: wal)
        let high = WALData.make(
            timeline: 1, startLSN: LSN(0), primaryEndLSN: LSN(0), primarySendTime: .now(), wal: wal,
            effort: .high)
        #expect(high.compression == .lz4Block)
        #expect(
            high.payload.readableBytes < fast.payload.readableBytes,
            "high \(high.payload.readableBytes) vs fast \(fast.payload.readableBytes) bytes")
        #expect(try high.walBytes() == wal)
        // Stored as the receiver stores a sender's block, it is part of a standard frame (what lz4 -d reads).
        let writer = LZ4.BlockFrameWriter(contentSize: UInt64(rows.count))
        var file = writer.begin()
        file += rows.withUnsafeBytes { raw in high.payload.withUnsafeReadableBytes { writer.add(raw, compressedBlock: $0) } }
        file += writer.end()
        #expect(try file.withUnsafeBytes { try LZ4.decompressFrame($0, maxOutputBytes: 2 << 20) } == rows)
    }

    @Test func incompressibleWALTravelsRaw() throws {
        var seed: UInt32 = 1
        let noise = ByteBuffer(
            bytes: (0..<4096).map { _ in
                seed = seed &* 1_664_525 &+ 1_013_904_223
                return UInt8(truncatingIfNeeded: seed >> 24)
            })
        let frame = WALData.make(timeline: 1, startLSN: LSN(0), primaryEndLSN: LSN(0), primarySendTime: .now(), wal: noise)
        #expect(frame.compression == .none)
        #expect(try frame.walBytes() == noise)
    }

    @Test func badMagicIsRefusedAtOnce() throws {
        var buffer = try encode(Self.samples[0])
        buffer.setInteger(UInt16(0x4854), at: 0)  // "HT", as from an HTTP client
        #expect(throws: ShipProtocolError.badMagic(0x4854)) { try decodeAll(buffer) }
    }

    @Test func oversizedLengthIsRefusedFromTheHeaderAlone() {
        var header = ByteBuffer()
        header.writeInteger(ShipFrame.magic)
        header.writeInteger(ShipMessage.Kind.walData.rawValue)
        header.writeInteger(UInt8(0))
        header.writeInteger(UInt32(ShipFrame.maxPayloadLength + 1))
        #expect(throws: ShipProtocolError.frameTooLarge(length: ShipFrame.maxPayloadLength + 1, max: ShipFrame.maxPayloadLength))
        {
            try decodeAll(header)
        }
    }

    @Test func unknownKindIsRefused() throws {
        var buffer = try encode(Self.samples[0])
        buffer.setInteger(UInt8(0x7F), at: 2)
        #expect(throws: ShipProtocolError.unknownKind(0x7F)) { try decodeAll(buffer) }
    }

    @Test func flippedPayloadBitFailsTheChecksum() throws {
        var buffer = try encode(Self.samples[3])
        let index = ShipFrame.headerLength + 20
        buffer.setInteger(buffer.getInteger(at: index, as: UInt8.self)! ^ 0x01, at: index)
        #expect(throws: ShipProtocolError.self) { try decodeAll(buffer) }
        do {
            _ = try decodeAll(buffer)
        } catch let error as ShipProtocolError {
            guard case .checksumMismatch = error else {
                Issue.record("expected a checksum error, got \(error)")
                return
            }
        }
    }

    @Test func truncatedFrameWaitsThenFailsAtEndOfStream() throws {
        let full = try encode(Self.samples[1])
        var partial = full.getSlice(at: 0, length: full.readableBytes - 3)!
        var decoder = ShipFrameDecoder()
        #expect(try decoder.decode(buffer: &partial) == nil)
        #expect(throws: ShipProtocolError.unexpectedEndOfStream(bufferedBytes: full.readableBytes - 3)) {
            _ = try decoder.decodeLast(buffer: &partial, seenEOF: true)
        }
    }

    @Test func aTLSAlertOnAPlaintextLinkIsNamed() throws {
        // The 7 bytes of a TLS 1.2-framed fatal alert (handshake_failure).
        var alert = ByteBuffer(bytes: [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28])
        var decoder = ShipFrameDecoder()
        #expect(try decoder.decode(buffer: &alert) == nil)
        #expect(throws: ShipProtocolError.peerSpeaksTLS) { _ = try decoder.decodeLast(buffer: &alert, seenEOF: true) }
    }

    /// A frame whose checksum is right but whose payload is not what its kind promises.
    func forged(_ kind: ShipMessage.Kind, payload: [UInt8]) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(ShipFrame.magic)
        buffer.writeInteger(kind.rawValue)
        buffer.writeInteger(UInt8(0))
        buffer.writeInteger(UInt32(payload.count))
        buffer.writeBytes(payload)
        let crc = buffer.withUnsafeReadableBytes { CRC32C.update(0, $0) }
        buffer.writeInteger(crc)
        return buffer
    }

    @Test func shortPayloadIsTruncatedNotATrap() {
        #expect(throws: ShipProtocolError.truncated(kind: .ack)) { try decodeAll(forged(.ack, payload: [0, 0, 0, 1, 2])) }
        #expect(throws: ShipProtocolError.truncated(kind: .hello)) { try decodeAll(forged(.hello, payload: [])) }
    }

    @Test func trailingBytesAreRefused() throws {
        var payload = ByteBuffer()
        ShipFrameEncoder.writePayload(Self.samples[6], into: &payload)
        let bytes = Array(payload.readableBytesView) + [0xEE]
        #expect(throws: ShipProtocolError.trailingBytes(kind: .keepalive, count: 1)) {
            try decodeAll(forged(.keepalive, payload: bytes))
        }
    }

    @Test func inconsistentFieldsAreRefused() throws {
        // Hello with an unknown role.
        var hello = ByteBuffer()
        ShipFrameEncoder.writePayload(Self.samples[0], into: &hello)
        var helloBytes = Array(hello.readableBytesView)
        helloBytes[2] = 9
        #expect(throws: ShipProtocolError.self) { try decodeAll(forged(.hello, payload: helloBytes)) }

        // WAL chunk claiming zero or too many bytes.
        for length in [UInt32(0), UInt32(ShipFrame.maxWALChunkBytes + 1)] {
            var wal = ByteBuffer()
            wal.writeInteger(UInt32(1))
            wal.writeInteger(UInt64(0))
            wal.writeInteger(UInt64(0))
            wal.writeInteger(Int64(0))
            wal.writeInteger(UInt8(0))
            wal.writeInteger(length)
            #expect(throws: ShipProtocolError.self) { try decodeAll(forged(.walData, payload: Array(wal.readableBytesView))) }
        }

        // A non-UTF-8 name.
        #expect(throws: ShipProtocolError.self) {
            try decodeAll(forged(.refusal, payload: [0, 1, 0, 2, 0xC3, 0x28]))
        }
    }

    @Test func lyingLZ4BlockIsCaught() {
        let frame = WALData(
            timeline: 1, startLSN: LSN(0), primaryEndLSN: LSN(0), primarySendTime: .now(),
            compression: .lz4Block, uncompressedLength: 1000, payload: ByteBuffer(bytes: [0xFF, 0x00, 0x01]))
        #expect(throws: ShipProtocolError.self) { try frame.walBytes() }
        let short = WALData(
            timeline: 1, startLSN: LSN(0), primaryEndLSN: LSN(0), primarySendTime: .now(),
            compression: .none, uncompressedLength: 10, payload: ByteBuffer(bytes: [1]))
        #expect(throws: ShipProtocolError.self) { try short.walBytes() }
    }
}
