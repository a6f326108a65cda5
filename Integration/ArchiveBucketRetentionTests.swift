import ArchiveCrypto
import Foundation
import ObjectStore
import Testing

/// Retention in the bucket (`--archive-retain-backups`) against a real Ceph RADOS Gateway: once a second backup is
/// archived the first one and the WAL before the second one's start are deleted, the second one's WAL stays, and
/// `walship verify` finds the archive clean.
@Suite(
    .serialized, .enabled(if: IT.pgBin != nil, "PostgreSQL 15 server binaries are required"),
    .enabled(if: S3Store.available, "Ceph (ceph-mon, ceph-osd, radosgw) is required: make deps"))
struct ArchiveBucketRetentionTests {
    @Test func oldBackupsAndTheirWALGoTheKeptBackupsWALStays() async throws {
        try await retention(objectLockDays: nil)
    }

    /// With object lock on the bucket, a delete leaves a delete marker: the objects leave the listing (and restores)
    /// while their locked versions stay. Nothing fails; the receiver says so once and counts them.
    @Test func inABucketWithObjectLockDeletedObjectsStayAsLockedVersions() async throws {
        try await retention(objectLockDays: 1)
    }

    func retention(objectLockDays: Int?) async throws {
        let fixture = try Fixture(objectLockDays == nil ? "archive-retention" : "archive-retention-locked")
        let store = try S3Store(directory: fixture.directory + "/s3", objectLockDays: objectLockDays)
        defer {
            // The store first: the fixture's tear-down removes its directory, and with it what stop needs.
            store.stop()
            fixture.tearDown()
            _ = try? run("/bin/rm", ["-rf", fixture.directory], check: false)
        }
        let keyringPath = fixture.directory + "/archive-keyring.json"
        try run(IT.walshipBinary, ["keys", "init", keyringPath])
        var topology = try ShipTopology(fixture)
        let prefix = "retained"
        let archive = ["--archive", "s3://\(store.bucket)/\(prefix)", "--archive-endpoint", store.endpoint]
        topology.receiverExtra =
            archive + ["--encryption-keyring", keyringPath, "--archive-part-size", "5M", "--archive-retain-backups", "1"]
        topology.receiverEnvironment = store.environment
        try topology.startReceiver()
        try topology.startSender()
        let system = topology.systemIdentifier
        let systemPrefix = "\(prefix)/\(system)/"

        try topology.primary.pgbench(["-i", "-s", "1", "-q"])
        let first = try topology.takeBackup()
        try topology.switchAndWait()
        try topology.primary.pgbench(["-T", "2", "-c", "2"])
        try topology.switchAndWait()
        let second = try topology.takeBackup()
        try topology.switchAndWait()
        #expect(first != second)

        func listed() async throws -> [String] {
            try await store.withClient { client in
                try await client.listAllObjects(prefix: systemPrefix).map { String($0.key.dropFirst(systemPrefix.count)) }
            }
        }
        // Before the second backup's record is archived nothing may go; once it is, the first backup goes.
        var paths: [String] = []
        let deadline = Date().addingTimeInterval(240)
        while Date() < deadline {
            paths = try await listed()
            if paths.contains("base/\(second)/backup.json") && !paths.contains { $0.hasPrefix("base/\(first)/") } { break }
            try await Task.sleep(for: .milliseconds(500))
        }
        #expect(paths.contains("base/\(second)/backup.json"), "\(paths)")
        #expect(!paths.contains { $0.hasPrefix("base/\(first)/") }, "the first backup is still in the bucket: \(paths)")

        // The WAL from the kept backup's start on is all there (what the spool holds from there), nothing before it.
        let record = try JSONSerialization.jsonObject(
            with: Data(contentsOf: URL(fileURLWithPath: "\(topology.spool)/\(system)/base/\(second)/backup.json")))
        let startLSN = try #require((record as? [String: Any])?["startLSN"] as? String)
        let startSegment = try topology.primary.sql("SELECT pg_walfile_name('\(startLSN)'::pg_lsn)")
        let spoolSegments = try FileManager.default.contentsOfDirectory(atPath: topology.walDirectory)
            .filter { $0.hasSuffix(".lz4") }.sorted()
        let needed = spoolSegments.filter { String($0.prefix(24)) >= startSegment }
        #expect(!needed.isEmpty)
        // The segment holding the kept backup's start completes in the spool only after the backup's record went up
        // (the backup is complete once the spool holds its WAL, in a segment still open): wait for it in the bucket.
        func walInBucket() async throws -> [String] {
            try await listed().filter { $0.hasPrefix("wal/") && $0.hasSuffix(".lz4") }.map { String($0.dropFirst(4)) }
        }
        var wal: [String] = []
        let caughtUp = Date().addingTimeInterval(120)
        while Date() < caughtUp {
            wal = try await walInBucket()
            let status = ArchiveShipTests.archive(try fetchStatus(port: topology.receiverStatusPort), system: system) ?? [:]
            if needed.allSatisfy(wal.contains) && ArchiveShipTests.number(status["retentionDeletedObjects"]) > 3 { break }
            try await Task.sleep(for: .milliseconds(500))
        }
        for segment in needed {
            #expect(wal.contains(segment), "\(segment), which backup \(second) needs, is not in the bucket: \(wal)")
        }
        #expect(!wal.contains { String($0.prefix(24)) < startSegment }, "\(wal) before \(startSegment)")

        let status = ArchiveShipTests.archive(try fetchStatus(port: topology.receiverStatusPort), system: system) ?? [:]
        #expect(ArchiveShipTests.number(status["retentionRefusedObjects"]) == 0, "\(status)")
        #expect(status["retentionLastError"] == nil, "\(status)")
        #expect(topology.receiver!.log.contains("archive retention deleted"), "\(topology.receiver!.log.suffix(2000))")
        let markers = ArchiveShipTests.number(status["retentionDeleteMarkers"])
        if objectLockDays == nil {
            #expect(markers == 0, "\(status)")
        } else {
            // Every delete left a marker; the first backup's record is still stored, as a locked version.
            #expect(markers > 3 && markers == ArchiveShipTests.number(status["retentionDeletedObjects"]), "\(status)")
            #expect(topology.receiver!.log.contains("the bucket keeps versions"), "\(topology.receiver!.log.suffix(2000))")
            let stored = try store.keysWithStoredVersions(prefix: systemPrefix)
            #expect(stored.contains(systemPrefix + "base/\(first)/backup.json"), "\(stored.sorted())")
        }

        // What is left is a whole archive: the kept backup and a gapless WAL from its start.
        let verified = try run(
            IT.walshipBinary, ["verify"] + archive + ["--encryption-keyring", keyringPath], timeout: 300,
            environment: store.environment, check: false)
        #expect(verified.status == 0, "\(verified.output)")
        #expect(verified.output.contains("; 1 backup;"), "\(verified.output)")
    }
}
