import Foundation
import ObjectStore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `walship receive --archive` against a real Ceph RADOS Gateway: completed segments and a base backup reach the
/// bucket byte for byte in the background, and a store that goes away delays no commit, raises the archive alerts, and is caught up on
/// by itself when it comes back.
@Suite(
    .serialized, .enabled(if: IT.pgBin != nil, "PostgreSQL 15 server binaries are required"),
    .enabled(if: S3Store.available, "Ceph (ceph-mon, ceph-osd, radosgw) is required: make deps"))
struct ArchiveShipTests {
    static func archive(_ status: [String: Any], system: String) -> [String: Any]? {
        ((status["systems"] as? [[String: Any]])?.first { $0["systemIdentifier"] as? String == system })?["archive"]
            as? [String: Any]
    }

    static func firing(_ status: [String: Any]) -> [String] {
        (status["alerts"] as? [[String: Any]] ?? []).compactMap { $0["condition"] as? String }
    }

    static func number(_ value: Any?) -> Double { (value as? NSNumber)?.doubleValue ?? -1 }

    @Test func completedSegmentsReachTheBucketAndAStoreOutageDelaysNoCommit() async throws {
        let fixture = try Fixture("archive-ship")
        let store = try S3Store(directory: fixture.directory + "/s3")
        defer {
            fixture.tearDown()
            store.stop()
            _ = try? run("/bin/rm", ["-rf", fixture.directory], check: false)
        }
        var topology = try ShipTopology(fixture, primarySettings: ["synchronous_standby_names": "'walship'"])
        let prefix = "it/site-b"
        topology.receiverExtra = [
            "--archive", "s3://\(store.bucket)/\(prefix)", "--archive-endpoint", store.endpoint,
            "--alert-archive-lag-seconds", "5", "--alert-recovery-seconds", "1",
            // The smallest part S3 allows: the base backup's archive goes up in several parts.
            "--archive-part-size", "5M",
        ]
        topology.receiverEnvironment = store.environment
        // What a receiver killed in the middle of a multipart upload leaves: an open upload with a part.
        let system0 = topology.systemIdentifier
        try await store.withClient { client in
            let key = "\(prefix)/\(system0)/base/20260101T000000Z/base.tar.lz4"
            let id = try await client.createMultipartUpload(key: key)
            _ = try await client.uploadPart(key: key, uploadID: id, partNumber: 1, body: Data(count: 5 << 20))
        }
        try topology.startReceiver()
        try topology.startSender(extra: ["--sync"])
        let system = topology.systemIdentifier
        #expect(topology.receiver!.log.contains("plain http"), "an http:// endpoint is warned about")
        #expect(!topology.receiver!.log.contains(store.credentials.secretAccessKey), "the secret is never logged")

        try topology.primary.pgbench(["-i", "-s", "5", "-q"])
        try topology.primary.pgbench(["-T", "3", "-c", "2"])
        let last = try topology.switchAndWait()

        // Every completed file of the spool is in the bucket, confirmed, with the spool's bytes. (The archived count
        // only grows, and counts files the spool holds: once it covers this snapshot, the snapshot is archived.)
        let spoolFiles = try FileManager.default.contentsOfDirectory(atPath: topology.walDirectory)
            .filter { $0.hasSuffix(".lz4") }.sorted()
        #expect(spoolFiles.contains("\(last).lz4"))
        try waitUntil("the archive to catch up with the spool", timeout: 120) {
            let archive = Self.archive(try fetchStatus(port: topology.receiverStatusPort), system: system) ?? [:]
            return (Self.number(archive["archivedObjects"]) >= Double(spoolFiles.count), "\(archive)")
        }
        try await store.withClient { client in
            #expect(try await client.listMultipartUploads(prefix: "\(prefix)/").isEmpty, "the open upload was aborted")
            let listed = try await client.listAllObjects(prefix: "\(prefix)/\(system)/wal/")
            #expect(Set(spoolFiles).isSubset(of: Set(listed.map { String($0.key.split(separator: "/").last!) })))
            for name in spoolFiles {
                let ours = try Data(contentsOf: URL(fileURLWithPath: topology.walDirectory + "/" + name))
                let theirs = try await client.getObject(key: "\(prefix)/\(system)/wal/\(name)")
                #expect(ours == theirs, "\(name) in the bucket differs from the spool's")
            }
        }

        // A complete base backup follows: its archive, manifest and record, the record last.
        let backup = try topology.takeBackup()
        let backupPrefix = "\(prefix)/\(system)/base/\(backup)/"
        try waitUntil("base backup \(backup) to be archived", timeout: 180) {
            let archive = Self.archive(try fetchStatus(port: topology.receiverStatusPort), system: system) ?? [:]
            return (archive["lastArchived"] as? String == "base/\(backup)/backup.json", "\(archive)")
        }
        try await store.withClient { client in
            let objects = try await client.listAllObjects(prefix: backupPrefix)
            #expect(objects.map(\.key).sorted() == ["backup.json", "backup_manifest", "base.tar.lz4"].map { backupPrefix + $0 })
            let archived = objects.first { $0.key.hasSuffix("base.tar.lz4") }
            #expect(archived?.etag.contains("-") == true, "the backup's archive went up in parts: \(archived?.etag ?? "")")
            let backupDirectory = topology.spool + "/\(system)/base/\(backup)"
            for file in ["base.tar.lz4", "backup_manifest", "backup.json"] {
                let ours = try Data(contentsOf: URL(fileURLWithPath: backupDirectory + "/" + file))
                let theirs = try await client.getObject(key: backupPrefix + file)
                #expect(theirs == ours, "\(file) differs from the spool's")
            }
        }

        // The store goes away: commits go on (synchronous, acknowledged by the spool alone), the lag grows, the
        // alerts fire.
        store.stop()
        let started = Date()
        try topology.primary.pgbench(["-T", "4", "-c", "2"])
        let duringOutage = try topology.switchAndWait()
        #expect(Date().timeIntervalSince(started) < 60, "commits went on without the store")
        try waitUntil("archive_lag_seconds and archive_failing to fire", timeout: 90) {
            let status = try fetchStatus(port: topology.receiverStatusPort)
            let firing = Self.firing(status)
            return (
                firing.contains("archive_lag_seconds") && firing.contains("archive_failing"),
                "\(firing) \(Self.archive(status, system: system) ?? [:])"
            )
        }
        let outage = Self.archive(try fetchStatus(port: topology.receiverStatusPort), system: system) ?? [:]
        #expect(Self.number(outage["lagSegments"]) >= 1)
        #expect(Self.number(outage["lagBytes"]) > 0)
        #expect(Self.number(outage["lagSeconds"]) > 5)
        #expect((outage["lastError"] as? String)?.contains("no answer from the store") == true, "\(outage)")
        let table = try run(
            IT.walshipBinary, ["status", "--url", "http://127.0.0.1:\(topology.receiverStatusPort)"], check: false)
        #expect(table.output.contains("archive s3://\(store.bucket)/\(prefix)/\(system)/"), "\(table.output)")
        #expect(table.output.contains("FAILING"), "\(table.output)")
        let metrics = try run("/usr/bin/curl", ["-sf", "http://127.0.0.1:\(topology.receiverStatusPort)/metrics"]).output
        #expect(metrics.contains("walship_archive_failing{system=\"\(system)\"} 1"), "\(metrics.suffix(2000))")

        // The store is back: the lag drains to 0 by itself and the alerts resolve.
        try store.start()
        try waitUntil("the archive lag to drain", timeout: 120) {
            let status = try fetchStatus(port: topology.receiverStatusPort)
            let archive = Self.archive(status, system: system) ?? [:]
            return (
                Self.number(archive["lagSegments"]) == 0 && archive["failing"] as? Bool == false
                    && !Self.firing(status).contains("archive_failing"),
                "\(archive) \(Self.firing(status))"
            )
        }
        try await store.withClient { client in
            let head = try await client.headObject(key: "\(prefix)/\(system)/wal/\(duringOutage).lz4")
            #expect(head != nil, "the segment completed during the outage is archived")
        }
    }
}
