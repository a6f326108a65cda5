import CLZ4
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// How hard a block is compressed: fast LZ4 (`LZ4.compress`), or LZ4HC for fewer bytes at several times the CPU.
public enum CompressionEffort: String, Sendable, Hashable, CaseIterable {
    case fast
    case high
}

/// Thin wrapper over liblz4: blocks for the wire, frames for spool files.
public enum LZ4 {
    /// Compresses one independent block with fast LZ4.
    public static func compressBlock(_ input: ByteBuffer, allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var out = allocator.buffer(capacity: compressBound(input.readableBytes))
        compressBlock(input, into: &out)
        return out
    }

    /// The most one block of `count` bytes can compress to.
    public static func compressBound(_ count: Int) -> Int { Int(LZ4_compressBound(Int32(count))) }

    /// Compresses one independent block, appended to `out`. Either effort yields an ordinary LZ4 block: the
    /// decoder (and `lz4 -d`, once stored in a segment file) cannot tell them apart.
    public static func compressBlock(_ input: ByteBuffer, into out: inout ByteBuffer, effort: CompressionEffort = .fast) {
        let bound = compressBound(input.readableBytes)
        _ = input.withUnsafeReadableBytes { src in
            out.writeWithUnsafeMutableBytes(minimumWritableBytes: bound) { dst in
                switch effort {
                case .fast: compress(src, into: dst)
                case .high: compressHigh(src, into: dst)
                }
            }
        }
    }

    /// Decompresses one block, appended to `out`; false (and nothing appended) unless it yields exactly
    /// `uncompressedLength` bytes.
    public static func decompressBlock(_ input: ByteBuffer, uncompressedLength: Int, into out: inout ByteBuffer) -> Bool {
        var ok = false
        _ = input.withUnsafeReadableBytes { src in
            out.writeWithUnsafeMutableBytes(minimumWritableBytes: uncompressedLength) { dst in
                ok = decompress(src, into: dst, count: uncompressedLength)
                return ok ? uncompressedLength : 0
            }
        }
        return ok
    }

    /// Decompresses one block and appends the result to `output`; false (and `output` unchanged) unless it
    /// yields exactly `uncompressedLength` bytes.
    public static func decompressBlock(
        _ input: UnsafeRawBufferPointer, uncompressedLength: Int,
        appendingTo output: inout [UInt8]
    ) -> Bool {
        guard uncompressedLength > 0 else { return false }
        // Through a scratch block and one copy: growing the array by `repeatElement` zeros first went element by
        // element in debug builds (~270 ms per MiB), and the standby endpoint reads journals on an event loop.
        return withUnsafeTemporaryAllocation(byteCount: uncompressedLength, alignment: 16) { scratch in
            guard decompress(input, into: scratch, count: uncompressedLength) else { return false }
            output.append(contentsOf: UnsafeRawBufferPointer(scratch))
            return true
        }
    }

    /// Fast LZ4 (acceleration 1, as `LZ4_compress_default`) of `src` into one independent block in `dst`: the
    /// block's length, 0 if it did not fit.
    ///
    /// `LZ4_compress_default` clears a fresh 16 KiB hash table for every block. A synchronous commit's chunk
    /// is a few KiB, so that clearing cost twice the compression itself: callgrind counted 16,500 instructions
    /// of `memset` per commit in the sender, 16 % of all it ran in user space. Each thread keeps one stream
    /// state instead, and `LZ4_resetStream_fast` readies it for the next block without clearing the table
    /// (old entries fall out of reach by offset); with no dictionary, `LZ4_compress_fast_continue` then makes
    /// a block that depends on nothing before it, like `LZ4_compress_default`'s.
    static func compress(_ src: UnsafeRawBufferPointer, into dst: UnsafeMutableRawBufferPointer) -> Int {
        let stream = ThreadCompressionStream.current
        LZ4_resetStream_fast(stream)
        return Int(
            LZ4_compress_fast_continue(
                stream, src.baseAddress?.assumingMemoryBound(to: CChar.self),
                dst.baseAddress!.assumingMemoryBound(to: CChar.self),
                Int32(src.count), Int32(dst.count), 1))
    }

    /// LZ4HC at this level: on pgbench WAL in 1 MiB blocks, about 15 % fewer bytes than `LZ4_compress_default`
    /// at a quarter of its speed (~350 against ~1600 MB/s on one core here); higher levels gain under 3 % more
    /// for up to four times the time again.
    static let highCompressionLevel: Int32 = 2

    /// `LZ4_compress_HC` of `src` into `dst`: the block's length, 0 if it did not fit.
    static func compressHigh(_ src: UnsafeRawBufferPointer, into dst: UnsafeMutableRawBufferPointer) -> Int {
        Int(
            LZ4_compress_HC(
                src.baseAddress?.assumingMemoryBound(to: CChar.self),
                dst.baseAddress!.assumingMemoryBound(to: CChar.self),
                Int32(src.count), Int32(dst.count), highCompressionLevel))
    }

    /// The bounds-checked `LZ4_decompress_safe` of `src` into `dst` (at least `count` bytes); true only if the
    /// block yields exactly `count` bytes.
    static func decompress(_ src: UnsafeRawBufferPointer, into dst: UnsafeMutableRawBufferPointer, count: Int) -> Bool {
        LZ4_decompress_safe(
            src.baseAddress?.assumingMemoryBound(to: CChar.self),
            dst.baseAddress!.assumingMemoryBound(to: CChar.self),
            Int32(src.count), Int32(count)) == Int32(count)
    }

    /// Compresses `input` into one standard LZ4 frame (64 KiB linked blocks, content size and content
    /// checksum recorded), so `lz4 -d` restores the input exactly and detects corruption.
    public static func compressFrame(_ input: UnsafeRawBufferPointer) -> [UInt8] {
        var prefs = LZ4F_preferences_t()
        prefs.frameInfo.blockSizeID = LZ4F_max64KB
        prefs.frameInfo.blockMode = LZ4F_blockLinked
        prefs.frameInfo.contentChecksumFlag = LZ4F_contentChecksumEnabled
        prefs.frameInfo.contentSize = UInt64(input.count)
        let bound = LZ4F_compressFrameBound(input.count, &prefs)
        var out = [UInt8](repeating: 0, count: bound)
        let written = out.withUnsafeMutableBytes { dst in
            LZ4F_compressFrame(dst.baseAddress, dst.count, input.baseAddress, input.count, &prefs)
        }
        precondition(LZ4F_isError(written) == 0, "LZ4F_compressFrame cannot fail with a bound-sized buffer")
        out.removeSubrange(written...)
        return out
    }

    /// Compresses a stream into one LZ4 frame piece by piece (for files too large to hold in memory).
    public final class FrameWriter {
        private var context: OpaquePointer?
        private var preferences = LZ4F_preferences_t()
        private var buffer: [UInt8] = []

        public init() {
            precondition(
                LZ4F_isError(LZ4F_createCompressionContext(&context, UInt32(LZ4F_VERSION))) == 0,
                "cannot create an LZ4 compression context")
            preferences.frameInfo.blockSizeID = LZ4F_max64KB
            preferences.frameInfo.blockMode = LZ4F_blockLinked
            preferences.frameInfo.contentChecksumFlag = LZ4F_contentChecksumEnabled
        }

        deinit { LZ4F_freeCompressionContext(context) }

        /// The frame header; call once, first.
        public func begin() -> [UInt8] {
            buffer = [UInt8](repeating: 0, count: 32)
            let n = buffer.withUnsafeMutableBytes { LZ4F_compressBegin(context, $0.baseAddress, $0.count, &preferences) }
            precondition(LZ4F_isError(n) == 0, "LZ4F_compressBegin failed")
            return Array(buffer[0..<n])
        }

        public func update(_ input: UnsafeRawBufferPointer) -> [UInt8] {
            update(input) { Array($0) }
        }

        /// Compresses `input` and hands the output to `body` straight from the writer's buffer (valid only
        /// during the call): a backup's 1 MiB pieces then cost no array of their own.
        public func update<T>(_ input: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
            let bound = LZ4F_compressBound(input.count, &preferences)
            if buffer.count < bound { buffer = [UInt8](repeating: 0, count: bound) }
            let n = buffer.withUnsafeMutableBytes {
                LZ4F_compressUpdate(context, $0.baseAddress, $0.count, input.baseAddress, input.count, nil)
            }
            precondition(LZ4F_isError(n) == 0, "LZ4F_compressUpdate cannot fail with a bound-sized buffer")
            return try buffer.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        }

        /// The rest of the frame: buffered data, end mark and content checksum.
        public func end() -> [UInt8] {
            let bound = LZ4F_compressBound(0, &preferences) + 16
            if buffer.count < bound { buffer = [UInt8](repeating: 0, count: bound) }
            let n = buffer.withUnsafeMutableBytes { LZ4F_compressEnd(context, $0.baseAddress, $0.count, nil) }
            precondition(LZ4F_isError(n) == 0, "LZ4F_compressEnd failed")
            return Array(buffer[0..<n])
        }
    }

    /// Writes one LZ4 frame of independent blocks of up to 1 MiB, built from two kinds of input: blocks the
    /// sender already compressed, stored as they came, and raw bytes, compressed here. A segment arriving in
    /// the sender's large catch-up chunks is thus compressed once, at the primary's site, instead of again in
    /// the receiver; small chunks (synchronous commits) are gathered into full blocks so the file still
    /// compresses well. The frame records the content size and an XXH32 checksum of each block as stored, so
    /// `lz4 -d` detects damage; checking the compressed bytes costs a quarter of checking the content.
    public final class BlockFrameWriter {
        public static let maxBlockBytes = 1 << 20
        /// Below this a sender's block is not worth keeping as is: small independent blocks compress worse.
        public static let minStoredBlockBytes = 64 << 10
        /// Raw input is compressed in blocks of this size: LZ4's window is 64 KiB, so larger blocks would
        /// compress barely better and hold more memory.
        public static let gatheredBlockBytes = 256 << 10
        private let contentSize: UInt64
        // Kept between calls: each is about a block long, and allocating that much afresh costs page faults.
        private var pending: [UInt8] = []
        private var scratch: [UInt8] = []
        private var output: [UInt8] = []

        public init(contentSize: UInt64) { self.contentSize = contentSize }

        /// The frame header; call once, first.
        public func begin() -> [UInt8] {
            // Version 01, independent blocks, block checksums, content size present; 1 MiB blocks.
            var descriptor: [UInt8] = [0x78, 0x60]
            withUnsafeBytes(of: contentSize.littleEndian) { descriptor.append(contentsOf: $0) }
            let headerChecksum = UInt8(truncatingIfNeeded: XXH32.hash(descriptor) >> 8)
            return [0x04, 0x22, 0x4D, 0x18] + descriptor + [headerChecksum]
        }

        /// Adds raw bytes; returns whatever frame bytes are complete.
        public func add(_ raw: UnsafeRawBufferPointer) -> [UInt8] {
            output.removeAll(keepingCapacity: true)
            var index = 0
            while index < raw.count {
                if pending.isEmpty { pending.reserveCapacity(Self.gatheredBlockBytes) }
                let n = min(raw.count - index, Self.gatheredBlockBytes - pending.count)
                pending.append(contentsOf: UnsafeRawBufferPointer(rebasing: raw[index..<index + n]))
                index += n
                if pending.count == Self.gatheredBlockBytes { flushPending() }
            }
            return output
        }

        /// Adds `raw`, whose LZ4 block (as the sender compressed it, at either effort; decompressing to exactly `raw`) the
        /// caller already has: stored as is when it is a block worth keeping, else treated like `add(_:)`.
        public func add(_ raw: UnsafeRawBufferPointer, compressedBlock: UnsafeRawBufferPointer) -> [UInt8] {
            guard raw.count >= Self.minStoredBlockBytes, raw.count <= Self.maxBlockBytes,
                compressedBlock.count < raw.count
            else { return add(raw) }
            output.removeAll(keepingCapacity: true)
            flushPending()
            appendBlock(compressedBlock, compressed: true)
            return output
        }

        /// The rest of the frame: pending bytes and the end mark.
        public func end() -> [UInt8] {
            output.removeAll(keepingCapacity: true)
            flushPending()
            appendLE(0)
            return output
        }

        private func flushPending() {
            guard !pending.isEmpty else { return }
            let bound = LZ4.compressBound(pending.count)
            if scratch.count < bound { scratch = [UInt8](repeating: 0, count: bound) }
            let n = pending.withUnsafeBytes { src in scratch.withUnsafeMutableBytes { LZ4.compress(src, into: $0) } }
            if n > 0 && n < pending.count {
                scratch.withUnsafeBytes { appendBlock(UnsafeRawBufferPointer(rebasing: $0[0..<n]), compressed: true) }
            } else {
                pending.withUnsafeBytes { appendBlock($0, compressed: false) }
            }
            pending.removeAll(keepingCapacity: true)
        }

        private func appendBlock(_ data: UnsafeRawBufferPointer, compressed: Bool) {
            appendLE(UInt32(data.count) | (compressed ? 0 : 0x8000_0000))
            output.append(contentsOf: data)
            appendLE(XXH32.hash(data))
        }

        private func appendLE(_ value: UInt32) {
            withUnsafeBytes(of: value.littleEndian) { output.append(contentsOf: $0) }
        }
    }

    /// Decompresses one LZ4 frame piece by piece, so a reader holds what it needs next, not the whole content.
    public final class FrameReader {
        private var context: OpaquePointer?
        /// The frame's end mark (and content checksum) has been read and checked.
        public private(set) var finished = false

        public init() throws(FrameError) {
            guard LZ4F_isError(LZ4F_createDecompressionContext(&context, UInt32(LZ4F_VERSION))) == 0 else {
                throw FrameError(description: "cannot create LZ4 decompression context")
            }
        }

        deinit { LZ4F_freeDecompressionContext(context) }

        /// Decompresses from `input`, appending at most `maxOutput` bytes to `output`; returns how many input
        /// bytes it consumed (the caller passes the rest again, with more appended).
        public func read(_ input: UnsafeRawBufferPointer, into output: inout [UInt8], maxOutput: Int) throws(FrameError) -> Int {
            var consumed = 0
            var produced = 0
            var chunk = [UInt8](repeating: 0, count: min(max(maxOutput, 1), 256 << 10))
            while !finished && produced < maxOutput {
                var srcSize = input.count - consumed
                var dstSize = min(chunk.count, maxOutput - produced)
                let hint = chunk.withUnsafeMutableBytes { dst in
                    LZ4F_decompress(context, dst.baseAddress, &dstSize, input.baseAddress.map { $0 + consumed }, &srcSize, nil)
                }
                if LZ4F_isError(hint) != 0 {
                    throw FrameError(description: "corrupt LZ4 frame: " + String(cString: LZ4F_getErrorName(hint)))
                }
                consumed += srcSize
                produced += dstSize
                output.append(contentsOf: chunk[0..<dstSize])
                if hint == 0 { finished = true }
                if srcSize == 0 && dstSize == 0 { break }
            }
            return consumed
        }
    }

    public struct FrameError: Error, CustomStringConvertible {
        public let description: String
    }

    /// Decompresses a whole LZ4 frame, refusing output beyond `maxOutputBytes`.
    public static func decompressFrame(_ input: UnsafeRawBufferPointer, maxOutputBytes: Int) throws(FrameError) -> [UInt8] {
        var context: OpaquePointer?
        guard LZ4F_isError(LZ4F_createDecompressionContext(&context, UInt32(LZ4F_VERSION))) == 0 else {
            throw FrameError(description: "cannot create LZ4 decompression context")
        }
        defer { LZ4F_freeDecompressionContext(context) }
        var out = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 256 << 10)
        var consumed = 0
        while true {
            var srcSize = input.count - consumed
            var dstSize = chunk.count
            let hint = chunk.withUnsafeMutableBytes { dst in
                LZ4F_decompress(context, dst.baseAddress, &dstSize, input.baseAddress.map { $0 + consumed }, &srcSize, nil)
            }
            if LZ4F_isError(hint) != 0 {
                throw FrameError(description: "corrupt LZ4 frame: " + String(cString: LZ4F_getErrorName(hint)))
            }
            consumed += srcSize
            out.append(contentsOf: chunk[0..<dstSize])
            guard out.count <= maxOutputBytes else {
                throw FrameError(description: "LZ4 frame expands past \(maxOutputBytes) bytes")
            }
            if hint == 0 { break }
            if srcSize == 0 && dstSize == 0 {
                throw FrameError(description: "LZ4 frame is truncated")
            }
        }
        guard consumed == input.count else { throw FrameError(description: "trailing bytes after the LZ4 frame") }
        return out
    }
}

/// The calling thread's LZ4 compression state (`LZ4.compress`), made on its first block and freed when the
/// thread ends. A state is not safe to share, and compressions run on several threads (the replication thread,
/// tasks shipping the local buffer or a base backup), so each has its own.
enum ThreadCompressionStream {
    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        let rc = pthread_key_create(&key) { state in
            if let state { LZ4_freeStream(state.assumingMemoryBound(to: LZ4_stream_t.self)) }
        }
        precondition(rc == 0, "cannot create a thread-specific key for LZ4 compression")
        return key
    }()

    static var current: UnsafeMutablePointer<LZ4_stream_t> {
        if let state = pthread_getspecific(key) { return state.assumingMemoryBound(to: LZ4_stream_t.self) }
        guard let state = LZ4_createStream() else { fatalError("cannot allocate an LZ4 compression state") }
        pthread_setspecific(key, state)
        return state
    }
}
