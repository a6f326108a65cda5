import Foundation
import Logging
import NIOConcurrencyHelpers
import ShipProtocol
import Testing
import WALCore

@testable import PGReplication
@testable import Sender

/// The receiver's acks reach the primary in the order the event loop decoded them, also at the end of a degraded
/// episode, when the first of them reaches what was acknowledged from the local buffer.
@Suite struct AckOrderingTests {
    let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    func ack(_ position: UInt64) -> ShipMessage {
        .ack(Ack(timeline: 1, writtenLSN: LSN(position), durableLSN: LSN(position), receiverTime: .now()))
    }

    @Test func acksAtTheEndOfADegradedEpisodeNeverGoBackwards() async throws {
        let directory = NSTemporaryDirectory() + "walship-ack-order-test-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var configuration = SenderConfiguration(
            source: try Conninfo("host=localhost"), receiverHost: "localhost", receiverPort: 1,
            slot: "walship", createSlot: false, applicationName: "walship", synchronous: true)
        configuration.receiverLoss = .degradeAfter(.seconds(1))
        configuration.bufferDirectory = directory
        let sender = try Sender(configuration: configuration, logger: logger)
        // Commits up to 0/3000000 were acknowledged from the local buffer; the link ships it and goes on to 0/4000000.
        let floor = LSN(0x300_0000)
        sender.statusBox.withLock {
            $0.systemIdentifier = "42"
            $0.acknowledgedFromBuffer = floor
            $0.degradedSince = Date()
        }
        var link = SenderLinkStateMachine()
        let segmentSize = try #require(WALSegmentSize(bytes: 16 << 20))
        _ = link.firstMessageReceived(
            .welcome(Welcome(resumeLSN: LSN(0x100_0000), resumeTimeline: 1, receiverName: "dr")),
            primary: PrimaryIdentity(
                systemIdentifier: 42, timeline: 1, flushLSN: LSN(0x400_0000),
                segmentSize: segmentSize),
            slotRestartLSN: nil)
        link.walSent(upTo: LSN(0x400_0000))
        let machine = NIOLockedValueBox(link)
        let gate = StreamGate()

        // What the event loop's tap passes on to the reader task, which takes it when it gets to run.
        var forwarded: [ShipMessage] = []
        var reported: [LSN] = []
        func decoded(_ message: ShipMessage) {
            switch sender.acknowledgeOnEventLoop(message, machine: machine, gate: gate) {
            case .forward: forwarded.append(message)
            case .fail(let error): Issue.record("the tap failed the link: \(error)")
            case .consumed, .consumedAndPause: break
            }
            reported.append(gate.takeFeedback().feedback.flushed)
        }
        func readerTakes(_ count: Int) throws {
            for _ in 0..<min(count, forwarded.count) {
                try sender.received(forwarded.removeFirst(), machine: machine, gate: gate)
                reported.append(gate.takeFeedback().feedback.flushed)
            }
        }

        decoded(ack(0x300_0000))
        decoded(ack(0x380_0000))
        // Whatever reached the reader task is taken only now, one frame: the first ack ends the degraded episode.
        try readerTakes(1)
        decoded(ack(0x400_0000))
        #expect(throws: Never.self) { try readerTakes(.max) }

        #expect(reported == reported.sorted(), "the feedback to the primary went backwards: \(reported)")
        #expect(reported.last == LSN(0x400_0000))
        #expect(sender.statusBox.withLock { $0.receiverDurable } == LSN(0x400_0000))
        #expect(sender.statusBox.withLock { $0.acknowledgedFromBuffer } == .invalid)
        #expect(machine.withLockedValue { $0.state } != .closed, "the link was reset")
        // The buffer's tidying, off the event loop, still happens.
        await sender.bufferChoresDone()
        let audit = try String(contentsOfFile: directory + "/audit.log", encoding: .utf8)
        #expect(audit.contains("\"event\":\"synchronous\""))
    }
}
