import Logging
import NIOCore
import NIOPosix
import Synchronization
import WALCore

#if canImport(Glibc)
import Glibc
#endif

/// What the primary's system looks like (IDENTIFY_SYSTEM plus the segment size).
public struct SystemIdentity: Sendable, Hashable {
    public var systemIdentifier: UInt64
    public var timeline: TimeLineID
    public var flushLSN: LSN
    public var segmentSize: WALSegmentSize
    public var serverVersion: Int
    /// The server is a hot standby (`in_hot_standby`), not a primary.
    public var inHotStandby = false
}

/// A physical replication slot as READ_REPLICATION_SLOT reports it.
public struct SlotInfo: Sendable, Hashable {
    public var restartLSN: LSN?
    public var restartTimeline: TimeLineID?
}

/// Positions the sender reports to the primary in standby status updates.
public struct StreamFeedback: Sendable, Hashable {
    /// WAL the receiver reports written.
    public var written: LSN
    /// WAL the receiver reports fsynced. Never anything only held in our memory.
    public var flushed: LSN
    /// WAL the DR standby has replayed, when known.
    public var applied: LSN

    public init(written: LSN = .invalid, flushed: LSN = .invalid, applied: LSN = .invalid) {
        self.written = written
        self.flushed = flushed
        self.applied = applied
    }
}

/// How a drained stream ended (`StreamGate.requestDrain`).
public struct StreamDrain: Sendable, Hashable {
    /// The end of the WAL read from the primary and handed on.
    public var read: LSN
    /// The flush position of the last status update sent to the primary.
    public var reported: LSN
    /// Whether the flush position covered everything read before the drain's time ran out.
    public var complete: Bool { reported >= read }
}

/// One contiguous run of WAL read from the primary.
public struct WALChunk: Sendable {
    public var start: LSN
    public var bytes: ByteBuffer
    public var walEnd: LSN
    public var sendTime: PostgresTimestamp
    public var end: LSN { start.advanced(by: UInt64(bytes.readableBytes)) }

    public init(start: LSN, bytes: ByteBuffer, walEnd: LSN, sendTime: PostgresTimestamp) {
        self.start = start
        self.bytes = bytes
        self.walEnd = walEnd
        self.sendTime = sendTime
    }
}

public enum StreamEvent: Sendable {
    case wal(WALChunk)
    /// The primary is idle or asks for a reply; carries its end of WAL for the lag monitor.
    case keepalive(walEnd: LSN, sendTime: PostgresTimestamp)
    /// The primary ended our timeline (it was promoted away from it); the stream is over.
    case endOfTimeline(nextTimeline: TimeLineID, nextStart: LSN)
}

public typealias StreamEvents = NIOThrowingAsyncSequenceProducer<
    StreamEvent, any Error, NIOAsyncSequenceProducerBackPressureStrategies.HighLowWatermark, StreamGate
>

/// Whether the replication thread may go on reading after handing over an event.
public enum StreamDemand: Sendable {
    case more
    /// Stop reading until the gate's `produceMore()`.
    case pause
    /// The consumer is gone: end the stream.
    case stop
}

/// Where the replication thread puts what it reads. Both calls come on that thread, in order, so a sink can
/// do its work right there (compress, write to a channel) instead of waking another thread per event.
public protocol StreamSink: Sendable {
    func deliver(_ event: StreamEvent) -> StreamDemand
    /// The stream is over: it ended (nil) or failed.
    func finish(_ error: (any Error)?)
}

/// A sink that hands events to async code through a bounded sequence (its back-pressure is the gate's demand).
struct AsyncSequenceSink: StreamSink {
    let source: StreamEvents.Source

    func deliver(_ event: StreamEvent) -> StreamDemand {
        switch source.yield(event) {
        case .produceMore: .more
        case .stopProducing: .pause
        case .dropped: .stop
        }
    }

    func finish(_ error: (any Error)?) {
        if let error { source.finish(error) } else { source.finish() }
    }
}

/// Connects the replication thread with async code: feedback to report, stop requests, and the
/// consumer's demand. Any change wakes the thread through a pipe, so it reacts within microseconds; feedback
/// goes out from the reporting thread instead when it can (`StreamingConnection`).
public final class StreamGate: NIOAsyncSequenceProducerDelegate, Sendable {
    struct State {
        var feedback = StreamFeedback()
        var feedbackChanged = false
        var demand = true
        /// Counts produceMore() calls, so a pause decided after a yield never misses one that raced with it.
        var demandGeneration = 0
        var stopRequested = false
        /// Set by `requestDrain`: until then, read nothing more and wait for the acknowledgement of what was read.
        var drainDeadline: ContinuousClock.Instant?
        /// How the drain ended, once it has.
        var drained: StreamDrain?
        /// While WAL streams: how a report can reach the primary without waking the replication thread.
        var direct: (any DirectFeedback)?
    }

    let state = Mutex(State())
    let wakeRead: Int32
    let wakeWrite: Int32

    public init() {
        var fds: [Int32] = [0, 0]
        precondition(pipe(&fds) == 0, "cannot create a wake-up pipe")
        for fd in fds { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
        wakeRead = fds[0]
        wakeWrite = fds[1]
    }

    deinit {
        close(wakeRead)
        close(wakeWrite)
    }

    /// The receiver's latest acknowledgement, reported to the primary at once: from the calling thread when the
    /// connection is free (`StreamingConnection`), else by the replication thread, woken for it.
    public func report(_ feedback: StreamFeedback) {
        let (direct, draining) = state.withLock {
            $0.feedback = feedback
            $0.feedbackChanged = true
            return ($0.direct, $0.drainDeadline != nil)
        }
        // A draining stream waits for this acknowledgement: wake it even when the update went out from here.
        if let direct, direct.sendIfFree(), !draining { return }
        wake()
    }

    /// The feedback to send, and whether it changed since it was last taken.
    func takeFeedback() -> (feedback: StreamFeedback, changed: Bool) {
        state.withLock { s in
            defer { s.feedbackChanged = false }
            return (s.feedback, s.feedbackChanged)
        }
    }

    /// The latest feedback did not go out after all: the replication thread must send it.
    func markFeedbackChanged() {
        state.withLock { $0.feedbackChanged = true }
    }

    func attach(_ direct: (any DirectFeedback)?) {
        state.withLock { $0.direct = direct }
    }

    public func requestStop() {
        state.withLock { $0.stopRequested = true }
        wake()
    }

    /// Ends the stream gently: nothing more is read from the primary, the WAL already read is handed on, and the
    /// stream waits (at most `limit`) until the feedback's flush position covers it; then a last status update
    /// tells the primary that position and the stream returns. `drained` says how it ended.
    public func requestDrain(within limit: Duration) {
        state.withLock { $0.drainDeadline = $0.drainDeadline ?? .now + limit }
        wake()
    }

    /// Whether a drain was asked for.
    public var drainRequested: Bool { state.withLock { $0.drainDeadline != nil } }

    /// How the drain ended; nil while none has.
    public var drained: StreamDrain? { state.withLock { $0.drained } }

    public func produceMore() {
        state.withLock {
            $0.demand = true
            $0.demandGeneration &+= 1
        }
        wake()
    }

    public func didTerminate() { requestStop() }

    func wake() {
        var byte: UInt8 = 1
        _ = write(wakeWrite, &byte, 1)
    }

    /// Empties the wake-up pipe after `poll` said it is readable. A read shorter than the buffer emptied it,
    /// so a synchronous commit's wake-up costs one read, not a second one that fails with EAGAIN.
    func drainWakeups(_ revents: Int16) {
        guard revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 else { return }
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 64) { buffer in
            while read(wakeRead, buffer.baseAddress, buffer.count) == buffer.count {}
        }
    }
}

/// One libpq connection and the only thread allowed to touch it (libpq connections are not thread-safe).
final class ConnectionThread: @unchecked Sendable {
    // Only touched inside `thread` closures: that is the invariant that makes this class Sendable.
    private var connection: PGConnection?
    private let thread = NIOThreadPool(numberOfThreads: 1)

    init() { thread.start() }

    /// Runs `body` on the connection's thread with the connection slot (nil until someone connects).
    func run<T: Sendable>(_ body: @escaping @Sendable (inout PGConnection?) throws -> T) async throws -> T {
        try await thread.runIfActive { try body(&self.connection) }
    }

    /// Closes the connection and ends the thread.
    func close() async {
        _ = try? await run { $0 = nil }
        try? await thread.shutdownGracefully()
    }
}

extension Optional where Wrapped == PGConnection {
    func required() throws -> PGConnection {
        guard let self else { throw PostgresError("not connected to the primary") }
        return self
    }
}

/// A replication connection to the primary, owned by its own thread: every libpq call runs there.
public final class ReplicationSession: Sendable {
    let owner = ConnectionThread()
    private let logger: Logger
    public let conninfo: Conninfo

    public init(conninfo: Conninfo, logger: Logger) {
        self.conninfo = conninfo
        self.logger = logger
    }

    /// Connects as a physical walsender client and identifies the system.
    public func connect(applicationName: String?) async throws -> SystemIdentity {
        try await owner.run { [conninfo] connection in
            let conn = try PGConnection(conninfo, replication: true, applicationName: applicationName)
            connection = conn
            let rows = try conn.query("IDENTIFY_SYSTEM")
            guard rows.count == 1, rows[0].count >= 3, let sysidText = rows[0][0], let sysid = UInt64(sysidText),
                let tliText = rows[0][1], let tli = UInt32(tliText), let posText = rows[0][2], let pos = LSN(posText)
            else { throw PostgresError("IDENTIFY_SYSTEM returned an unexpected result: \(rows)") }
            let sizeRows = try conn.query("SHOW wal_segment_size")
            guard let sizeText = sizeRows.first?.first ?? nil, let size = WALSegmentSize(showValue: sizeText) else {
                throw PostgresError("could not read wal_segment_size from the primary")
            }
            let standbyRows = try conn.query("SHOW in_hot_standby")
            return SystemIdentity(
                systemIdentifier: sysid, timeline: tli, flushLSN: pos, segmentSize: size,
                serverVersion: conn.serverVersion, inHotStandby: standbyRows.first?.first == "on")
        }
    }

    /// READ_REPLICATION_SLOT; nil when the slot does not exist. A logical slot is refused with a clear error.
    public func readSlot(_ name: String) async throws -> SlotInfo? {
        try await owner.run { connection in
            let rows: [[String?]]
            do {
                rows = try connection.required().query("READ_REPLICATION_SLOT \(quoteIdentifier(name))")
            } catch let error as PostgresError where error.sqlState == SQLState.featureNotSupported {
                throw WrongSlotTypeError(slot: name, type: "logical")
            }
            guard let row = rows.first, row.count >= 3 else { throw PostgresError("READ_REPLICATION_SLOT returned no row") }
            guard let type = row[0] else { return nil }
            guard type == "physical" else { throw WrongSlotTypeError(slot: name, type: type) }
            return SlotInfo(restartLSN: row[1].flatMap { LSN($0) }, restartTimeline: row[2].flatMap { UInt32($0) })
        }
    }

    /// Creates a physical slot that reserves WAL immediately.
    public func createSlot(_ name: String) async throws {
        try await owner.run { connection in
            _ = try connection.required().query("CREATE_REPLICATION_SLOT \(quoteIdentifier(name)) PHYSICAL RESERVE_WAL")
        }
    }

    /// TIMELINE_HISTORY for `timeline`: the file name and its raw content.
    public func timelineHistory(_ timeline: TimeLineID) async throws -> (name: String, content: [UInt8]) {
        try await owner.run { connection in
            let rows = try connection.required().query("TIMELINE_HISTORY \(timeline)")
            guard rows.count == 1, rows[0].count == 2, let name = rows[0][0], let content = rows[0][1] else {
                throw PostgresError("TIMELINE_HISTORY \(timeline) returned an unexpected result")
            }
            return (name, Array(content.utf8))
        }
    }

    /// Streams WAL from `start` into `source` until stopped, the connection fails, or the timeline ends.
    /// Runs the whole loop on the connection's thread; cancellation of the calling task stops it.
    /// `chunkBuffer` provides the buffers WAL is gathered in (by default, freshly allocated ones).
    public func stream(
        slot: String?, start: LSN, timeline: TimeLineID, gate: StreamGate,
        source: StreamEvents.Source, statusInterval: Duration = .seconds(10),
        chunkBuffer: @escaping @Sendable (Int) -> ByteBuffer = { ByteBufferAllocator().buffer(capacity: $0) }
    ) async throws {
        try await stream(
            slot: slot, start: start, timeline: timeline, gate: gate, sink: AsyncSequenceSink(source: source),
            statusInterval: statusInterval, chunkBuffer: chunkBuffer)
    }

    /// As above, handing each event to `sink` on the connection's thread. Returns when the stream ended
    /// (stopped through the gate, or the timeline ended: the sink saw `.endOfTimeline` then).
    public func stream(
        slot: String?, start: LSN, timeline: TimeLineID, gate: StreamGate,
        sink: some StreamSink, statusInterval: Duration = .seconds(10),
        chunkBuffer: @escaping @Sendable (Int) -> ByteBuffer = { ByteBufferAllocator().buffer(capacity: $0) }
    ) async throws {
        try await withTaskCancellationHandler {
            try await owner.run { [logger] connection in
                do {
                    let conn = try connection.required()
                    var loop = StreamLoop(
                        connection: conn, gate: gate, sink: sink, logger: logger,
                        statusInterval: statusInterval, expectedStart: start, chunkBuffer: chunkBuffer)
                    let slotClause = slot.map { "SLOT \(quoteIdentifier($0)) " } ?? ""
                    try conn.startCopyBoth("START_REPLICATION \(slotClause)PHYSICAL \(start) TIMELINE \(timeline)")
                    try loop.run()
                    sink.finish(nil)
                } catch {
                    sink.finish(error)
                    throw error
                }
            }
        } onCancel: {
            gate.requestStop()
        }
    }

    /// Closes the connection and ends the thread.
    public func close() async { await owner.close() }
}

/// The slot exists but is not a physical slot; retrying cannot help.
public struct WrongSlotTypeError: Error, CustomStringConvertible {
    public let slot: String
    public let type: String
    public var description: String {
        "replication slot \"\(slot)\" is a \(type) slot; walship needs a physical slot (hint: choose another --slot name)"
    }
}

/// Double-quotes an identifier for a replication command.
func quoteIdentifier(_ name: String) -> String { "\"" + name.replacingAll("\"", with: "\"\"") + "\"" }

extension String {
    func replacingAll(_ target: Character, with replacement: String) -> String {
        var out = ""
        for c in self { if c == target { out += replacement } else { out.append(c) } }
        return out
    }
}
