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
    /// Smaller requests and buffers bypass the pool: a synchronous commit's few kilobytes should not pin a
    /// 1 MiB buffer, and small allocations are cheap anyway.
    public let minimumCapacity: Int
    private let allocator = ByteBufferAllocator()

    public init(maxIdle: Int, minimumCapacity: Int = 64 << 10) {
        self.maxIdle = maxIdle
        self.minimumCapacity = minimumCapacity
    }

    /// An empty buffer with room for at least `capacity` bytes: for a large one, the buffer recycled longest
    /// ago (the likeliest to be no longer referenced by a write still in flight). A small request means the
    /// stream has caught up: the idle buffers are released, so a link that streams commits after a catch-up
    /// does not keep megabytes it no longer uses.
    public func take(capacity: Int) -> ByteBuffer {
        guard capacity >= minimumCapacity else {
            idle.withLock { if !$0.isEmpty { $0.removeAll() } }
            return allocator.buffer(capacity: capacity)
        }
        guard var buffer = idle.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else {
            return allocator.buffer(capacity: capacity)
        }
        buffer.clear(minimumCapacity: capacity)
        return buffer
    }

    /// Hands `buffer` back for a later `take`; the caller drops its own references to it.
    public func recycle(_ buffer: ByteBuffer) {
        guard buffer.capacity >= minimumCapacity else { return }
        idle.withLock { buffers in
            if buffers.count < maxIdle { buffers.append(buffer) }
        }
    }

    /// Buffers waiting to be taken.
    public var idleCount: Int { idle.withLock { $0.count } }
}
