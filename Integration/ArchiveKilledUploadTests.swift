import Foundation
import ObjectStore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The receiver killed (SIGKILL) in the middle of a base backup's multipart upload, against a real Ceph RADOS
/// Gateway: after a restart the object is sent again whole, no unfinished upload stays listed, every object's size
/// is its spool file's, and `walship verify` finds the archive clean.
@Suite(
    .serialized, .enabled(if: IT.pgBin != nil, "PostgreSQL 15 server binaries are required"),
    .enabled(if: S3Store.available, "Ceph (ceph-mon, ceph-osd, radosgw) is required: make deps"))
struct ArchiveKilledUploadTests {
    @Test func aMultipartUploadCutBySIGKILLIsSentAgainWhole() async throws {
        let fixture = try Fixture("archive-killed")
        let store = try S3Store(directory: fixture.directory + "/s3")
        defer {
            // The store first: the fixture's tear-down removes its directory, and with it what stop needs.
            store.stop()
            fixture.tearDown()
            _ = try? run("/bin/rm", ["-rf", fixture.directory], check: false)
        }
        var topology = try ShipTopology(fixture)
        let prefix = "killed"
        let archive = ["--archive", "s3://\(store.bucket)/\(prefix)", "--archive-endpoint", store.endpoint]
        // The smallest part S3 allows: the backup's archive goes up in many parts.
        topology.receiverExtra = archive + ["--archive-part-size", "5M"]
        topology.receiverEnvironment = store.environment
        try topology.startReceiver()
        try topology.startSender()
        let system = topology.systemIdentifier
        let systemPrefix = "\(prefix)/\(system)/"
        // Random bytes LZ4 cannot shrink: a backup archive of well over 100 MB, twenty-odd parts.
        try topology.primary.sql(
            "CREATE TABLE noise AS SELECT i, decode(md5(random()::text) || md5(random()::text) || md5(random()::text) || md5(random()::text), 'hex') AS b FROM generate_series(1, 1500000) i"
        )
        let backup = try topology.takeBackup()
        let archiveKey = systemPrefix + "base/\(backup)/base.tar.lz4"

        // Killed while the backup's archive is going up in parts.
        var caught = false
        let deadline = Date().addingTimeInterval(300)
        try await store.withClient { client in
            while Date() < deadline {
                if try await client.listMultipartUploads(prefix: systemPrefix).contains(where: { $0.key == archiveKey }) {
                    topology.receiver?.kill9()
                    caught = true
                    return
                }
                try await Task.sleep(for: .milliseconds(50))
            }
        }
        try #require(caught, "the backup's multipart upload was never seen in flight")
        let left = try await store.withClient { try await $0.listMultipartUploads(prefix: systemPrefix) }
        #expect(left.map(\.key) == [archiveKey], "what the kill left open: \(left)")
        let half = try await store.withClient { try await $0.headObject(key: archiveKey) }
        #expect(half == nil, "a half object is visible")

        // Restarted: the open upload is aborted, the archive sent again, then the record.
        try topology.startReceiver()
        try topology.waitUntilStreaming()
        try topology.switchAndWait()
        try await store.withClient { client in
            let deadline = Date().addingTimeInterval(300)
            while Date() < deadline {
                let status = ArchiveShipTests.archive(try fetchStatus(port: topology.receiverStatusPort), system: system) ?? [:]
                let record = try await client.headObject(key: systemPrefix + "base/\(backup)/backup.json")
                let open = try await client.listMultipartUploads(prefix: systemPrefix)
                if record != nil && open.isEmpty && ArchiveShipTests.number(status["lagSegments"]) == 0 { return }
                try await Task.sleep(for: .milliseconds(500))
            }
            Issue.record("the archive did not catch up after the restart")
        }
        #expect(topology.receiver!.log.contains("aborted a multipart upload an earlier run left unfinished"))

        // Every object the size of its spool file (what the spool still holds: its retention drops WAL older than the
        // backup once archived); no unfinished upload.
        let objects = try await store.withClient { try await $0.listAllObjects(prefix: systemPrefix) }
        let spoolDirectory = "\(topology.spool)/\(system)/"
        var compared: [String] = []
        for object in objects {
            let path = String(object.key.dropFirst(systemPrefix.count))
            guard FileManager.default.fileExists(atPath: spoolDirectory + path) else { continue }
            let attributes = try FileManager.default.attributesOfItem(atPath: spoolDirectory + path)
            #expect((attributes[.size] as? NSNumber)?.int64Value == object.size, "\(path): \(object.size) bytes in the store")
            compared.append(path)
        }
        #expect(objects.contains { $0.key == archiveKey && $0.size > 100 << 20 }, "\(objects.map { ($0.key, $0.size) })")
        #expect(
            Set(["base.tar.lz4", "backup_manifest", "backup.json"].map { "base/\(backup)/" + $0 }).isSubset(of: compared),
            "\(compared)")
        #expect(compared.contains { $0.hasPrefix("wal/") }, "\(compared)")
        #expect(try await store.withClient { try await $0.listMultipartUploads(prefix: systemPrefix) }.isEmpty)

        let verified = try run(
            IT.walshipBinary, ["verify", "--spool", topology.spool] + archive, timeout: 300, environment: store.environment,
            check: false)
        #expect(verified.status == 0, "\(verified.output)")
    }
}
