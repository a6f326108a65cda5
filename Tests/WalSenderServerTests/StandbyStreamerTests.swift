import Foundation
import Logging
import NIOCore
import NIOEmbedded
import PGProtocol
import Spool
import Synchronization
import Testing
import WALCore
import WALTestSupport

@testable import WalSenderServer

/// The standby stream on its event loop, against a real spool in a temporary directory and a testing channel.
@Suite(.timeLimit(.minutes(1))) struct StandbyStreamerTests {
    final class Fixture {
        let root = NSTemporaryDirectory() + "walship-streamer-test-\(UUID().uuidString)"
        let spool: Spool
        let system: SystemSpool
        let server: WalSenderServer
        let channel = NIOAsyncTestingChannel()
        let wal = TestWAL.segment(1)
        let start = TestWAL.size.startLSN(ofSegment: 1)

        init() throws {
            let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
            spool = try Spool(root: root, logger: logger)
            system = try spool.system(TestWAL.sysid, segmentSize: TestWAL.size)
            server = WalSenderServer(host: "127.0.0.1", port: 0, spool: spool, authentication: .trust, logger: logger)
        }

        deinit { try? FileManager.default.removeItem(atPath: root) }

        /// Appends the segment's bytes `range` (not yet durable).
        func append(_ range: Range<Int>) throws {
            try wal[range].withUnsafeBytes {
                try system.append(timeline: 1, startLSN: start.advanced(by: UInt64(range.lowerBound)), bytes: $0)
            }
        }

        /// Built on the event loop, as the server's channel initializer does.
        func installTap() async throws {
            let channel = channel
            try await channel.testingEventLoop.executeInContext {
                try channel.pipeline.syncOperations.addHandler(StandbyInboundTap())
            }
        }

        /// Appends the segment's bytes `range` and makes them durable.
        func appendDurably(_ range: Range<Int>) throws {
            try append(range)
            try system.sync()
        }

        /// Streams timeline 1 from the segment's start; returns once the CopyBothResponse went out.
        func startStreaming(
            end: WalSenderStateMachine.TimelineEnd? = nil
        ) async throws -> (StandbyStreamer, Task<Void, any Error>) {
            let streamer = StandbyStreamer(
                channel: channel, system: system, server: server, applicationName: "dr",
                record: StandbyRecord(name: "dr", viaSlot: false, replayedLSN: start, updatedAt: Date()),
                timeline: 1, start: start, end: end, keepaliveInterval: .seconds(10))
            let task = Task { try await streamer.run() }
            #expect(try await nextMessage().type == "W")  // CopyBothResponse
            return (streamer, task)
        }

        /// Cancels the stream's task, which ends by the cancellation.
        func stop(_ task: Task<Void, any Error>) async {
            task.cancel()
            await #expect(throws: CancellationError.self) { try await task.value }
        }

        /// The next backend message written: its type and body.
        func nextMessage() async throws -> (type: Character, body: [UInt8]) {
            var buffer = try await channel.waitForOutboundWrite(as: ByteBuffer.self)
            let type = buffer.readInteger(as: UInt8.self)!
            let length = Int(buffer.readInteger(as: Int32.self)!)
            #expect(buffer.readableBytes == length - 4, "one whole message per write")
            return (Character(UnicodeScalar(type)), buffer.readBytes(length: length - 4)!)
        }

        /// The next XLogData: where its WAL starts, the durable end it names, and the WAL.
        func nextXLogData() async throws -> (start: LSN, walEnd: LSN, wal: [UInt8]) {
            let message = try await nextMessage()
            #expect(message.type == "d")
            guard case .xLogData(let x) = try message.body.withUnsafeBytes({ try ReplicationMessage.decode($0) }) else {
                Issue.record("expected XLogData, got \(message.body.prefix(1))")
                return (LSN(0), LSN(0), [])
            }
            return (x.dataStart, x.walEnd, Array(message.body[x.dataOffset..<(x.dataOffset + x.dataLength)]))
        }
    }

    @Test func sendsOnlyDurableWALAndWakesOnEachFsync() async throws {
        let f = try Fixture()
        try await f.installTap()
        try f.appendDurably(0..<65536)
        try f.append(65536..<98304)  // written, not yet durable
        let (_, task) = try await f.startStreaming()
        let first = try await f.nextXLogData()
        #expect(first.start == f.start)
        #expect(first.walEnd == f.start.advanced(by: 65536))
        #expect(first.wal == Array(f.wal[0..<65536]))
        await f.channel.testingEventLoop.run()
        #expect(try await f.channel.readOutbound(as: ByteBuffer.self) == nil, "nothing beyond the durable end")

        try f.system.sync()
        let second = try await f.nextXLogData()
        #expect(second.start == f.start.advanced(by: 65536))
        #expect(second.wal == Array(f.wal[65536..<98304]))

        await f.stop(task)
    }

    @Test func waitsWhileTheChannelIsFullAndGoesOnWhenItDrains() async throws {
        let f = try Fixture()
        try await f.installTap()
        try f.appendDurably(0..<32768)
        let (_, task) = try await f.startStreaming()
        #expect(try await f.nextXLogData().wal == Array(f.wal[0..<32768]))

        f.channel.isWritable = false
        try f.appendDurably(32768..<65536)
        await f.channel.testingEventLoop.run()
        #expect(try await f.channel.readOutbound(as: ByteBuffer.self) == nil, "nothing written into a full channel")
        f.channel.isWritable = true
        f.channel.pipeline.fireChannelWritabilityChanged()
        #expect(try await f.nextXLogData().wal == Array(f.wal[32768..<65536]))

        await f.stop(task)
    }

    @Test func statusUpdatesAreRecordedAndAnsweredOnTheEventLoop() async throws {
        let f = try Fixture()
        try await f.installTap()
        try f.appendDurably(0..<8192)
        let (streamer, task) = try await f.startStreaming()
        #expect(try await f.nextXLogData().wal == Array(f.wal[0..<8192]))

        let applied = f.start.advanced(by: 8192)
        let update = StandbyStatusUpdate(write: applied, flush: applied, apply: applied, sendTime: .now(), replyRequested: true)
        try await f.channel.writeInbound(FrontendMessage.copyData(ByteBuffer(bytes: update.encoded())))
        let reply = try await f.nextMessage()
        #expect(reply.type == "d" && reply.body.first == UInt8(ascii: "k"), "a keepalive answers a requested reply")
        #expect(f.server.standbys(system: TestWAL.sysid).first?.applied == applied)
        #expect(streamer.replay.withLock { $0.replayedLSN } == applied.description)
        // Taken by the tap: the session's task never sees a status update.
        #expect(try await f.channel.readInbound(as: FrontendMessage.self) == nil)

        // A quiet stream asks the standby for a reply once the keepalive interval has passed.
        await f.channel.testingEventLoop.advanceTime(by: .seconds(11))
        let keepalive = try await f.nextMessage()
        #expect(keepalive.body.first == UInt8(ascii: "k") && keepalive.body.last == 1)

        await f.stop(task)
    }

    @Test func aBacklogGoesOutOneFlushedMessageAtATime() async throws {
        let f = try Fixture()
        let counter = WritesPerFlush()
        let channel = f.channel
        try await channel.testingEventLoop.executeInContext {
            try channel.pipeline.syncOperations.addHandler(counter)
            try channel.pipeline.syncOperations.addHandler(StandbyInboundTap())
        }
        try f.append(0..<(1 << 20))  // the whole segment: completed, then read from its LZ4 frame
        try f.system.sync()
        let (_, task) = try await f.startStreaming()
        var received: [UInt8] = []
        while received.count < 1 << 20 {
            let message = try await f.nextXLogData()
            #expect(message.start == f.start.advanced(by: UInt64(received.count)))
            #expect(message.wal.count <= StandbyStreamer.maxMessageBytes)
            received += message.wal
        }
        #expect(received == f.wal)
        // Behind a TLS handler only flushed bytes count against the channel's writability. (And the
        // writability changes signalled from inside each flush sent nothing twice: checked above.)
        #expect(counter.most.withLock { $0 } == 1)

        await f.stop(task)
    }

    @Test func aTimelineEndsWithCopyDoneAtItsSwitchPoint() async throws {
        let f = try Fixture()
        try await f.installTap()
        try f.appendDurably(0..<65536)
        let end = WalSenderStateMachine.TimelineEnd(switchPoint: f.start.advanced(by: 40000), next: 2)
        let (streamer, task) = try await f.startStreaming(end: end)
        let sent = try await f.nextXLogData()
        #expect(sent.wal == Array(f.wal[0..<40000]), "up to the switch point, not the spool's durable end")
        #expect(try await f.nextMessage().type == "c")
        try await task.value
        #expect(streamer.sentEnd.withLock { $0 } == end)
    }
}

/// Counts the writes between flushes, as a handler that buffers until flush (TLS) would hold them; and, as a
/// socket whose buffer filled and drained within the flush would, signals a writability change from inside it.
final class WritesPerFlush: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = NIOAny
    typealias OutboundIn = ByteBuffer
    private var pending = 0
    let most = Mutex(0)

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        pending += 1
        context.write(data, promise: promise)
    }

    func flush(context: ChannelHandlerContext) {
        let count = pending
        most.withLock { $0 = max($0, count) }
        pending = 0
        context.flush()
        context.fireChannelWritabilityChanged()
    }
}
