/// XXH32, the checksum the LZ4 frame format uses for its header byte and its block and content checksums.
/// liblz4 keeps its copy private, and a segment frame assembled from the sender's blocks
/// (`LZ4.BlockFrameWriter`) has to compute them itself. Streaming: feed any split of the input, the result
/// is the same.
public struct XXH32 {
    private static let prime1: UInt32 = 2_654_435_761
    private static let prime2: UInt32 = 2_246_822_519
    private static let prime3: UInt32 = 3_266_489_917
    private static let prime4: UInt32 = 668_265_263
    private static let prime5: UInt32 = 374_761_393

    private var lanes: Lanes
    private let seed: UInt32
    private var totalLength: UInt64 = 0
    /// Input not yet consumed by a 16-byte stripe (fewer than 16 bytes).
    private var pending: [UInt8] = []

    private struct Lanes {
        var a, b, c, d: UInt32

        init(seed: UInt32) {
            a = seed &+ XXH32.prime1 &+ XXH32.prime2
            b = seed &+ XXH32.prime2
            c = seed
            d = seed &- XXH32.prime1
        }

        /// Consumes the whole 16-byte stripes of `bytes`; returns how many bytes that was.
        mutating func consumeStripes(_ bytes: UnsafeRawBufferPointer) -> Int {
            guard let base = bytes.baseAddress else { return 0 }
            var a = self.a, b = self.b, c = self.c, d = self.d
            var index = 0
            while bytes.count - index >= 16 {
                let p = base + index
                a = XXH32.round(a, UInt32(littleEndian: p.loadUnaligned(as: UInt32.self)))
                b = XXH32.round(b, UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
                c = XXH32.round(c, UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
                d = XXH32.round(d, UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 12, as: UInt32.self)))
                index += 16
            }
            self.a = a
            self.b = b
            self.c = c
            self.d = d
            return index
        }
    }

    public init(seed: UInt32 = 0) {
        self.seed = seed
        lanes = Lanes(seed: seed)
    }

    /// One buffer's hash, computed in place (no copy of its tail).
    public static func hash(_ bytes: UnsafeRawBufferPointer, seed: UInt32 = 0) -> UInt32 {
        var lanes = Lanes(seed: seed)
        let consumed = lanes.consumeStripes(bytes)
        return finish(
            lanes, seed: seed, totalLength: UInt64(bytes.count),
            tail: UnsafeRawBufferPointer(rebasing: bytes[consumed...]))
    }

    public static func hash(_ bytes: [UInt8], seed: UInt32 = 0) -> UInt32 {
        bytes.withUnsafeBytes { hash($0, seed: seed) }
    }

    @inline(__always)
    private static func round(_ accumulator: UInt32, _ lane: UInt32) -> UInt32 {
        rotate(accumulator &+ lane &* prime2, 13) &* prime1
    }

    @inline(__always)
    private static func rotate(_ value: UInt32, _ bits: UInt32) -> UInt32 { (value << bits) | (value >> (32 - bits)) }

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        totalLength += UInt64(bytes.count)
        var index = 0
        if !pending.isEmpty {
            index = min(16 - pending.count, bytes.count)
            pending.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[0..<index]))
            guard pending.count == 16 else { return }
            _ = pending.withUnsafeBytes { lanes.consumeStripes($0) }
            pending.removeAll(keepingCapacity: true)
        }
        index += lanes.consumeStripes(UnsafeRawBufferPointer(rebasing: bytes[index...]))
        if index < bytes.count { pending.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[index...])) }
    }

    public func digest() -> UInt32 {
        pending.withUnsafeBytes { Self.finish(lanes, seed: seed, totalLength: totalLength, tail: $0) }
    }

    /// The hash from the lanes after the last whole stripe and the fewer than 16 bytes after it.
    private static func finish(_ lanes: Lanes, seed: UInt32, totalLength: UInt64, tail: UnsafeRawBufferPointer) -> UInt32 {
        var h: UInt32 =
            totalLength >= 16
            ? rotate(lanes.a, 1) &+ rotate(lanes.b, 7) &+ rotate(lanes.c, 12) &+ rotate(lanes.d, 18)
            : seed &+ prime5
        h = h &+ UInt32(truncatingIfNeeded: totalLength)
        var index = 0
        while tail.count - index >= 4 {
            let lane = UInt32(littleEndian: tail.loadUnaligned(fromByteOffset: index, as: UInt32.self))
            h = rotate(h &+ lane &* prime3, 17) &* prime4
            index += 4
        }
        while index < tail.count {
            h = rotate(h &+ UInt32(tail[index]) &* prime5, 11) &* prime1
            index += 1
        }
        h ^= h >> 15
        h = h &* prime2
        h ^= h >> 13
        h = h &* prime3
        h ^= h >> 16
        return h
    }
}
