import Foundation
import Logging
import Spool
import Testing
import WALCore

@testable import Sender

@Suite struct ReceiverLossPolicyTests {
    @Test func parsesBlockAndDurations() throws {
        #expect(try ReceiverLossPolicy(parsing: "block") == .block)
        #expect(try ReceiverLossPolicy(parsing: "degrade-after=30") == .degradeAfter(.seconds(30)))
        #expect(try ReceiverLossPolicy(parsing: "degrade-after=30s") == .degradeAfter(.seconds(30)))
        #expect(try ReceiverLossPolicy(parsing: "degrade-after=5m") == .degradeAfter(.seconds(300)))
        #expect(try ReceiverLossPolicy(parsing: "degrade-after=2h") == .degradeAfter(.seconds(7200)))
        #expect(try ReceiverLossPolicy(parsing: "degrade-after=5m").description == "degrade-after=300s")
    }

    @Test(arguments: [
        "", "Block", "degrade", "degrade-after=", "degrade-after=0", "degrade-after=-5s", "degrade-after=5d",
        "degrade-after=25h", "degrade-after=1.5s", "degrade-after=s", "degrade-after=99999999999999999999",
    ])
    func rejectsWithAHint(_ text: String) {
        #expect {
            _ = try ReceiverLossPolicy(parsing: text)
        } throws: { error in
            "\(error)".contains("hint:")
        }
    }
}

@Suite struct LocalBufferTests {
    let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    func temporaryDirectory() -> String { NSTemporaryDirectory() + "walship-buffer-test-\(UUID().uuidString)" }

    @Test func auditLinesAreAppendedAndTheLastOffsitePositionIsRecovered() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let buffer = try LocalBuffer(directory: directory, logger: logger)
        #expect(buffer.lastRecordedOffsite() == nil)
        try buffer.audit(["event": "degraded", "offsite_durable_lsn": "0/3000060"])
        try buffer.audit(["event": "synchronous", "acknowledged_lsn": "0/4000000"])
        try buffer.audit(["event": "degraded", "offsite_durable_lsn": "0/5000028"])
        try buffer.audit(["event": "synchronous", "acknowledged_lsn": "0/6000000"])
        #expect(buffer.lastRecordedOffsite() == LSN("0/5000028"))
        let lines = try String(contentsOfFile: directory + "/audit.log", encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 4)
        for line in lines {
            let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String])
            #expect(object["at"] != nil)
        }
    }

    @Test func anEmptyBufferHoldsNoRangeAndDiscardingIsHarmless() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let buffer = try LocalBuffer(directory: directory, logger: logger)
        let size = try #require(WALSegmentSize(bytes: 1 << 20))
        #expect(try buffer.range(system: 42, segmentSize: size, timeline: 1) == nil)
        _ = try buffer.open(system: 42, segmentSize: size)
        #expect(try buffer.range(system: 42, segmentSize: size, timeline: 1) == nil)
        try buffer.discard(system: 42)
        #expect(!FileManager.default.fileExists(atPath: directory + "/42"))
        try buffer.discard(system: 42)
    }

    @Test func aBufferSetAsideLeavesTheBufferAndKeepsItsFiles() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let buffer = try LocalBuffer(directory: directory, logger: logger)
        let size = try #require(WALSegmentSize(bytes: 1 << 20))
        _ = try buffer.open(system: 42, segmentSize: size)
        #expect(try buffer.position(system: 42, segmentSize: size) == nil)  // empty: nothing held
        let path = try buffer.setAside(system: 42, timeline: 3)
        #expect(path.hasPrefix(directory + "/42.timeline-3.set-aside-"))
        #expect(FileManager.default.fileExists(atPath: path + "/system.conf"))
        #expect(!FileManager.default.fileExists(atPath: directory + "/42"))
        #expect(try Spool.systemIdentifiers(root: directory).isEmpty)
        // The buffer starts afresh for the same system.
        _ = try buffer.open(system: 42, segmentSize: size)
        #expect(try Spool.systemIdentifiers(root: directory) == [42])
    }

    @Test func aSecondSenderCannotShareTheBuffer() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let first = try LocalBuffer(directory: directory, logger: logger)
        #expect(throws: SenderFatalError.self) { _ = try LocalBuffer(directory: directory, logger: logger) }
        _ = first
    }
}

/// The rules for WAL the local buffer holds from an earlier outage: nothing acknowledged from it is dropped
/// while the DR site may lack it.
@Suite struct LeftoverBufferTests {
    func held(_ timeline: TimeLineID, _ end: String) -> SpoolPosition {
        var position = SpoolPosition.empty
        position.timeline = timeline
        position.written = LSN(end)!
        position.durable = LSN(end)!
        return position
    }

    @Test func degradingOnTheSameTimelineCarriesOnUnlessTheSlotMovedPast() {
        #expect(LeftoverBuffer.whenDegrading(held: .empty, primaryTimeline: 2, slotRestart: LSN("0/5000000")!) == .keep)
        #expect(
            LeftoverBuffer.whenDegrading(held: held(2, "0/5000000"), primaryTimeline: 2, slotRestart: LSN("0/5000000")!) == .keep)
        #expect(
            LeftoverBuffer.whenDegrading(held: held(2, "0/5000000"), primaryTimeline: 2, slotRestart: LSN("0/4000000")!) == .keep)
        #expect(
            LeftoverBuffer.whenDegrading(held: held(2, "0/5000000"), primaryTimeline: 2, slotRestart: LSN("0/6000000")!)
                == .discard)
        // A slot just created (or without a restart position) is no evidence: the buffer is kept.
        #expect(LeftoverBuffer.whenDegrading(held: held(2, "0/5000000"), primaryTimeline: 2, slotRestart: nil) == .keep)
    }

    @Test func degradingOnAnotherTimelineRefusesAndKeepsTheBuffer() {
        // Also when the slot is far beyond it: the slot is the new timeline's, and says nothing of what the
        // DR site has of the old one.
        for restart in ["0/1000000", "0/9000000"] {
            let verdict = LeftoverBuffer.whenDegrading(held: held(1, "0/5000000"), primaryTimeline: 2, slotRestart: LSN(restart)!)
            guard case .refuseToDegrade(let reason) = verdict else {
                Issue.record("expected a refusal, got \(verdict)")
                continue
            }
            #expect(reason.contains("timeline 1") && reason.contains("commits wait"))
        }
    }

    @Test func aLinkToAReceiverOnTheSameOrAnOlderTimelineKeepsTheBufferToShipIt() {
        #expect(
            LeftoverBuffer.whenLinked(
                held: held(2, "0/5000000"), receiverEnd: (2, LSN("0/4000000")!), receiverTimeline: 2, fork: nil) == .keep)
        #expect(
            LeftoverBuffer.whenLinked(
                held: held(2, "0/5000000"), receiverEnd: (1, LSN("0/6000000")!), receiverTimeline: 1, fork: nil) == .keep)
        #expect(
            LeftoverBuffer.whenLinked(held: .empty, receiverEnd: (3, LSN("0/6000000")!), receiverTimeline: 3, fork: nil) == .keep)
    }

    @Test func aLinkToAReceiverOnALaterTimelineDropsWhatItHasAndSetsAsideTheRest() {
        // The buffer ends at or before the fork: the receiver's spool holds all of it.
        #expect(
            LeftoverBuffer.whenLinked(
                held: held(1, "0/5000000"), receiverEnd: (2, LSN("0/6000000")!), receiverTimeline: 2, fork: LSN("0/5000000")!)
                == .discard)
        #expect(
            LeftoverBuffer.whenLinked(
                held: held(1, "0/4000000"), receiverEnd: (3, LSN("0/6000000")!), receiverTimeline: 3, fork: LSN("0/5000000")!)
                == .discard)
        // Beyond the fork: kept aside, with how much.
        #expect(
            LeftoverBuffer.whenLinked(
                held: held(1, "0/5000100"), receiverEnd: (1, LSN("0/5000000")!), receiverTimeline: 2, fork: LSN("0/5000000")!)
                == .setAside(bytesBeyondFork: 0x100))
        // The primary's history does not name the buffer's timeline: kept aside, amount unknown.
        #expect(
            LeftoverBuffer.whenLinked(
                held: held(1, "0/5000000"), receiverEnd: (1, LSN("0/4000000")!), receiverTimeline: 2, fork: nil)
                == .setAside(bytesBeyondFork: nil))
        // The spool already holds all of it on the buffer's timeline, beyond the fork included: dropped.
        #expect(
            LeftoverBuffer.whenLinked(
                held: held(1, "0/5000100"), receiverEnd: (1, LSN("0/5000100")!), receiverTimeline: 2, fork: LSN("0/5000000")!)
                == .discard)
        #expect(
            LeftoverBuffer.whenLinked(
                held: held(2, "0/5000000"), receiverEnd: (2, LSN("0/5000000")!), receiverTimeline: 2, fork: nil) == .discard)
    }
}
