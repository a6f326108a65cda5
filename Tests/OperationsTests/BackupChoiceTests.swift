import Foundation
import Testing

@testable import Operations
@testable import Spool

/// Which backup a restore starts from, above all with `--target-time`: the newest complete backup stored by then.
@Suite struct BackupChoiceTests {
    let monday = Date(timeIntervalSince1970: 1_800_000_000)  // 2027-01-15T08:00:00Z

    func backup(_ id: String, storedAfter hours: Double, status: BackupInfo.Status = .complete) -> BackupInfo {
        BackupInfo(
            id: id, label: "", systemIdentifier: "1", createdAt: monday.addingTimeInterval(hours * 3600), startLSN: "0/2000028",
            stopLSN: "0/2000100", timeline: 1, archiveBytes: 0, archiveCRC32C: "0", storedBytes: 0, status: status)
    }

    var backups: [BackupInfo] {
        [
            backup("b1", storedAfter: 0), backup("b2", storedAfter: 24), backup("b3", storedAfter: 48),
            backup("b4", storedAfter: 72, status: .waitingForWAL),
        ]
    }

    @Test func withoutATargetTheNewestCompleteBackup() throws {
        #expect(try BackupChoice.choose(backups, requested: nil, endingBy: nil).id == "b3")
        #expect(try BackupChoice.choose(backups, requested: "b1", endingBy: nil).id == "b1")
    }

    @Test func aTargetTimeBeforeTheNewestBackupRestoresFromTheOlderOne() throws {
        #expect(try BackupChoice.choose(backups, requested: nil, endingBy: monday.addingTimeInterval(30 * 3600)).id == "b2")
        #expect(try BackupChoice.choose(backups, requested: nil, endingBy: monday.addingTimeInterval(24 * 3600)).id == "b2")
        #expect(try BackupChoice.choose(backups, requested: nil, endingBy: monday.addingTimeInterval(100 * 3600)).id == "b3")
        #expect(try BackupChoice.choose(backups, requested: nil, endingBy: monday.addingTimeInterval(1)).id == "b1")
    }

    @Test func aTargetTimeBeforeEveryBackupIsRefusedClearly() {
        #expect {
            try BackupChoice.choose(backups, requested: nil, endingBy: monday.addingTimeInterval(-60))
        } throws: { error in
            let text = "\(error)"
            return text.contains("no complete base backup stored by 2027-01-15T07:59:00.000Z") && text.contains("the oldest, b1")
        }
    }

    /// A backup named with --backup that ends after the target cannot reach it: refused rather than left to
    /// PostgreSQL's "recovery stop point is before consistent recovery point".
    @Test func aNamedBackupStoredAfterTheTargetIsRefused() throws {
        #expect(try BackupChoice.choose(backups, requested: "b1", endingBy: monday.addingTimeInterval(3600)).id == "b1")
        #expect {
            try BackupChoice.choose(backups, requested: "b3", endingBy: monday.addingTimeInterval(30 * 3600))
        } throws: { "\($0)".contains("backup b3 was stored at 2027-01-17T08:00:00.000Z, after the target time") }
    }

    @Test func targetTimesAsPostgreSQLWritesThem() throws {
        let cases: [(String, Double)] = [
            ("2027-01-15 08:00:00+00", 1_800_000_000), ("2027-01-15 08:00:00.25+00", 1_800_000_000.25),
            ("2027-01-15 09:30:00+01:30", 1_800_000_000), ("2027-01-15 03:00:00-05", 1_800_000_000),
            ("2027-01-15T08:00:00Z", 1_800_000_000), ("2027-01-15 08:00:00 UTC", 1_800_000_000),
            ("2027-01-15 08:00+00", 1_800_000_000), ("2027-01-15 10:00:00+0200", 1_800_000_000),
            ("2026-12-07 18:55:12.123456+00", 1_796_669_712.123456),
        ]
        for (text, seconds) in cases {
            let parsed = try #require(TargetTime.parse(text), "\(text)")
            #expect(abs(parsed.date.timeIntervalSince1970 - seconds) < 0.000_01, "\(text)")
            #expect(parsed.zoneGiven, "\(text)")
        }
        let local = try #require(TargetTime.parse("2027-01-15 08:00:00"))
        #expect(!local.zoneGiven)
        for text in ["", "yesterday", "2027-01-15", "2027-13-15 08:00:00+00", "2027-01-15 08:00:00+25"] {
            #expect(TargetTime.parse(text) == nil, "\(text)")
        }
    }
}
