import Foundation
import ObjectStore
import StatusModel
import Testing
import WALCore

@testable import Archive
@testable import Spool

@Suite struct ArchiveStateMachineTests {
    static let t0 = Date(timeIntervalSince1970: 1_800_000_000)
    static func segment(_ number: Int, system: UInt64 = 7, size: UInt64 = 100, at: Double = 0) -> ArchiveObject {
        let name = "0000000100000000" + String(format: "%08X", number) + ".lz4"
        return ArchiveObject(system: system, path: "wal/" + name, size: size, completedAt: t0.addingTimeInterval(at))
    }
    static func history(_ timeline: Int, system: UInt64 = 7) -> ArchiveObject {
        ArchiveObject(system: system, path: "wal/0000000\(timeline).history", size: 40, completedAt: t0)
    }
    static func backupFile(_ id: String, _ file: String, size: UInt64 = 1000) -> ArchiveObject {
        ArchiveObject(system: 7, path: "base/\(id)/\(file)", size: size, completedAt: t0)
    }

    @Test func nothingIsUploadedBeforeTheStoreWasReconciled() {
        var machine = ArchiveStateMachine()
        _ = machine.spoolScanned(system: 7, objects: [Self.segment(1)])
        #expect(machine.next(now: Self.t0) == [.reconcile(system: 7)])
        // Reconciliation is running: nothing else starts beside it.
        #expect(machine.next(now: Self.t0).isEmpty)
        machine.reconciled(system: 7, confirmed: [], now: Self.t0)
        #expect(machine.next(now: Self.t0) == [.upload(Self.segment(1))])
    }

    @Test func whatTheStoreAlreadyHoldsIsNotSentAgain() {
        var machine = ArchiveStateMachine()
        let objects = [Self.segment(1), Self.segment(2), Self.segment(3)]
        _ = machine.spoolScanned(system: 7, objects: objects)
        _ = machine.next(now: Self.t0)
        machine.reconciled(system: 7, confirmed: [objects[0].path, objects[1].path], now: Self.t0)
        #expect(machine.next(now: Self.t0) == [.upload(objects[2])])
        let status = machine.status(system: 7, destination: "s3://b/p/7/", now: Self.t0)
        #expect(status.archivedObjects == 2)
        #expect(status.lagSegments == 1)
    }

    @Test func historyFilesGoFirstThenSegmentsInOrderOneAtATime() {
        var machine = ArchiveStateMachine()
        _ = machine.spoolScanned(system: 7, objects: [Self.segment(3), Self.segment(2), Self.history(2)])
        _ = machine.next(now: Self.t0)
        machine.reconciled(system: 7, confirmed: [], now: Self.t0)
        var order: [String] = []
        while case .upload(let object)? = machine.next(now: Self.t0).first {
            #expect(machine.next(now: Self.t0).isEmpty, "one upload at a time")
            order.append(object.path)
            machine.uploaded(object, now: Self.t0)
        }
        #expect(order == [Self.history(2).path, Self.segment(2).path, Self.segment(3).path])
        #expect(!machine.hasWork)
    }

    @Test func anObjectCountsArchivedOnlyWhenConfirmed() {
        var machine = ArchiveStateMachine()
        let one = Self.segment(1, size: 1000, at: -30)
        _ = machine.spoolScanned(system: 7, objects: [one])
        _ = machine.next(now: Self.t0)
        machine.reconciled(system: 7, confirmed: [], now: Self.t0)
        _ = machine.next(now: Self.t0)
        // In flight still counts as lag.
        var status = machine.status(system: 7, destination: "d", now: Self.t0)
        #expect(status.lagSegments == 1)
        #expect(status.lagBytes == 1000)
        #expect(status.lagSeconds == 30)
        #expect(status.archivedObjects == 0)
        machine.uploaded(one, now: Self.t0.addingTimeInterval(1))
        status = machine.status(system: 7, destination: "d", now: Self.t0.addingTimeInterval(1))
        #expect(status.lagSegments == 0)
        #expect(status.lagSeconds == nil)
        #expect(status.archivedObjects == 1)
        #expect(status.lastArchived == one.path)
        // A later scan still listing it does not make it pending again.
        _ = machine.spoolScanned(system: 7, objects: [one])
        #expect(machine.next(now: Self.t0.addingTimeInterval(2)).isEmpty)
    }

    @Test func failuresBackOffTheStoreDoublingToTheMaximumAndASuccessEndsTheStreak() {
        var machine = ArchiveStateMachine(policy: .init(initialBackoff: 1, maximumBackoff: 8, failingAfter: 3))
        let one = Self.segment(1)
        _ = machine.spoolScanned(system: 7, objects: [one])
        _ = machine.next(now: Self.t0)
        machine.reconciled(system: 7, confirmed: [], now: Self.t0)
        var now = Self.t0
        var waits: [Double] = []
        for attempt in 1...6 {
            guard case .upload(let object)? = machine.next(now: now).first else {
                Issue.record("no upload at attempt \(attempt)")
                return
            }
            machine.uploadFailed(object, error: "connection refused", now: now)
            let retry = machine.nextAttemptAt!
            waits.append(retry.timeIntervalSince(now))
            // Nothing before the backoff ends, not even another object.
            _ = machine.spoolScanned(system: 7, objects: [one, Self.segment(2)])
            #expect(machine.next(now: retry.addingTimeInterval(-0.01)).isEmpty)
            let status = machine.status(system: 7, destination: "d", now: now)
            #expect(status.failing == (attempt >= 3))
            #expect(status.consecutiveFailures == attempt)
            #expect(status.lastError == "connection refused")
            #expect(status.failingSince == Self.t0)
            now = retry
        }
        #expect(waits == [1, 2, 4, 8, 8, 8])
        guard case .upload(let object)? = machine.next(now: now).first else {
            Issue.record("no upload after the backoff")
            return
        }
        machine.uploaded(object, now: now)
        let status = machine.status(system: 7, destination: "d", now: now)
        #expect(!status.failing)
        #expect(status.consecutiveFailures == 0)
        #expect(status.failingSince == nil)
        #expect(status.retryAt == nil)
        #expect(status.lastError == "connection refused", "the last error stays on record")
        #expect(machine.next(now: now) == [.upload(Self.segment(2))])
    }

    @Test func aBackupsRecordGoesUpOnlyAfterItsOtherFilesAreArchived() {
        var machine = ArchiveStateMachine(policy: .init(maximumInFlight: 4))
        let record = Self.backupFile("20261207T210000Z", "backup.json", size: 300)
        let archive = Self.backupFile("20261207T210000Z", "base.tar.lz4")
        let manifest = Self.backupFile("20261207T210000Z", "backup_manifest")
        _ = machine.spoolScanned(system: 7, objects: [record, archive, manifest, Self.segment(9)])
        _ = machine.next(now: Self.t0)
        machine.reconciled(system: 7, confirmed: [], now: Self.t0)
        // WAL first, then the backup's files; its record waits although there is room in flight.
        #expect(machine.next(now: Self.t0) == [.upload(Self.segment(9)), .upload(manifest), .upload(archive)])
        machine.uploaded(archive, now: Self.t0)
        #expect(machine.next(now: Self.t0).isEmpty)
        machine.uploadFailed(manifest, error: "timeout", now: Self.t0)
        let retry = machine.nextAttemptAt!
        #expect(machine.next(now: retry) == [.upload(manifest)], "the record still waits for the manifest")
        machine.uploaded(manifest, now: retry)
        #expect(machine.next(now: retry) == [.upload(record)])
    }

    @Test func whatIsUnarchivedIsUnknownUntilTheStoreWasReadThenPendingAndInFlight() {
        var machine = ArchiveStateMachine()
        _ = machine.spoolScanned(system: 7, objects: [Self.segment(1), Self.segment(2), Self.segment(3)])
        #expect(machine.unarchived(system: 7) == nil)
        _ = machine.next(now: Self.t0)
        machine.reconciled(system: 7, confirmed: [Self.segment(1).path], now: Self.t0)
        #expect(machine.unarchived(system: 7) == [Self.segment(2).path, Self.segment(3).path])
        _ = machine.next(now: Self.t0)  // segment 2 in flight: still unarchived
        #expect(machine.unarchived(system: 7) == [Self.segment(2).path, Self.segment(3).path])
        machine.uploaded(Self.segment(2), now: Self.t0)
        #expect(machine.unarchived(system: 7) == [Self.segment(3).path])
        #expect(machine.unarchived(system: 9) == nil)
        // What retention may drop is what is confirmed: not segment 4, which the machine has not seen yet.
        #expect(machine.archived(system: 7) == [Self.segment(1).path, Self.segment(2).path])
        #expect(machine.archived(system: 9) == nil)
        _ = machine.spoolScanned(system: 7, objects: [Self.segment(2), Self.segment(3), Self.segment(4)])
        #expect(machine.archived(system: 7) == [Self.segment(2).path], "segment 1 left the spool")
    }

    /// Seen by the archive: segments 1 and 2, both in the store. Segments 3 to 5 completed while a large upload ran
    /// and were not scanned yet; a backup starting in segment 6 lets the spool's retention drop 1 to 5. Only what
    /// the store confirmed may go: 3 to 5 stay until they are archived.
    @Test func retentionKeepsWhatTheArchiveHasNotSeenYet() {
        var machine = ArchiveStateMachine()
        #expect(machine.retentionHold(system: 7) == .everything)
        _ = machine.spoolScanned(system: 7, objects: [Self.segment(1), Self.segment(2)])
        _ = machine.next(now: Self.t0)
        machine.reconciled(system: 7, confirmed: [Self.segment(1).path, Self.segment(2).path], now: Self.t0)
        let size = WALSegmentSize.default
        let backup = BackupInfo(
            id: "b1", label: "", systemIdentifier: "7", createdAt: Self.t0, startLSN: "0/6000028", stopLSN: "0/6000100",
            timeline: 1, archiveBytes: 0, archiveCRC32C: "0", storedBytes: 0, status: .complete)
        let plan = RetentionPlan.compute(
            backups: [backup], segments: (1...7).map { SegmentName(timeline: 1, number: UInt64($0), segmentSize: size) },
            standbys: [], retainBackups: 1, segmentSize: size, archiveHold: machine.retentionHold(system: 7))
        #expect(plan.removeSegments.map(\.number) == [1, 2])
        #expect(plan.keepFrom == size.startLSN(ofSegment: 3))
    }

    @Test func aFailedReconciliationIsRetriedAfterTheBackoff() {
        var machine = ArchiveStateMachine()
        _ = machine.spoolScanned(system: 7, objects: [Self.segment(1)])
        #expect(machine.next(now: Self.t0) == [.reconcile(system: 7)])
        machine.reconcileFailed(system: 7, error: "no answer", now: Self.t0)
        #expect(machine.next(now: Self.t0.addingTimeInterval(0.5)).isEmpty)
        #expect(machine.next(now: Self.t0.addingTimeInterval(1)) == [.reconcile(system: 7)])
    }

    @Test func filesPrunedFromTheSpoolBeforeArchivingAreReportedAndDropped() {
        var machine = ArchiveStateMachine()
        _ = machine.spoolScanned(system: 7, objects: [Self.segment(1), Self.segment(2)])
        _ = machine.next(now: Self.t0)
        machine.reconciled(system: 7, confirmed: [], now: Self.t0)
        let vanished = machine.spoolScanned(system: 7, objects: [Self.segment(2)])
        #expect(vanished.map(\.object) == [Self.segment(1)])
        #expect(machine.status(system: 7, destination: "d", now: Self.t0).lagSegments == 1)
    }

    @Test func anUploadAbandonedBecauseItsFileWentIsNoStoreFailure() {
        var machine = ArchiveStateMachine()
        _ = machine.spoolScanned(system: 7, objects: [Self.segment(1)])
        _ = machine.next(now: Self.t0)
        machine.reconciled(system: 7, confirmed: [], now: Self.t0)
        guard case .upload(let object)? = machine.next(now: Self.t0).first else {
            Issue.record("no upload")
            return
        }
        machine.uploadAbandoned(object)
        _ = machine.spoolScanned(system: 7, objects: [])
        let status = machine.status(system: 7, destination: "d", now: Self.t0)
        #expect(status.consecutiveFailures == 0)
        #expect(status.lagSegments == 0)
    }

    @Test func systemsAreKeptApart() {
        var machine = ArchiveStateMachine(policy: .init(maximumInFlight: 4))
        _ = machine.spoolScanned(system: 7, objects: [Self.segment(1, system: 7)])
        _ = machine.spoolScanned(system: 9, objects: [Self.segment(1, system: 9), Self.segment(2, system: 9)])
        #expect(machine.next(now: Self.t0) == [.reconcile(system: 7), .reconcile(system: 9)])
        machine.reconciled(system: 9, confirmed: [], now: Self.t0)
        #expect(machine.next(now: Self.t0) == [.upload(Self.segment(1, system: 9)), .upload(Self.segment(2, system: 9))])
        #expect(machine.status(system: 7, destination: "d", now: Self.t0).lagSegments == 1)
        #expect(machine.status(system: 9, destination: "d", now: Self.t0).lagSegments == 2)
    }
}

@Suite struct ArchiveConfigurationTests {
    @Test func urlsAndKeys() throws {
        let configuration = try ArchiveConfiguration(url: "s3://dr-archive/walship/site-b/")
        #expect(configuration.bucket == "dr-archive")
        #expect(configuration.prefix == "walship/site-b")
        #expect(
            configuration.objectKey(system: 7_301_234, path: "wal/000000010000000000000003.lz4")
                == "walship/site-b/7301234/wal/000000010000000000000003.lz4")
        #expect(
            configuration.objectKey(system: 7, path: "base/20261207T210000Z/base.tar.lz4")
                == "walship/site-b/7/base/20261207T210000Z/base.tar.lz4")
        #expect(configuration.destination(system: 7) == "s3://dr-archive/walship/site-b/7/")
        let bare = try ArchiveConfiguration(url: "s3://bucket")
        #expect(bare.objectKey(system: 7, path: "wal/00000002.history") == "7/wal/00000002.history")
        #expect(throws: (any Error).self) { try ArchiveConfiguration(url: "https://bucket/x") }
        #expect(throws: (any Error).self) { try ArchiveConfiguration(url: "s3:///prefix") }
    }

    @Test func onlyCompletedFilesAreArchived() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("archive-scan-\(getpid())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for name in [
            "000000010000000000000001.lz4", "000000010000000000000002.partial", "000000010000000000000002.lz4.tmp",
            "00000002.history", "journal", "000000010000000000000003.lz4",
        ] {
            FileManager.default.createFile(atPath: directory + "/" + name, contents: Data("x".utf8))
        }
        let names = Archiver.completedFiles(walDirectory: directory, system: 7).map(\.path).sorted()
        #expect(names == ["wal/000000010000000000000001.lz4", "wal/000000010000000000000003.lz4", "wal/00000002.history"])
    }
}

@Suite struct FileDigestTests {
    /// The digests the archiver reads a file with, one part at a time, agree with the ETags the store gives.
    @Test func digestsReadInPartsAgreeWithTheStoresETags() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("archive-digest-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let body = Data((0..<(11 << 20 + 7)).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 13) })
        FileManager.default.createFile(atPath: path, contents: body)
        let digests = try #require(FileDigests(path: path, partSize: 5 << 20))
        #expect(digests.size == UInt64(body.count))
        #expect(digests.sha256 == SigV4Signer.payloadHash(body))
        #expect(digests.md5 == S3Client.expectedETag(of: body, partSize: nil))
        #expect(digests.multipartETag == S3Client.expectedETag(of: body, partSize: 5 << 20))
        #expect(digests.multipartETag.hasSuffix("-3"))
        #expect(FileDigests(path: path + ".missing", partSize: 5 << 20) == nil)
    }
}

@Suite struct ArchiveAlertTests {
    static func status(_ archive: StatusDocument.ArchiveStatus) -> StatusDocument {
        var system = StatusDocument.SystemStatus(
            systemIdentifier: "7", timeline: 1, link: .init(connected: true), chain: [])
        system.archive = archive
        return StatusDocument(
            role: "receiver", version: "0", host: "h", generatedAt: Date(),
            process: .init(pid: 1, startedAt: Date(), residentMemoryBytes: nil), state: "ok", stateSince: Date(),
            systems: [system])
    }

    @Test func archiveFailingAndLag() {
        let now = Date()
        var archive = StatusDocument.ArchiveStatus(
            destination: "s3://b/7/", lagSegments: 3, lagBytes: 3 << 20, lagSeconds: 90, archivedObjects: 10,
            lastError: "PutObject k: no answer from the store: connection refused", consecutiveFailures: 4, failing: true)
        var observed = AlertRules.observe(Self.status(archive), thresholds: .init(archiveLagSeconds: 60), now: now)
        let failing = observed.first { $0.condition == "archive_failing" }
        #expect(failing?.firing == true)
        #expect(failing?.message.contains("connection refused") == true)
        #expect(observed.first { $0.condition == "archive_lag_seconds" }?.firing == true)
        archive.failing = false
        archive.consecutiveFailures = 0
        archive.lagSeconds = nil
        observed = AlertRules.observe(Self.status(archive), thresholds: .init(archiveLagSeconds: 60), now: now)
        #expect(observed.filter { $0.condition.hasPrefix("archive_") && $0.firing }.isEmpty)
        // Without a lag threshold only archive_failing is watched.
        observed = AlertRules.observe(Self.status(archive), thresholds: .init(), now: now)
        #expect(observed.filter { $0.condition.hasPrefix("archive_") }.map(\.condition) == ["archive_failing"])
    }
}
