import NIOCore
import Testing

@testable import ShipProtocol

@Suite struct BufferPoolTests {
    private func address(_ buffer: ByteBuffer) -> UInt {
        buffer.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) }
    }

    @Test func aRecycledBufferIsReusedEmptyAndLargeEnough() {
        let pool = BufferPool(maxIdle: 2)
        var first = pool.take(capacity: 1 << 20)
        first.writeBytes([1, 2, 3])
        let storage = address(first)
        pool.recycle(first)
        first = ByteBuffer()  // the caller's reference is gone
        var again = pool.take(capacity: 100_000)
        #expect(again.readableBytes == 0)
        #expect(again.capacity >= 1 << 20)
        again.writeBytes([9])
        #expect(address(again) == storage)
        #expect(pool.idleCount == 0)
    }

    @Test func aBufferStillReferencedElsewhereIsNeverWrittenThrough() {
        let pool = BufferPool(maxIdle: 2, minimumCapacity: 0)
        var buffer = pool.take(capacity: 64)
        buffer.writeBytes([1, 2, 3, 4])
        let inFlight = buffer  // e.g. a frame payload a write still holds
        pool.recycle(buffer)
        buffer = ByteBuffer()
        var reused = pool.take(capacity: 64)
        reused.writeBytes([7, 7, 7, 7])
        #expect(Array(inFlight.readableBytesView) == [1, 2, 3, 4])
        #expect(Array(reused.readableBytesView) == [7, 7, 7, 7])
    }

    @Test func idleBuffersAreBoundedAndTakenOldestFirst() {
        let pool = BufferPool(maxIdle: 2, minimumCapacity: 0)
        var buffers = (0..<3).map { i -> ByteBuffer in
            var b = pool.take(capacity: 16)
            b.writeInteger(UInt8(i))
            return b
        }
        let oldest = address(buffers[0])
        for b in buffers { pool.recycle(b) }
        buffers = []
        #expect(pool.idleCount == 2)
        var taken = pool.take(capacity: 16)
        taken.writeInteger(UInt8(0))
        #expect(address(taken) == oldest)
    }

    @Test func smallRequestsAndBuffersBypassThePool() {
        let pool = BufferPool(maxIdle: 2, minimumCapacity: 64 << 10)
        let big = pool.take(capacity: 1 << 20)
        pool.recycle(big)
        #expect(pool.idleCount == 1)
        // A synchronous commit's few kilobytes get a small buffer of their own: the stream has caught up, so
        // the idle big one is let go...
        let small = pool.take(capacity: 4096)
        #expect(small.capacity < 64 << 10)
        #expect(pool.idleCount == 0)
        // ...and the small one is not kept when recycled.
        pool.recycle(small)
        #expect(pool.idleCount == 0)
    }

    @Test func compressingAndDecompressingIntoPooledBuffersRoundTrips() throws {
        let pool = BufferPool(maxIdle: 2)
        let wal = ByteBuffer(bytes: (0..<200_000).map { UInt8(truncatingIfNeeded: $0 / 7) })
        for _ in 0..<3 {
            let frame = WALData.make(
                timeline: 1, startLSN: .init(0x1000000), primaryEndLSN: .init(0x1000000),
                primarySendTime: .init(rawValue: 0), wal: wal, pool: pool)
            #expect(frame.compression == .lz4Block)
            let bytes = try frame.walBytes(pool: pool)
            #expect(bytes == wal)
            pool.recycle(frame.payload)
            pool.recycle(bytes)
        }
        // A block that does not decompress to its declared length is refused, and the buffer goes back.
        var damaged = WALData.make(
            timeline: 1, startLSN: .init(0x1000000), primaryEndLSN: .init(0x1000000),
            primarySendTime: .init(rawValue: 0), wal: wal, pool: pool)
        damaged.uncompressedLength += 1
        #expect(throws: ShipProtocolError.self) { _ = try damaged.walBytes(pool: pool) }
    }
}
