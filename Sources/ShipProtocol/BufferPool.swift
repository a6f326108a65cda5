import NIOCore
import Synchronization

/// A few large buffers passed round between the threads of the WAL path (libpq thread → compressor, link
/// reader → spool thread), so the 1 MiB chunks are reused instead of each being allocated, faulted in page by
/// page and handed back to the kernel: on a catch-up those page faults cost more CPU than decompressing.
///
/// Reuse is an optimisation only: a buffer taken while someone still holds a reference to it gets fresh
/// storage on its first write (ByteBuffer is copy-on-write), so a buffer recycled too early is never shared.
public final class BufferPool: Sendable {
    private let idle = Mutex<[ByteBuffer]>([])
    /// Buffers kept while idle; more are released as usual.
    public let maxIdle: Int
    private let allocator = ByteBufferAllocator()

    public init(maxIdle: Int) { self.maxIdle = maxIdle }

    /// An empty buffer with room for at least `capacity` bytes: the one recycled longest ago (the likeliest to
    /// be no longer referenced by a write still in flight).
    public func take(capacity: Int) -> ByteBuffer {
        guard var buffer = idle.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else { return allocator.buffer(capacity: capacity) }
        buffer.clear(minimumCapacity: capacity)
        return buffer
    }

    /// Hands `buffer` back for a later `take`; the caller drops its own references to it.
    public func recycle(_ buffer: ByteBuffer) {
        idle.withLock { buffers in
            if buffers.count < maxIdle { buffers.append(buffer) }
        }
    }

    /// Buffers waiting to be taken.
    public var idleCount: Int { idle.withLock { $0.count } }
}
