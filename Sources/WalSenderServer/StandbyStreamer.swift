import Foundation
import NIOCore
import PGProtocol
import Spool
import Synchronization
import WALCore

/// Streams one timeline's WAL to a standby from its channel's event loop, as soon as the spool has made it
/// durable, and takes the standby's status updates there too (`StandbyInboundTap`). Each fsync of the spool
/// costs one hop to the event loop and no task switches: with a synchronous sender every commit is an fsync,
/// and a task woken per fsync and per status update cost the receiver about as much CPU as receiving the WAL.
///
/// Event-loop-confined, except `wake()`, `run()` and the locked `sentEnd`, `failure` and `replay`.
final class StandbyStreamer: @unchecked Sendable {
    private let channel: Channel
    private let system: SystemSpool
    private let server: WalSenderServer
    private let applicationName: String
    private let recordName: String
    private let reader: WALRangeReader
    private let timeline: TimeLineID
    private var end: WalSenderStateMachine.TimelineEnd?
    private var position: LSN
    private let keepaliveInterval: TimeAmount
    private var lastSent: NIODeadline
    private let finished: EventLoopPromise<Void>
    private var done = false
    private var pumping = false
    private var keepaliveCheck: RepeatedTask?
    private var observer: Int?
    private let wakePending = Atomic<Bool>(false)
    /// Set once the whole timeline was sent and our CopyDone written (the standby's CopyDone answers it): where
    /// it ended and what follows, also when the spool switched timelines while this one streamed.
    let sentEnd = Mutex<WalSenderStateMachine.TimelineEnd?>(nil)
    /// What ended the stream from this side (a read of the spool failed), for the session to report: the
    /// standby only sees its connection close.
    let failure = Mutex<(any Error)?>(nil)
    /// The newest replay position the standby reported, for the registry (saved by the session's task).
    let replay: Mutex<StandbyRecord>
    /// Largest XLogData payload; a standby far behind gets it in pieces, with the socket's backpressure between.
    static let maxMessageBytes = 128 * 1024
    /// The most one turn on the event loop sends before it lets the loop serve others.
    static let maxBytesPerTurn = 1 << 20

    init(
        channel: Channel, system: SystemSpool, server: WalSenderServer, applicationName: String, record: StandbyRecord,
        timeline: TimeLineID, start: LSN, end: WalSenderStateMachine.TimelineEnd?, keepaliveInterval: Duration
    ) {
        self.channel = channel
        self.system = system
        self.server = server
        self.applicationName = applicationName
        self.recordName = record.name
        self.replay = Mutex(record)
        self.reader = WALRangeReader(spool: system)
        self.timeline = timeline
        self.position = start
        self.end = end
        self.keepaliveInterval = TimeAmount(keepaliveInterval)
        self.finished = channel.eventLoop.makePromise()
        self.lastSent = channel.eventLoop.now
    }

    /// Starts COPY BOTH and streams until the timeline's end has been sent (a historic timeline) or the task is
    /// cancelled; throws what stopped it otherwise (the channel is closed then).
    func run() async throws {
        let loop = channel.eventLoop
        loop.execute { self.start() }
        try await withTaskCancellationHandler {
            try await finished.futureResult.get()
        } onCancel: {
            loop.execute { self.finish(.failure(CancellationError())) }
        }
    }

    /// Called by the spool's writer after each fsync: one hop to the event loop, however many fsyncs meanwhile.
    func wake() {
        guard !wakePending.exchange(true, ordering: .acquiringAndReleasing) else { return }
        channel.eventLoop.execute {
            self.wakePending.store(false, ordering: .releasing)
            self.pump()
        }
    }

    private func start() {
        guard !done else { return }
        do {
            try channel.pipeline.syncOperations.handler(type: StandbyInboundTap.self).streamer = self
        } catch {
            return finish(.failure(error))
        }
        var out = ByteBuffer()
        Backend.copyBothResponse(&out)
        channel.writeAndFlush(out, promise: nil)
        observer = system.observeDurable { [weak self] in self?.wake() }
        // Checked a few times per interval, so a quiet stream's keepalives are at most a quarter late.
        let check = TimeAmount.nanoseconds(max(keepaliveInterval.nanoseconds / 4, 1_000_000))
        keepaliveCheck = channel.eventLoop.scheduleRepeatedTask(initialDelay: check, delay: check) { [weak self] _ in
            self?.keepaliveIfQuiet()
        }
        pump()
    }

    /// Sends what is durable and not yet sent, while the channel takes more; resumed by `wake()` and when the
    /// channel becomes writable again.
    func pump() {
        // A flush can change the channel's writability, and the tap calls back in here from inside it: the
        // running loop goes on by itself, and its position must not move under it.
        guard !done, !pumping else { return }
        pumping = true
        defer { pumping = false }
        var budget = Self.maxBytesPerTurn
        do {
            while channel.isWritable {
                guard budget > 0 else {
                    // A standby far behind gets its backlog in turns: other connections on this event loop (a
                    // sender's link among them) are served in between.
                    return channel.eventLoop.execute { self.pump() }
                }
                let current = system.position
                if end == nil && current.timeline != timeline {
                    // The spool moved to a newer timeline while we streamed this one: finish at its switch point.
                    end = Self.end(of: timeline, system: system, current: current.timeline)
                    guard end != nil else {
                        throw StandbyEndpointError("timeline \(timeline) is no longer in the spool's history")
                    }
                }
                if let end, position >= end.switchPoint {
                    // The timeline is fully sent: end COPY as a PostgreSQL walsender does. Marked first: the
                    // standby's CopyDone may arrive before this write is flushed.
                    sentEnd.withLock { $0 = end }
                    var out = ByteBuffer()
                    Backend.copyDone(&out)
                    channel.writeAndFlush(out, promise: nil)
                    return finish(.success(()))
                }
                let available = end?.switchPoint ?? current.durable
                guard position < available else { return }
                let bytes = try reader.read(
                    timeline: timeline, from: position, durableEnd: available, maxBytes: Self.maxMessageBytes)
                guard !bytes.isEmpty else { throw StandbyEndpointError("no WAL readable at \(position) on timeline \(timeline)") }
                var out = channel.allocator.buffer(capacity: bytes.count + 32)
                Backend.copyData(&out) {
                    $0.writeBytes(
                        ReplicationMessage.encodeXLogDataHeader(dataStart: position, walEnd: available, sendTime: .now()))
                    $0.writeBytes(bytes)
                }
                position = position.advanced(by: UInt64(bytes.count))
                budget -= bytes.count
                lastSent = channel.eventLoop.now
                // Flushed one by one: a TLS handler holds unflushed writes where the channel's writability does
                // not count them, so a standby far behind would otherwise get its whole backlog buffered here.
                channel.writeAndFlush(out, promise: nil)
            }
        } catch {
            // Nothing more can be sent: close, so the standby reconnects instead of waiting.
            failure.withLock { $0 = error }
            finish(.failure(error))
            channel.close(promise: nil)
        }
    }

    /// A CopyData from the standby, taken on the event loop: status updates carry its replay position back
    /// towards the primary; anything else (hot-standby feedback) is not used.
    func standbyMessage(_ data: ByteBuffer) {
        guard data.getInteger(at: data.readerIndex, as: UInt8.self) == UInt8(ascii: "r"),
            let update = data.withUnsafeReadableBytes({ try? StandbyStatusUpdate.decode($0) })
        else { return }
        server.record(
            system: system.systemIdentifier,
            StandbyProgress(
                applicationName: applicationName, written: update.write, flushed: update.flush, applied: update.apply,
                reportedAt: update.sendTime, recordName: recordName))
        if update.apply.isValid {
            replay.withLock {
                $0.replayedLSN = update.apply.description
                $0.updatedAt = Date()
            }
        }
        if update.replyRequested {
            channel.writeAndFlush(Self.keepalive(system, replyRequested: false), promise: nil)
        }
    }

    private func keepaliveIfQuiet() {
        guard !done, channel.eventLoop.now - lastSent >= keepaliveInterval else { return }
        channel.writeAndFlush(Self.keepalive(system, replyRequested: true), promise: nil)
        lastSent = channel.eventLoop.now
    }

    private func finish(_ result: Result<Void, any Error>) {
        guard !done else { return }
        done = true
        keepaliveCheck?.cancel()
        if let observer { system.stopObserving(observer) }
        finished.completeWith(result)
    }

    /// Ends the taking of status updates on the event loop, once the standby's CopyDone ended streaming.
    static func detach(from channel: Channel) async {
        try? await channel.eventLoop.submit {
            try channel.pipeline.syncOperations.handler(type: StandbyInboundTap.self).streamer = nil
        }.get()
    }

    static func keepalive(_ system: SystemSpool, replyRequested: Bool) -> ByteBuffer {
        var out = ByteBuffer()
        Backend.copyData(&out) {
            $0.writeBytes(
                ReplicationMessage.encodeKeepalive(
                    .init(
                        walEnd: system.position.durable, sendTime: .now(),
                        replyRequested: replyRequested)))
        }
        return out
    }

    private static func end(
        of timeline: TimeLineID, system: SystemSpool, current: TimeLineID
    ) -> WalSenderStateMachine.TimelineEnd? {
        let path = system.walDirectory + "/" + historyFileName(timeline: current)
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        return .init(of: timeline, history: text, current: current)
    }
}

/// Sits after the frontend-message decoder. While a standby streams, its CopyData messages (status updates)
/// are handled on the event loop by the streamer, and the channel's regained writability resumes the stream;
/// everything else (CopyDone, Terminate, queries) goes on to the session's task.
final class StandbyInboundTap: ChannelInboundHandler {
    typealias InboundIn = FrontendMessage
    typealias InboundOut = FrontendMessage
    var streamer: StandbyStreamer?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if let streamer, case .copyData(let bytes) = unwrapInboundIn(data) {
            return streamer.standbyMessage(bytes)
        }
        context.fireChannelRead(data)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { streamer?.pump() }
        context.fireChannelWritabilityChanged()
    }
}
