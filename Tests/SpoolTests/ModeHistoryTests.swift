import Foundation
import Logging
import Testing
import WALCore

@testable import Spool

#if canImport(Glibc)
import Glibc
#endif

@Suite struct ModeHistoryTests {
    func entry(_ mode: ReplicationMode?, _ seconds: Double, event: ModeHistoryEntry.Event = .mode) -> ModeHistoryEntry {
        ModeHistoryEntry(
            event: event, mode: mode, at: Date(timeIntervalSince1970: seconds), lsn: "0/3000000",
            recordedAt: Date(timeIntervalSince1970: seconds))
    }

    @Test func theCurrentModeHoldsSinceTheFirstEntryOfItsRun() {
        let current = CurrentMode([
            entry(.sync, 10), entry(nil, 15, event: .link), entry(.sync, 16), entry(.async, 20), entry(.async, 30),
        ])
        #expect(current.mode == .async)
        #expect(current.since == Date(timeIntervalSince1970: 20))
        #expect(current.link?.at == Date(timeIntervalSince1970: 15))
        #expect(CurrentMode([]).mode == nil)
    }

    @Test func linesRoundTripAndATornTailIsSkipped() throws {
        let entries = [entry(.sync, 10), entry(.unknown, 20, event: .link)]
        var text = try entries.map { String(decoding: try ModeHistory.line($0), as: UTF8.self) }.joined()
        #expect(ModeHistory.entries(in: text) == entries)
        text += "{\"event\":\"mode\",\"mo"
        text += "\n{\"event\":\"promotion\",\"by\":\"walship promote\"}\n"
        #expect(ModeHistory.entries(in: text) == entries, "a torn line and other events are not mode entries")
    }

    @Test func entriesAreReadBackFromTheSystemsAuditLog() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("mode-history-\(UUID())").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        let spool = try Spool(root: root, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        let system = try spool.system(7, segmentSize: .default)
        try system.record(entry(.sync, 10))
        try system.record(entry(.degraded, 20))
        #expect(try ModeHistory.load(systemDirectory: system.directory).map(\.mode) == [.sync, .degraded])
        #expect(try ModeHistory.load(systemDirectory: root + "/8").isEmpty)
    }

    /// A recorded entry survives a crash straight after (the file and, when new, its directory entry are
    /// fsynced), and a failed fsync is an error, not a silent loss.
    @Test func anEntryIsDurableWhenRecordReturns() throws {
        let disk = MemorySpool()
        let system = try disk.open()
        try system.record(entry(.sync, 10))
        disk.crash()
        let path = ModeHistory.path(systemDirectory: disk.systemDirectory)
        let text = String(decoding: try #require(disk.fs.contents(path)), as: UTF8.self)
        #expect(ModeHistory.entries(in: text).map(\.mode) == [.sync])

        let reopened = try disk.open()
        disk.fs.setFaults { $0.kind == .fsync || $0.kind == .fdatasync ? .fail(EIO) : nil }
        #expect(throws: (any Error).self) { try reopened.record(self.entry(.async, 20)) }
    }
}

@Suite struct SpoolFormatTests {
    let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    func spoolWithSystemFile(_ text: String) throws -> (root: String, directory: String) {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("spool-format-\(UUID())").path
        let directory = root + "/7"
        try FileManager.default.createDirectory(atPath: directory + "/wal", withIntermediateDirectories: true)
        try text.write(toFile: directory + "/system.conf", atomically: true, encoding: .utf8)
        return (root, directory)
    }

    @Test func aSpoolOfANewerFormatIsRefusedAndLeftAlone() throws {
        let text = "system_identifier = 7\nwal_segment_size = 16777216\nspool_format = 3\n"
        let (root, directory) = try spoolWithSystemFile(text)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let spool = try Spool(root: root, logger: logger)
        #expect {
            _ = try spool.system(7, segmentSize: .default)
        } throws: { error in
            "\(error)".contains("spool format 3, written by a newer walship") && "\(error)".contains("hint:")
        }
        #expect(try String(contentsOfFile: directory + "/system.conf", encoding: .utf8) == text)
    }

    @Test func aSpoolOfTheFirstFormatIsTakenUpAndRecordsTheCurrentOne() throws {
        let (root, directory) = try spoolWithSystemFile("system_identifier = 7\nwal_segment_size = 16777216\n")
        defer { try? FileManager.default.removeItem(atPath: root) }
        _ = try Spool(root: root, logger: logger).system(7, segmentSize: .default)
        #expect(
            try String(contentsOfFile: directory + "/system.conf", encoding: .utf8).contains(
                "spool_format = \(SystemConfiguration.currentFormat)"))
    }
}
