import Foundation
import StatusTestSupport
import Testing

@testable import StatusModel

/// Base backups you can forget about: the receiver's `backup_age` alert, `walship status`'s newest-backup line and
/// `walship backup --if-older-than`'s decision, all from the status document's `newestBackup`.
@Suite struct BackupAgeTests {
    let now = Date(timeIntervalSince1970: 1_800_000_000)
    let day = 86_400.0

    func receiver(backupTakenAgo age: Double?) -> StatusDocument {
        var status = sampleReceiver()
        status.systems[0].newestBackup = age.map {
            .init(id: "20270115T080000Z", takenAt: now.addingTimeInterval(-$0), stopLSN: "0/3000100")
        }
        return status
    }

    func backupAge(_ status: StatusDocument, limit: Double? = 26 * 3600, at time: Date? = nil) -> AlertObservation? {
        AlertRules.observe(status, thresholds: AlertThresholds(backupAgeSeconds: limit), now: time ?? now)
            .first { $0.condition == "backup_age" }
    }

    @Test func firesWhenTheNewestBackupIsOlderThanTheLimit() throws {
        let fresh = try #require(backupAge(receiver(backupTakenAgo: 3600)))
        #expect(!fresh.firing && fresh.system == "7301")
        let old = try #require(backupAge(receiver(backupTakenAgo: 2 * day)))
        #expect(old.firing && old.severity == .warning && old.value == 2 * day && old.threshold == 26 * 3600)
        #expect(old.message.contains("20270115T080000Z, is 2d00h old (alert above 1d02h)"), "\(old.message)")
        #expect(old.message.contains("walship-backup.timer"), "\(old.message)")
        // Not watched without the option.
        #expect(backupAge(receiver(backupTakenAgo: 30 * day), limit: nil) == nil)
    }

    /// With no backup at all, the receiver waits the limit from its own start (sampleReceiver started an hour ago).
    @Test func noBackupFiresOnceTheLimitHasPassedSinceTheReceiverStarted() throws {
        let status = receiver(backupTakenAgo: nil)
        let early = try #require(backupAge(status, limit: 2 * 3600))
        #expect(!early.firing && early.message.contains("no complete base backup of this system yet"))
        let late = try #require(backupAge(status, limit: 1800))
        #expect(late.firing && late.message.contains("no complete base backup of this system in the spool, 1h00m after"))
    }

    @Test func aFencedOrUnopenedSystemIsNotWatched() {
        var fenced = receiver(backupTakenAgo: 9 * day)
        fenced.systems[0].fence = .init(promotedAt: now, promotedTimeline: 2, replayedLSN: nil)
        #expect(backupAge(fenced) == nil)
        var refused = receiver(backupTakenAgo: nil)
        refused.systems[0].timeline = nil
        refused.systems[0].spoolFailure = "cannot open"
        #expect(backupAge(refused) == nil)
    }

    /// One incident: fired once when the backup is too old, resolved once a new backup has kept it clear for the
    /// recovery period.
    @Test func firesAndRecoversThroughTheAlertStateMachine() {
        var machine = AlertStateMachine(role: "receiver", host: "dr", recoverAfterSeconds: 30)
        let thresholds = AlertThresholds(backupAgeSeconds: day)
        func round(_ status: StatusDocument, at time: Date) -> [AlertEvent] {
            machine.evaluate(AlertRules.observe(status, thresholds: thresholds, now: time), now: time)
                .filter { $0.condition == "backup_age" }
        }
        #expect(round(receiver(backupTakenAgo: 2 * day), at: now).map(\.event) == [.firing])
        #expect(round(receiver(backupTakenAgo: 2 * day), at: now.addingTimeInterval(10)).isEmpty)
        let fresh = receiver(backupTakenAgo: 60)
        #expect(round(fresh, at: now.addingTimeInterval(20)).isEmpty)
        let resolved = round(fresh, at: now.addingTimeInterval(60))
        #expect(resolved.map(\.event) == [.resolved])
        #expect(resolved.first?.message.contains("is 2m00s old") == true, "\(resolved)")
    }

    @Test func theStatusShowsTheNewestBackupAndItsAge() throws {
        let status = receiver(backupTakenAgo: 5 * 3600)
        let text = StatusTable.render(status, verdict: HealthCheck.evaluate(status, thresholds: .init(), now: now), now: now)
        #expect(
            text.contains("newest backup: 20270115T080000Z, taken 2027-01-15T03:00:00.000Z (5h00m ago), ends at 0/3000100"),
            "\(text)")
        let none = receiver(backupTakenAgo: nil)
        let noneText = StatusTable.render(none, verdict: HealthCheck.evaluate(none, thresholds: .init(), now: now), now: now)
        #expect(noneText.contains("newest backup: NONE complete"), "\(noneText)")
        let data = try StatusDocument.encoder().encode(status)
        #expect(String(decoding: data, as: UTF8.self).contains("\"newestBackup\""))
        #expect(try StatusDocument.decoder().decode(StatusDocument.self, from: data) == status)
    }

    @Test func ifOlderThanSkipsOnlyWhileTheNewestBackupIsYounger() {
        let recent = BackupSchedule.decide(status: receiver(backupTakenAgo: 3 * 3600), system: "7301", maxAge: day, now: now)
        #expect(
            recent
                == .skip(
                    "backup not needed: the newest complete base backup of system 7301, 20270115T080000Z, is 3h00m old, younger than --if-older-than 1d00h"
                ))
        guard
            case .take(let why) = BackupSchedule.decide(
                status: receiver(backupTakenAgo: 25 * 3600), system: "7301", maxAge: day, now: now)
        else {
            Issue.record("an old backup must be replaced")
            return
        }
        #expect(why.contains("is 1d01h old"))
        guard
            case .take(let none) = BackupSchedule.decide(
                status: receiver(backupTakenAgo: nil), system: "7301", maxAge: day, now: now)
        else {
            Issue.record("no backup: take one")
            return
        }
        #expect(none.contains("no complete base backup of system 7301"))
        guard
            case .take(let other) = BackupSchedule.decide(
                status: receiver(backupTakenAgo: 60), system: "999", maxAge: day, now: now)
        else {
            Issue.record("another system's backup does not count")
            return
        }
        #expect(other.contains("no spool of system 999"))
    }
}
