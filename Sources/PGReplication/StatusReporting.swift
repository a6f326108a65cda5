import PGProtocol
import Synchronization

/// What a standby status update needs from a connection in COPY BOTH: `PGConnection`, or a stand-in in tests.
protocol CopyBothOutput: AnyObject {
    /// Queues one CopyData message; false when the output buffer cannot take it now.
    func putCopyData(_ bytes: [UInt8]) throws -> Bool
    /// Sends what is queued; true when all of it went out.
    func flush() throws -> Bool
}

extension PGConnection: CopyBothOutput {}

/// Sends the latest feedback to the primary from the thread that brought it, when it can do so at once.
protocol DirectFeedback: Sendable {
    /// True when the update went out whole; false when the replication thread must be woken to send it.
    func sendIfFree() -> Bool
}

/// The replication connection while WAL streams, used by two threads one at a time. libpq allows a connection
/// on any thread as long as no two threads use it at once; the lock here is that rule.
///
/// The replication thread takes the lock for each libpq call, never while it hands WAL on. The thread that
/// brings the receiver's acknowledgement (the ship link's event loop) sends the standby status update itself
/// when the lock is free, instead of waking the replication thread to send it: for a synchronous commit that
/// is one thread wake-up fewer, and the wake-up pipe's write and read and a poll. When the replication thread
/// holds the lock, the acknowledgement wakes it as before and it sends the update on its next turn.
///
/// Whichever thread sends takes the gate's latest feedback under the lock, so updates leave in order and
/// never report less than one before them.
final class StreamingConnection<Connection: CopyBothOutput>: DirectFeedback, @unchecked Sendable {
    private struct Shared {
        var lastSent: ContinuousClock.Instant
        /// The primary asked for a reply (a keepalive with the reply flag).
        var mustReply = false
        /// Queued output the socket did not take yet: the replication thread polls for writable.
        var outputPending = false
        /// False once COPY is being ended: nothing may be sent beside it any more.
        var open = true
    }

    /// Only touched while `shared` is locked: that is what makes this class Sendable.
    private let connection: Connection
    private let shared: Mutex<Shared>
    private let gate: StreamGate
    let statusInterval: Duration

    init(_ connection: Connection, gate: StreamGate, statusInterval: Duration) {
        self.connection = connection
        self.gate = gate
        self.statusInterval = statusInterval
        self.shared = Mutex(Shared(lastSent: .now - statusInterval))
    }

    /// Runs one use of the connection (on the replication thread).
    func withConnection<T>(_ body: (Connection) throws -> T) throws -> T {
        try shared.withLock { _ in try body(connection) }
    }

    func replyRequested() {
        shared.withLock { $0.mustReply = true }
    }

    var outputPending: Bool { shared.withLock { $0.outputPending } }

    /// What the replication thread's poll needs: whether output waits for the socket, and when the next
    /// periodic update is due. Another thread's send may change both before the poll; one that leaves output
    /// queued wakes the thread, and a later due time only means one turn early.
    struct PollHints {
        var outputPending: Bool
        var nextStatusDue: ContinuousClock.Instant
    }

    /// On the replication thread: sends a status update if there is new feedback, the primary asked for one,
    /// the interval passed, or `force`; then goes on with any output still queued. One lock for all of it:
    /// the event loop may be sending, and every wait for the lock is a thread switch.
    @discardableResult
    func reportIfDue(force: Bool = false) throws -> PollHints {
        try shared.withLock { s in
            let (feedback, changed) = gate.takeFeedback()
            if force || changed || s.mustReply || ContinuousClock.now - s.lastSent >= statusInterval {
                try send(feedback, &s)
            }
            if s.outputPending { s.outputPending = !(try connection.flush()) }
            return PollHints(outputPending: s.outputPending, nextStatusDue: s.lastSent + statusInterval)
        }
    }

    /// Stops other threads from sending: COPY is ending, or the stream is over.
    func close() {
        shared.withLock { $0.open = false }
    }

    func sendIfFree() -> Bool {
        let sent = shared.withLockIfAvailable { s -> Bool in
            guard s.open else { return false }
            do {
                return try send(gate.takeFeedback().feedback, &s) && !s.outputPending
            } catch {
                // The replication thread meets the same failure on its next libpq call and ends the stream.
                gate.markFeedbackChanged()
                return false
            }
        }
        return sent ?? false
    }

    /// Queues the update and flushes what libpq holds; false when libpq could not take the update, which the
    /// replication thread must then send on its next turn.
    @discardableResult
    private func send(_ feedback: StreamFeedback, _ s: inout Shared) throws -> Bool {
        let update = StandbyStatusUpdate(
            write: feedback.written, flush: feedback.flushed, apply: feedback.applied,
            sendTime: .now(), replyRequested: false)
        let queued = try connection.putCopyData(update.encoded())
        if queued {
            s.mustReply = false
            s.lastSent = .now
        } else {
            gate.markFeedbackChanged()
        }
        s.outputPending = !(try connection.flush())
        return queued
    }
}
