import Foundation
import Logging
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

    @Test(arguments: ["", "Block", "degrade", "degrade-after=", "degrade-after=0", "degrade-after=-5s", "degrade-after=5d",
                      "degrade-after=25h", "degrade-after=1.5s", "degrade-after=s", "degrade-after=99999999999999999999"])
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

    @Test func aSecondSenderCannotShareTheBuffer() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let first = try LocalBuffer(directory: directory, logger: logger)
        #expect(throws: SenderFatalError.self) { _ = try LocalBuffer(directory: directory, logger: logger) }
        _ = first
    }
}
