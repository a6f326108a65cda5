import Foundation
import Testing
import WALCore
import WALTestSupport

@testable import Spool

@Suite struct WALRangeReaderTests {
    let size = TestWAL.size

    @Test func readsCompletedAndInProgressSegmentsInOrderHoldingOnlyAWindow() throws {
        let temp = TempSpool()
        let (_, system) = try temp.open()
        let seg3 = TestWAL.segment(3)
        let seg4 = TestWAL.segment(4, count: 600_000)
        var at = size.startLSN(ofSegment: 3)
        for piece in stride(from: 0, to: seg3.count, by: 100_000) {
            try append(system, Array(seg3[piece..<min(piece + 100_000, seg3.count)]), at: at)
            at = at.advanced(by: UInt64(min(100_000, seg3.count - piece)))
        }
        for piece in stride(from: 0, to: seg4.count, by: 100_000) {
            try append(system, Array(seg4[piece..<min(piece + 100_000, seg4.count)]), at: at)
            at = at.advanced(by: UInt64(min(100_000, seg4.count - piece)))
        }
        let durable = try system.sync()

        let reader = WALRangeReader(spool: system)
        var read: [UInt8] = []
        var position = size.startLSN(ofSegment: 3)
        var largestWindow = 0
        while position < durable {
            let bytes = try reader.read(timeline: 1, from: position, durableEnd: durable, maxBytes: 8192)
            #expect(!bytes.isEmpty)
            read += bytes
            position = position.advanced(by: UInt64(bytes.count))
            largestWindow = max(largestWindow, reader.bufferedBytes)
        }
        #expect(read == seg3 + seg4)
        // A journal record (100 kB here) plus one read, never a segment.
        #expect(largestWindow <= 120_000, "window grew to \(largestWindow) bytes")

        // Backwards (a standby restarting its stream) and from the middle, in a completed and in the
        // in-progress segment.
        let middle3 = size.startLSN(ofSegment: 3).advanced(by: 777_777)
        #expect(
            try reader.read(timeline: 1, from: middle3, durableEnd: durable, maxBytes: 1000) == Array(seg3[777_777..<778_777]))
        #expect(reader.bufferedBytes <= 1000)
        let fresh = WALRangeReader(spool: system)
        let middle4 = size.startLSN(ofSegment: 4).advanced(by: 250_001)
        #expect(try fresh.read(timeline: 1, from: middle4, durableEnd: durable, maxBytes: 5000) == Array(seg4[250_001..<255_001]))
        #expect(
            try fresh.read(timeline: 1, from: middle4.advanced(by: 5000), durableEnd: durable, maxBytes: 5000)
                == Array(seg4[255_001..<260_001]))
    }
}
