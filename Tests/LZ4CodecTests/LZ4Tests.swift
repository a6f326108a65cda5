import NIOCore
import Testing

@testable import LZ4Codec

@Suite struct LZ4FrameTests {
    @Test func frameRoundTripsAndIsStandard() throws {
        let input = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: ($0 / 7) % 13) }
        let frame = input.withUnsafeBytes { LZ4.compressFrame($0) }
        #expect(Array(frame.prefix(4)) == [0x04, 0x22, 0x4D, 0x18])  // LZ4 frame magic
        let back = try frame.withUnsafeBytes { try LZ4.decompressFrame($0, maxOutputBytes: 1 << 20) }
        #expect(back == input)
    }

    @Test func corruptOrOversizedFramesAreErrors() {
        let input = [UInt8](repeating: 42, count: 100_000)
        var frame = input.withUnsafeBytes { LZ4.compressFrame($0) }
        #expect(throws: LZ4.FrameError.self) { try frame.withUnsafeBytes { try LZ4.decompressFrame($0, maxOutputBytes: 1000) } }
        frame[frame.count - 2] ^= 0xFF  // content checksum
        #expect(throws: LZ4.FrameError.self) {
            try frame.withUnsafeBytes { try LZ4.decompressFrame($0, maxOutputBytes: 1 << 20) }
        }
        let truncated = Array(frame.prefix(frame.count / 2))
        #expect(throws: LZ4.FrameError.self) {
            try truncated.withUnsafeBytes { try LZ4.decompressFrame($0, maxOutputBytes: 1 << 20) }
        }
    }

    @Test func aBlockIsAppendedWholeOrNotAtAll() {
        let input = (0..<200_000).map { UInt8(truncatingIfNeeded: ($0 / 5) % 11) }
        var block = [UInt8](repeating: 0, count: 220_000)
        let length = input.withUnsafeBytes { src in block.withUnsafeMutableBytes { LZ4.compress(src, into: $0) } }
        block.removeLast(block.count - length)
        var output: [UInt8] = [7, 8, 9]
        #expect(block.withUnsafeBytes { LZ4.decompressBlock($0, uncompressedLength: input.count, appendingTo: &output) })
        #expect(output == [7, 8, 9] + input)
        // A length the block does not yield, a cut block, no block: false, and the output as it was.
        for (bytes, claimed) in [
            (block, input.count - 1), (block, input.count + 1), (Array(block.prefix(length / 2)), input.count),
            ([], input.count), (block, 0),
        ] {
            var kept: [UInt8] = [7, 8, 9]
            #expect(
                !bytes.withUnsafeBytes { LZ4.decompressBlock($0, uncompressedLength: claimed, appendingTo: &kept) },
                "claimed \(claimed) from \(bytes.count) bytes")
            #expect(kept == [7, 8, 9])
        }
    }
}

@Suite struct BlockFrameWriterTests {
    @Test func xxh32MatchesTheReferenceAtAnySplit() {
        // Reference values from the xxHash reference implementation.
        #expect(XXH32.hash([]) == 0x02CC_5D05)
        #expect(XXH32.hash(Array("a".utf8)) == 0x550D_7456)
        #expect(XXH32.hash(Array("abc".utf8)) == 0x32D1_53FF)
        #expect(XXH32.hash(Array("0123456789abcdef".utf8)) == 0xC2C4_5B69)
        let long =
            Array(0...255).map(UInt8.init) + Array(0...255).map(UInt8.init) + Array(0...255).map(UInt8.init)
            + Array("xyz".utf8)
        #expect(XXH32.hash(long) == 0xBAA5_4DA9)
        for split in [1, 5, 15, 16, 17, 100, 770] {
            var state = XXH32()
            long.withUnsafeBytes {
                state.update(UnsafeRawBufferPointer(rebasing: $0[0..<split]))
                state.update(UnsafeRawBufferPointer(rebasing: $0[split...]))
            }
            #expect(state.digest() == 0xBAA5_4DA9)
        }
    }

    /// WAL-like input: compressible runs with some noise.
    private func sample(_ count: Int, seed: UInt64) -> [UInt8] {
        var x = seed
        return (0..<count).map { i in
            x = x &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return i % 64 < 8 ? UInt8(truncatingIfNeeded: x >> 33) : UInt8(truncatingIfNeeded: i / 512)
        }
    }

    @Test func senderBlocksAndRawPiecesMakeOneStandardFrame() throws {
        // A segment as the receiver sees it: small raw pieces, large pieces with the sender's block, a piece
        // whose block is not worth keeping, and a block that would be larger than its input.
        let pieces: [(count: Int, withBlock: Bool)] = [
            (3000, false), (700_000, true), (1 << 20, true), (20_000, true),
            (500_000, false), (1 << 20, true),
        ]
        let total = pieces.reduce(0) { $0 + $1.count }
        let writer = LZ4.BlockFrameWriter(contentSize: UInt64(total))
        var frame = writer.begin()
        var content: [UInt8] = []
        for (index, piece) in pieces.enumerated() {
            let raw = sample(piece.count, seed: UInt64(index))
            content += raw
            if piece.withBlock {
                let block = LZ4.compressBlock(ByteBuffer(bytes: raw))
                frame += raw.withUnsafeBytes { r in block.withUnsafeReadableBytes { writer.add(r, compressedBlock: $0) } }
            } else {
                frame += raw.withUnsafeBytes { writer.add($0) }
            }
        }
        let incompressible = (0..<100_000).map { _ in UInt8.random(in: 0...255) }
        let incompressibleBlock = LZ4.compressBlock(ByteBuffer(bytes: incompressible))
        #expect(incompressibleBlock.readableBytes >= incompressible.count)
        let writer2 = LZ4.BlockFrameWriter(contentSize: UInt64(incompressible.count))
        var frame2 = writer2.begin()
        frame2 += incompressible.withUnsafeBytes { r in
            incompressibleBlock.withUnsafeReadableBytes { writer2.add(r, compressedBlock: $0) }
        }
        frame2 += writer2.end()
        #expect(try frame2.withUnsafeBytes { try LZ4.decompressFrame($0, maxOutputBytes: 1 << 20) } == incompressible)

        frame += writer.end()
        #expect(frame.count < total / 2)
        #expect(try frame.withUnsafeBytes { try LZ4.decompressFrame($0, maxOutputBytes: 8 << 20) } == content)
        // The streaming reader gets the same bytes in small steps.
        let reader = try LZ4.FrameReader()
        var streamed: [UInt8] = []
        var offset = 0
        while !reader.finished {
            let end = min(frame.count, offset + 10_000)
            offset += try frame.withUnsafeBytes {
                try reader.read(UnsafeRawBufferPointer(rebasing: $0[offset..<end]), into: &streamed, maxOutput: 1 << 20)
            }
        }
        #expect(streamed == content)

        // The content checksum covers stored blocks too: damage inside one is detected.
        var damaged = frame
        damaged[damaged.count / 2] ^= 0x01
        #expect(throws: LZ4.FrameError.self) {
            try damaged.withUnsafeBytes { try LZ4.decompressFrame($0, maxOutputBytes: 8 << 20) }
        }
        var badHeader = frame
        badHeader[6] ^= 0x01  // a content-size byte, guarded by the header checksum
        #expect(throws: LZ4.FrameError.self) {
            try badHeader.withUnsafeBytes { try LZ4.decompressFrame($0, maxOutputBytes: 8 << 20) }
        }
    }
}
