import NIOCore
import NIOEmbedded
import Synchronization
import Testing
import WALCore

@testable import ShipProtocol

@Suite struct SenderLinkStateMachineTests {
    let primary = PrimaryIdentity(systemIdentifier: 42, timeline: 1, flushLSN: LSN("0/9000100")!, segmentSize: .default)

    func welcome(_ lsn: String, timeline: TimeLineID = 1) -> ShipMessage {
        .welcome(Welcome(resumeLSN: LSN(lsn)!, resumeTimeline: timeline, receiverName: "dr"))
    }

    func ack(written: String, durable: String) -> ShipMessage {
        .ack(Ack(timeline: 1, writtenLSN: LSN(written)!, durableLSN: LSN(durable)!, receiverTime: .now()))
    }

    @Test func emptySpoolStartsAtTheSlotsSegment() {
        var m = SenderLinkStateMachine()
        #expect(
            m.firstMessageReceived(welcome("0/0", timeline: 0), primary: primary, slotRestartLSN: LSN("0/7A31C8")!)
                == .startStreaming(start: LSN("0/0")!, timeline: 1, resume: .invalid))
        var n = SenderLinkStateMachine()
        #expect(
            n.firstMessageReceived(welcome("0/0", timeline: 0), primary: primary, slotRestartLSN: LSN("0/5A31C80")!)
                == .startStreaming(start: LSN("0/5000000")!, timeline: 1, resume: .invalid))
        // Without a reserved position, the primary's current segment.
        var o = SenderLinkStateMachine()
        #expect(
            o.firstMessageReceived(welcome("0/0", timeline: 0), primary: primary, slotRestartLSN: nil)
                == .startStreaming(start: LSN("0/9000000")!, timeline: 1, resume: .invalid))
    }

    /// A sender beside a just-promoted server whose slot was reserved on the standby before the promotion: the
    /// slot's WAL lies in the parent timeline's files, which the server may lack; an empty spool starts with the
    /// server's own timeline, at the segment its parent left it in.
    @Test func emptySpoolStartsNoEarlierThanTheServersOwnTimeline() {
        let promoted = PrimaryIdentity(systemIdentifier: 42, timeline: 3, flushLSN: LSN("0/9000100")!, segmentSize: .default)
        let history = [
            TimelineHistoryEntry(parent: 1, switchPoint: LSN("0/5000200")!, reason: ""),
            TimelineHistoryEntry(parent: 2, switchPoint: LSN("0/8000100")!, reason: ""),
        ]
        for (slot, start) in [
            ("0/4A31C80", "0/8000000"), ("0/7000010", "0/8000000"), ("0/8000050", "0/8000000"), ("0/9000000", "0/9000000"),
        ] {
            var m = SenderLinkStateMachine()
            #expect(
                m.firstMessageReceived(
                    welcome("0/0", timeline: 0), primary: promoted, slotRestartLSN: LSN(slot)!, history: history)
                    == .startStreaming(start: LSN(start)!, timeline: 3, resume: .invalid),
                "slot at \(slot)")
        }
    }

    @Test func receiversDurableEndWinsOverTheSlot() {
        var m = SenderLinkStateMachine()
        #expect(
            m.firstMessageReceived(welcome("0/8123456"), primary: primary, slotRestartLSN: LSN("0/8FFFFFF")!)
                == .startStreaming(start: LSN("0/8123456")!, timeline: 1, resume: LSN("0/8123456")!))
    }

    @Test func impossibleResumePointsClose() {
        var ahead = SenderLinkStateMachine()
        guard
            case .close(let reason, false) = ahead.firstMessageReceived(
                welcome("0/9000200"), primary: primary, slotRestartLSN: nil)
        else {
            Issue.record("a spool ahead of the primary was accepted")
            return
        }
        #expect(reason.contains("same database system"))
        var otherTimeline = SenderLinkStateMachine()
        guard
            case .close(_, true) = otherTimeline.firstMessageReceived(
                welcome("0/8000000", timeline: 2), primary: primary, slotRestartLSN: nil)
        else {
            Issue.record("a spool on a newer timeline than the primary was accepted")
            return
        }
        var refused = SenderLinkStateMachine()
        #expect(
            refused.firstMessageReceived(
                .refusal(Refusal(code: .unsupportedVersion, message: "v9")), primary: primary, slotRestartLSN: nil)
                == .close(reason: "the receiver refused the link: v9", fatal: false),
            "a version refusal is mended by an upgrade at the DR site: the sender keeps retrying")
        #expect(refused.state == .closed)
        var wrong = SenderLinkStateMachine()
        guard case .close = wrong.firstMessageReceived(ack(written: "0/1", durable: "0/1"), primary: primary, slotRestartLSN: nil)
        else {
            Issue.record("an ack as handshake was accepted")
            return
        }
    }

    @Test func acksBecomeFeedbackOnlyWhenConsistent() {
        var m = SenderLinkStateMachine()
        _ = m.firstMessageReceived(welcome("0/8000000"), primary: primary, slotRestartLSN: nil)
        m.walSent(upTo: LSN("0/8100000")!)
        #expect(
            m.messageReceived(ack(written: "0/8080000", durable: "0/8040000"))
                == .reportFeedback(written: LSN("0/8080000")!, durable: LSN("0/8040000")!, replayed: .invalid))
        // Durable beyond written, beyond what was sent, or going backwards: the link is closed.
        var a = m
        guard case .close = a.messageReceived(ack(written: "0/8080000", durable: "0/8090000")) else {
            Issue.record("durable > written")
            return
        }
        var b = m
        guard case .close = b.messageReceived(ack(written: "0/8200000", durable: "0/8200000")) else {
            Issue.record("ack beyond sent")
            return
        }
        var c = m
        guard case .close = c.messageReceived(ack(written: "0/8080000", durable: "0/8000000")) else {
            Issue.record("went backwards")
            return
        }
        var d = m
        guard
            case .close = d.messageReceived(
                .hello(
                    Hello(
                        role: .stream, synchronous: false, systemIdentifier: 1, timeline: 1,
                        walSegmentSize: 1 << 24, senderName: "x")))
        else {
            Issue.record("hello mid-stream")
            return
        }
    }
}

@Suite struct TimelineFollowingTests {
    let primary = PrimaryIdentity(systemIdentifier: 42, timeline: 2, flushLSN: LSN("0/9000000")!, segmentSize: .default)
    let history = [TimelineHistoryEntry(parent: 1, switchPoint: LSN("0/4046CA0")!, reason: "no recovery target specified")]

    func welcome(_ lsn: String) -> ShipMessage { .welcome(Welcome(resumeLSN: LSN(lsn)!, resumeTimeline: 1, receiverName: "dr")) }

    @Test func finishesTheOldTimelineFirst() {
        var m = SenderLinkStateMachine()
        #expect(
            m.firstMessageReceived(welcome("0/3000000"), primary: primary, slotRestartLSN: nil, history: history)
                == .startStreaming(start: LSN("0/3000000")!, timeline: 1, resume: LSN("0/3000000")!))
    }

    @Test func switchesAtTheForkSegmentAndReportsWALBeyondTheFork() {
        var m = SenderLinkStateMachine()
        #expect(
            m.firstMessageReceived(welcome("0/4046CA0"), primary: primary, slotRestartLSN: nil, history: history)
                == .switchTimeline(to: 2, start: LSN("0/4000000")!, fork: LSN("0/4046CA0")!, beyondFork: 0))
        var n = SenderLinkStateMachine()
        #expect(
            n.firstMessageReceived(welcome("0/4050000"), primary: primary, slotRestartLSN: nil, history: history)
                == .switchTimeline(to: 2, start: LSN("0/4000000")!, fork: LSN("0/4046CA0")!, beyondFork: 0x9360))
        // After the switch, an ack naming the old timeline is ignored; acks on the new one count from scratch.
        m.walSent(upTo: LSN("0/4100000")!)
        #expect(
            m.messageReceived(
                .ack(Ack(timeline: 1, writtenLSN: LSN("0/4046CA0")!, durableLSN: LSN("0/4046CA0")!, receiverTime: .now())))
                == .none)
        #expect(
            m.messageReceived(
                .ack(Ack(timeline: 2, writtenLSN: LSN("0/4020000")!, durableLSN: LSN("0/4020000")!, receiverTime: .now())))
                == .reportFeedback(written: LSN("0/4020000")!, durable: LSN("0/4020000")!, replayed: .invalid))
        guard
            case .close = m.messageReceived(
                .ack(Ack(timeline: 3, writtenLSN: LSN("0/4030000")!, durableLSN: LSN("0/4030000")!, receiverTime: .now())))
        else {
            Issue.record("an ack for a future timeline was accepted")
            return
        }
    }

    @Test func aSpoolOffThePrimarysHistoryNeedsAReseed() {
        var m = SenderLinkStateMachine()
        let foreign = [TimelineHistoryEntry(parent: 3, switchPoint: LSN("0/1")!, reason: "")]
        guard
            case .close(let reason, true) = m.firstMessageReceived(
                welcome("0/3000000"), primary: primary, slotRestartLSN: nil, history: foreign)
        else {
            Issue.record("a spool off the history was accepted")
            return
        }
        #expect(reason.contains("re-seed"))
        var newer = SenderLinkStateMachine()
        let ahead = ShipMessage.welcome(Welcome(resumeLSN: LSN("0/3000000")!, resumeTimeline: 3, receiverName: "dr"))
        guard case .close(_, true) = newer.firstMessageReceived(ahead, primary: primary, slotRestartLSN: nil) else {
            Issue.record("a spool on a newer timeline was accepted")
            return
        }
    }
}

@Suite struct ReceiverHandshakeTests {
    func hello(
        version: UInt16 = shipProtocolVersion, size: UInt32 = 16 << 20, role: LinkRole = .stream, system: UInt64 = 42
    ) -> Hello {
        Hello(
            protocolVersion: version, role: role, synchronous: false, systemIdentifier: system, timeline: 1,
            walSegmentSize: size, senderName: "s")
    }

    @Test func acceptsAndRefuses() {
        #expect((try? ReceiverHandshake.validate(hello()).get()) == .default)
        #expect((try? ReceiverHandshake.validate(hello(role: .backup)).get()) == .default)
        // A sender of the previous version still ships: the receiver is upgraded first.
        #expect((try? ReceiverHandshake.validate(hello(version: 1)).get()) == .default)
        for (bad, code) in [
            (hello(version: shipProtocolVersion + 1), Refusal.Code.unsupportedVersion),
            (hello(version: 0), .unsupportedVersion), (hello(size: 3 << 20), .wrongSegmentSize),
            (hello(system: 0), .protocolViolation),
        ] {
            guard case .failure(let refusal) = ReceiverHandshake.validate(bad) else {
                Issue.record("accepted \(bad)")
                continue
            }
            #expect(refusal.code == code)
        }
    }
}

@Suite struct StreamLinkRegistryTests {
    typealias Registry = StreamLinkRegistry<String>

    func link(_ id: Int, at t: ContinuousClock.Instant) -> Registry.Link {
        Registry.Link(id: id, peer: "peer\(id)", senderName: "s", synchronous: true, handle: "h\(id)", lastFrame: t)
    }

    @Test func secondLinkIsRefusedWhileTheFirstIsAliveAndReplacesItOnceSilent() {
        var r = Registry(timeout: .seconds(30))
        let t0 = ContinuousClock.now
        guard case .accepted(nil) = r.claim(system: 7, link: link(1, at: t0), now: t0) else {
            Issue.record("first refused")
            return
        }
        guard case .refused(let refusal) = r.claim(system: 7, link: link(2, at: t0 + .seconds(10)), now: t0 + .seconds(10)) else {
            Issue.record("second accepted while the first is alive")
            return
        }
        #expect(refusal.code == .streamAlreadyActive)
        // Another system is independent.
        guard case .accepted(nil) = r.claim(system: 8, link: link(3, at: t0), now: t0) else {
            Issue.record("other system refused")
            return
        }
        // Frames keep the first alive...
        r.touch(system: 7, id: 1, now: t0 + .seconds(25))
        guard case .refused = r.claim(system: 7, link: link(2, at: t0 + .seconds(50)), now: t0 + .seconds(50)) else {
            Issue.record("replaced a live link")
            return
        }
        // ...silence past the timeout proves it dead.
        guard case .accepted(let replaced) = r.claim(system: 7, link: link(2, at: t0 + .seconds(56)), now: t0 + .seconds(56))
        else {
            Issue.record("dead link not replaced")
            return
        }
        #expect(replaced == "h1")
        // The replaced link's release does not remove its successor.
        r.release(system: 7, id: 1)
        #expect(r.links[7]?.id == 2)
        r.release(system: 7, id: 2)
        #expect(r.links[7] == nil)
    }
}

@Suite struct InboundTapTests {
    struct Stop: Error {}

    @Test func theTapSeesMessagesFirstAndForwardsConsumesOrFails() async throws {
        let channel = EmbeddedChannel()
        let handler = InboundTapHandler()
        try channel.pipeline.syncOperations.addHandler(handler)
        let ack = ShipMessage.ack(Ack(timeline: 1, writtenLSN: LSN(100), durableLSN: LSN(50), receiverTime: .now()))
        let keepalive = ShipMessage.keepalive(Keepalive(primaryEndLSN: LSN(7), sendTime: .now(), replyRequested: false))

        // Without a tap everything passes.
        try channel.writeInbound(ack)
        #expect(try channel.readInbound(as: ShipMessage.self) == ack)

        let seen = Mutex<[ShipMessage.Kind]>([])
        handler.tap = TapBox { message in
            seen.withLock { $0.append(message.kind) }
            if case .ack(let a) = message { return a.durableLSN == LSN(50) ? .consumed : .fail(Stop()) }
            return .forward
        }
        try channel.writeInbound(ack)
        #expect(try channel.readInbound(as: ShipMessage.self) == nil)
        try channel.writeInbound(keepalive)
        #expect(try channel.readInbound(as: ShipMessage.self) == keepalive)
        #expect(seen.withLock { $0 } == [ShipMessage.Kind.ack, .keepalive])

        let regressing = ShipMessage.ack(Ack(timeline: 1, writtenLSN: LSN(100), durableLSN: LSN(40), receiverTime: .now()))
        #expect(throws: Stop.self) { try channel.writeInbound(regressing) }
        #expect(!channel.isActive)
    }

    /// Counts the read requests that get past the tap (it sits between this and the channel's head).
    final class ReadCounter: ChannelOutboundHandler {
        typealias OutboundIn = ShipMessage
        var reads = 0
        func read(context: ChannelHandlerContext) {
            reads += 1
            context.read()
        }
    }

    @Test func aPausingTapHoldsBackReadsUntilResumed() throws {
        let channel = EmbeddedChannel()
        let counter = ReadCounter()
        let handler = InboundTapHandler()
        try channel.pipeline.syncOperations.addHandler(counter)
        try channel.pipeline.syncOperations.addHandler(handler)
        let full = Mutex(false)
        handler.tap = TapBox { _ in full.withLock { $0 } ? .consumedAndPause : .consumed }
        let keepalive = ShipMessage.keepalive(Keepalive(primaryEndLSN: LSN(7), sendTime: .now(), replyRequested: false))

        try channel.writeInbound(keepalive)
        channel.read()
        #expect(counter.reads == 1)

        full.withLock { $0 = true }
        try channel.writeInbound(keepalive)
        channel.read()
        channel.read()
        #expect(counter.reads == 1, "no read may reach the socket while the taker is full")

        ShipChannel.resumeReading(channel)
        #expect(counter.reads == 1, "resuming happens on the event loop")
        channel.embeddedEventLoop.run()
        #expect(counter.reads == 2, "the held-back reads go on as one")
        channel.read()
        #expect(counter.reads == 3)
        ShipChannel.resumeReading(channel)
        channel.embeddedEventLoop.run()
        #expect(counter.reads == 3, "resuming without a held-back read reads nothing")
    }

    @Test func aRefusalFromTheTapIsToldToThePeerBeforeTheLinkCloses() throws {
        let channel = EmbeddedChannel()
        let handler = InboundTapHandler()
        try channel.pipeline.syncOperations.addHandler(handler)
        let refusal = Refusal(code: .invalidWAL, message: "refused a WAL frame at 0/100")
        handler.tap = TapBox { _ in .fail(refusal) }
        let keepalive = ShipMessage.keepalive(Keepalive(primaryEndLSN: LSN(7), sendTime: .now(), replyRequested: false))
        #expect(throws: Refusal.self) { try channel.writeInbound(keepalive) }
        #expect(try channel.readOutbound(as: ShipMessage.self) == .refusal(refusal))
        #expect(!channel.isActive)

        // Any other error closes the link without a frame.
        let other = EmbeddedChannel()
        let second = InboundTapHandler()
        try other.pipeline.syncOperations.addHandler(second)
        second.tap = TapBox { _ in .fail(Stop()) }
        #expect(throws: Stop.self) { try other.writeInbound(keepalive) }
        #expect(try other.readOutbound(as: ShipMessage.self) == nil)
    }

    @Test func whatATapStartedInOneReadIsFinishedAfterItAndAtClose() throws {
        let channel = EmbeddedChannel()
        let handler = InboundTapHandler()
        try channel.pipeline.syncOperations.addHandler(handler)
        let events = Mutex<[String]>([])
        let failNext = Mutex(false)
        handler.tap = TapBox(
            { message in
                events.withLock { $0.append("\(message.kind)") }
                return .consumed
            },
            afterReads: {
                events.withLock { $0.append("after") }
                return failNext.withLock { $0 } ? Refusal(code: .spoolFailure, message: "fsync failed") : nil
            })
        let keepalive = ShipMessage.keepalive(Keepalive(primaryEndLSN: LSN(7), sendTime: .now(), replyRequested: false))
        channel.pipeline.fireChannelRead(keepalive)
        channel.pipeline.fireChannelRead(keepalive)
        channel.pipeline.fireChannelReadComplete()
        #expect(events.withLock { $0 } == ["keepalive", "keepalive", "after"], "once per read, after its messages")

        failNext.withLock { $0 = true }
        channel.pipeline.fireChannelRead(keepalive)
        channel.pipeline.fireChannelReadComplete()
        #expect(throws: Refusal.self) { try channel.throwIfErrorCaught() }
        #expect(
            try channel.readOutbound(as: ShipMessage.self) == .refusal(Refusal(code: .spoolFailure, message: "fsync failed")),
            "an error after the read is told to the peer")
        #expect(!channel.isActive)
        #expect(events.withLock { $0 }.suffix(3) == ["keepalive", "after", "after"], "and the close finishes once more")
    }

    @Test func writabilityRegainedIsReportedAndPassedOn() throws {
        let channel = EmbeddedChannel()
        let handler = InboundTapHandler()
        try channel.pipeline.syncOperations.addHandler(handler)
        let calls = Mutex(0)
        handler.whenWritable = WritableBox { calls.withLock { $0 += 1 } }
        channel.isWritable = false
        channel.pipeline.fireChannelWritabilityChanged()
        #expect(calls.withLock { $0 } == 0)
        channel.isWritable = true
        channel.pipeline.fireChannelWritabilityChanged()
        #expect(calls.withLock { $0 } == 1)
    }
}
