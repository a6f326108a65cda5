import Logging
import NIOCore
import PGProtocol
import WALCore

#if canImport(Glibc)
import Glibc
#endif

/// The receive loop of one replication connection, run on the connection's thread (receivelog.c's shape):
/// drain everything libpq has buffered, hand it on in chunks, report status, then poll the socket and the
/// wake-up pipe. When the consumer has enough, it stops reading; the walsender then blocks on a full
/// socket while the slot keeps the WAL, which is the back-pressure we want.
struct StreamLoop {
    /// The connection, shared with the thread that reports the receiver's acknowledgements.
    let link: StreamingConnection<PGConnection>
    let gate: StreamGate
    /// The connection's socket, for poll (it stays the same while connected).
    let socket: Int32
    let sink: any StreamSink
    let logger: Logger
    let maxChunkBytes: Int
    /// Where chunk buffers come from (a pool the consumer recycles them to, or plain allocation).
    let chunkBuffer: @Sendable (Int) -> ByteBuffer
    /// Where the stream started: what was read is what lies from here to `expectedNext`.
    private let start: LSN
    private var expectedNext: LSN
    private var chunk: ByteBuffer?
    private var chunkStart = LSN.invalid
    private var lastWalEnd = LSN.invalid
    private var lastSendTime = PostgresTimestamp(rawValue: 0)
    private var finished: StreamEvent?
    /// When the pending chunk was first left waiting for more WAL the primary said it has (see `readAvailable`).
    private var chunkHeldSince: ContinuousClock.Instant?
    /// The longest a chunk waits for the rest of a backlog before it goes as it is.
    static let maxChunkHold: Duration = .milliseconds(20)

    init(
        connection: PGConnection, gate: StreamGate, sink: any StreamSink, logger: Logger,
        statusInterval: Duration, expectedStart: LSN, maxChunkBytes: Int = 1 << 20,
        chunkBuffer: @escaping @Sendable (Int) -> ByteBuffer = { ByteBufferAllocator().buffer(capacity: $0) }
    ) {
        precondition(
            maxChunkBytes > 0 && maxChunkBytes & (maxChunkBytes - 1) == 0 && maxChunkBytes <= 1 << 20,
            "chunks must align to a power of two no larger than the smallest WAL segment")
        self.link = StreamingConnection(connection, gate: gate, statusInterval: statusInterval)
        self.socket = connection.socket
        self.gate = gate
        self.sink = sink
        self.logger = logger
        self.start = expectedStart
        self.expectedNext = expectedStart
        self.maxChunkBytes = maxChunkBytes
        self.chunkBuffer = chunkBuffer
    }

    /// Streams until stopped, the timeline ends or something fails. While it runs, the gate's reports may be
    /// sent by the thread that makes them (`StreamingConnection`).
    mutating func run() throws {
        gate.attach(link)
        defer {
            gate.attach(nil)
            link.close()
        }
        while true {
            let (stop, demand, drainDeadline) = gate.state.withLock { ($0.stopRequested, $0.demand, $0.drainDeadline) }
            if stop {
                try? link.reportIfDue(force: true)
                return
            }
            if let drainDeadline {
                try drain(until: drainDeadline)
                return
            }
            if demand { try readAvailable() }
            if let finished {
                _ = sink.deliver(finished)
                return
            }
            if let held = chunkHeldSince, ContinuousClock.now - held >= Self.maxChunkHold { _ = emitChunk() }
            let hints = try link.reportIfDue()
            try waitForActivity(reading: gate.state.withLock { $0.demand }, hints)
        }
    }

    /// Reads nothing more: hands on the chunk being gathered, waits until the feedback's flush position covers all
    /// WAL read or `deadline` comes, then sends a last status update with that position and flushes it.
    private mutating func drain(until deadline: ContinuousClock.Instant) throws {
        if finished == nil { _ = emitChunk() }
        let read = expectedNext
        while true {
            let flushed = gate.state.withLock { $0.feedback.flushed }
            if read <= start || flushed >= read || ContinuousClock.now >= deadline { break }
            try waitForActivity(reading: false, try link.reportIfDue(), until: deadline)
        }
        var hints = try link.reportIfDue(force: true)
        // The last update must leave before the connection closes; a socket that takes nothing by the deadline
        // (a primary gone) gets no more waiting.
        while hints.outputPending && ContinuousClock.now < deadline {
            try waitForActivity(reading: false, hints, until: deadline)
            hints = try link.reportIfDue()
        }
        let reported = gate.state.withLock { $0.feedback.flushed }
        gate.state.withLock { $0.drained = StreamDrain(read: read <= start ? reported : read, reported: reported) }
    }

    private mutating func waitForActivity(
        reading: Bool, _ hints: StreamingConnection<PGConnection>.PollHints, until deadline: ContinuousClock.Instant? = nil
    ) throws {
        var fds = [pollfd(fd: gate.wakeRead, events: Int16(POLLIN), revents: 0)]
        var events: Int16 = 0
        if reading { events |= Int16(POLLIN) }
        if hints.outputPending { events |= Int16(POLLOUT) }
        if events != 0 { fds.append(pollfd(fd: socket, events: events, revents: 0)) }
        var wait = hints.nextStatusDue - ContinuousClock.now
        if let held = chunkHeldSince { wait = min(wait, Self.maxChunkHold - (ContinuousClock.now - held)) }
        if let deadline { wait = min(wait, ContinuousClock.now.duration(to: deadline)) }
        let timeoutMs = max(
            1,
            min(
                1000,
                Int32(
                    wait.components.seconds * 1000
                        + wait.components.attoseconds / 1_000_000_000_000_000)))
        let rc = poll(&fds, nfds_t(fds.count), timeoutMs)
        if rc < 0 && errno != EINTR { throw PostgresError("poll failed: \(String(cString: strerror(errno)))") }
        gate.drainWakeups(fds[0].revents)
        if fds.count > 1 && fds[1].revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
            try link.withConnection { try $0.consumeInput() }
        }
    }

    private mutating func readAvailable() throws {
        while finished == nil {
            switch try link.withConnection({ try $0.readCopyData() }) {
            case .message(let pointer, let length):
                defer { PGConnection.freeCopyData(pointer) }
                let raw = UnsafeRawBufferPointer(start: pointer, count: length)
                let paused: Bool
                do {
                    paused = try handle(try ReplicationMessage.decode(raw), raw)
                } catch let error as ReplicationMessage.DecodeError {
                    throw PostgresError("the primary sent an invalid replication message: \(error)")
                }
                if paused { return }
            case .wouldBlock:
                // Nothing more has arrived yet. If the primary had more WAL than it has sent us so far (its
                // messages carry at most 128 kB), the rest is on its way: keep filling the chunk, so a backlog
                // travels in full 1 MiB chunks (compressed as whole blocks, one frame each). Once we hold all
                // it had, the chunk goes now: a synchronous commit waits on it.
                if expectedNext >= lastWalEnd {
                    _ = emitChunk()
                } else if chunk != nil && chunkHeldSince == nil {
                    chunkHeldSince = .now
                }
                return
            case .copyDone:
                _ = emitChunk()
                link.close()
                let rows = try link.withConnection { try $0.finishCopy() }
                guard rows.count == 1, rows[0].count >= 2, let tliText = rows[0][0], let next = UInt32(tliText),
                    let startText = rows[0][1], let nextStart = LSN(startText)
                else {
                    throw PostgresError("the primary ended replication (it may be shutting down)", connectionLost: true)
                }
                finished = .endOfTimeline(nextTimeline: next, nextStart: nextStart)
            }
        }
    }

    /// Returns true when the consumer asked us to pause.
    private mutating func handle(_ message: ReplicationMessage, _ raw: UnsafeRawBufferPointer) throws -> Bool {
        switch message {
        case .xLogData(let x):
            guard x.dataStart == expectedNext else {
                throw PostgresError("the primary sent WAL from \(x.dataStart), expected \(expectedNext)")
            }
            lastWalEnd = max(lastWalEnd, x.walEnd)
            lastSendTime = x.sendTime
            var offset = x.dataOffset
            var paused = false
            // Chunks end at multiples of maxChunkBytes (a power of two no larger than any WAL segment), so a
            // chunk never spans two segments and the receiver can store its LZ4 block in the segment's file.
            let alignment = UInt64(maxChunkBytes)
            while offset < raw.count {
                if chunk == nil {
                    chunk = chunkBuffer(maxChunkBytes)
                    chunkStart = expectedNext
                }
                let toBoundary = Int(alignment - expectedNext.rawValue % alignment)
                let n = min(raw.count - offset, toBoundary)
                chunk!.writeBytes(UnsafeRawBufferPointer(rebasing: raw[offset..<offset + n]))
                offset += n
                expectedNext = expectedNext.advanced(by: UInt64(n))
                if expectedNext.rawValue % alignment == 0 { paused = emitChunk() || paused }
            }
            return paused
        case .keepalive(let k):
            lastWalEnd = max(lastWalEnd, k.walEnd)
            if k.replyRequested { link.replyRequested() }
            let paused = emitChunk()
            return emit(.keepalive(walEnd: k.walEnd, sendTime: k.sendTime)) || paused
        }
    }

    /// Hands the pending chunk on; returns true when the consumer asked us to pause.
    private mutating func emitChunk() -> Bool {
        guard let c = chunk, c.readableBytes > 0 else { return false }
        chunk = nil
        chunkHeldSince = nil
        return emit(
            .wal(
                WALChunk(
                    start: chunkStart, bytes: c, walEnd: max(lastWalEnd, expectedNext),
                    sendTime: lastSendTime)))
    }

    private func emit(_ event: StreamEvent) -> Bool {
        let generation = gate.state.withLock { $0.demandGeneration }
        switch sink.deliver(event) {
        case .more:
            return false
        case .pause:
            // Only pause if no produceMore() arrived since we yielded, or we would wait for a wake-up already spent.
            return gate.state.withLock { s in
                if s.demandGeneration == generation { s.demand = false }
                return !s.demand
            }
        case .stop:
            gate.state.withLock { $0.stopRequested = true }
            return true
        }
    }
}
