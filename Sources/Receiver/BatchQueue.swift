import Synchronization

/// A bounded hand-off from the link reader to the spool writer. The writer takes everything queued at
/// once, so one fsync covers a whole batch (group commit) while the reader keeps receiving; the reader
/// waits when `maxBytes` are queued, which stops reading from the socket and slows the sender.
final class BatchQueue<Item: Sendable>: Sendable {
    private struct State {
        var items: [Item] = []
        var bytes = 0
        var finished: (any Error)?
        var consumer: CheckedContinuation<[Item], any Error>?
        var producers: [CheckedContinuation<Void, any Error>] = []
    }

    private let state = Mutex(State())
    let maxBytes: Int

    init(maxBytes: Int) { self.maxBytes = maxBytes }

    func push(_ item: Item, bytes: Int) async throws {
        while true {
            let admitted: Bool = try state.withLock { s in
                if let error = s.finished { throw error }
                return s.bytes < maxBytes
            }
            if admitted { break }
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let resumeNow: (any Error)?? = state.withLock { s in
                    if let error = s.finished { return .some(error) }
                    if s.bytes < maxBytes { return .some(nil) }
                    s.producers.append(continuation)
                    return nil
                }
                if let outcome = resumeNow {
                    if let error = outcome { continuation.resume(throwing: error) } else { continuation.resume() }
                }
            }
        }
        let consumer: CheckedContinuation<[Item], any Error>? = state.withLock { s in
            if let consumer = s.consumer {
                s.consumer = nil
                return consumer
            }
            s.items.append(item)
            s.bytes += bytes
            return nil
        }
        consumer?.resume(returning: [item])
    }

    /// Nothing is waiting to be taken (a producer may be about to push).
    var isEmpty: Bool { state.withLock { $0.items.isEmpty } }

    /// Everything queued, waiting for at least one item.
    func takeAll() async throws -> [Item] {
        try await withCheckedThrowingContinuation { continuation in
            let (batch, producers, error): ([Item]?, [CheckedContinuation<Void, any Error>], (any Error)?) = state.withLock { s in
                if !s.items.isEmpty {
                    let batch = s.items
                    s.items.removeAll()
                    s.bytes = 0
                    let producers = s.producers
                    s.producers.removeAll()
                    return (batch, producers, nil)
                }
                if let error = s.finished { return (nil, [], error) }
                s.consumer = continuation
                return (nil, [], nil)
            }
            producers.forEach { $0.resume() }
            if let batch { continuation.resume(returning: batch) } else if let error { continuation.resume(throwing: error) }
        }
    }

    /// Wakes everyone with `error`; later calls fail with it.
    func finish(_ error: any Error) {
        let (consumer, producers) = state.withLock { s in
            s.finished = s.finished ?? error
            defer {
                s.consumer = nil
                s.producers.removeAll()
            }
            return (s.consumer, s.producers)
        }
        consumer?.resume(throwing: error)
        producers.forEach { $0.resume(throwing: error) }
    }
}
