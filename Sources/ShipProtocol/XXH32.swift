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

    private var v1: UInt32, v2: UInt32, v3: UInt32, v4: UInt32
    private let seed: UInt32
    private var totalLength: UInt64 = 0
    /// Input not yet consumed by a 16-byte stripe.
    private var pending: [UInt8] = []

    public init(seed: UInt32 = 0) {
        self.seed = seed
        v1 = seed &+ Self.prime1 &+ Self.prime2
        v2 = seed &+ Self.prime2
        v3 = seed
        v4 = seed &- Self.prime1
        pending.reserveCapacity(16)
    }

    public static func hash(_ bytes: UnsafeRawBufferPointer, seed: UInt32 = 0) -> UInt32 {
        var state = XXH32(seed: seed)
        state.update(bytes)
        return state.digest()
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
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        totalLength += UInt64(bytes.count)
        var index = 0
        if !pending.isEmpty {
            let take = min(16 - pending.count, bytes.count)
            pending.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[0..<take]))
            index = take
            guard pending.count == 16 else { return }
            pending.withUnsafeBytes { stripe(at: $0.baseAddress!) }
            pending.removeAll(keepingCapacity: true)
        }
        var a = v1, b = v2, c = v3, d = v4
        while bytes.count - index >= 16 {
            let p = base + index
            a = Self.round(a, UInt32(littleEndian: p.loadUnaligned(as: UInt32.self)))
            b = Self.round(b, UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
            c = Self.round(c, UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
            d = Self.round(d, UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 12, as: UInt32.self)))
            index += 16
        }
        v1 = a; v2 = b; v3 = c; v4 = d
        if index < bytes.count { pending.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[index...])) }
    }

    private mutating func stripe(at p: UnsafeRawPointer) {
        v1 = Self.round(v1, UInt32(littleEndian: p.loadUnaligned(as: UInt32.self)))
        v2 = Self.round(v2, UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
        v3 = Self.round(v3, UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
        v4 = Self.round(v4, UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 12, as: UInt32.self)))
    }

    public func digest() -> UInt32 {
        var h: UInt32 = totalLength >= 16
            ? Self.rotate(v1, 1) &+ Self.rotate(v2, 7) &+ Self.rotate(v3, 12) &+ Self.rotate(v4, 18)
            : seed &+ Self.prime5
        h = h &+ UInt32(truncatingIfNeeded: totalLength)
        var index = 0
        while pending.count - index >= 4 {
            let lane = UInt32(pending[index]) | UInt32(pending[index + 1]) << 8 | UInt32(pending[index + 2]) << 16
                | UInt32(pending[index + 3]) << 24
            h = Self.rotate(h &+ lane &* Self.prime3, 17) &* Self.prime4
            index += 4
        }
        while index < pending.count {
            h = Self.rotate(h &+ UInt32(pending[index]) &* Self.prime5, 11) &* Self.prime1
            index += 1
        }
        h ^= h >> 15
        h = h &* Self.prime2
        h ^= h >> 13
        h = h &* Self.prime3
        h ^= h >> 16
        return h
    }
}
