import Foundation
import StatusModel
import Testing
import WALCore

@testable import Operations
@testable import Spool

/// `walship standby forget`: which records go, when it is refused, and what it says forgetting releases.
@Suite struct StandbyForgetTests {
    let size = WALSegmentSize.default
    let at = Date(timeIntervalSince1970: 1_800_000_000)

    func record(_ name: String, _ lsn: String, viaSlot: Bool = false) -> StandbyRecord {
        StandbyRecord(name: name, viaSlot: viaSlot, replayedLSN: LSN(lsn)!, updatedAt: at)
    }

    func backup(_ id: String, start: String, status: BackupInfo.Status = .complete) -> BackupInfo {
        BackupInfo(
            id: id, label: "", systemIdentifier: "1", createdAt: at, startLSN: start, stopLSN: start, timeline: 1,
            archiveBytes: 0, archiveCRC32C: "0", storedBytes: 0, status: status)
    }

    var segments: [SegmentName] { (1...12).map { SegmentName(timeline: 1, number: UInt64($0), segmentSize: size) } }

    func decide(
        _ name: String, records: [StandbyRecord], presence: StandbyForget.Presence = .receiverNotRunning,
        backups: [BackupInfo]? = nil
    ) -> StandbyForget.Decision {
        StandbyForget.decide(
            name: name, records: records, presence: presence, backups: backups ?? [backup("b1", start: "0/9000028")],
            segments: segments, segmentSize: size)
    }

    @Test func aGoneStandbyIsForgottenAndWhatItPinsIsNamed() throws {
        let old = record("old_dr", "0/3123456", viaSlot: true)
        guard case .forget(let records, let lines) = decide("old_dr", records: [old, record("dr", "0/A000000")]) else {
            Issue.record("expected to forget")
            return
        }
        #expect(records == [old])
        #expect(lines[0].contains("standby old_dr (by its slot) replayed up to 0/3123456"), "\(lines)")
        // Segments 3 to 8 are kept for it alone: the newest backup starts in segment 9.
        #expect(lines[1].contains("up to 6 segment(s) (96.0 MB before compression)"), "\(lines)")
        #expect(lines[1].contains("000000010000000000000003 … 000000010000000000000008"), "\(lines)")
    }

    @Test func nothingIsReleasedWhenAnotherStandbyOrNoBackupHoldsTheSameWAL() throws {
        let behind = [record("old_dr", "0/5000000"), record("slower", "0/3000000")]
        guard case .forget(_, let lines) = decide("old_dr", records: behind) else {
            Issue.record("expected to forget")
            return
        }
        #expect(lines.last?.contains("releases nothing now") == true, "\(lines)")
        guard
            case .forget(_, let none) = decide(
                "old_dr", records: behind, backups: [backup("b1", start: "0/9000028", status: .waitingForWAL)])
        else {
            Issue.record("expected to forget")
            return
        }
        #expect(none.last?.contains("there is no complete base backup") == true, "\(none)")
    }

    @Test func refusedWhileConnectedOrWhenTheReceiverCannotBeAsked() {
        let records = [record("dr_slot", "0/3000000", viaSlot: true)]
        let bySlot = decide(
            "dr_slot", records: records,
            presence: .answered([StandbyPresence(name: "dr_slot", applicationName: "dr_replica", connected: true)]))
        guard case .refuse(let reason) = bySlot else {
            Issue.record("a connected standby must not be forgotten")
            return
        }
        #expect(reason.contains("is connected to the receiver now (application_name dr_replica)"), "\(reason)")
        // Known to the endpoint but disconnected: forgotten.
        let gone = decide(
            "dr_slot", records: records,
            presence: .answered([StandbyPresence(name: "dr_slot", applicationName: "dr_replica", connected: false)]))
        guard case .forget = gone else {
            Issue.record("a disconnected standby may be forgotten")
            return
        }
        guard case .refuse(let unknown) = decide("dr_slot", records: records, presence: .unknown("Permission denied")) else {
            Issue.record("cannot ask: refuse")
            return
        }
        #expect(unknown.contains("Permission denied") && unknown.contains("run this as the receiver's user"), "\(unknown)")
    }

    @Test func anUnknownNameListsTheRecordedOnes() {
        guard case .refuse(let reason) = decide("typo", records: [record("dr", "0/3000000"), record("b", "0/3000000")]) else {
            Issue.record("unknown name: refuse")
            return
        }
        #expect(reason.contains("no standby named typo is recorded") && reason.contains("b, dr"), "\(reason)")
        guard case .refuse(let empty) = decide("dr", records: []) else { return }
        #expect(empty.contains("it records none"))
    }
}
