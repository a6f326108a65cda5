import Foundation
import NIOCore
import ShipProtocol
import Synchronization

/// A bounded hand-off from the link's reader to the spool writer (its own thread). The writer takes
/// everything queued at once, so one fsync covers a whole batch (group commit) while the reader keeps
/// receiving. Once `maxBytes` are queued the reader stops reading from the socket, which slows the sender:
/// an async reader waits in `push`; the event loop, which must not wait, queues with `pushNow` and pauses
/// its reads until `producerMayResume` runs.
///
/// The writer blocks on a condition variable rather than awaiting: it lives on the system's spool thread for
/// the whole link, so a synchronous commit's WAL goes from the event loop straight to the thread that writes
/// and fsyncs it, and the acknowledgement leaves from there, without hops through the task pool.
///
/// While the writer waits with nothing queued, the producer may borrow its role (`borrowIdleWriter`) and
/// write one item itself, saving two thread switches on a synchronous commit. The writer does not return
/// from `takeAllBlocking`, nor leave its thread, until the role is given back, so the spool never has two
/// writers and nothing queued later is written before the borrowed item.
final class BatchQueue<Item: Sendable>: @unchecked Sendable {
    // Guarded by `condition`.
    private var items: [Item] = []
    private var bytes = 0
    private var finished: (any Error)?
    /// The writer is parked in `takeAllBlocking`, its previous batch fully handled.
    private var writerParked = false
    /// The producer holds the writer's role (`borrowIdleWriter`).
    private var borrowed = false
    private var producers: [CheckedContinuation<Void, any Error>] = []
    private var producerPaused = false
    private let condition = NSCondition()
    let maxBytes: Int
    /// Called (on the writer's thread) when the writer took a batch after `pushNow` reported the queue full.
    private let producerMayResume: @Sendable () -> Void

    init(maxBytes: Int, producerMayResume: @escaping @Sendable () -> Void = {}) {
        self.maxBytes = maxBytes
        self.producerMayResume = producerMayResume
    }

    private func locked<T>(_ body: () throws -> T) rethrows -> T {
        condition.lock()
        defer { condition.unlock() }
        return try body()
    }

    func push(_ item: Item, bytes count: Int) async throws {
        while true {
            let admitted: Bool = try locked {
                if let error = finished { throw error }
                return bytes < maxBytes
            }
            if admitted { break }
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let resumeNow: (any Error)?? = locked {
                    if let error = finished { return .some(error) }
                    if bytes < maxBytes { return .some(nil) }
                    producers.append(continuation)
                    return nil
                }
                if let outcome = resumeNow {
                    if let error = outcome { continuation.resume(throwing: error) } else { continuation.resume() }
                }
            }
        }
        locked {
            items.append(item)
            bytes += count
            condition.signal()
        }
    }

    /// Queues `item` without waiting; returns true when the queue is now full and the producer should pause
    /// until `producerMayResume` is called.
    func pushNow(_ item: Item, bytes count: Int) throws -> Bool {
        try locked {
            if let error = finished { throw error }
            items.append(item)
            bytes += count
            condition.signal()
            if bytes >= maxBytes { producerPaused = true }
            return producerPaused
        }
    }

    /// Nothing is waiting to be taken (a producer may be about to push).
    var isEmpty: Bool { locked { items.isEmpty } }

    /// Takes the writer's role when the writer is parked with nothing queued and the queue is not finished:
    /// the caller may then write one item itself and must call `returnWriter()` after, also when it fails.
    func borrowIdleWriter() -> Bool {
        locked {
            guard finished == nil, writerParked, items.isEmpty, !borrowed else { return false }
            borrowed = true
            return true
        }
    }

    func returnWriter() {
        locked {
            borrowed = false
            // A writer with nothing to take would only park again: spare it the wake-up on each commit.
            if !items.isEmpty || finished != nil { condition.broadcast() }
        }
    }

    /// Everything queued, blocking the calling thread until there is at least one item; throws once the
    /// queue is finished and empty. Neither returns nor throws while the writer's role is borrowed.
    func takeAllBlocking() throws -> [Item] {
        let (batch, waiting, resumePaused): ([Item], [CheckedContinuation<Void, any Error>], Bool) = try locked {
            writerParked = true
            defer { writerParked = false }
            while items.isEmpty || borrowed {
                if let error = finished, !borrowed { throw error }
                condition.wait()
            }
            defer {
                items.removeAll()
                bytes = 0
                producers.removeAll()
                producerPaused = false
            }
            return (items, producers, producerPaused)
        }
        waiting.forEach { $0.resume() }
        if resumePaused { producerMayResume() }
        return batch
    }

    /// Wakes everyone with `error`; later calls fail with it.
    func finish(_ error: any Error) {
        let waiting: [CheckedContinuation<Void, any Error>] = locked {
            finished = finished ?? error
            condition.broadcast()
            defer { producers.removeAll() }
            return producers
        }
        waiting.forEach { $0.resume(throwing: error) }
    }
}

/// Sends a link's acks and never one that goes back, though they come from two threads: the spool thread
/// after each batch, and the event loop for keepalive replies and the synchronous commits it writes itself.
/// Each ack is merged with the last one written at the moment it is written, on the event loop: an ack from the
/// spool thread waits in the loop's task queue, and one the loop sends meanwhile goes out first. The sender
/// closes a link whose acks regress.
final class AckSender: Sendable {
    private let channel: any Channel
    private let lastWritten = Mutex<Ack?>(nil)

    init(channel: any Channel) { self.channel = channel }

    func send(_ ack: Ack) {
        if channel.eventLoop.inEventLoop {
            write(ack)
        } else {
            channel.eventLoop.execute { self.write(ack) }
        }
    }

    private func write(_ ack: Ack) {
        let merged = lastWritten.withLock { previous in
            var ack = ack
            if let previous, previous.timeline == ack.timeline {
                ack.writtenLSN = max(ack.writtenLSN, previous.writtenLSN)
                ack.durableLSN = max(ack.durableLSN, previous.durableLSN)
            }
            previous = ack
            return ack
        }
        channel.writeAndFlush(ShipMessage.ack(merged), promise: nil)
    }
}
